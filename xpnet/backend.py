"""The array backend: NumPy on the CPU, CuPy on an NVIDIA GPU.

This is the only module that imports ``cupy``. Everything else asks for the
namespace of the arrays it is given (``xp = get_array_module(x)``), so the same
layer code runs on either device.

    >>> xp = get_array_module(x)        # numpy or cupy
    >>> y = to_device(x, "gpu")         # fails with one clear sentence if no GPU
    >>> rng = get_rng(xp)               # the seeded random source of that backend
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

try:  # CuPy is optional: without it everything runs on NumPy.
    import cupy as _cupy
except Exception as _exc:  # ImportError, or a CuPy build that fails to load its CUDA libraries
    _cupy = None
    _cupy_import_error: Exception | None = _exc
else:
    _cupy_import_error = None

DEVICES = ("cpu", "gpu")

_default_dtype = np.dtype(np.float32)


class DeviceError(RuntimeError):
    """The GPU was asked for but cannot be used, or arrays of two devices were mixed."""


# ---------------------------------------------------------------------------
# Which device is there
# ---------------------------------------------------------------------------


def gpu_unavailable_reason() -> str | None:
    """Say in one sentence why the GPU cannot be used, or return None if it can."""
    if _cupy is None:
        return (
            "CuPy is not installed (or failed to import: "
            f"{_cupy_import_error}); in the xpnet checkout, install it with "
            "`pip install -e '.[gpu]'` (CUDA 12; `.[gpu-cuda13]` for CUDA 13) to use the GPU."
        )
    try:
        count = _cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, or a driver older than the runtime
        return (
            f"CuPy is installed but no CUDA driver could be used ({exc}); install the NVIDIA "
            "driver that matches your CuPy wheel (cupy-cuda12x or cupy-cuda13x)."
        )
    if count == 0:
        return (
            "CuPy and a CUDA driver are present but no GPU is visible; check nvidia-smi "
            "and CUDA_VISIBLE_DEVICES."
        )
    return None


def gpu_available() -> bool:
    return gpu_unavailable_reason() is None


_gpu_checked = None  # the cupy module once it was found usable: later calls skip the check


def require_gpu():
    """Return the ``cupy`` module, or raise DeviceError saying what is missing."""
    global _gpu_checked
    if _cupy is not None and _gpu_checked is _cupy:  # called per kernel launch: stay cheap
        return _cupy
    reason = gpu_unavailable_reason()
    if reason is not None:
        raise DeviceError(f"device 'gpu' was asked for, but {reason}")
    _gpu_checked = _cupy
    return _cupy


def check_device(device: str) -> str:
    """Normalise a device name (``'cpu'``, ``'gpu'``, ``'cuda'``) and check that it can be used."""
    name = str(device).lower()
    if name == "cuda":
        name = "gpu"
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {DEVICES}")
    if name == "gpu":
        require_gpu()
    return name


# ---------------------------------------------------------------------------
# Arrays and their namespace
# ---------------------------------------------------------------------------


def is_gpu_array(x) -> bool:
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def device_of(x) -> str:
    """``'gpu'`` for a CuPy array, ``'cpu'`` for anything else."""
    return "gpu" if is_gpu_array(x) else "cpu"


def get_array_module(*arrays):
    """The array namespace (``numpy`` or ``cupy``) of the arrays given.

    Raises DeviceError if CPU and GPU arrays are mixed: xpnet never copies
    silently between devices.
    """
    devices = {device_of(a) for a in arrays if a is not None and hasattr(a, "shape")}
    if len(devices) > 1:
        raise DeviceError(
            "arrays on two devices were mixed in one call (cpu and gpu); move them to the "
            "same device first, e.g. model.to('gpu') and xpnet.backend.to_device(x, 'gpu')"
        )
    return _cupy if devices == {"gpu"} else np


def namespace(device: str):
    """The array namespace of a device name."""
    return require_gpu() if check_device(device) == "gpu" else np


def as_numpy(x):
    """A NumPy array of ``x`` (copied to the host if it is on the GPU)."""
    if is_gpu_array(x):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def as_cupy(x):
    """A CuPy array of ``x`` (copied to the GPU if it is on the host)."""
    cp = require_gpu()
    return cp.asarray(x)


def to_device(x, device: str):
    """``x`` on ``device`` (``'cpu'`` or ``'gpu'``); no copy when it is already there."""
    return as_cupy(x) if check_device(device) == "gpu" else as_numpy(x)


def to_scalar(x) -> float:
    """A Python float of a 0-d array on either device (one small transfer on the GPU)."""
    return float(x.item()) if hasattr(x, "item") else float(x)


# ---------------------------------------------------------------------------
# dtype
# ---------------------------------------------------------------------------


def get_default_dtype() -> np.dtype:
    """The dtype networks built by xpnet use unless told otherwise (float32)."""
    return _default_dtype


def set_default_dtype(dtype) -> None:
    global _default_dtype
    _default_dtype = check_float_dtype(dtype)


def check_float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"a floating dtype (float16, float32 or float64) was expected, got {dt}")
    return dt


# ---------------------------------------------------------------------------
# Random numbers: one seeded source per backend
# ---------------------------------------------------------------------------

_seed: int | None = None
_rngs: dict = {}


def seed(value: int | None) -> None:
    """Seed xpnet's random sources on every backend (initialization, Dropout, mini-batches)."""
    global _seed, _gpu_reseeds, _gpu_last_seed
    _seed = None if value is None else int(value)
    _gpu_reseeds, _gpu_last_seed = 0, None
    _rngs.clear()


_scope = threading.local()


@contextlib.contextmanager
def rng_scope(streams):
    """Within the block, in this thread only, ``get_rng(xp)`` returns ``streams(xp)``.

    ``streams``: a callable ``xp -> Generator``. The Trainer runs each step in such a scope,
    so what the step draws (Dropout masks) is a function of its seed and the step alone,
    not of a process-global state another thread or an earlier call may have moved on.
    """
    previous = getattr(_scope, "streams", None)
    _scope.streams = streams
    try:
        yield
    finally:
        _scope.streams = previous


@contextlib.contextmanager
def device_step_scope(values):
    """Within the block, in this thread only, ``device_step_values(xp)`` returns ``values``.

    ``values``: an int64 array ``[seed, step]`` of shape (2,) on the device, which the Trainer
    updates in place before each step. GPU Dropout reads seed and step from it *on the
    device*, so a captured CUDA graph draws fresh, reproducible masks on every replay. Enter
    one scope per step: the draws of a step are numbered from 0 (``next_device_draw``), in
    the order the layers draw, the same every step.
    """
    if tuple(getattr(values, "shape", ())) != (2,) or values.dtype != np.int64:
        raise ValueError("device_step_scope takes an int64 array [seed, step] of shape (2,), "
                         f"got {getattr(values, 'dtype', type(values).__name__)} of shape "
                         f"{getattr(values, 'shape', None)}")
    previous = getattr(_scope, "device_step", None)
    _scope.device_step = [values, 0]  # the array, and the number of draws made from it
    try:
        yield values
    finally:
        _scope.device_step = previous


def device_step_values(xp):
    """The ``[seed, step]`` array of this thread's ``device_step_scope`` if it lives on
    backend ``xp``, else None (no Trainer step running: draw through ``get_rng(xp)``)."""
    scoped = getattr(_scope, "device_step", None)
    if scoped is None or get_array_module(scoped[0]) is not xp:
        return None
    return scoped[0]


def next_device_draw() -> int:
    """The index of the next counter-based draw in this thread's ``device_step_scope``
    (0, 1, ... within a step), and count it as made."""
    scoped = getattr(_scope, "device_step", None)
    if scoped is None:
        raise RuntimeError("next_device_draw() was called outside a device_step_scope")
    draw = scoped[1]
    scoped[1] += 1
    return draw


@contextlib.contextmanager
def random_source(source, xp=np):
    """Within the block, in every thread, ``get_rng(xp)`` returns ``source``; afterwards the
    generator that was there (or a fresh one from the seed) comes back.

    ``source``: an object with the Generator methods xpnet draws with (``standard_normal``,
    ``random``, ``integers``). ``xpnet book`` installs NumPy's global ``np.random`` this way,
    so a seeded book script draws what the book's draws. A Trainer's step scope
    (:func:`rng_scope`) still takes precedence inside its steps.
    """
    key = xp.__name__
    saved = _rngs.get(key)
    _rngs[key] = source
    try:
        yield source
    finally:
        if saved is None:
            _rngs.pop(key, None)
        else:
            _rngs[key] = saved


def get_rng(xp=np):
    """The random Generator of a backend: ``numpy.random.Generator`` or ``cupy.random.Generator``.

    Both offer ``standard_normal(size, dtype)``, ``random(size, dtype)`` and
    ``integers(low, high, size)``, so callers draw on the device they compute on.
    """
    scoped = getattr(_scope, "streams", None)
    if scoped is not None:  # a Trainer's step in this thread: its own (seed, step) stream
        return scoped(xp)
    key = xp.__name__
    rng = _rngs.get(key)
    if rng is None:
        rng = xp.random.default_rng(_seed)
        _rngs[key] = rng
    return rng


def get_rng_state(xp=np) -> dict:
    """The state of a backend's generator, as plain data (for checkpoints).

    NumPy: the bit generator's state dict. CuPy's generators keep their state on the device
    and cannot be pickled, so the GPU uses a reseeding scheme instead: each call derives a
    fresh 64-bit seed on the host - from the previous such seed, or at first from xpnet's
    seed (unseeded: entropy drawn once) - reseeds the device generator with it and returns
    ``{"scheme": "reseed", "seed": s, "counter": k}``. ``set_rng_state`` reseeds with the
    same ``s``, so a run resumed from a checkpoint draws exactly what the original run drew
    after writing it, and its later checkpoints derive the same seeds. Taking the state
    therefore moves the GPU stream on: a run that saves checkpoints draws different numbers
    from one that does not - each reproducibly.
    """
    rng = get_rng(xp)
    if xp is np:
        return rng.bit_generator.state
    global _gpu_reseeds, _gpu_last_seed
    _gpu_reseeds += 1
    _gpu_last_seed = _derive_gpu_seed(_gpu_reseeds)
    _rngs[xp.__name__] = xp.random.default_rng(_gpu_last_seed)
    return {"scheme": "reseed", "seed": _gpu_last_seed, "counter": _gpu_reseeds}


def set_rng_state(state: dict, xp=np) -> None:
    """Restore a state taken by ``get_rng_state`` on the same backend."""
    if xp is np:
        get_rng(np).bit_generator.state = state
        return
    if not isinstance(state, dict) or state.get("scheme") != "reseed":
        raise ValueError(
            "a GPU random state must be a dict taken by get_rng_state(cupy) "
            f"({{'scheme': 'reseed', 'seed': ..., 'counter': ...}}), got {state!r}"
        )
    global _gpu_reseeds, _gpu_last_seed
    _gpu_reseeds = int(state["counter"])
    _gpu_last_seed = int(state["seed"])
    _rngs[xp.__name__] = xp.random.default_rng(_gpu_last_seed)


_gpu_reseeds = 0
_gpu_last_seed: int | None = None


def _derive_gpu_seed(counter: int) -> int:
    """A 64-bit seed for the device generator, hashed from the previous one and ``counter``."""
    if _gpu_last_seed is not None:
        entropy = _gpu_last_seed
    elif _seed is not None:
        entropy = _seed
    else:  # unseeded: fresh entropy
        entropy = np.random.SeedSequence().entropy
    words = np.random.SeedSequence(entropy, spawn_key=(counter,)).generate_state(2, np.uint32)
    return int(words[0]) | (int(words[1]) << 32)


# ---------------------------------------------------------------------------
# GPU odds and ends used by the kernels and the trainer
# ---------------------------------------------------------------------------


def current_stream_ptr() -> int:
    """The raw pointer of CuPy's current CUDA stream (0 for the legacy default stream).

    ``kernels.cuda`` launches its Numba kernels on it, so they run in order with the CuPy
    work around them and nothing waits on the host.
    """
    return int(require_gpu().cuda.get_current_stream().ptr)


class GPUOutOfMemoryError(DeviceError, MemoryError):
    """The GPU ran out of memory; the message suggests a smaller batch."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is CuPy's out-of-memory error."""
    if _cupy is None:
        return False
    oom = getattr(getattr(getattr(_cupy, "cuda", None), "memory", None), "OutOfMemoryError", None)
    return oom is not None and isinstance(exc, oom)


@contextlib.contextmanager
def gpu_memory_hint(batch_size: int | None = None):
    """Turn CuPy's out-of-memory error into one that says what to do about it.

        with gpu_memory_hint(batch_size=mini_batch_size):
            grads = network.gradient(x_batch, t_batch)

    Raises GPUOutOfMemoryError (a DeviceError and a MemoryError) chained to CuPy's error.
    """
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        at = f" at batch size {batch_size}" if batch_size is not None else ""
        smaller = f" (e.g. {max(1, batch_size // 2)})" if batch_size else ""
        raise GPUOutOfMemoryError(
            f"the GPU ran out of memory{at} ({exc}); try a smaller batch size{smaller}, "
            "or free other GPU memory (cupy.get_default_memory_pool().free_all_blocks())"
        ) from exc
