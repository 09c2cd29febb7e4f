"""Fused GPU kernels for the elementwise part of a training step: Dropout, the
softmax-with-loss pair, and the optimizers' updates - each one launch.

At the batch sizes of the book's networks a GPU step is bound by the host's cost of
launching work, not by the GPU: CuPy's form of Adam is about eight array operations per
parameter, each a launch. Here one kernel does what a chain of array expressions did,
with the same arithmetic in the same order, so float32 results agree with the CPU's to
rounding. The module has the three layers of ``kernels.cuda``: raw ``@cuda.jit`` kernels
(grid-stride loops, 32-bit sizes checked at launch), ``launch_*`` functions on device
arrays (CuPy arrays' Numba views, or NumPy arrays under the CUDA simulator) that launch
only through ``kernels.cuda_launch.launch``, and entry points on CuPy arrays that launch
on CuPy's current stream and never synchronise with the host.

Everything a kernel needs that changes from step to step is read from device memory, never
passed as a host scalar, so a CUDA graph that captured the launch stays right on replay:

* Dropout reads ``seed`` and ``step`` from the int64 array ``step_values = [seed, step]``
  that the Trainer updates in place before each step (``xpnet.backend.device_step_scope``);
  its mask is ``counter_rng.uniform(seed, step, draw, n) > dropout_ratio``;
* Adam's step count ``t`` lives in an int64[1] device buffer that a one-thread kernel
  advances right before the update (``launch_adam``), computing there the bias-corrected
  step size as the host formula does.

The loss of ``softmax_cross_entropy`` is summed by one block in a fixed tree order, without
atomics, so it is reproducible bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from xpnet import backend
from xpnet.kernels import counter_rng
from xpnet.kernels.cuda import (
    MAX_BLOCKS,
    THREADS_PER_BLOCK,
    MappedErrorFlag,
    _check_size,
    _dev,
    _grid,
    _launch,
    _scalar,
    _stream,
)
from xpnet.kernels.cuda_launch import launch

__all__ = [
    "dropout_forward", "dropout_backward", "softmax_cross_entropy", "optimizer_update",
    "adam_update", "launch_dropout_forward", "launch_dropout_backward",
    "launch_softmax_cross_entropy", "launch_optimizer_update", "launch_adam",
    "raise_pending_error", "OPTIMIZER_RULES", "FUSED_DTYPES", "FlatViews",
]

#: The dtypes the fused kernels are compiled for; others (float16) take the array formulas.
FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: The softmax-with-loss reduction runs in one block of at most this many threads.
MAX_REDUCTION_THREADS = 1024

# ---------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------


@cuda.jit(device=True, inline="always")
def _keep_or_drop(x, out, mask, i, word, ratio, one, zero):
    """Element i: keep it where its uniform exceeds ``ratio`` (the CPU's ``u > ratio``)
    and multiply by 1 or 0, as ``x * mask`` does (so -x*0 stays -0 and NaN*0 NaN)."""
    if i < x.size:
        keep = counter_rng.bits_to_uniform_device(word) > ratio
        mask[i] = keep
        out[i] = x[i] * (one if keep else zero)


@cuda.jit
def _dropout_forward_kernel(x, out, mask, step_values, draw, ratio, one, zero):
    """x, out: (n,) floating; mask: (n,) bool; step_values: int64 [seed, step].

    One thread per group of four elements: one Philox call yields the four words of
    elements 4g .. 4g+3 (the layout of ``counter_rng.uniform``)."""
    seed = step_values[0]
    step = step_values[1]
    groups = (x.size + 3) // 4
    for g in range(cuda.grid(1), groups, cuda.gridsize(1)):
        w0, w1, w2, w3 = counter_rng.philox_for_group_device(seed, step, draw, g)
        i = 4 * g
        _keep_or_drop(x, out, mask, i, w0, ratio, one, zero)
        _keep_or_drop(x, out, mask, i + 1, w1, ratio, one, zero)
        _keep_or_drop(x, out, mask, i + 2, w2, ratio, one, zero)
        _keep_or_drop(x, out, mask, i + 3, w3, ratio, one, zero)


@cuda.jit
def _dropout_backward_kernel(dout, mask, dx, one, zero):
    """dx = dout * mask, all (n,)."""
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        dx[i] = dout[i] * (one if mask[i] else zero)


# ---------------------------------------------------------------------------
# Softmax with cross-entropy loss: forward and backward in one pass
# ---------------------------------------------------------------------------


@cuda.jit(device=True, inline="always")
def _row_max_and_log_sum(x, r):
    """(max, log(sum(exp(x[r] - max)))) of row r, the CPU's ``log_softmax`` terms."""
    classes = x.shape[1]
    top = x[r, 0]
    for j in range(1, classes):
        top = max(top, x[r, j])
    total = top - top
    for j in range(classes):
        total += math.exp(x[r, j] - top)
    return top, math.log(total)


@cuda.jit(device=True, inline="always")
def _store_mean_loss(partial, acc, loss, n_rows):
    """Sum every thread's ``acc`` in a fixed tree order (blockDim a power of two) and
    store ``-sum / n_rows`` in loss[0]: deterministic, no atomics."""
    tid = cuda.threadIdx.x
    partial[tid] = acc
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if tid < half:
            partial[tid] += partial[tid + half]
        cuda.syncthreads()
        half //= 2
    if tid == 0:
        loss[0] = -partial[0] / n_rows


@cuda.jit
def _softmax_xent_labels_kernel(x, labels, y, dx, loss, n_rows, one, error):
    """x, y, dx: (N, C); labels: (N,) integers; loss: (1,). One block, a thread per row.

    y = softmax(x); dx = (y - onehot(labels)) / N; loss = -mean(log y[r, labels[r]]).
    A label outside [0, C) is never used as an index: its row adds NaN to the loss, and
    ``error[0] = 1`` (see ``raise_pending_error``)."""
    partial = cuda.shared.array(MAX_REDUCTION_THREADS, float64)
    rows, classes = x.shape
    acc = 0.0
    for r in range(cuda.threadIdx.x, rows, cuda.blockDim.x):
        label = labels[r]
        if label < 0 or label >= classes:
            error[0] = 1
            acc += math.nan
        top, log_sum = _row_max_and_log_sum(x, r)
        for j in range(classes):
            logp = (x[r, j] - top) - log_sum
            p = math.exp(logp)
            y[r, j] = p
            if j == label:
                acc += logp
                dx[r, j] = (p - one) / n_rows
            else:
                dx[r, j] = p / n_rows
    _store_mean_loss(partial, acc, loss, n_rows)


@cuda.jit
def _softmax_xent_onehot_kernel(x, t, y, dx, loss, n_rows):
    """x, t, y, dx: (N, C), t one-hot (or any target distribution) in x's dtype; loss: (1,).

    y = softmax(x); dx = (y - t) / N; loss = -sum(t * log y) / N."""
    partial = cuda.shared.array(MAX_REDUCTION_THREADS, float64)
    rows, classes = x.shape
    acc = 0.0
    for r in range(cuda.threadIdx.x, rows, cuda.blockDim.x):
        top, log_sum = _row_max_and_log_sum(x, r)
        row_sum = top - top
        for j in range(classes):
            logp = (x[r, j] - top) - log_sum
            p = math.exp(logp)
            y[r, j] = p
            row_sum += t[r, j] * logp
            dx[r, j] = (p - t[r, j]) / n_rows
        acc += row_sum
    _store_mean_loss(partial, acc, loss, n_rows)


# ---------------------------------------------------------------------------
# Optimizers: every parameter in one launch
# ---------------------------------------------------------------------------
#
# Multi-tensor layout: the arguments are tuples of flat (n_k,) arrays, one entry per
# parameter, all of one dtype; grid row ``blockIdx.y`` is tensor k, and the blocks along x
# stride over its elements. Each kernel writes, per element, exactly the CPU's formula of
# ``xpnet.optimizers`` in the same order, with its scalars rounded to the array dtype once
# (as NumPy rounds a Python float in an array expression).


@cuda.jit(device=True, inline="always")
def _elements():
    """The grid-stride range of this thread over the tensor of grid row blockIdx.y."""
    return cuda.grid(1), cuda.gridsize(1)


@cuda.jit
def _sgd_kernel(params, grads, lr):
    """W -= lr * g."""
    p = params[cuda.blockIdx.y]
    g = grads[cuda.blockIdx.y]
    start, stride = _elements()
    for i in range(start, p.size, stride):
        p[i] -= lr * g[i]


@cuda.jit
def _momentum_kernel(params, grads, velocities, momentum, lr):
    """v = v * momentum - lr * g; W += v."""
    k = cuda.blockIdx.y
    p, g, v = params[k], grads[k], velocities[k]
    start, stride = _elements()
    for i in range(start, p.size, stride):
        v_i = v[i] * momentum
        v_i -= lr * g[i]
        v[i] = v_i
        p[i] += v_i


@cuda.jit
def _nesterov_kernel(params, grads, velocities, momentum_sq, lr_step, momentum, lr):
    """W += momentum**2 * v; W -= (1 + momentum) * lr * g; v = v * momentum - lr * g."""
    k = cuda.blockIdx.y
    p, g, v = params[k], grads[k], velocities[k]
    start, stride = _elements()
    for i in range(start, p.size, stride):
        g_i = g[i]
        v_i = v[i]
        p_i = p[i] + momentum_sq * v_i
        p[i] = p_i - lr_step * g_i
        v_i *= momentum
        v[i] = v_i - lr * g_i


@cuda.jit(device=True, inline="always")
def _scaled_step(g, h, lr, eps):
    """lr * g / (sqrt(h) + eps) in the CPU's order: ((g / (sqrt(h) + eps)) * lr)."""
    return g / (math.sqrt(h) + eps) * lr


@cuda.jit
def _adagrad_kernel(params, grads, sums, lr, eps):
    """h += g * g; W -= lr * g / (sqrt(h) + eps)."""
    k = cuda.blockIdx.y
    p, g, h = params[k], grads[k], sums[k]
    start, stride = _elements()
    for i in range(start, p.size, stride):
        g_i = g[i]
        h_i = h[i] + g_i * g_i
        h[i] = h_i
        p[i] -= _scaled_step(g_i, h_i, lr, eps)


@cuda.jit
def _rmsprop_kernel(params, grads, sums, decay_rate, one_minus_decay, lr, eps):
    """h = h * decay + (1 - decay) * g * g; W -= lr * g / (sqrt(h) + eps)."""
    k = cuda.blockIdx.y
    p, g, h = params[k], grads[k], sums[k]
    start, stride = _elements()
    for i in range(start, p.size, stride):
        g_i = g[i]
        h_i = h[i] * decay_rate
        h_i += one_minus_decay * g_i * g_i
        h[i] = h_i
        p[i] -= _scaled_step(g_i, h_i, lr, eps)


@cuda.jit
def _adam_step_kernel(t, lr_t, lr, beta1, beta2):
    """One thread: t += 1, then lr_t[0] = lr * sqrt(1 - beta2**t) / (1 - beta1**t) in
    float64 (the host's Python floats), stored rounded to the parameters' dtype."""
    if cuda.grid(1) == 0:
        step = t[0] + 1
        t[0] = step
        lr_t[0] = lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)


@cuda.jit
def _adam_kernel(params, grads, ms, vs, lr_t, one_minus_beta1, one_minus_beta2, eps):
    """m += (1 - beta1)(g - m); v += (1 - beta2)(g*g - v); W -= m / (sqrt(v) + eps) * lr_t,
    with lr_t read from the device (written by ``_adam_step_kernel`` just before)."""
    k = cuda.blockIdx.y
    p, g, m, v = params[k], grads[k], ms[k], vs[k]
    step_size = lr_t[0]
    start, stride = _elements()
    for i in range(start, p.size, stride):
        g_i = g[i]
        m_i = m[i] + one_minus_beta1 * (g_i - m[i])
        v_i = v[i] + one_minus_beta2 * (g_i * g_i - v[i])
        m[i] = m_i
        v[i] = v_i
        p[i] -= m_i / (math.sqrt(v_i) + eps) * step_size


#: rule name -> (kernel, number of state arrays per parameter). The kernel's scalars follow
#: its tensors, in the order of its signature.
OPTIMIZER_RULES = {
    "sgd": (_sgd_kernel, 0),
    "momentum": (_momentum_kernel, 1),
    "nesterov": (_nesterov_kernel, 1),
    "adagrad": (_adagrad_kernel, 1),
    "rmsprop": (_rmsprop_kernel, 1),
    "adam": (_adam_kernel, 2),
}

# ---------------------------------------------------------------------------
# Launch layer: device arrays in, kernel launched on `stream`
# ---------------------------------------------------------------------------


def _expect_same(name, got, expected):
    if tuple(got) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(got)}; expected {tuple(expected)}")


def launch_dropout_forward(x, out, mask, step_values, draw, dropout_ratio, *, stream=0,
                           threads=THREADS_PER_BLOCK, max_blocks=MAX_BLOCKS):
    """Fill ``out`` and bool ``mask`` (n,) from ``x`` (n,) with the mask of draw ``draw``;
    ``step_values``: int64 (2,) ``[seed, step]`` on the device, read by the kernel."""
    _expect_same("out", out.shape, x.shape)
    _expect_same("mask", mask.shape, x.shape)
    _expect_same("step_values", step_values.shape, (2,))
    if step_values.dtype != np.int64:
        raise TypeError(f"step_values must be int64 [seed, step], got {step_values.dtype}")
    if not 0 <= draw < 2**32:
        raise ValueError(f"draw must lie in [0, 2**32), got {draw}")
    _check_size(x)
    one = _scalar(x.dtype, 1)
    _launch(_dropout_forward_kernel, (x.size + 3) // 4, threads, max_blocks, stream,
            x, out, mask, step_values, np.int64(draw), np.float32(dropout_ratio), one,
            one - one)


def launch_dropout_backward(dout, mask, dx, *, stream=0, threads=THREADS_PER_BLOCK,
                            max_blocks=MAX_BLOCKS):
    """Write ``dx = dout * mask``, all (n,)."""
    _expect_same("mask", mask.shape, dout.shape)
    _expect_same("dx", dx.shape, dout.shape)
    _check_size(dout)
    one = _scalar(dx.dtype, 1)
    _launch(_dropout_backward_kernel, dx.size, threads, max_blocks, stream,
            dout, mask, dx, one, one - one)


def launch_softmax_cross_entropy(x, t, y, dx, loss, *, stream=0, threads=THREADS_PER_BLOCK):
    """Fill ``y = softmax(x)``, ``dx = (y - onehot) / N`` (N, C) and ``loss`` (1,) from
    scores ``x`` (N, C) and targets ``t``: integer labels (N,) or one-hot (N, C) in x's
    dtype. One block of ``threads`` (a power of two up to 1024) threads.

    A label outside [0, C) raises IndexError from this call if the kernel has finished
    by the time it returns, else from the next one (``raise_pending_error``).
    """
    if threads < 1 or threads > MAX_REDUCTION_THREADS or threads & (threads - 1):
        raise ValueError(f"threads must be a power of two up to {MAX_REDUCTION_THREADS}, "
                         f"got {threads}")
    rows = x.shape[0]
    for name, a in (("y", y), ("dx", dx)):
        _expect_same(name, a.shape, x.shape)
    _expect_same("loss", loss.shape, (1,))
    _check_size(x)
    n_rows = _scalar(x.dtype, rows)
    if t.ndim == 2:
        _expect_same("t", t.shape, x.shape)
        launch(_softmax_xent_onehot_kernel, 1, threads, stream, x, t, y, dx, loss, n_rows)
        return
    _expect_same("t", t.shape, (rows,))
    flag = _error_flag()
    raise_pending_error()
    launch(_softmax_xent_labels_kernel, 1, threads, stream, x, t, y, dx, loss, n_rows,
           _scalar(x.dtype, 1), flag)
    raise_pending_error()


def _check_tensors(params, grads, states, n_states):
    """Every parameter has a gradient and ``n_states`` state arrays of its size and dtype."""
    if len(states) != n_states:
        raise ValueError(f"this rule takes {n_states} state tuples, got {len(states)}")
    dtype = params[0].dtype
    for group_name, group in (("grads", grads),) + tuple(
            (f"state {s}", states[s]) for s in range(n_states)):
        if len(group) != len(params):
            raise ValueError(f"{group_name} holds {len(group)} arrays for {len(params)} "
                             "parameters")
        for k, (p, a) in enumerate(zip(params, group)):
            if a.shape != p.shape or a.dtype != dtype or p.dtype != dtype:
                raise ValueError(f"{group_name}[{k}] is {a.dtype} {tuple(a.shape)}, but "
                                 f"parameter {k} is {p.dtype} {tuple(p.shape)}; the fused "
                                 "update takes flat arrays of one size and dtype")
    for p in params:
        if p.ndim != 1:
            raise ValueError(f"the fused update takes flat (n,) arrays, got shape {p.shape}")
    _check_size(*params)


def _multi_tensor_grid(params, threads, max_blocks):
    """(blocks along x, one grid row per tensor): enough blocks for the largest tensor."""
    if len(params) > MAX_BLOCKS:
        raise ValueError(f"at most {MAX_BLOCKS} tensors per fused update, got {len(params)}")
    return (_grid(max(p.size for p in params), threads, max_blocks), len(params))


def launch_optimizer_update(rule, params, grads, states, scalars, *, stream=0,
                            threads=THREADS_PER_BLOCK, max_blocks=MAX_BLOCKS):
    """Update every parameter in one launch of ``OPTIMIZER_RULES[rule]``.

    params, grads: tuples of flat (n_k,) device arrays of one dtype; states: a tuple of
    such tuples (the rule's state slots, e.g. Adam's (m, v)); scalars: the kernel's
    scalars, already NumPy scalars of the arrays' dtype.
    """
    kernel, n_states = OPTIMIZER_RULES[rule]
    if not params:
        return
    _check_tensors(params, grads, states, n_states)
    launch(kernel, _multi_tensor_grid(params, threads, max_blocks), threads, stream,
           tuple(params), tuple(grads), *(tuple(s) for s in states), *scalars)


def launch_adam(params, grads, ms, vs, t, lr_t, lr, beta1, beta2, eps, *, stream=0,
                threads=THREADS_PER_BLOCK, max_blocks=MAX_BLOCKS):
    """Adam's step: advance the int64[1] step count ``t`` and the step size ``lr_t`` (1,)
    (parameters' dtype) on the device, then update every parameter in one launch."""
    if not params:
        return
    _expect_same("t", t.shape, (1,))
    _expect_same("lr_t", lr_t.shape, (1,))
    if t.dtype != np.int64 or lr_t.dtype != params[0].dtype:
        raise TypeError(f"t must be int64 and lr_t {params[0].dtype}, got {t.dtype} and "
                        f"{lr_t.dtype}")
    launch(_adam_step_kernel, 1, 1, stream, t, lr_t, np.float64(lr), np.float64(beta1),
           np.float64(beta2))
    dtype = params[0].dtype
    launch_optimizer_update("adam", params, grads, (ms, vs),
                            (lr_t, _scalar(dtype, 1 - beta1), _scalar(dtype, 1 - beta2),
                             _scalar(dtype, eps)),
                            stream=stream, threads=threads, max_blocks=max_blocks)


# ---------------------------------------------------------------------------
# Entry points: CuPy arrays in and out, on CuPy's current stream
# ---------------------------------------------------------------------------


def _flat(cp, a):
    """A flat Numba view of ``a`` (copied to C order first if it is not)."""
    return _dev(cp.ascontiguousarray(a).reshape(-1))


def dropout_forward(x, dropout_ratio, step_values, draw):
    """x: CuPy array of any shape -> (x * mask, mask), mask bool of x's shape, equal to
    ``counter_rng.uniform(seed, step, draw, x.size).reshape(x.shape) > dropout_ratio`` with
    ``[seed, step] = step_values`` (int64 (2,) on the device, read there)."""
    cp = backend.require_gpu()
    x = cp.ascontiguousarray(x)
    out = cp.empty_like(x)
    mask = cp.empty(x.shape, dtype=np.bool_)
    if x.size:
        launch_dropout_forward(_flat(cp, x), _flat(cp, out), _flat(cp, mask),
                               _dev(step_values), draw, dropout_ratio, stream=_stream())
    return out, mask


def dropout_backward(dout, mask):
    """dout: CuPy array, mask: bool of its shape -> dout * mask."""
    cp = backend.require_gpu()
    dx = cp.empty(dout.shape, dtype=dout.dtype)
    if dx.size:
        launch_dropout_backward(_flat(cp, dout), _flat(cp, mask), _flat(cp, dx),
                                stream=_stream())
    return dx


def _reduction_threads(rows):
    """Threads of the loss block: the power of two covering ``rows``, at most 256."""
    return min(THREADS_PER_BLOCK, 1 << max(0, rows - 1).bit_length())


def softmax_cross_entropy(x, t):
    """x: (N, C) or (C,) CuPy scores; t: targets checked by ``functions.check_targets``
    (one-hot of x's shape and dtype, or integer labels of shape x.shape[:-1]).

    Returns ``(loss, y, dx)``: the mean loss (0-d, x's dtype), ``y = softmax(x)`` and
    ``dx = (y - onehot) / N``, both of x's shape - the CPU layer's forward and backward.
    """
    cp = backend.require_gpu()
    scores = cp.ascontiguousarray(x.reshape(1, -1) if x.ndim == 1 else x)
    rows = scores.shape[0]
    if t.shape == x.shape:
        targets = cp.ascontiguousarray(t.reshape(scores.shape))
    else:
        targets = cp.ascontiguousarray(t.reshape(rows))
    y = cp.empty_like(scores)
    dx = cp.empty_like(scores)
    loss = cp.empty((), dtype=scores.dtype)
    launch_softmax_cross_entropy(_dev(scores), _dev(targets), _dev(y), _dev(dx),
                                 _dev(loss.reshape(1)), stream=_stream(),
                                 threads=_reduction_threads(rows))
    return loss, y.reshape(x.shape), dx.reshape(x.shape)


def optimizer_update(rule, params, grads, states, scalars, views=None):
    """One fused update of CuPy ``params`` (a sequence of C-contiguous arrays of one dtype,
    updated in place) from ``grads`` and the rule's ``states`` (a sequence of sequences
    of C-contiguous arrays, updated in place); ``scalars`` as ``launch_optimizer_update``.
    ``views``: a ``FlatViews`` kept by the caller across steps (saves host time)."""
    cp = backend.require_gpu()
    views = views or FlatViews()
    launch_optimizer_update(rule, views("params", params), tuple(_flat(cp, g) for g in grads),
                            tuple(views(f"state{k}", s) for k, s in enumerate(states)),
                            scalars, stream=_stream())


def adam_update(params, grads, ms, vs, t, lr_t, lr, beta1, beta2, eps, views=None):
    """Adam on CuPy arrays: ``t`` int64 (1,) and ``lr_t`` (1,) of the parameters' dtype are
    device buffers the update advances (see ``launch_adam``); ``views`` as
    ``optimizer_update``."""
    cp = backend.require_gpu()
    views = views or FlatViews()
    (t_view, lr_t_view) = views("steps", (t, lr_t))
    launch_adam(views("params", params), tuple(_flat(cp, g) for g in grads), views("m", ms),
                views("v", vs), t_view, lr_t_view, lr, beta1, beta2, eps, stream=_stream())


class FlatViews:
    """Flat Numba views of CuPy arrays a kernel updates in place, made once and handed out
    again while the very same arrays come back (an optimizer's parameters and state, step
    after step): making a view costs host time on every launch otherwise.

    ``views(name, arrays)`` -> a tuple of (n,) views, one per array. The arrays must be
    C-contiguous: a flattening copy would lose the update.
    """

    def __init__(self):
        self._made: dict = {}  # name -> (the arrays, their views)

    def __call__(self, name, arrays):
        arrays = tuple(arrays)
        made = self._made.get(name)
        if made is not None and len(made[0]) == len(arrays) and all(
                a is b for a, b in zip(made[0], arrays)):
            return made[1]
        for a in arrays:
            if not a.flags.c_contiguous:
                raise ValueError(f"the fused update writes in place: an array of shape "
                                 f"{a.shape} is not C-contiguous")
        views = tuple(_dev(a.reshape(-1)) for a in arrays)
        self._made[name] = (arrays, views)
        return views


# ---------------------------------------------------------------------------
# Bad labels: a flag in mapped host memory, read without a synchronisation
# ---------------------------------------------------------------------------
#
# As for maxpool_backward's argmax (kernels.cuda): checking labels on the host would copy
# them back every step, so the kernel raises a flag in mapped (zero-copy) host memory that
# the host reads like a variable, before and after each launch, never waiting.

_BAD_LABEL = (
    "softmax_cross_entropy: a class label was outside [0, C) for C classes; the loss is NaN. "
    "Pass integer labels in range, or one-hot targets of the scores' shape"
)
_bad_label = MappedErrorFlag(_BAD_LABEL)


def _error_flag():
    """The current device's int32[1] label flag, mapped host memory the kernel can write."""
    return _bad_label.flag()


def raise_pending_error():
    """Raise IndexError if a finished softmax_cross_entropy kernel met a bad label (and
    clear the flag). Reads host memory only: never waits for the device."""
    _bad_label.raise_pending()
