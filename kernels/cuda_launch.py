"""One way to launch a Numba CUDA kernel: ``launch(kernel, grid, block, stream, *args)``.

Every GPU kernel of xpnet goes through here, so how a launch is made is decided in one
place. ``kernel`` is a ``@cuda.jit`` dispatcher; ``args`` are device arrays (CuPy arrays,
Numba views of them, NumPy arrays under the CUDA simulator), tuples of them, and scalars
(NumPy scalars typed explicitly - ``np.float32(x)``, ``np.int64(n)`` - or Python ints,
floats and bools, which Numba types as int64, float64 and boolean); ``stream`` is a Numba
stream (``cuda.external_stream`` of CuPy's current stream) or 0.

Why: calling a Numba kernel costs about 140 us on the host - Numba types every argument
(``typeof``), resolves the overload and packs the arguments in Python - while the GPU work
of most of xpnet's launches takes a few us. A training step makes dozens of launches, so
the GPU idled most of each step.

How (the fast path, on a real GPU with CuPy):

1. The argument types are read cheaply - dtype, ndim, C-contiguous or not per array; the
   dtype of each scalar - into a hashable key (no ``typeof``).
2. Once per (kernel, device, key) the kernel's Python function is compiled with
   ``numba.cuda.compile_ptx`` for exactly those Numba types and the device's compute
   capability (with the kernel's own options: fastmath, opt, lineinfo), the PTX is loaded
   into CuPy (``cupy.cuda.function.Module``) and its one ``.entry`` is looked up by its
   mangled name. The plan checks its own packing against the ``.param`` list of that PTX.
3. Each launch packs the arguments into Numba's kernel ABI with one ``struct.pack_into``
   into a per-thread buffer and calls ``cuLaunchKernel`` (``cupy.cuda.driver.launchKernel``)
   on the given stream. The ABI, as numba-cuda's ``_Kernel._prepare_args`` writes it: an
   array is (meminfo=0, parent=0, nitems, itemsize, data pointer, shape[0..ndim),
   strides[0..ndim) in bytes), a tuple is its members in order, a scalar is one value of
   the exact width of its Numba type (boolean: one byte; float16: its 16 bits).

Anything the fast path does not take - the simulator, NumPy arrays, an argument type it
does not know, a kernel compiled with options it does not reproduce (debug, link files,
extensions), PTX that needs linking (float16 arithmetic calls into a C++ shim), no CuPy or
no GPU - goes through Numba's own launch, so the simulator tests run the same kernels and
nothing is lost. ``XPNET_FAST_LAUNCH=0`` sends every launch to Numba.

A launch on the fast path is safe to capture in a CUDA graph: it neither synchronises nor
reads device memory nor allocates - except the first launch of a (kernel, device, argument
types), which compiles and loads a module: make it before capturing.

What a launch may not do: hand a kernel an array it would address wrongly. The callers
check shapes (see ``kernels.cuda``); here an array is typed C-contiguous only if its strides
say so (a kernel compiled for layout 'C' indexes by shape alone), and a plan refuses
arguments that do not match the types it was compiled for.
"""

from __future__ import annotations

import ctypes
import math
import operator
import os
import re
import struct
import threading
import warnings
from typing import NamedTuple

import numpy as np

__all__ = ["launch", "marshal", "numba_signature", "ptx_entry", "ptx_params", "format_mismatch",
           "LaunchPlan", "FastLauncher", "CupyDriver"]


def launch(kernel, grid, block, stream, *args):
    """Launch ``kernel`` with ``grid`` blocks of ``block`` threads on ``stream``."""
    fast = _fast_launcher()
    if fast is None or not fast.launch(kernel, grid, block, stream, args):
        kernel[grid, block, stream](*_numba_arguments(args))


# ---------------------------------------------------------------------------
# Reading the arguments: a type key and the flat values of Numba's kernel ABI
# ---------------------------------------------------------------------------
#
# A key part per argument:
#   ("A", dtype, ndim, layout, readonly)  an array; layout "C" (C-contiguous) or "A" (any)
#   ("T", (part, ...))                    a tuple
#   ("S", dtype)                          a scalar


class Marshalled(NamedTuple):
    """The arguments of one launch in Numba's kernel ABI."""

    key: tuple  # one key part per argument: what the kernel is compiled for
    format: str  # struct format of the flat parameters, one code per kernel parameter
    values: list  # the flat parameter values


def marshal(args) -> Marshalled:
    """The flat kernel parameters of ``args``; TypeError for an argument the fast path
    does not take (a host array, an object, a complex number)."""
    values: list = []
    key = _read_arguments(args, values)
    if key is None:
        bad = next(a for a in args if _read_arguments((a,), []) is None)
        raise TypeError(f"the fast launch path does not take {type(bad).__name__} {bad!r:.60}")
    return Marshalled(key, _format(key), values)


def _read_arguments(args, values):
    """The key of ``args`` (a tuple of key parts), their ABI values appended to ``values``;
    None if one argument cannot be read."""
    parts = []
    for a in args:
        reader = _READERS.get(type(a)) or _reader_for(a)
        part = reader(a, values)
        if part is None:
            return None
        parts.append(part)
    return tuple(parts)


def _c_layout(shape, strides, itemsize) -> bool:
    """Whether ``strides`` are those of a C-contiguous array of ``shape``."""
    step = itemsize
    for n, s in zip(reversed(shape), reversed(strides)):
        if s != step and n != 1:
            return False
        step *= n
    return True


def _array_part(values, dtype, shape, strides, size, ptr, readonly, c_contiguous):
    """Append one array's ABI values; return its key part."""
    values += (0, 0, size, dtype.itemsize, ptr, *shape, *strides)
    return ("A", dtype, len(shape), "C" if c_contiguous else "A", readonly)


def _read_cupy(a, values):
    """A CuPy array: its attributes, cheaper than building its array interface."""
    return _array_part(values, a.dtype, a.shape, a.strides, a.size, a.data.ptr, False,
                       a.flags.c_contiguous)


_DTYPES: dict = {}  # typestr -> np.dtype, so repeated launches skip np.dtype()


def _read_cuda_array_interface(a, values):
    """Any object with ``__cuda_array_interface__`` (Numba device arrays, stand-ins)."""
    cai = a.__cuda_array_interface__
    typestr = cai["typestr"]
    dtype = _DTYPES.get(typestr)
    if dtype is None:
        dtype = _DTYPES[typestr] = np.dtype(typestr)
    if cai.get("mask") is not None:
        return None
    shape = tuple(cai["shape"])
    strides = cai.get("strides")
    if strides is None:  # C-contiguous by the interface's definition
        strides = _c_strides(shape, dtype.itemsize)
        c_contiguous = True
    else:
        strides = tuple(strides)
        c_contiguous = _c_layout(shape, strides, dtype.itemsize)
    ptr, readonly = cai["data"]
    return _array_part(values, dtype, shape, strides, math.prod(shape), ptr, bool(readonly),
                       c_contiguous)


def _c_strides(shape, itemsize):
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _read_tuple(t, values):
    parts = _read_arguments(t, values)
    return None if parts is None else ("T", parts)


_INT64 = np.dtype(np.int64)
_FLOAT64 = np.dtype(np.float64)
_BOOL = np.dtype(np.bool_)


def _read_int(x, values):
    """A Python int, typed int64 as Numba types it; outside int64 Numba decides."""
    if not -(2**63) <= x < 2**63:
        return None
    values.append(x)
    return ("S", _INT64)


def _read_float(x, values):
    values.append(x)
    return ("S", _FLOAT64)


def _read_bool(x, values):
    values.append(x)
    return ("S", _BOOL)


def _read_numpy_scalar(x, values):
    dtype = x.dtype
    if dtype.kind not in _SCALAR_CODES:
        return None
    values.append(x)
    return ("S", dtype)


def _unsupported(a, values):
    return None


_READERS: dict = {int: _read_int, float: _read_float, bool: _read_bool, tuple: _read_tuple}


def _reader_for(a):
    """Choose (and remember, per type) how to read an argument of ``type(a)``."""
    from xpnet import backend

    if backend.is_gpu_array(a):
        reader = _read_cupy
    elif isinstance(a, np.generic):
        reader = _read_numpy_scalar
    elif hasattr(a, "__cuda_array_interface__"):  # Numba's device and mapped arrays too
        reader = _read_cuda_array_interface
    else:  # host arrays (the simulator's), objects: Numba's launch decides
        reader = _unsupported
    _READERS[type(a)] = reader
    return reader


# struct codes of the scalar parameters, by dtype kind and size (native alignment: the
# kernel parameter buffer is laid out like a C struct of these)
_SCALAR_CODES = {
    "b": {1: "?"},
    "i": {1: "b", 2: "h", 4: "i", 8: "q"},
    "u": {1: "B", 2: "H", 4: "I", 8: "Q"},
    "f": {2: "e", 4: "f", 8: "d"},
}


def _format(key) -> str:
    """The struct format of the flattened parameters of ``key``."""
    return "".join(map(_part_format, key))


def _part_format(part) -> str:
    if part[0] == "A":  # meminfo, parent: pointers; nitems, itemsize: intp; data: pointer
        ndim = part[2]
        return "QQqqQ" + "q" * (2 * ndim)
    if part[0] == "T":
        return _format(part[1])
    dtype = part[1]
    return _SCALAR_CODES[dtype.kind][dtype.itemsize]


def numba_signature(key) -> tuple:
    """The Numba argument types of ``key``: what ``compile_ptx`` compiles the kernel for."""
    return tuple(_numba_type(part) for part in key)


def _numba_type(part):
    from numba import types

    if part[0] == "A":
        _, dtype, ndim, layout, readonly = part
        return types.Array(_numba_scalar(dtype), ndim, layout, readonly=readonly)
    if part[0] == "T":
        return types.BaseTuple.from_types([_numba_type(p) for p in part[1]])
    return _numba_scalar(part[1])


def _numba_scalar(dtype):
    from numba import types

    if dtype.kind == "b":
        return types.boolean
    return getattr(types, dtype.name)  # int8 ... uint64, float16/32/64


def describe_mismatch(expected, got) -> str:
    """Say which argument of a launch differs from the types a plan was compiled for."""
    if len(expected) != len(got):
        return f"{len(got)} arguments, but the kernel was compiled for {len(expected)}"
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            return (f"argument {i} is {_numba_type(g)}, but the kernel was compiled for "
                    f"{_numba_type(e)}")
    return "no difference"


# ---------------------------------------------------------------------------
# PTX: the entry and its parameters
# ---------------------------------------------------------------------------

_ENTRY = re.compile(r"\.entry\s+([\w$.]+)\s*\(([^)]*)\)")
_PARAM = re.compile(r"\.param\s+(?:\.align\s+\d+\s+)?\.([a-z]+)(\d+)\s")
_EXTERN = re.compile(r"^\s*\.extern\s", re.MULTILINE)


def ptx_entry(ptx: str) -> tuple[str, list[tuple[str, int]]]:
    """The name of the one kernel entry of ``ptx`` and its parameters, each as (kind,
    bytes): kind ``u``/``s``/``b`` (integer bits) or ``f`` (floating), e.g. ("u", 8)."""
    entries = _ENTRY.findall(ptx)
    if len(entries) != 1:
        raise ValueError(f"expected one .entry in the PTX, found {len(entries)}")
    name, body = entries[0]
    return name, [(kind, int(bits) // 8) for kind, bits in _PARAM.findall(body)]


def ptx_params(ptx: str) -> list[tuple[str, int]]:
    """The parameters of the one kernel entry of ``ptx`` (see ``ptx_entry``)."""
    return ptx_entry(ptx)[1]


def format_mismatch(fmt: str, params) -> str | None:
    """None if the struct format ``fmt`` packs exactly the PTX ``params``, one code per
    parameter of the same width and kind (float16 travels as its 16 bits); else why not."""
    if len(fmt) != len(params):
        return f"{len(fmt)} packed values for {len(params)} kernel parameters"
    for i, (code, (kind, size)) in enumerate(zip(fmt, params)):
        width = struct.calcsize(code)
        floating = code in "fd"
        if width != size or floating != (kind == "f"):
            return (f"parameter {i}: packed as {code!r} ({width} bytes) but the PTX has "
                    f".{kind}{8 * size}")
    return None


# ---------------------------------------------------------------------------
# A compiled kernel for one argument key: pack and launch
# ---------------------------------------------------------------------------


class LaunchPlan:
    """One kernel compiled to PTX for one argument key, loaded on one device.

    ``pack(values)`` writes the flat values into this thread's parameter buffer and returns
    the address of the ``void*[]`` that ``cuLaunchKernel`` reads them through.
    """

    def __init__(self, key, fmt, function, params):
        self.key = key
        self.format = fmt
        self.function = function  # keeps the module loaded
        self.function_ptr = int(getattr(function, "ptr", 0))
        self._struct = struct.Struct("@" + fmt)
        self._offsets = _offsets(fmt)
        self._local = threading.local()
        self.params = params

    def pack(self, values) -> int:
        """Write ``values`` into this thread's buffer; the address of the pointer array."""
        try:
            buffer, address, _ = self._local.buffers
        except AttributeError:
            buffer, address, _ = self._local.buffers = self._new_buffers()
        self._struct.pack_into(buffer, 0, *values)
        return address

    def pack_checked(self, args) -> int:
        """``pack`` for arguments not yet read: refuses any that differ from this plan's
        types (a non-contiguous array where the kernel was compiled for layout 'C', another
        dtype or rank) with a TypeError naming it."""
        got = marshal(args)
        if got.key != self.key:
            raise TypeError(f"cannot launch: {describe_mismatch(self.key, got.key)}")
        return self.pack(got.values)

    def _new_buffers(self):
        """This thread's (parameter buffer, address of the pointer array or 0, the array)."""
        buffer = ctypes.create_string_buffer(max(self._struct.size, 1))
        base = ctypes.addressof(buffer)
        pointers = (ctypes.c_void_p * max(len(self._offsets), 1))(
            *[base + off for off in self._offsets])
        return buffer, ctypes.addressof(pointers) if self._offsets else 0, pointers


def _offsets(fmt: str) -> list[int]:
    """The byte offset of each value of a native struct of ``fmt`` (C alignment)."""
    return [struct.calcsize("@" + fmt[: i + 1]) - struct.calcsize(code)
            for i, code in enumerate(fmt)]


class _Refused(NamedTuple):
    """A (kernel, device, key) the fast path leaves to Numba, and why."""

    reason: str


# ---------------------------------------------------------------------------
# The fast launcher: plans by (kernel, device, key)
# ---------------------------------------------------------------------------


class FastLauncher:
    """Launches through cached PTX plans on a ``driver``.

    ``driver`` has ``device()`` (the current device's id), ``compute_capability()``,
    ``load(ptx, entry)`` (a function object with ``.ptr``) and
    ``launch_kernel(function_ptr, grid, block, stream_ptr, params_ptr)``; the real one is
    ``CupyDriver``, tests pass fakes. ``compiles`` counts PTX compilations.
    """

    def __init__(self, driver):
        self.driver = driver
        self.compiles = 0
        self._plans: dict = {}
        self._lock = threading.Lock()

    def launch(self, kernel, grid, block, stream, args) -> bool:
        """Launch and return True, or return False (nothing done) to leave it to Numba."""
        values: list = []
        key = _read_arguments(args, values)
        grid3, block3, stream_ptr = _dims(grid), _dims(block), _stream_ptr(stream)
        if key is None or grid3 is None or block3 is None or stream_ptr is None:
            return False
        plan = self._plans.get((kernel, self.driver.device(), key)) or self._plan(kernel, key)
        if type(plan) is _Refused:
            return False
        self.driver.launch_kernel(plan.function_ptr, grid3, block3, stream_ptr,
                                  plan.pack(values))
        return True

    def plan(self, kernel, args):
        """The plan (or the refusal) for launching ``kernel`` on ``args`` here."""
        return self._plan(kernel, marshal(args).key)

    def _plan(self, kernel, key):
        device = self.driver.device()
        with self._lock:  # one compilation per key, whichever thread asks first
            plan = self._plans.get((kernel, device, key))
            if plan is None:
                plan = self._plans[kernel, device, key] = self._build(kernel, key)
        return plan

    def _build(self, kernel, key):
        reason = _unsupported_kernel(kernel)
        if reason:
            return _Refused(reason)
        fmt = _format(key)
        name = getattr(kernel, "__name__", "kernel")
        try:
            ptx = self._compile(kernel, key)
        except Exception as exc:
            reason = f"compile_ptx failed: {type(exc).__name__}: {exc}"
            if _is_numba_error(exc):  # e.g. a typing error: Numba's own launch reports it
                return _Refused(reason)
            return _refuse(name, reason)
        if _EXTERN.search(ptx):  # known and documented: no warning
            return _Refused("its PTX calls external functions Numba links in (e.g. float16 "
                            "arithmetic)")
        entry, params = ptx_entry(ptx)
        mismatch = format_mismatch(fmt, params)
        if mismatch:
            return _refuse(name, f"the packed arguments do not match its PTX: {mismatch}")
        try:
            function = self.driver.load(ptx, entry)
        except Exception as exc:  # e.g. a driver older than the PTX version
            return _refuse(name, f"loading its PTX failed: {type(exc).__name__}: {exc}")
        return LaunchPlan(key, fmt, function, params)

    def _compile(self, kernel, key) -> str:
        from numba import cuda

        self.compiles += 1
        options = {k: v for k, v in kernel.targetoptions.items()
                   if k in _COMPILE_OPTIONS and v != _COMPILE_OPTIONS[k]}
        ptx, _ = cuda.compile_ptx(kernel.py_func, numba_signature(key),
                                  cc=self.driver.compute_capability(), **options)
        return ptx


# options of a kernel that compile_ptx reproduces, with their defaults
_COMPILE_OPTIONS = {"fastmath": False, "lineinfo": False, "opt": True, "launch_bounds": None,
                    "forceinline": False}
# options whose effect compile_ptx alone would lose, with the value that has no effect
_NUMBA_ONLY_OPTIONS = {"debug": False, "link": (), "extensions": (), "lto": False,
                       "shared_memory_carveout": None}


def _unsupported_kernel(kernel) -> str | None:
    """Why ``kernel`` cannot take the fast path, or None."""
    options = getattr(kernel, "targetoptions", None)
    if options is None or not hasattr(kernel, "py_func"):
        return "not a @cuda.jit dispatcher"
    if not getattr(kernel, "_can_compile", True):
        return "compiled for declared signatures only"
    for name, neutral in _NUMBA_ONLY_OPTIONS.items():
        value = options.get(name, neutral)
        if value and value != neutral:
            return f"compiled with {name}={value!r}"
    return None


def _is_numba_error(exc) -> bool:
    """Whether ``exc`` is one of Numba's compilation errors (numba-cuda has its own
    copies of Numba's error classes, so they are recognised by name)."""
    return any(cls.__name__ == "NumbaError" for cls in type(exc).__mro__)


def _refuse(name, reason):
    """Leave a kernel to Numba for an unexpected reason, saying so once: it still runs,
    only slower to launch."""
    warnings.warn(f"{name} is launched by Numba, not the fast path: {reason}",
                  RuntimeWarning, stacklevel=4)
    return _Refused(reason)


def _dims(d):
    """A launch dimension as (x, y, z) of positive ints, or None (Numba then explains)."""
    if type(d) is int:
        return (d, 1, 1) if d > 0 else None
    try:  # integers only, as Numba requires (operator.index refuses "8" and 8.0)
        dims = tuple(map(operator.index, d if isinstance(d, (tuple, list)) else (d,)))
    except TypeError:
        return None
    if not 1 <= len(dims) <= 3 or min(dims) <= 0:
        return None
    return dims + (1,) * (3 - len(dims))


def _stream_ptr(stream):
    """The CUstream handle of ``stream``: 0 (the default stream), a Numba stream (its
    handle) or a CuPy stream (``.ptr``); None for anything else."""
    if stream is None or (type(stream) is int and stream == 0):
        return 0
    ptr = getattr(stream, "ptr", None)  # CuPy
    if ptr is None:
        handle = getattr(stream, "handle", None)  # Numba: a CUstream (or a ctypes pointer)
        if handle is None:
            return None
        ptr = getattr(handle, "value", handle)
    try:
        return int(ptr or 0)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------
# The real driver (CuPy) and Numba's launch
# ---------------------------------------------------------------------------


class CupyDriver:
    """Loads PTX into CuPy modules and launches with ``cuLaunchKernel`` through CuPy."""

    def __init__(self, cp):
        self._cp = cp
        self.device = cp.cuda.runtime.getDevice
        self._launch = cp.cuda.driver.launchKernel
        self._ccs: dict = {}

    def compute_capability(self):
        device = self.device()
        cc = self._ccs.get(device)
        if cc is None:  # CuPy spells it "90" for 9.0
            digits = self._cp.cuda.Device(device).compute_capability
            cc = self._ccs[device] = (int(digits[:-1]), int(digits[-1]))
        return cc

    def load(self, ptx: str, entry: str):
        module = self._cp.cuda.function.Module()
        module.load(ptx.encode())  # the driver JIT-compiles PTX text for this device
        return module.get_function(entry)  # keeps its module alive

    def launch_kernel(self, function_ptr, grid, block, stream_ptr, params_ptr):
        self._launch(function_ptr, *grid, *block, 0, stream_ptr, params_ptr, 0)


_fast = None
_fast_checked = False


def _fast_launcher():
    """The process's FastLauncher on CuPy, or None where launches go to Numba."""
    global _fast, _fast_checked
    if not _fast_checked:
        _fast, _fast_checked = _make_fast_launcher(), True
    return _fast


def _make_fast_launcher():
    if os.environ.get("XPNET_FAST_LAUNCH", "1") == "0":
        return None
    from numba import config

    if config.ENABLE_CUDASIM:
        return None
    from xpnet import backend

    if not backend.gpu_available():
        return None
    return FastLauncher(CupyDriver(backend.require_gpu()))


def _numba_arguments(args):
    """``args`` for Numba's launch: foreign device arrays (CuPy) become Numba views made
    without a host synchronisation (Numba would otherwise wait for the array's stream; the
    launch is on that stream anyway, so stream order protects the data)."""
    return tuple(_numba_argument(a) for a in args)


def _numba_argument(a):
    if type(a) is tuple:
        return _numba_arguments(a)
    if hasattr(a, "__cuda_array_interface__") and not hasattr(a, "_numba_type_"):
        from numba import cuda

        return cuda.as_cuda_array(a, sync=False)
    return a
