"""MNIST and Fashion-MNIST from their standard IDX files, as the book's ``load_mnist``.

    >>> (x_train, t_train), (x_test, t_test) = load_mnist(normalize=True, flatten=True)
    >>> x_train.shape, x_train.dtype, t_train.dtype
    ((60000, 784), dtype('float32'), dtype('uint8'))
    >>> load_mnist(dataset="fashion-mnist", flatten=False)[0][0].shape
    (60000, 1, 28, 28)

The four files (``train-images-idx3-ubyte.gz`` ...) are read from an explicit
``data_dir`` when one is given (only there: a directory that does not exist or lacks
a file is an error, never a fall-back to another copy). Otherwise they are looked for
in ``$XPNET_DATA/<dataset>/`` (default a per-user cache, ``$XDG_CACHE_HOME/xpnet`` or
``~/.cache/xpnet``); in system locations such as Debian's
``/usr/share/datasets/fashion-mnist``; and finally they are downloaded into the cache
from a list of mirrors, each file checked against its published SHA-256 and written
atomically, within ``DOWNLOAD_DEADLINE`` seconds in all. A gzipped file found in the
cache is checked against its published SHA-256 again on every use. Mirrors and checksums
are the module-level ``DATASETS`` table, which can be extended or overridden.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import sys
import time
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path

import numpy as np

from xpnet.io import atomic_write

__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetNotFoundError",
    "DownloadWarning",
    "data_home",
    "load_idx",
    "load_idx_pair",
    "load_mnist",
]


class DatasetError(ValueError):
    """A dataset file is missing, truncated, corrupt, or does not match its partner."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset is in none of the places looked in and could not be downloaded."""


class DownloadWarning(UserWarning):
    """A mirror failed; the next one is tried."""


# ---------------------------------------------------------------------------
# Where the data comes from
# ---------------------------------------------------------------------------

# The book's keys for the four standard files.
FILES = {
    "train_img": "train-images-idx3-ubyte.gz",
    "train_label": "train-labels-idx1-ubyte.gz",
    "test_img": "t10k-images-idx3-ubyte.gz",
    "test_label": "t10k-labels-idx1-ubyte.gz",
}

# name -> {"sha256": {file: hex digest of the .gz}, "mirrors": [base URL, ...],
#          "system_dirs": [directory, ...], "package": Debian package or None}
DATASETS: dict[str, dict] = {
    "mnist": {
        # SHA-256 of the original files (LeCun, Cortes, Burges), as published by the
        # mirrors' users (torchvision, TensorFlow Datasets).
        "sha256": {
            "train-images-idx3-ubyte.gz":
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz":
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz":
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz":
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        "mirrors": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ],
        "system_dirs": ["/usr/share/datasets/mnist"],
        "package": None,
    },
    "fashion-mnist": {
        # SHA-256 of the files published by Zalando Research (identical to Debian's package).
        "sha256": {
            "train-images-idx3-ubyte.gz":
                "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
            "train-labels-idx1-ubyte.gz":
                "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
            "t10k-images-idx3-ubyte.gz":
                "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
            "t10k-labels-idx1-ubyte.gz":
                "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        },
        "mirrors": [
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ],
        "system_dirs": ["/usr/share/datasets/fashion-mnist"],
        "package": "dataset-fashion-mnist",
    },
}

DOWNLOAD_TIMEOUT = 30.0  # seconds without data before a mirror is given up
# seconds a whole file may take from one mirror (a mirror that drips a byte at a time
# would otherwise hold the download for as long as it drips)
DOWNLOAD_DEADLINE = 600.0
_CHUNK = 1 << 20


def _canonical_name(dataset: str) -> str:
    name = str(dataset).strip().lower().replace("_", "-")
    if name == "fashionmnist":
        name = "fashion-mnist"
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    return name


def data_home() -> Path:
    """``$XPNET_DATA``, or the per-user cache ``$XDG_CACHE_HOME/xpnet`` (``~/.cache/xpnet``).

    Raises DatasetError when ``$XPNET_DATA`` names something that is not a directory."""
    env = os.environ.get("XPNET_DATA")
    if env:
        home = Path(env).expanduser()
        if home.exists() and not home.is_dir():
            raise DatasetError(
                f"XPNET_DATA={env} is a file, not a directory; point it at a directory "
                "(created if missing) or unset it"
            )
        return home
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "xpnet"


# ---------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

# IDX type codes (third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_maybe_gzip(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != _GZIP_MAGIC:  # detected by content: the name may say .gz or not
        return data
    try:
        return gzip.decompress(data)
    except EOFError as exc:
        raise DatasetError(f"{path} is a truncated gzip file ({exc})") from None
    except (OSError, zlib.error) as exc:
        raise DatasetError(f"{path} is a corrupt gzip file ({exc})") from None


def _parse_idx(data: bytes, name, magic: int | None = None) -> np.ndarray:
    if len(data) < 4:
        raise DatasetError(f"{name} is too short to be an IDX file ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if data[:2] != b"\0\0" or code not in _IDX_DTYPES or ndim == 0:
        raise DatasetError(
            f"{name} is not an IDX file: magic number {found} (0x{found:08x}); expected "
            f"{IMAGES_MAGIC} for images or {LABELS_MAGIC} for labels"
        )
    if magic is not None and found != magic:
        raise DatasetError(f"{name} has magic number {found}, expected {magic}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"{name} is truncated: its header needs {header} bytes, the file has {len(data)}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    count = math.prod(dims)  # Python ints: a forged header cannot overflow the check
    expected = count * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "followed by trailing data"
        raise DatasetError(
            f"{name} is {what}: dimensions {dims} need {expected} bytes of data after the "
            f"{header}-byte header, the file has {actual}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    # A writable array in native byte order (frombuffer over bytes is read-only).
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def load_idx(path, magic: int | None = None) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array of its dimensions.

    ``path``: e.g. ``train-images-idx3-ubyte.gz`` -> uint8 (60000, 28, 28);
    ``train-labels-idx1-ubyte.gz`` -> uint8 (60000,). ``magic``, if given, is the
    magic number the file must have (2051 images, 2049 labels). Raises
    DatasetError naming the file when it is truncated, has trailing data, or is
    not IDX.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"IDX file {path} does not exist")
    return _parse_idx(_read_maybe_gzip(path), path, magic)


def _pair_arrays(images_path, labels_path):
    images = load_idx(images_path, IMAGES_MAGIC)
    labels = load_idx(labels_path, LABELS_MAGIC)
    if images.shape[1] * images.shape[2] == 0:
        raise DatasetError(
            f"{images_path} holds images of {images.shape[1]}x{images.shape[2]} pixels; "
            "images must have at least one pixel"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; they must be equal"
        )
    if images.shape[0] == 0:
        raise DatasetError(f"{images_path} holds no images")
    if labels.max() > 9:
        raise DatasetError(
            f"{labels_path} has label {int(labels.max())}; labels must be 0..9 (10 classes)"
        )
    return images, labels


def _to_book_format(images, labels, normalize, flatten, one_hot_label):
    n, rows, cols = images.shape
    x = images.reshape(n, rows * cols) if flatten else images.reshape(n, 1, rows, cols)
    if normalize:
        x = x.astype(np.float32)
        x /= np.float32(255.0)
    t = labels
    if one_hot_label:
        # float64, as the book's _change_one_hot_label (np.zeros) returns.
        t = np.zeros((n, 10))
        t[np.arange(n), labels] = 1.0
    return x, t


def load_idx_pair(images_path, labels_path, normalize=True, flatten=True, one_hot_label=False):
    """Load an image file and its label file as ``(x, t)``, in ``load_mnist``'s formats.

    x: (N, rows*cols) if ``flatten`` else (N, 1, rows, cols); float32 in [0, 1] if
    ``normalize`` else uint8. t: uint8 (N,), or float64 one-hot (N, 10).
    """
    images, labels = _pair_arrays(Path(images_path), Path(labels_path))
    return _to_book_format(images, labels, normalize, flatten, one_hot_label)


# ---------------------------------------------------------------------------
# Finding the files
# ---------------------------------------------------------------------------


def _find_file(directory: Path, filename: str) -> Path | None:
    for candidate in (filename, filename.removesuffix(".gz")):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def _describe_missing(directory: Path, missing: list[str]) -> str:
    if not directory.is_dir():
        return "directory does not exist"
    return "missing " + ", ".join(missing)


def _locate(name: str, data_dir, download: bool) -> dict[str, Path]:
    if data_dir is not None:  # asked for: that copy or an error, never another one
        return _in_data_dir(name, Path(data_dir).expanduser())
    entry = DATASETS[name]
    cache = data_home() / name
    places = [(cache, "$XPNET_DATA" if os.environ.get("XPNET_DATA") else "user cache")]
    places += [(Path(d), "system location") for d in entry.get("system_dirs", ())]

    looked = []
    for directory, label in places:
        found = {key: _find_file(directory, f) for key, f in FILES.items()}
        missing = [FILES[k] for k, p in found.items() if p is None]
        if not missing:
            if directory == cache:
                for path in found.values():
                    _verify_cached(name, path)
            return found
        looked.append(f"  - {directory} ({label}): {_describe_missing(directory, missing)}")

    failures: list[str] = []
    if download:
        found = _download_missing(name, cache, failures)
        if found is not None:
            return found
    raise DatasetNotFoundError(_not_found_message(name, looked, failures, download))


def _in_data_dir(name: str, directory: Path) -> dict[str, Path]:
    found = {key: _find_file(directory, f) for key, f in FILES.items()}
    missing = [FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise DatasetNotFoundError(
            f"the {name} dataset is not in data_dir {directory}: "
            f"{_describe_missing(directory, missing)}; put {', '.join(FILES.values())} "
            "(gzipped or not) there, or leave data_dir out to use the cache, system "
            "locations and downloads"
        )
    return found


def _verify_cached(name: str, path: Path) -> None:
    """A downloaded file in the cache must still be the published one: checked on every
    use (disks and people change files), against the SHA-256 of its gzipped form."""
    expected = DATASETS[name]["sha256"].get(path.name)
    if expected is None:  # an uncompressed copy put there by hand: nothing published
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected.lower():
        raise DatasetError(
            f"{path} does not match its published SHA-256 (it has {digest}, expected "
            f"{expected}): it was changed or damaged after the download; delete it to "
            "download it again"
        )


def _not_found_message(name, looked, failures, download) -> str:
    lines = [f"The {name} dataset was not found.", "Looked in:", *looked]
    if not download:
        lines.append("Downloading was disabled (download=False).")
    elif failures:
        lines += ["Download failed from every mirror:", *failures]
    else:
        lines.append(f"No download mirrors are configured for {name!r}.")
    how = (
        f"To provide the files, put {', '.join(FILES.values())} (gzipped or not) in a "
        f"directory DIR and pass load_mnist(..., data_dir=DIR), or set XPNET_DATA=DIR "
        f"and put them in DIR/{name}/ (now {data_home() / name})"
    )
    package = DATASETS[name].get("package")
    if package:
        how += f", or install the Debian package {package} (apt-get install {package})"
    lines.append(how + ".")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------


def _download_missing(name: str, cache: Path, failures: list[str]) -> dict[str, Path] | None:
    entry = DATASETS[name]
    mirrors = entry.get("mirrors", ())
    if not mirrors:
        return None
    found = {}
    for key, filename in FILES.items():
        path = _find_file(cache, filename)  # files of an earlier, partial download stay
        if path is not None:
            _verify_cached(name, path)
        else:
            path = _download_file(filename, cache, entry["sha256"].get(filename), mirrors,
                                  failures)
            if path is None:
                return None  # every mirror failed for this file: no use trying the others
        found[key] = path
    return found


def _download_file(filename, cache: Path, sha256, mirrors, failures) -> Path | None:
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        try:
            data = _fetch(url)
            _verify(data, filename, url, sha256)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            reason = _reason(exc)
            failures.append(f"  - {url}: {reason}")
            warnings.warn(f"could not download {url}: {reason}", DownloadWarning, stacklevel=5)
            continue
        cache.mkdir(parents=True, exist_ok=True)
        dest = cache / filename
        with atomic_write(dest) as f:
            f.write(data)
        return dest
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP error {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"connection failed ({exc.reason})"
    if isinstance(exc, TimeoutError):
        return str(exc) if exc.args else f"timed out after {DOWNLOAD_TIMEOUT:g} s"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed after {len(exc.partial)} bytes ({exc})"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP response ({type(exc).__name__}: {exc})"
    return str(exc)


def _fetch(url: str) -> bytes:
    """The body of ``url``: each read waits at most DOWNLOAD_TIMEOUT seconds, the whole
    download at most DOWNLOAD_DEADLINE (plus that last read); a progress bar when stderr
    is a terminal."""
    deadline = time.monotonic() + DOWNLOAD_DEADLINE
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                       leave=False)
        chunks = []
        try:
            # read1: what one receive brings, so the deadline is checked as data drips in
            while chunk := response.read1(_CHUNK):
                chunks.append(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the download took longer than {DOWNLOAD_DEADLINE:g} s "
                        f"({sum(map(len, chunks))} bytes so far)"
                    )
        finally:
            if bar is not None:
                bar.close()
    data = b"".join(chunks)
    if total is not None and len(data) != total:
        raise DatasetError(f"download ended after {len(data)} of {total} bytes")
    return data


def _verify(data: bytes, filename: str, url: str, sha256: str | None) -> None:
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.lower():
            raise DatasetError(f"checksum mismatch: SHA-256 {digest}, expected {sha256}")
    # The content must also be what its name says (this is the only check when no
    # checksum is published for a file).
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise DatasetError(f"corrupt gzip content ({exc})") from None
    magic = IMAGES_MAGIC if "-images-" in filename else LABELS_MAGIC
    _parse_idx(data, f"downloaded {filename}", magic)


# ---------------------------------------------------------------------------
# The book's entry point
# ---------------------------------------------------------------------------


def load_mnist(normalize=True, flatten=True, one_hot_label=False, *, dataset="mnist",
               data_dir=None, download=True):
    """Load MNIST (or Fashion-MNIST) as the book does.

    Returns ``(x_train, t_train), (x_test, t_test)``:
    x: (N, 784) if ``flatten`` else (N, 1, 28, 28); float32 in [0, 1] if
    ``normalize`` else uint8. t: uint8 labels (N,), or float64 one-hot (N, 10) if
    ``one_hot_label`` (the book's dtypes). N is 60000 for training, 10000 for test.

    dataset: ``'mnist'`` or ``'fashion-mnist'`` (``'fashion_mnist'``).
    data_dir: the directory holding the four IDX files (then only there: missing files
    are an error).
    download: fetch missing files into ``$XPNET_DATA/<dataset>/`` when not found.
    Raises DatasetNotFoundError (naming every place looked in and every URL tried)
    or DatasetError for a corrupt file.
    """
    name = _canonical_name(dataset)
    paths = _locate(name, data_dir, download)
    train = _pair_arrays(paths["train_img"], paths["train_label"])
    test = _pair_arrays(paths["test_img"], paths["test_label"])
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DatasetError(
            f"the training images ({paths['train_img']}) are "
            f"{'x'.join(map(str, train[0].shape[1:]))} pixels but the test images "
            f"({paths['test_img']}) are {'x'.join(map(str, test[0].shape[1:]))}; both sets "
            "must have images of one size"
        )
    return (_to_book_format(*train, normalize, flatten, one_hot_label),
            _to_book_format(*test, normalize, flatten, one_hot_label))
