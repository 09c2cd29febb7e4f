"""CUDA graphs for the training step: capture a step once, replay it every step.

On the GPU a training step is a few hundred small kernels, each launched from Python; at
the book's batch sizes the host's launching, not the GPU, sets the step's time. A CUDA
graph records the whole step -- the batch gather from the device-resident data set,
forward, backward, optimizer update, the loss into a device ring -- once, and replays it
with one launch per step. The :class:`xpnet.trainer.Trainer` does this on the GPU by
default (``Trainer(cuda_graphs=False)``, ``xpnet train --no-cuda-graphs`` turn it off).

How a step becomes replayable (docs/gpu.md, "CUDA graphs"):

- whatever changes from step to step comes from device memory, written before each step
  by one asynchronous host-to-device copy of a small pinned buffer (:class:`StepInputs`):
  the mini-batch indices (drawn on the host from the trainer's step streams, as on the
  CPU, so CPU, eager GPU and graph runs train on the same batches), ``[seed, step]`` (the
  ``step_values`` that GPU Dropout reads, interface of ``backend.device_step_scope``) and
  the slot of the loss ring the step writes;
- a step is captured only after an eager step of the same key (kernels compiled, cuBLAS
  handle, optimizer state and memory pool warm), on a private stream and a private memory
  pool that the graph keeps for its life, so no eager array ever gets memory a replay
  writes;
- what a replay cannot do, the host does after the launch (:func:`advance_host_state`:
  Adam's host ``iter``), and a capture leaves the host state as it found it;
- what cannot be captured falls back to eager steps of the same inputs, for a reason that
  :func:`graph_fallback_reason` (for the run) or :meth:`DeviceSteps.step` (for one step)
  states and the trainer's ``history`` records.

Nothing here imports CuPy: :mod:`xpnet.backend` hands it over, and the pieces that do not
need a GPU (the decisions, the step inputs, the replay bookkeeping, the cuBLAS argument
plan) run on NumPy in the tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading

import numpy as np

from xpnet import backend, layers, optimizers

__all__ = [
    "CaptureError",
    "DeviceSteps",
    "GraphStep",
    "StepInputs",
    "advance_host_state",
    "gemm_plan",
    "graph_fallback_reason",
    "graph_safe",
]

#: Captures a run makes freely (a new graph each time hyperparameters or parameter arrays
#: change); beyond them, only while each capture has been replayed REPLAYS_PER_CAPTURE times
#: on average (an lr schedule per epoch captures on; an lr changed every step gives up).
MAX_CAPTURES = 4
REPLAYS_PER_CAPTURE = 50

# Layers whose GPU path only launches kernels on the current stream, reads no device value
# on the host, allocates from CuPy's pool and depends on no host value that changes from
# step to step (Python scalars fixed for the run are frozen into the graph, which is right).
# Exact classes: a subclass may change forward/backward, so it must declare itself.
_SAFE_LAYERS = frozenset({
    layers.Affine, layers.Relu, layers.Sigmoid, layers.SoftmaxWithLoss,
    layers.BatchNormalization, layers.Convolution, layers.Pooling,
})

# Optimizers that update every array in place from Python scalars fixed for the run
# (hyperparameters: part of the graph's key). Adam also needs its step count on the device.
_SAFE_OPTIMIZERS = frozenset({
    optimizers.SGD, optimizers.Momentum, optimizers.Nesterov, optimizers.AdaGrad,
    optimizers.RMSprop,
})


class CaptureError(RuntimeError):
    """A step could not be captured; the message says what refused."""


# ---------------------------------------------------------------------------
# Which runs can be captured
# ---------------------------------------------------------------------------


def graph_safe(obj) -> bool:
    """Whether a layer or an optimizer has a graph-safe GPU path.

    A class may declare it with ``cuda_graph_safe = True`` (or False) in its own body: a
    user's layer or a subclass is unsafe until it says otherwise, since capture replays
    only its kernels, never its Python. Dropout is safe when it draws from the step's
    device values (no ``rng`` of its own, and ``backend.device_step_values`` there to
    read them); Adam when it keeps its step count on the device (``sync_device_iter``).
    """
    cls = type(obj)
    declared = cls.__dict__.get("cuda_graph_safe")
    if declared is not None:
        return bool(declared)
    if cls is layers.Dropout:
        return obj.rng is None and hasattr(backend, "device_step_values")
    if cls is optimizers.Adam:
        return hasattr(cls, "sync_device_iter")
    return cls in _SAFE_LAYERS or cls in _SAFE_OPTIMIZERS


def _layer_reason(network) -> str | None:
    all_layers = getattr(network, "_all_layers", None)
    if all_layers is None:
        return (f"{type(network).__name__} is not an xpnet.models.Network, so its layers "
                "cannot be checked for a graph-safe GPU path")
    unsafe = sorted({type(layer).__name__ for layer in all_layers()
                     if layer is not None and not graph_safe(layer)})
    if not unsafe:
        return None
    detail = ""
    if "Dropout" in unsafe:
        detail = (" (a Dropout with its own rng draws its masks on the host, or this build "
                  "has no device-side Dropout draws)")
    return (f"layer {', '.join(unsafe)} has no graph-safe GPU path{detail}; "
            "set cuda_graph_safe = True on a layer class whose GPU path is")


def graph_fallback_reason(trainer) -> str | None:
    """Why ``trainer``'s steps cannot be captured as CUDA graphs, or None if they can.

    The reasons of the run as a whole, in order: not on the GPU, turned off, data-parallel
    (gradients are averaged through the host), a layer or the optimizer without a graph-safe
    GPU path (:func:`graph_safe`). A step of another batch size runs eagerly too (decided per
    step by :class:`DeviceSteps`); changed hyperparameters make a new capture instead.
    """
    if trainer.device != "gpu":
        return "training runs on the CPU"
    if not trainer.cuda_graphs:
        return "turned off (cuda_graphs=False, --no-cuda-graphs)"
    if trainer.communicator is not None:
        return "data-parallel training averages gradients through the host every step"
    if getattr(trainer, "augment", None) is not None:
        return "data augmentation draws each step's moves on the host"
    reason = _layer_reason(trainer.network)
    if reason is not None:
        return reason
    if not graph_safe(trainer.optimizer):
        name = type(trainer.optimizer).__name__
        return (f"optimizer {name} has no graph-safe GPU path (its update reads a host value "
                "that changes every step, or it is not one of xpnet's)")
    return None


def state_arrays(trainer) -> list:
    """The arrays a step reads and writes in place: parameters and optimizer state."""
    opt = trainer.optimizer
    arrays = list(trainer.network.params.values())
    for slot in getattr(opt, "slots", ()):
        arrays.extend((getattr(opt, slot, None) or {}).values())
    return arrays


def graph_key(trainer, batch_size: int, arrays: list) -> tuple:
    """What a graph froze: batch size, hyperparameters, and which ``arrays``
    (:func:`state_arrays`) it reads and writes, by identity -- whoever holds the key holds
    the arrays too, so an identity is never reused. Another key: another graph."""
    opt = trainer.optimizer
    return (batch_size, tuple(getattr(opt, h) for h in getattr(opt, "hyperparams", ())),
            tuple(map(id, arrays)))


# ---------------------------------------------------------------------------
# What changes every step: one device buffer, one copy
# ---------------------------------------------------------------------------


class StepInputs:
    """The per-step values in one device int64 buffer ``[seed, step, slot, idx...]``.

    ``stage(seed, step, slot, indices)`` writes them into one of a few pinned host slots and
    copies that slot to the device asynchronously on the current stream: one transfer per
    step, no wait. A host slot is reused only after its copy has finished (its event), so
    the host never overwrites values the device has not read yet. Views of the buffer:
    ``step_values`` (2,) ``[seed, step]``, ``slot`` (1,), ``indices`` (batch_size,).

    On NumPy (the tests' twin) the copy is a plain assignment.
    """

    HOST_SLOTS = 4

    def __init__(self, xp, batch_size: int):
        self.xp = xp
        self.batch_size = batch_size
        n = 3 + batch_size
        self.device = xp.zeros(n, dtype=np.int64)
        self.step_values, self.slot, self.indices = _views(self.device)
        if xp is np:
            self._host = [np.zeros(n, dtype=np.int64) for _ in range(self.HOST_SLOTS)]
        else:  # page-locked, so the copy is truly asynchronous
            self._host = [_pinned_int64(xp, n) for _ in range(self.HOST_SLOTS)]
        self._events = [None] * self.HOST_SLOTS
        self._next = 0

    def stage(self, seed: int, step: int, slot: int, indices) -> StepInputs:
        if len(indices) != self.batch_size:
            raise ValueError(f"StepInputs holds batches of {self.batch_size} samples, got "
                             f"{len(indices)}")
        j = self._next
        self._next = (j + 1) % self.HOST_SLOTS
        host = self._host[j]
        if self._events[j] is not None:
            self._events[j].synchronize()  # returns at once unless the GPU is steps behind
        host[:3] = _header(seed, step, slot)
        host[3:] = indices
        if self.xp is np:
            self.device[...] = host
            return self
        stream = self.xp.cuda.get_current_stream()
        self.device.set(host, stream=stream)
        self._events[j] = stream.record(self._events[j])
        return self


def _header(seed: int, step: int, slot: int) -> np.ndarray:
    """``[seed, step, slot]`` as int64; the seed's low 64 bits, two's complement (any seed is
    a non-negative integer; the device reads 64 bits of it)."""
    words = np.array([seed & 0xFFFF_FFFF_FFFF_FFFF, step, slot], dtype=np.uint64)
    return words.view(np.int64)


def _views(device):
    """``(step_values, slot, indices)``: the views of a ``[seed, step, slot, idx...]`` buffer."""
    return device[:2], device[2:3], device[3:]


def _pinned_int64(cp, n: int) -> np.ndarray:
    """A NumPy int64 array of ``n`` entries in page-locked host memory (kept alive by it)."""
    return np.ndarray((n,), dtype=np.int64, buffer=cp.cuda.alloc_pinned_memory(n * 8))


# ---------------------------------------------------------------------------
# Host state a replay does not touch
# ---------------------------------------------------------------------------


# Adam's step count on the host, and its record of what the device's count holds: the
# update compares the two and refills the device's where they differ, so a replay must
# advance both, and a capture must leave both as they were (else a fill is captured).
_HOST_COUNTERS = ("iter", "_device_iter")


def _host_state(optimizer) -> dict:
    """The host-side counters an eager update advances (Adam's ``iter``)."""
    return {name: value for name in _HOST_COUNTERS
            if (value := getattr(optimizer, name, None)) is not None}


def _restore_host_state(optimizer, state: dict) -> None:
    for name, value in state.items():
        setattr(optimizer, name, value)


def advance_host_state(optimizer) -> None:
    """After a replay: what the eager update would have advanced on the host. A replay
    runs only kernels (Adam's device step count moves inside the graph)."""
    for name in _HOST_COUNTERS:
        if getattr(optimizer, name, None) is not None:
            setattr(optimizer, name, getattr(optimizer, name) + 1)


# ---------------------------------------------------------------------------
# One captured step
# ---------------------------------------------------------------------------


class GraphStep:
    """A captured training step for one key (:func:`graph_key`).

    ``capture(body, capturer, optimizer)`` runs ``body()`` (the step: gather, gradient,
    update, loss into the ring) under capture -- nothing executes -- and puts the host state
    back as it was, so the first replay is the step's one execution. ``replay()`` launches
    it and advances the host state as an eager step would.
    """

    def __init__(self, key, graph, optimizer, keep):
        self.key = key  # key[-1] names the arrays that ``keep`` holds
        self.graph = graph
        self.optimizer = optimizer
        self._keep = keep  # the memory pool and arrays the graph reads and writes

    @classmethod
    def capture(cls, key, body, capturer, optimizer, arrays) -> GraphStep:
        saved = _host_state(optimizer)
        try:
            graph, keep = capturer.capture(body)
        finally:
            _restore_host_state(optimizer, saved)
        return cls(key, graph, optimizer, (keep, arrays))

    def replay(self) -> None:
        self.graph.launch()
        advance_host_state(self.optimizer)


class DeviceSteps:
    """Every GPU step of a :class:`~xpnet.trainer.Trainer`: stage the step's inputs, then
    replay the captured step or, where that is impossible, run it eagerly -- the same body
    on the same device inputs, so both give the same parameters.

    ``body(indices)`` is the trainer's step on device indices (gather, gradient, update),
    returning the loss (a 0-d device array). ``capturer`` makes graphs (None: never).
    """

    def __init__(self, trainer, body, capturer, ring_size: int):
        self.trainer = trainer
        self.body = body
        self.capturer = capturer
        xp = trainer.xp
        self.inputs = StepInputs(xp, trainer.batch_size)
        self.ring = xp.zeros(ring_size, dtype=getattr(trainer.network, "dtype", np.float32))
        self.reason = graph_fallback_reason(trainer)  # of the run; None: capture
        if self.reason is not None and trainer.cuda_graphs:
            self._say_eager()
        self.graph: GraphStep | None = None
        self.captures = 0
        self.graph_steps = 0
        self.eager_steps = 0
        self._warm_key = None  # the key of the last eager step, which warmed a capture
        self._warm_arrays: list = []  # held with the key, so that its identities stay valid
        self._step_reasons: dict[str, int] = {}
        if capturer is not None:  # the ring's write kernel, compiled and loaded before capture
            xp.put(self.ring, self.inputs.slot, self.ring[0])

    def step(self, step: int, indices, slot: int):
        """Run training step ``step`` on the host-drawn ``indices``; its loss goes to ring
        entry ``slot`` on a replay. Returns the loss (a 0-d device array)."""
        seed = self.trainer.seed
        if not 0 <= slot < len(self.ring):  # the trainer reads losses back before that
            raise ValueError(f"loss ring slot {slot} is outside the ring of {len(self.ring)}")
        if len(indices) != self.inputs.batch_size:  # e.g. an overridden draw's short batch
            self._eager_because(f"a batch of {len(indices)} samples is not the captured "
                                f"{self.inputs.batch_size}")
            return self._eager(_OddBatchInputs(self.trainer.xp, seed, step, indices))
        inputs = self.inputs.stage(seed, step, slot, indices)
        graph = self._graph()
        if graph is None:
            return self._eager(inputs)
        graph.replay()  # kernels only: the step's values are in inputs.device already
        self.graph_steps += 1
        return self.ring[slot]

    def _eager(self, inputs):
        with _device_step_scope(inputs.step_values):
            loss = self.body(inputs.indices)
        self.eager_steps += 1
        if self.reason is None and self.capturer is not None:
            self._warm_arrays = state_arrays(self.trainer)
            self._warm_key = graph_key(self.trainer, len(inputs.indices), self._warm_arrays)
        return loss

    def _eager_because(self, reason: str) -> None:
        self._step_reasons[reason] = self._step_reasons.get(reason, 0) + 1

    def _graph(self) -> GraphStep | None:
        """The graph for this step: the current one, a new capture once an eager step of
        this key has warmed everything up, or None (eager)."""
        if self.reason is not None or self.capturer is None:
            return None
        arrays = state_arrays(self.trainer)
        key = graph_key(self.trainer, self.inputs.batch_size, arrays)
        if self.graph is not None and self.graph.key == key:
            return self.graph
        self.graph = None  # its key is gone: hyperparameters or arrays changed
        if key != self._warm_key:
            return None  # warm up first
        if self.captures >= MAX_CAPTURES and \
                self.graph_steps < REPLAYS_PER_CAPTURE * self.captures:
            self.reason = (f"captured {self.captures} times for {self.graph_steps} replays: "
                           "the hyperparameters or parameter arrays keep changing")
            self._say_eager()
            return None
        self.captures += 1
        try:
            self.graph = GraphStep.capture(key, self._captured_body, self.capturer,
                                           self.trainer.optimizer, arrays)
        except CaptureError as exc:
            self.reason = f"the step could not be captured: {exc}"
            self._say_eager()
            return None
        return self.graph

    def _say_eager(self) -> None:
        """One line (verbose runs) when graphs were asked for but steps run eagerly."""
        self.trainer._log(f"CUDA graphs are not used: {self.reason}. The steps run eagerly "
                          "(the same results, more host time per step).")

    def _captured_body(self):
        """The step as captured: the body on the device indices, its loss into the ring
        entry the step's inputs name (a device index: the graph writes where each replay
        is told)."""
        inputs = self.inputs
        with _device_step_scope(inputs.step_values):
            loss = self.body(inputs.indices)
        self.trainer.xp.put(self.ring, inputs.slot, loss)
        return loss

    def status(self) -> dict:
        """For the trainer's history: whether graphs ran, and if not (or not always) why."""
        return {
            "used": self.graph_steps > 0,
            "reason": self.reason,
            "graph_steps": self.graph_steps,
            "eager_steps": self.eager_steps,
            "captures": self.captures,
            "eager_step_reasons": dict(self._step_reasons),
        }


class _OddBatchInputs:
    """The inputs of a step of another batch size, in a buffer of their own (a plain
    copy: such steps are rare, e.g. an overridden draw's last short batch)."""

    def __init__(self, xp, seed, step, indices):
        host = np.concatenate([_header(seed, step, 0), np.asarray(indices, dtype=np.int64)])
        self.device = xp.asarray(host)
        self.step_values, self.slot, self.indices = _views(self.device)


def _device_step_scope(values):
    """``backend.device_step_scope(values)`` (interface 3), or nothing where this build of
    the backend has no device-side step values yet."""
    scope = getattr(backend, "device_step_scope", None)
    return contextlib.nullcontext() if scope is None else scope(values)


# ---------------------------------------------------------------------------
# Capture on CuPy
# ---------------------------------------------------------------------------


_CAPTURE_LOCK = threading.Lock()


class CupyCapturer:
    """Captures a step on a real GPU.

    Capture runs on a private non-blocking stream (CUDA cannot capture the legacy default
    stream) with a private memory pool: every array the step allocates comes from it, and
    the pool lives as long as the graph, so the memory a replay writes is never handed to
    another array (temporaries freed during capture are reused only inside the capture,
    in stream order). The graph is launched on the current stream, in order with the eager
    work around it. CuPy refuses cuBLAS calls during capture, so matrix products
    (``ndarray.dot``, ``cupy.dot``) go to cuBLAS directly meanwhile (:class:`_CaptureGemm`).
    """

    def __init__(self, cp):
        self.cp = cp
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.gemm = _CaptureGemm(cp)

    def capture(self, body):
        with _CAPTURE_LOCK:  # one capture at a time: CuPy's dot is routed process-wide
            return self._capture(body)

    def _capture(self, body):
        cp = self.cp
        pool = cp.cuda.MemoryPool()
        cp.cuda.get_current_stream().synchronize()  # once per capture: a clean start
        try:
            with cp.cuda.using_allocator(pool.malloc), self.stream, \
                    self.gemm.routing(self.stream):
                graph, loss = self._record(body)
        except CaptureError:
            raise
        except Exception as exc:  # whatever refused (CuPy, cuBLAS, CUDA): the reason
            raise CaptureError(f"{type(exc).__name__}: {exc}") from exc
        return graph, (pool, loss)  # graph.launch(): on the current stream

    def _record(self, body):
        """``(graph, body())`` of ``body`` run under capture on the private stream."""
        self.stream.begin_capture()
        try:
            out = body()
        except BaseException:
            _abandon_capture(self.stream)
            raise
        return self.stream.end_capture(), out


def _abandon_capture(stream) -> None:
    """End a capture that failed, so the stream can be used again (the graph is dropped)."""
    try:
        stream.end_capture()
    except Exception:  # noqa: BLE001 - an invalidated capture ends with an error; dropped
        pass


# -- cuBLAS during capture ----------------------------------------------------------------

_CUBLAS_OP_N, _CUBLAS_OP_T = 0, 1
_CUDA_R = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2}
_COMPUTE_32F, _COMPUTE_32F_PEDANTIC, _COMPUTE_32F_FAST_TF32 = 68, 69, 77
_COMPUTE_64F, _COMPUTE_64F_PEDANTIC = 70, 71
_GEMM_DEFAULT, _GEMM_DEFAULT_TENSOR_OP = -1, 99
# CuPy's compute-type codes (cupy._core._routines_linalg)
_CUPY_COMPUTE_PEDANTIC, _CUPY_COMPUTE_TF32 = 2, 7


def gemm_plan(a_shape, a_strides, b_shape, b_strides, itemsize):
    """The cuBLAS (column-major) GEMM that computes the row-major ``c = a @ b`` exactly as
    CuPy's ``dot`` calls it (``tensordot_core``: ``c^T = b^T a^T``), so a captured product
    takes the arguments -- and so the algorithm and the bits -- of the eager one.

    a: (n, k), b: (k, m), both 2-D with byte strides. Returns ``(ops, dims, lds, copies)``:
    ``ops = (op_b, op_a)``, ``dims = (m, n, k)``, ``lds = (ldb, lda, ldc)`` and which
    operands CuPy would first copy to C order (``(copy_a, copy_b)``); or None where CuPy
    does not call cuBLAS (an empty operand, a 1x1 result).
    """
    n, k = a_shape
    k2, m = b_shape
    if k != k2:
        raise ValueError(f"dot: shapes {tuple(a_shape)} and {tuple(b_shape)} do not align")
    if n * k == 0 or k * m == 0 or (n == 1 and m == 1):
        return None
    # CuPy rolls a's contracted axis first: at = a.T, (k, n); b stays (k, m)
    at_strides = (a_strides[1], a_strides[0])
    op_a, lda, copy_a = _cublas_layout((k, n), at_strides, itemsize, trans=0)
    op_b, ldb, copy_b = _cublas_layout((k, m), tuple(b_strides), itemsize, trans=1)
    return (op_b, op_a), (m, n, k), (ldb, lda, m), (copy_a, copy_b)


def _cublas_layout(shape, strides, itemsize, trans):
    """CuPy's ``_mat_to_cublas_contiguous``: (op, leading dimension, copy to C order?)."""
    rows, cols = shape
    if _f_contiguous(shape, strides, itemsize):
        return trans, max(strides[1] // itemsize, rows), False
    copy = not _c_contiguous(shape, strides, itemsize)
    ld = cols if copy else strides[0] // itemsize
    return 1 - trans, ld, copy


def _c_contiguous(shape, strides, itemsize) -> bool:
    rows, cols = shape
    return (cols == 1 or strides[1] == itemsize) and (rows == 1 or strides[0] == cols * itemsize)


def _f_contiguous(shape, strides, itemsize) -> bool:
    rows, cols = shape
    return (rows == 1 or strides[0] == itemsize) and (cols == 1 or strides[1] == rows * itemsize)


class _CaptureGemm:
    """Matrix products during a capture, by ``cublasGemmEx`` on CuPy's cuBLAS handle.

    CuPy sets the handle's stream before every cuBLAS call and refuses to while a stream is
    capturing; the handle's stream is set to the capture stream once, before the capture,
    and the products call cuBLAS itself, with the arguments CuPy's ``dot`` uses
    (:func:`gemm_plan`, CuPy's compute type and algorithm). Only 2-D float products are
    taken; anything else raises, and the capture falls back to eager steps.
    """

    def __init__(self, cp):
        self.cp = cp
        self._lib = None

    @contextlib.contextmanager
    def routing(self, stream):
        """Within the block, ``ndarray.dot`` and ``cupy.dot`` called from this thread take
        this path (CuPy's cuBLAS handles are per thread; other threads keep CuPy's own)."""
        cp = self.cp
        handle = cp.cuda.device.get_cublas_handle()
        status = self._cublas().cublasSetStream_v2(handle, stream.ptr)
        if status != 0:
            raise CaptureError(f"cublasSetStream failed with status {status}")
        self.handle = handle
        owner = threading.get_ident()
        original_method = cp.ndarray.__dict__.get("dot")
        original_dot = cp.dot

        def routed(a, b, out=None):
            if threading.get_ident() == owner:
                return self.dot(a, b, out)
            return cp._core.dot(a, b, out)  # what both cupy.dot and ndarray.dot call

        cp.ndarray.dot = routed
        cp.dot = routed
        try:
            yield
        finally:
            cp.dot = original_dot
            if original_method is None:
                del cp.ndarray.dot
            else:
                cp.ndarray.dot = original_method

    def dot(self, a, b, out=None):
        cp = self.cp
        if out is not None or a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype \
                or a.dtype not in _CUDA_R:
            raise CaptureError(
                f"a matrix product of {a.ndim}-D {a.dtype} and {b.ndim}-D {b.dtype} arrays "
                "cannot be captured (only 2-D float products of one dtype are)")
        plan = gemm_plan(a.shape, a.strides, b.shape, b.strides, a.itemsize)
        if plan is None:  # no cuBLAS call in CuPy either
            return _base_dot(cp, a, b)
        (op_b, op_a), (m, n, k), (ldb, lda, ldc), (copy_a, copy_b) = plan
        at = cp.ascontiguousarray(a.T) if copy_a else a
        b = cp.ascontiguousarray(b) if copy_b else b
        c = cp.empty((n, m), dtype=a.dtype)
        compute, one, zero = self._compute(a.dtype)  # host scalars: captured by value
        algo = _GEMM_DEFAULT_TENSOR_OP if self._cc() >= 80 or (
            self._cc() >= 70 and a.dtype == np.float16) else _GEMM_DEFAULT
        dtype = _CUDA_R[a.dtype]
        status = self._cublas().cublasGemmEx(
            self.handle, op_b, op_a, m, n, k, ctypes.addressof(one),
            b.data.ptr, dtype, ldb, at.data.ptr, dtype, lda,
            ctypes.addressof(zero), c.data.ptr, dtype, ldc, compute, algo)
        if status != 0:
            raise CaptureError(f"cublasGemmEx failed with status {status}")
        return c

    def _cupy_compute_type(self, dtype) -> int:
        """CuPy's own choice for ``dtype`` (default, pedantic, TF32: CUPY_TF32 included)."""
        return self.cp._core.get_compute_type(dtype)

    def _compute(self, dtype):
        """cuBLAS's compute type and the alpha, beta scalars, as CuPy's ``dot`` picks them."""
        chosen = self._cupy_compute_type(dtype)
        if dtype == np.float64:
            code = _COMPUTE_64F_PEDANTIC if chosen == _CUPY_COMPUTE_PEDANTIC else _COMPUTE_64F
            return code, ctypes.c_double(1.0), ctypes.c_double(0.0)
        code = {_CUPY_COMPUTE_PEDANTIC: _COMPUTE_32F_PEDANTIC,
                _CUPY_COMPUTE_TF32: _COMPUTE_32F_FAST_TF32}.get(chosen, _COMPUTE_32F)
        if dtype == np.float16 and code == _COMPUTE_32F_FAST_TF32:
            code = _COMPUTE_32F
        return code, ctypes.c_float(1.0), ctypes.c_float(0.0)

    def _cc(self) -> int:
        return int(self.cp.cuda.Device().compute_capability)

    def _cublas(self):
        """The cuBLAS that CuPy's own binding links (its symbols, looked up from that
        extension module, resolve in its dependencies: never another copy of cuBLAS that
        another library, such as PyTorch, loaded into the process)."""
        if self._lib is None:
            import importlib

            binding = importlib.import_module("cupy_backends.cuda.libs.cublas")
            lib = ctypes.CDLL(binding.__file__)
            if not hasattr(lib, "cublasGemmEx"):
                raise CaptureError(f"cublasGemmEx was not found through {binding.__file__}")
            lib.cublasSetStream_v2.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.cublasGemmEx.argtypes = (
                [ctypes.c_void_p] + [ctypes.c_int] * 5 + [ctypes.c_void_p] * 2
                + [ctypes.c_int] * 2 + [ctypes.c_void_p] + [ctypes.c_int] * 2
                + [ctypes.c_void_p] * 2 + [ctypes.c_int] * 4)
            self._lib = lib
        return self._lib


def _base_dot(cp, a, b):
    """CuPy's own ``dot``, below any routing (for the products that launch no cuBLAS)."""
    return cp._core.dot(a, b, None)

