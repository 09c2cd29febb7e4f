"""Parameter files: ``.npz`` written atomically, and the book's ``.pkl`` read safely.

xpnet saves parameters as ``.npz`` (no pickle, so loading one can never run code).
The book publishes its pretrained weights as pickles; those are read through a
restricted unpickler that can rebuild plain numeric NumPy arrays and nothing else, and
a ``.pkl`` name writes such a pickle, for the book's own code to read::

    >>> save_params({"W1": W1, "b1": b1}, "params.npz")     # host copies, atomic
    >>> params = load_params("params.npz")                   # {"W1": ndarray, ...}
    >>> params = load_params("sample_weight.pkl")            # the book's pickle, safely
    >>> save_params({"W1": W1, "b1": b1}, "params.pkl")     # what the book's save_params writes

Whatever the file, only bool, integer and float16/32/64 arrays come out, each with
exactly the data its shape needs, at most MAX_PARAMETER_BYTES in all.

A pickle is a small program: its GLOBAL opcodes name any importable callable and
REDUCE calls it (``os.system``, ``builtins.eval``, ...). The restricted unpickler
admits only the callables NumPy's own array pickles name; dicts, lists, tuples,
numbers and strings are built by the pickle opcodes themselves and need none.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import secrets
import zipfile
import zlib
from pathlib import Path

import numpy as np

from xpnet.backend import as_numpy

__all__ = [
    "MAX_COMPRESSION_RATIO",
    "MAX_PARAMETER_BYTES",
    "ParameterFileError",
    "UnsafePickleError",
    "atomic_write",
    "load_params",
    "restricted_load",
    "save_params",
]


class ParameterFileError(ValueError):
    """A parameter file is truncated, corrupt, or does not hold a dict of arrays."""


class UnsafePickleError(ParameterFileError, pickle.UnpicklingError):
    """A pickle asked for a global that is not needed to rebuild NumPy arrays."""


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None):
    """Open a temporary file next to ``path``; on success rename it over ``path``.

    Readers see either the old file or the complete new one, never a partial
    write: if the body raises (or the process dies), ``path`` is left untouched
    and the temporary file is removed. The temporary file lives in the same
    directory because ``os.replace`` is only atomic within one file system.

        >>> with atomic_write("ckpt.npz") as f:
        ...     np.savez(f, **arrays)
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write opens files for writing only ('w' or 'wb'), got {mode!r}")
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    # os.open with O_EXCL and mode 0o666 lets the umask set the final permissions,
    # as a plain open() would (mkstemp would leave the file at 0o600).
    while True:
        tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        binary = "b" in mode
        with open(fd, "wb" if binary else "w", encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# What may leave the loader: plain numeric arrays, of a bounded size
# ---------------------------------------------------------------------------

#: The most bytes of array data a parameter file may declare (and the largest pickle read):
#: 1 GiB, over 150 times DeepConvNet's float32 parameters. Larger is refused as corrupt.
MAX_PARAMETER_BYTES = 1 << 30
#: An ``.npz`` member that inflates to more than this many times its compressed size (and
#: to more than 1 MiB) is refused: real parameters hardly compress, a zip bomb does.
MAX_COMPRESSION_RATIO = 100
_RATIO_FREE_BYTES = 1 << 20

# bool, signed and unsigned integers, float16/32/64: the dtypes parameters have
_NUMERIC_SIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8)}


def _numeric_dtype(dtype):
    """``dtype`` rebuilt from its type string if it is a plain numeric dtype (bool, integer,
    float16/32/64; either byte order), else None. Rebuilding drops anything a crafted dtype
    could carry beyond its type string (fields, sub-arrays, a forged itemsize)."""
    if not isinstance(dtype, np.dtype) or dtype.itemsize not in _NUMERIC_SIZES.get(dtype.kind, ()):
        return None
    canonical = np.dtype(dtype.str)
    if dtype != canonical or dtype.itemsize != canonical.itemsize:
        return None
    return canonical


def _shape(shape):
    """``shape`` as a tuple of non-negative ints (at most 64, NumPy's limit), or None."""
    if not isinstance(shape, tuple) or len(shape) > 64:
        return None
    if not all(type(n) is int and n >= 0 for n in shape):
        return None
    return shape


def _expect_nbytes(shape, dtype, nbytes, what):
    """Raise unless ``shape`` x ``dtype`` is ``nbytes`` long (the data present) and within
    MAX_PARAMETER_BYTES: checked before any array is allocated."""
    declared = math.prod(shape) * dtype.itemsize
    if declared > MAX_PARAMETER_BYTES:
        raise ParameterFileError(
            f"{what} declares a {dtype} array of shape {shape} ({declared} bytes), more than "
            f"the {MAX_PARAMETER_BYTES} bytes a parameter file may hold (MAX_PARAMETER_BYTES)"
        )
    if declared != nbytes:
        raise ParameterFileError(
            f"{what} declares a {dtype} array of shape {shape} ({declared} bytes) but holds "
            f"{nbytes} bytes of data"
        )


# ---------------------------------------------------------------------------
# The restricted unpickler
# ---------------------------------------------------------------------------
#
# NumPy pickles an array as ``_reconstruct(ndarray, ...)`` followed by a BUILD opcode that
# hands (shape, dtype, fortran order, raw bytes) to the new object's ``__setstate__``; its
# dtype is ``dtype(type string)`` with a BUILD of its own. A pickle can BUILD any object it
# holds, any number of times, in any order -- so handing it real ``numpy.dtype`` objects
# lets it rewrite one's state (fields outside the item, a larger itemsize) after an array
# was made with it. Here the pickle never holds a real dtype: ``dtype`` gives a _DtypeSpec
# that only records its arguments and state, and the array constructors give a
# _PickledArray whose ``__setstate__`` checks everything (a plain numeric dtype rebuilt from
# its type string, a shape, data of exactly shape x itemsize bytes) before NumPy's runs.


class _DtypeSpec:
    """What a pickle asked ``numpy.dtype`` for: its arguments and, after BUILD, its state."""

    obj = state = None  # (also when a NEWOBJ opcode skips __init__)

    def __init__(self, obj=None, align=False, copy=False):
        self.obj, self.state = obj, None

    def __setstate__(self, state):
        self.state = state

    def resolve(self):
        """The plain numeric dtype this stands for, or UnsafePickleError."""
        dtype = None
        if isinstance(self.obj, str):
            with contextlib.suppress(TypeError, ValueError):
                dtype = np.dtype(self.obj)
        state = self.state if self.state is not None else (3, "|", None, None, None, -1, -1)
        if dtype is not None and _plain_dtype_state(state, dtype):
            if state[1] in "<>":
                dtype = dtype.newbyteorder(state[1])
            dtype = _numeric_dtype(dtype)
        else:  # fields, sub-arrays, a forged itemsize: nothing a parameter has
            dtype = None
        if dtype is None:
            kind = "object" if isinstance(self.obj, str) and self.obj[:1] == "O" else "non-numeric"
            raise UnsafePickleError(
                f"pickle asked for {kind} dtype {self.obj!r:.100} with state "
                f"{self.state!r:.200}; only plain numeric arrays (bool, integers, "
                "float16/32/64) load"
            )
        return dtype


def _plain_dtype_state(state, dtype):
    """True for the state NumPy pickles with a plain dtype: (version, byte order, no
    sub-array, no names, no fields, itemsize -1 or its own, ...)."""
    if not isinstance(state, tuple) or len(state) < 7 or state[0] not in (3, 4):
        return False
    order, subarray, names, fields, elsize = state[1:6]
    return (order in ("<", ">", "|", "=")
            and subarray is None and names is None and fields is None
            and elsize in (-1, dtype.itemsize))


class _PickledArray(np.ndarray):
    """An array a pickle built; its state is checked before NumPy's ``__setstate__`` runs.

    ``load_params`` hands out plain ``numpy.ndarray`` views of these."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError(f"pickle gave an array the state {state!r:.200}")
        shape, spec, fortran, raw = state[-4:]
        shape = _shape(shape)
        fortran_ok = type(fortran) in (bool, int) and fortran in (0, 1)
        if shape is None or not isinstance(spec, _DtypeSpec) or not fortran_ok:
            raise UnsafePickleError(f"pickle gave an array a malformed state {state!r:.200}")
        dtype = spec.resolve()
        raw = _raw_bytes(raw)
        _expect_nbytes(shape, dtype, len(raw), "pickle")
        super().__setstate__((shape, dtype, bool(fortran), raw))


def _raw_bytes(raw):
    """The array data of a pickle as bytes (Python 2 pickles give latin-1 text)."""
    if isinstance(raw, str):
        return raw.encode("latin1")
    if isinstance(raw, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        return bytes(memoryview(raw).cast("B"))
    raise UnsafePickleError(
        f"pickle gave an array data of type {type(raw).__name__}; only numeric arrays load"
    )


class _NdarrayName:
    """Stands for ``numpy.ndarray`` in a pickle: only as the first argument of _reconstruct
    (calling ndarray directly would build an array over any buffer, with any strides)."""

    def __new__(cls, *args, **kwargs):
        raise UnsafePickleError("refused to call numpy.ndarray from a pickle")


def _reconstruct(subtype, shape, typecode):
    # The first step of NumPy's array pickle; the BUILD that follows gives the contents.
    if subtype is not _NdarrayName:
        raise UnsafePickleError(f"pickle asked to reconstruct a {subtype!r}; only ndarray loads")
    return np.ndarray.__new__(_PickledArray, (0,), np.float64)


def _frombuffer(buf, spec, shape, order):
    # Protocol 5's spelling of a contiguous array: the data, then dtype, shape and order.
    if order not in ("C", "F"):
        raise UnsafePickleError(f"pickle asked for array order {order!r}")
    arr = _reconstruct(_NdarrayName, (0,), b"b")
    arr.__setstate__((shape, spec, order == "F", buf))
    return arr


def _scalar(spec, data):
    # A NumPy scalar (np.float64(0.1)), loaded as a 0-d array: the same value and dtype.
    arr = _reconstruct(_NdarrayName, (0,), b"b")
    arr.__setstate__(((), spec, False, data))
    return arr


def _latin1_encode(text, encoding="latin1", errors="strict"):
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1'); other codecs are refused.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"pickle asked for _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1", errors)


def _numpy_globals() -> dict:
    allowed = {
        ("numpy", "ndarray"): _NdarrayName,
        ("numpy", "dtype"): _DtypeSpec,
        ("_codecs", "encode"): _latin1_encode,
    }
    # NumPy >= 2 keeps its internals in numpy._core; pickles name either spelling.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = _scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = _frombuffer
    return allowed


_ALLOWED_GLOBALS = _numpy_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` admits only what NumPy arrays need.

    Everything else -- any function, class or module attribute -- raises
    :class:`UnsafePickleError` naming it, before it is imported or called. Arrays come out
    as checked plain numeric arrays (see above); NumPy scalars as 0-d arrays.
    """

    def find_class(self, module, name):
        # Python 2 spellings (__builtin__.eval) mean their Python 3 names, as in pickle.Unpickler.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load global '{module}.{name}': a parameter pickle may only "
                "rebuild NumPy arrays, dicts, lists, tuples, numbers and strings"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refused persistent id {pid!r} in pickle")


def restricted_load(file):
    """Unpickle ``file`` (a binary file object) admitting only NumPy arrays and plain data.

    Raises UnsafePickleError on any other global or a non-numeric array, ParameterFileError
    on an array whose data does not match its shape, pickle.UnpicklingError / EOFError on
    a malformed stream (``load_params`` turns those into ParameterFileError). A dict's
    arrays come back as plain ndarrays.
    """
    obj = RestrictedUnpickler(file, encoding="latin1").load()
    if isinstance(obj, dict):
        obj = {k: _plain(v) for k, v in obj.items()}
    return _plain(obj)


def _plain(value):
    return value.view(np.ndarray) if isinstance(value, _PickledArray) else value


# ---------------------------------------------------------------------------
# save_params / load_params
# ---------------------------------------------------------------------------

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
# xpnet's .npz files say which arrays they hold in the archive comment (invisible to
# np.load): a corrupt directory that hides a member is then an error, not a missing key.
_MANIFEST_TAG = b"xpnet-params "
_PICKLE_PROTOCOL = 4  # what the book's pickle.dump writes on Python 3.8+; any Python 3 reads it


def save_params(params: dict, path) -> Path:
    """Write ``params`` ({name: array}, NumPy or CuPy) to ``path`` atomically.

    A path ending in ``.pkl`` gets what the book's ``save_params`` writes: a pickled dict of
    NumPy arrays, which the book's ``pickle.load`` reads. Any other name (``.npz``, the
    default and the recommendation: loading it never unpickles) gets an ``.npz`` archive
    that records the names of the arrays it holds. Arrays are copied to the host; dtypes
    (bool, integers, float16/32/64) and shapes are kept. Returns the path written;
    ``load_params`` reads either, recognising the format by content.
    """
    arrays = _params_to_save(params)
    path = Path(path)
    with atomic_write(path, "wb") as f:
        if path.suffix.lower() == ".pkl":
            pickle.dump(arrays, f, protocol=_PICKLE_PROTOCOL)
        else:
            _write_npz(f, arrays)
    return path


def _params_to_save(params) -> dict:
    """{name: host array}, each of a dtype load_params accepts (so every file written loads)."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> array, got {type(params).__name__}")
    arrays = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"parameter names must be non-empty strings, got {key!r}")
        arr = np.ascontiguousarray(as_numpy(value))
        if _numeric_dtype(arr.dtype) is None:
            kind = "object" if arr.dtype.hasobject else f"non-numeric {arr.dtype}"
            raise TypeError(
                f"parameter {key!r} has {kind} dtype; only bool, integer and float16/32/64 "
                "arrays are saved"
            )
        arrays[key] = arr
    return arrays


def _write_npz(f, arrays: dict) -> None:
    """np.savez's archive (stored ``name.npy`` members), plus the manifest comment."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, arr in arrays.items():
            with archive.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)
        archive.comment = _manifest(list(arrays))


def _manifest(names: list) -> bytes:
    body = json.dumps({"arrays": names}, separators=(",", ":")).encode()
    if len(_MANIFEST_TAG) + len(body) > 0xFFFF:  # a zip comment's limit: names' digest only
        digest = hashlib.sha256("\0".join(sorted(names)).encode()).hexdigest()
        body = json.dumps({"count": len(names), "sha256": digest}).encode()
    return _MANIFEST_TAG + body


def load_params(path) -> dict:
    """Read a parameter file into ``{name: numpy.ndarray}``.

    ``path`` may be an ``.npz`` written by :func:`save_params` (or ``np.savez``) or a
    pickle, such as the book's ``.pkl`` files (read with :func:`restricted_load`); the
    format is recognised by the file's first bytes. Only plain numeric arrays load (bool,
    integers, float16/32/64), at most MAX_PARAMETER_BYTES of them. Raises
    FileNotFoundError, UnsafePickleError, or ParameterFileError naming the file when it is
    truncated, corrupt, too large or not a dict of numeric arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameter file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if head in (_ZIP_MAGIC, _EMPTY_ZIP_MAGIC):
        params = _load_npz(path)
    elif head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"c"):  # pickle protocol 2+ or 0/1
        params = _load_pickle(path)
    elif not head:
        raise ParameterFileError(f"parameter file {path} is empty")
    else:
        raise ParameterFileError(
            f"parameter file {path} is neither an .npz archive nor a pickle "
            f"(starts with {head!r})"
        )
    return _check_params(params, path)


def _load_npz(path: Path) -> dict:
    try:
        with zipfile.ZipFile(path) as archive:
            members = _npz_members(archive, path)
            return {key: _read_npy(archive, info, path) for key, info in members.items()}
    except ParameterFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, ValueError,
            MemoryError, OverflowError, NotImplementedError, RuntimeError) as exc:
        # (a corrupt directory can claim an unknown zip version or method: NotImplementedError,
        # or encryption: RuntimeError)
        raise ParameterFileError(
            f"parameter file {path} is truncated or corrupt (not a readable .npz: {exc})"
        ) from exc


def _npz_members(archive: zipfile.ZipFile, path: Path) -> dict:
    """{array name: ZipInfo} after checking the directory: ``.npy`` members only, no name
    twice, sizes within the caps and what the file can hold, and -- for xpnet's files --
    exactly the arrays the manifest names."""
    members = {}
    for info in archive.infolist():
        key = info.filename.removesuffix(".npy")
        if key == info.filename or key in members:
            what = "twice" if key in members else "which is not a .npy array"
            raise ParameterFileError(f"parameter file {path} holds a member {info.filename!r} "
                                     f"{what}; it is corrupt or not a parameter archive")
        _check_member_sizes(info, path)
        members[key] = info
    total = sum(info.file_size for info in members.values())
    if total > MAX_PARAMETER_BYTES:
        raise ParameterFileError(
            f"parameter file {path} declares {total} bytes of arrays, more than the "
            f"{MAX_PARAMETER_BYTES} a parameter file may hold (MAX_PARAMETER_BYTES)"
        )
    if sum(info.compress_size for info in members.values()) > path.stat().st_size:
        raise ParameterFileError(f"parameter file {path} is corrupt: its directory declares "
                                 "more data than the file holds")
    _check_manifest(archive.comment, list(members), path)
    return members


def _check_member_sizes(info: zipfile.ZipInfo, path: Path) -> None:
    stored = info.compress_type == zipfile.ZIP_STORED
    if stored and info.compress_size != info.file_size:
        raise ParameterFileError(
            f"parameter file {path} is corrupt: member {info.filename!r} is stored "
            f"uncompressed but declares {info.compress_size} bytes stored and "
            f"{info.file_size} bytes of data"
        )
    ratio_limit = MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
    if info.file_size > _RATIO_FREE_BYTES and info.file_size > ratio_limit:
        raise ParameterFileError(
            f"parameter file {path}: member {info.filename!r} inflates {info.compress_size} "
            f"bytes to {info.file_size}, more than {MAX_COMPRESSION_RATIO} times "
            "(MAX_COMPRESSION_RATIO); refused as a likely zip bomb"
        )


def _check_manifest(comment: bytes, keys: list, path: Path) -> None:
    """The arrays xpnet recorded on writing must be exactly those the directory lists.
    Archives without the manifest (other tools, older xpnet) are not checked."""
    if not comment.startswith(_MANIFEST_TAG):
        return
    try:
        manifest = json.loads(comment[len(_MANIFEST_TAG):])
        if "arrays" in manifest:
            expected = list(manifest["arrays"])
            ok = sorted(keys) == sorted(expected)
        else:
            expected = None
            digest = hashlib.sha256("\0".join(sorted(keys)).encode()).hexdigest()
            ok = len(keys) == manifest["count"] and digest == manifest["sha256"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ParameterFileError(
            f"parameter file {path} is corrupt: its list of arrays is unreadable ({exc})"
        ) from exc
    if not ok:
        if expected is None:
            detail = f"{manifest['count']} arrays were written, the directory lists {len(keys)}"
        else:
            missing = sorted(set(expected) - set(keys))
            extra = sorted(set(keys) - set(expected))
            detail = f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        raise ParameterFileError(
            f"parameter file {path} is corrupt: its directory does not list the arrays it was "
            f"written with ({detail})"
        )


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One ``.npy`` member: header checked (numeric dtype, size matching the member's data)
    before the array is allocated, then read into it."""
    what = f"parameter file {path}: member {info.filename!r}"
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ParameterFileError(f"{what} has .npy format {version}; expected 1.0 or 2.0")
        checked = _numeric_dtype(dtype)
        if checked is None:
            error = UnsafePickleError if dtype.hasobject else ParameterFileError
            raise error(f"{what} holds a {dtype} array; only bool, integer and "
                        "float16/32/64 arrays load (object arrays would need pickle; refused)")
        if _shape(shape) is None:
            raise ParameterFileError(f"{what} declares the shape {shape!r}")
        _expect_nbytes(shape, checked, info.file_size - f.tell(), what)
        arr = np.empty(shape, checked, order="F" if fortran else "C")
        _read_into(f, arr.T if fortran else arr, what)
    return arr


def _read_into(f, arr: np.ndarray, what: str) -> None:
    """Fill C-contiguous ``arr`` from ``f``; a short read is a truncated file."""
    view = memoryview(arr.reshape(-1)).cast("B")
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise ParameterFileError(f"{what} is truncated ({done} of {len(view)} bytes)")
        done += n


def _load_pickle(path: Path):
    size = path.stat().st_size
    if size > MAX_PARAMETER_BYTES:
        raise ParameterFileError(
            f"parameter file {path} is {size} bytes, more than the {MAX_PARAMETER_BYTES} a "
            "parameter file may hold (MAX_PARAMETER_BYTES)"
        )
    data = path.read_bytes()
    stream = io.BytesIO(data)
    try:
        # from memory: a length the pickle declares beyond its end is "truncated", never
        # an allocation of that length
        obj = restricted_load(stream)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except ParameterFileError as exc:
        raise ParameterFileError(f"parameter file {path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, OverflowError, RecursionError) as exc:
        raise ParameterFileError(
            f"parameter file {path} is truncated or corrupt (unpickling failed: "
            f"{type(exc).__name__}: {exc})"
        ) from exc
    if stream.tell() != len(data):
        raise ParameterFileError(f"parameter file {path} has data after the end of the pickle")
    return obj


def _check_params(params, path: Path) -> dict:
    if not isinstance(params, dict):
        raise ParameterFileError(
            f"parameter file {path} holds a {type(params).__name__}, expected a dict of arrays"
        )
    out = {}
    for key, value in params.items():
        if not isinstance(key, str):
            raise ParameterFileError(f"parameter file {path} has a non-string key {key!r}")
        if isinstance(value, (np.ndarray, int, float)) and not isinstance(value, bool):
            arr = np.asarray(value)
        else:
            raise ParameterFileError(
                f"parameter file {path}: entry {key!r} is a {type(value).__name__}, "
                "expected a NumPy array"
            )
        if _numeric_dtype(arr.dtype) is None:  # the loaders admit no other; kept as a guard
            raise UnsafePickleError(f"parameter file {path}: entry {key!r} has dtype {arr.dtype}")
        out[key] = arr
    return out
