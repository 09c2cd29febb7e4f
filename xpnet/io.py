"""Parameter files: ``.npz`` written atomically, and the book's ``.pkl`` read safely.

xpnet saves parameters as ``.npz`` (no pickle, so loading one can never run code).
The book publishes its pretrained weights as pickles; those are read through a
restricted unpickler that can rebuild NumPy arrays and nothing else::

    >>> save_params({"W1": W1, "b1": b1}, "params.npz")     # host copies, atomic
    >>> params = load_params("params.npz")                   # {"W1": ndarray, ...}
    >>> params = load_params("sample_weight.pkl")            # the book's pickle, safely

A pickle is a small program: its GLOBAL opcodes name any importable callable and
REDUCE calls it (``os.system``, ``builtins.eval``, ...). The restricted unpickler
admits only the callables NumPy's own array pickles name; dicts, lists, tuples,
numbers and strings are built by the pickle opcodes themselves and need none.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import os
import pickle
import secrets
import zipfile
from pathlib import Path

import numpy as np

from xpnet.backend import as_numpy

__all__ = [
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
# The restricted unpickler
# ---------------------------------------------------------------------------


def _safe_dtype(*args, **kwargs):
    # Object dtypes would let an array carry arbitrary Python objects; parameters never do.
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise UnsafePickleError(f"pickle asked for object dtype {dt}; only numeric arrays load")
    return dt


def _latin1_encode(text, encoding="latin1", errors="strict"):
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1'); other codecs are refused.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"pickle asked for _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1", errors)


def _numpy_globals() -> dict:
    try:  # NumPy >= 2 keeps its internals in numpy._core; pickles name either spelling.
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray, numeric

    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _safe_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        # Protocol 5 pickles of contiguous arrays rebuild them from a buffer.
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_ALLOWED_GLOBALS = _numpy_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` admits only what NumPy arrays need.

    Everything else -- any function, class or module attribute -- raises
    :class:`UnsafePickleError` naming it, before it is imported or called.
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

    Raises UnsafePickleError on any other global, pickle.UnpicklingError / EOFError
    on a malformed stream (``load_params`` turns those into ParameterFileError).
    """
    return RestrictedUnpickler(file, encoding="latin1").load()


# ---------------------------------------------------------------------------
# save_params / load_params
# ---------------------------------------------------------------------------

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"


def save_params(params: dict, path) -> Path:
    """Write ``params`` ({name: array}, NumPy or CuPy) to ``path`` as ``.npz``, atomically.

    Arrays are copied to the host; dtypes and shapes are kept. Returns the path
    written. The file is always an ``.npz`` archive whatever its suffix, and
    ``load_params`` recognises it by content.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> array, got {type(params).__name__}")
    arrays = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"parameter names must be non-empty strings, got {key!r}")
        arr = as_numpy(value)
        if arr.dtype.hasobject:
            raise TypeError(f"parameter {key!r} has object dtype; only numeric arrays are saved")
        arrays[key] = arr
    path = Path(path)
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_params(path) -> dict:
    """Read a parameter file into ``{name: numpy.ndarray}``.

    ``path`` may be an ``.npz`` written by :func:`save_params` (read with
    ``allow_pickle=False``) or one of the book's ``.pkl`` files (read with
    :func:`restricted_load`); the format is recognised by the file's first bytes.
    Raises FileNotFoundError, UnsafePickleError, or ParameterFileError naming the
    file when it is truncated, corrupt or not a dict of numeric arrays.
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
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UnsafePickleError(
                f"{path} holds object arrays, which would need pickle; refused"
            ) from exc
        raise ParameterFileError(f"parameter file {path} is corrupt: {exc}") from exc
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise ParameterFileError(
            f"parameter file {path} is truncated or corrupt (not a readable .npz: {exc})"
        ) from exc


def _load_pickle(path: Path):
    try:
        with open(path, "rb") as f:
            obj = restricted_load(f)
            trailing = f.read(1)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as exc:
        raise ParameterFileError(
            f"parameter file {path} is truncated or corrupt (unpickling failed: "
            f"{type(exc).__name__}: {exc})"
        ) from exc
    if trailing:
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
        if isinstance(value, (np.ndarray, np.generic, int, float)) and not isinstance(value, bool):
            arr = np.asarray(value)
        else:
            raise ParameterFileError(
                f"parameter file {path}: entry {key!r} is a {type(value).__name__}, "
                "expected a NumPy array"
            )
        if arr.dtype.hasobject:
            raise UnsafePickleError(f"parameter file {path}: entry {key!r} has object dtype")
        out[key] = arr
    return out
