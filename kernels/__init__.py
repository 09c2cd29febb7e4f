"""xpnet.kernels: the convolution core - im2col, col2im, max and average pooling, the fused
convolution, ReLU.

The repository keeps this package in its top-level ``kernels/`` folder; it installs and
imports as ``xpnet.kernels``. It depends on ``xpnet.backend`` only, and the layers
(``xpnet.layers``, ``xpnet.convolution``, ``xpnet.util``) depend on it.

The entry points below are the contract. Each takes arrays of one backend and returns arrays
of the same backend, dtype and device. Each validates its arguments - and is the only place
that does: shapes, window sizes, stride and pad (``check_integer``; the output size is
``conv_output_size``, the one formula) - so a bad one is one ValueError or TypeError naming
it, never an out-of-bounds access. Then it runs the op's implementation for the array's
backend, found in one table, ``IMPLEMENTATIONS``: ``cpu`` (Numba ``@njit``, NumPy arrays),
``cuda`` (Numba CUDA on CuPy arrays, imported only when a CuPy array arrives, so importing
this package never needs CUDA) or ``generic`` (the book's im2col + GEMM + col2im and array
expressions, on the array's own namespace - the GPU's convolution and ReLU). An
implementation receives checked integers and shapes and checks nothing again; the CUDA
kernels keep only the guards that protect memory (32-bit indexing, array shapes at launch,
argmax indices). ``xpnet.kernels.reference`` holds plain versions with the same
signatures: the tests' oracle.

Layout (the book's): ``col`` has rows ordered (N, out_h, out_w) and columns ordered
(C, FH, FW), so ``W.reshape(FN, -1).T`` multiplies it directly.

    col = im2col(x, FH, FW, stride, pad)                 # x: (N, C, H, W)
    dx = col2im(dcol, x.shape, FH, FW, stride, pad)      # the adjoint of im2col
    out, argmax = maxpool_forward(x, PH, PW, stride, pad)
    dx = maxpool_backward(dout, argmax, x.shape, PH, PW, stride, pad)
    out = avgpool_forward(x, PH, PW, stride, pad)        # padding counts as zeros
    dx = avgpool_backward(dout, x.shape, PH, PW, stride, pad)

    out = conv2d_forward(x, W, b, stride, pad)           # the Convolution layer's products
    out = conv2d_forward(x, W, b, stride, pad, relu=True)  # ... and the ReLU after it
    dx, dW, db = conv2d_backward(x, W, dout, stride, pad)

    out = relu_forward(x)                                # max(x, 0): one pass, no mask
    dx = relu_backward(dout, out)                        # 0 where out <= 0, else dout

    out, xn, mean, var = channel_norm_forward(x, gamma, beta, eps)   # per-channel BN
    dx, dgamma, dbeta = channel_norm_backward(dout, xn, gamma, std, batch_statistics)

The convolution pair is fused on the CPU (im2col and GEMM per cache-sized chunk, so the full
``col`` is never built: it would not fit the caches); on the GPU one large cuBLAS product
over the whole ``col`` is the fast way, which is what the generic version does.

Adding an op (average pooling was added this way):

1. ``reference.py``: the plain version, written to be read - the oracle.
2. here: the entry point (validate, then ``_run(op, array, ...)``) and its row in
   ``IMPLEMENTATIONS``; point a backend at ``generic`` (and write the op there, on the
   array's namespace) where no special kernel pays for itself.
3. optionally ``cpu.py`` (Numba ``@njit``) and ``cuda.py`` (``@cuda.jit`` kernel, a
   ``launch_*`` function, a CuPy entry), with the reference's signature.
4. tests: one definition in ``tests/kernel_contract.py`` runs on every backend (the CPU
   kernels, the reference, the CUDA kernels under the simulator in their own process, a
   real GPU when present).
"""

from __future__ import annotations

import functools
import importlib
import operator

import numpy as np

from xpnet.kernels.reference import conv_output_size

__all__ = [
    "IMPLEMENTATIONS",
    "avgpool_backward",
    "avgpool_forward",
    "channel_norm_backward",
    "channel_norm_forward",
    "check_integer",
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "conv_output_size",
    "im2col",
    "implementation",
    "maxpool_backward",
    "maxpool_forward",
    "relu_backward",
    "relu_forward",
]

# Which module of this package implements each op, per array backend: the one dispatch
# table. "generic" is the fallback written once for any array namespace; on CuPy it runs
# the convolution (cuBLAS is at its best on one large product) and ReLU (CuPy fuses it).
IMPLEMENTATIONS = {
    # op                 numpy   cupy
    "im2col":           {"numpy": "cpu", "cupy": "cuda"},
    "col2im":           {"numpy": "cpu", "cupy": "cuda"},
    "maxpool_forward":  {"numpy": "cpu", "cupy": "cuda"},
    "maxpool_backward": {"numpy": "cpu", "cupy": "cuda"},
    "avgpool_forward":  {"numpy": "cpu", "cupy": "cuda"},
    "avgpool_backward": {"numpy": "cpu", "cupy": "cuda"},
    "conv2d_forward":   {"numpy": "cpu", "cupy": "generic"},
    "conv2d_backward":  {"numpy": "cpu", "cupy": "generic"},
    "relu_forward":     {"numpy": "cpu", "cupy": "generic"},
    "relu_backward":    {"numpy": "cpu", "cupy": "generic"},
    "channel_norm_forward":  {"numpy": "cpu", "cupy": "generic"},
    "channel_norm_backward": {"numpy": "cpu", "cupy": "generic"},
}


def _backend_name(a):
    """'numpy' or 'cupy': the array library that made ``a``."""
    module = type(a).__module__.partition(".")[0]
    if module not in ("numpy", "cupy"):
        raise TypeError(
            f"kernels take a numpy.ndarray or a cupy.ndarray, got {type(a).__module__}."
            f"{type(a).__name__}"
        )
    return module


@functools.cache  # one lookup per (backend, op): the entry points run in every training step
def implementation(backend, op):
    """The function implementing ``op`` on ``backend`` ('numpy' or 'cupy'), per
    ``IMPLEMENTATIONS``. It takes checked arguments: call the entry point instead."""
    module = importlib.import_module(f"xpnet.kernels.{IMPLEMENTATIONS[op][backend]}")
    return getattr(module, op)


def _run(op, backend, *args):
    """Run ``op``'s implementation for ``backend`` on ``args``, which the caller checked."""
    return implementation(backend, op)(*args)


def check_integer(name, value, minimum=1):
    """``value`` as an int, or TypeError if it is not an integer and ValueError if it is below
    ``minimum``; both messages start with ``name``. The window arguments' one check."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _check(what, shape, fh, fw, stride, pad, fh_name="filter_h", fw_name="filter_w"):
    """Validate a 4-D shape and window; return (fh, fw, stride, pad, out_h, out_w)."""
    if len(shape) != 4:
        raise ValueError(f"{what}: expected a 4-D (N, C, H, W) shape, got {tuple(shape)}")
    fh, fw = check_integer(fh_name, fh), check_integer(fw_name, fw)
    stride, pad = check_integer("stride", stride), check_integer("pad", pad, 0)
    _, _, H, W = shape
    out_h = conv_output_size(H, fh, stride, pad)
    out_w = conv_output_size(W, fw, stride, pad)
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"{what}: a {fh}x{fw} window does not fit the input {tuple(shape)} padded by {pad} "
            f"({H + 2 * pad}x{W + 2 * pad})"
        )
    return fh, fw, stride, pad, out_h, out_w


def im2col(x, filter_h, filter_w, stride=1, pad=0):
    """x: (N, C, H, W) -> col: (N*out_h*out_w, C*filter_h*filter_w), same dtype and device."""
    backend = _backend_name(x)
    fh, fw, stride, pad, _, _ = _check("im2col", x.shape, filter_h, filter_w, stride, pad)
    return _run("im2col", backend, x, fh, fw, stride, pad)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """col: (N*out_h*out_w, C*filter_h*filter_w) -> x: input_shape (N, C, H, W), overlaps summed."""
    backend = _backend_name(col)
    input_shape = tuple(int(s) for s in input_shape)
    fh, fw, stride, pad, out_h, out_w = _check(
        "col2im", input_shape, filter_h, filter_w, stride, pad
    )
    N, C = input_shape[:2]
    _expect_shape("col2im", "col", col, (N * out_h * out_w, C * fh * fw), input_shape,
                  (fh, fw), stride, pad)
    return _run("col2im", backend, col, input_shape, fh, fw, stride, pad)


def _expect_shape(what, name, a, expected, input_shape, window, stride, pad):
    """ValueError unless ``a`` has shape ``expected``, which ``input_shape`` and the window
    (a (height, width) pair), stride and pad imply."""
    if tuple(a.shape) != expected:
        raise ValueError(
            f"{what}: {name} of shape {tuple(a.shape)} does not match input_shape "
            f"{input_shape} with a {window[0]}x{window[1]} "
            f"{'filter' if what in ('im2col', 'col2im') else 'window'}, stride {stride}, "
            f"pad {pad}; expected {expected}"
        )


def _check_pool(what, shape, pool_h, pool_w, stride, pad):
    """``_check`` for a pooling window, which must also be wider than the padding."""
    checked = _check(what, shape, pool_h, pool_w, stride, pad, "pool_h", "pool_w")
    ph, pw, _, pad = checked[:4]
    if pad >= min(ph, pw):
        # a wider pad would make windows of padding only, which have no maximum (and
        # would average padding alone)
        raise ValueError(f"{what}: pad must be smaller than the {ph}x{pw} window, got {pad}")
    return checked


def _check_pool_backward(what, input_shape, pool_h, pool_w, stride, pad, **pooled):
    """``_check_pool`` of ``input_shape``, and each array of ``pooled`` (by name) of the
    pooled shape (N, C, out_h, out_w); returns (input_shape as a tuple, ph, pw, stride, pad)."""
    input_shape = tuple(int(s) for s in input_shape)
    ph, pw, stride, pad, out_h, out_w = _check_pool(
        what, input_shape, pool_h, pool_w, stride, pad
    )
    expected = (*input_shape[:2], out_h, out_w)
    for name, a in pooled.items():
        _expect_shape(what, name, a, expected, input_shape, (ph, pw), stride, pad)
    return input_shape, ph, pw, stride, pad


def maxpool_forward(x, pool_h, pool_w, stride=1, pad=0):
    """x: (N, C, H, W) -> (out, argmax), both (N, C, out_h, out_w); argmax int32 in-window."""
    backend = _backend_name(x)
    ph, pw, stride, pad, _, _ = _check_pool("maxpool_forward", x.shape, pool_h, pool_w, stride, pad)
    return _run("maxpool_forward", backend, x, ph, pw, stride, pad)


def maxpool_backward(dout, argmax, input_shape, pool_h, pool_w, stride=1, pad=0):
    """dout, argmax: (N, C, out_h, out_w) -> dx: input_shape (N, C, H, W).

    ``argmax`` must be an integer array of in-window indices, as maxpool_forward returns:
    another dtype is a TypeError, and an index outside its window (or pointing into the
    padding) an IndexError -- on the GPU possibly raised by a later call, see
    ``kernels.cuda``.
    """
    backend = _backend_name(dout)
    input_shape, ph, pw, stride, pad = _check_pool_backward(
        "maxpool_backward", input_shape, pool_h, pool_w, stride, pad, dout=dout, argmax=argmax
    )
    _check_argmax_dtype(argmax)
    return _run("maxpool_backward", backend, dout, argmax, input_shape, ph, pw, stride, pad)


def _check_argmax_dtype(argmax):
    """An argmax must hold integers: a float one would be truncated to an index silently.
    (The indices' range is checked by the backends, inside the kernels.)"""
    dtype = getattr(argmax, "dtype", None)
    if dtype is None or dtype.kind not in "iu":
        raise TypeError(
            f"maxpool_backward: argmax must be an integer array (the int32 one maxpool_forward "
            f"returns), got {dtype if dtype is not None else type(argmax).__name__}"
        )


def avgpool_forward(x, pool_h, pool_w, stride=1, pad=0):
    """x: (N, C, H, W) -> out: (N, C, out_h, out_w), the mean of each pool_h x pool_w window.

    Padding counts as zeros in the mean (every window divides by pool_h * pool_w), as
    pooling over the book's zero-padded im2col would, and as PyTorch's ``AvgPool2d``
    (``count_include_pad=True``, its default). The window is summed in row-major order and
    divided once, in x's dtype (float16 in float32, rounded once).
    """
    backend = _backend_name(x)
    _check_floating("avgpool_forward", "x", x)
    ph, pw, stride, pad, _, _ = _check_pool("avgpool_forward", x.shape, pool_h, pool_w, stride, pad)
    return _run("avgpool_forward", backend, x, ph, pw, stride, pad)


def avgpool_backward(dout, input_shape, pool_h, pool_w, stride=1, pad=0):
    """dout: (N, C, out_h, out_w) -> dx: input_shape (N, C, H, W), dout's dtype.

    Each input pixel receives the sum of the dout of every window covering it, divided by
    pool_h * pool_w; pixels no window covers (dropped at the edges) receive 0.
    """
    backend = _backend_name(dout)
    _check_floating("avgpool_backward", "dout", dout)
    input_shape, ph, pw, stride, pad = _check_pool_backward(
        "avgpool_backward", input_shape, pool_h, pool_w, stride, pad, dout=dout
    )
    return _run("avgpool_backward", backend, dout, input_shape, ph, pw, stride, pad)


def _check_floating(what, name, a):
    """A mean of integers would need a dtype of its own: the averages take floating arrays."""
    if a.dtype.kind != "f":
        raise TypeError(f"{what}: {name} must be a floating array (float16/32/64), got {a.dtype}")


def _check_conv(what, x_shape, W, stride, pad):
    """``_check`` for x: (N, C, H, W) against filters W: (FN, C, FH, FW)."""
    if len(W.shape) != 4:
        raise ValueError(f"{what}: expected W of shape (FN, C, FH, FW), got {tuple(W.shape)}")
    if len(x_shape) != 4 or x_shape[1] != W.shape[1]:
        raise ValueError(
            f"{what}: x of shape {tuple(x_shape)} does not match W of shape {tuple(W.shape)}; "
            f"expected x of shape (N, {W.shape[1]}, H, W)"
        )
    return _check(what, x_shape, W.shape[2], W.shape[3], stride, pad)


def conv2d_forward(x, W, b, stride=1, pad=0, relu=False):
    """x: (N, C, H, W), W: (FN, C, FH, FW), b: (FN,) -> out: (N, FN, OH, OW), x's dtype.

    ``out[n, f] = sum_c correlate(x[n, c], W[f, c]) + b[f]``, i.e. ``im2col(x) @ W.T + b``
    in NCHW order: what the book's Convolution.forward returns. ``relu=True`` returns
    ``relu_forward(out)`` instead - what a ReLU layer after the convolution returns - in
    the pass that writes out (on the CPU; one pass fewer over the activations).
    """
    backend = _backend_name(x)
    *_, stride, pad, _, _ = _check_conv("conv2d_forward", x.shape, W, stride, pad)
    if b.size != W.shape[0]:
        raise ValueError(
            f"conv2d_forward: b of shape {tuple(b.shape)} does not match {W.shape[0]} filters"
        )
    return _run("conv2d_forward", backend, x, W, b, stride, pad, bool(relu))


def conv2d_backward(x, W, dout, stride=1, pad=0):
    """x: (N, C, H, W), W: (FN, C, FH, FW), dout: (N, FN, OH, OW) -> (dx, dW, db).

    dx: (N, C, H, W), dW: (FN, C, FH, FW), db: (FN,), in dout's dtype: the gradients the
    book's Convolution.backward computes, x being the input of the forward pass.
    """
    backend = _backend_name(x)
    *_, stride, pad, out_h, out_w = _check_conv("conv2d_backward", x.shape, W, stride, pad)
    expected = (x.shape[0], W.shape[0], out_h, out_w)
    if tuple(dout.shape) != expected:
        raise ValueError(
            f"conv2d_backward: dout of shape {tuple(dout.shape)} does not match the forward "
            f"output; expected {expected}"
        )
    return _run("conv2d_backward", backend, x, W, dout, stride, pad)


def relu_forward(x):
    """x: any shape -> out = max(x, 0) (a NaN stays NaN), a new array of x's dtype.

    Reads views with strided rows in place and returns a contiguous array.
    """
    return _run("relu_forward", _backend_name(x), x)


def relu_backward(dout, out):
    """dout, out: the shape of relu_forward's result ``out`` -> dx: 0 where out <= 0
    (exactly where the input was <= 0), else dout; a new array, dout is left as it was."""
    backend = _backend_name(dout)
    if tuple(dout.shape) != tuple(out.shape):
        raise ValueError(
            f"relu_backward: dout of shape {tuple(dout.shape)} does not match the forward "
            f"output of shape {tuple(out.shape)}"
        )
    return _run("relu_backward", backend, dout, out)


def _check_channels(what, name, a, channels):
    # a Python number is one entry (the book's layers take Python floats as parameters)
    if a is None or int(a.size if hasattr(a, "size") else np.size(a)) != channels:
        got = "None" if a is None else f"shape {tuple(np.shape(a))}"
        raise ValueError(f"{what}: {name} must have {channels} entries (one a channel), got {got}")


def channel_norm_forward(x, gamma, beta, eps, mean=None, var=None):
    """x: (N, C, H, W); gamma, beta: C entries -> ``(out, xn, mean, var)``.

    Per-channel batch normalization (``BatchNorm2d`` of other frameworks):
    ``xn = (x - mean) / sqrt(var + eps)``, ``out = gamma * xn + beta``, both x's shape and
    dtype. Without ``mean`` and ``var`` the batch's statistics over (N, H, W) are used (the
    biased variance) and returned, (C,) in x's dtype; with them (C entries each, e.g. the
    running statistics), those.
    """
    backend = _backend_name(x)
    what = "channel_norm_forward"
    if x.ndim != 4:
        raise ValueError(f"{what}: expected x of shape (N, C, H, W), got {tuple(x.shape)}")
    _check_floating(what, "x", x)
    C = x.shape[1]
    _check_channels(what, "gamma", gamma, C)
    _check_channels(what, "beta", beta, C)
    if (mean is None) != (var is None):
        raise ValueError(f"{what}: give both mean and var (the statistics to use) or neither")
    if mean is not None:
        _check_channels(what, "mean", mean, C)
        _check_channels(what, "var", var, C)
    if not float(eps) > 0:
        raise ValueError(f"{what}: eps must be positive, got {eps!r}")
    return _run("channel_norm_forward", backend, x, gamma, beta, float(eps), mean, var)


def channel_norm_backward(dout, xn, gamma, std, batch_statistics):
    """dout, xn: (N, C, H, W); gamma, std: C entries -> ``(dx, dgamma, dbeta)``.

    The gradients of ``channel_norm_forward`` given its ``xn`` and ``std = sqrt(var + eps)``.
    ``batch_statistics``: whether the forward pass used the batch's own statistics
    (training), through which x reaches the output a second time. dx has dout's shape,
    dgamma and dbeta (C,) dout's dtype.
    """
    backend = _backend_name(dout)
    what = "channel_norm_backward"
    if dout.ndim != 4 or tuple(xn.shape) != tuple(dout.shape):
        raise ValueError(
            f"{what}: dout of shape {tuple(dout.shape)} must be (N, C, H, W) and match xn of "
            f"shape {tuple(xn.shape)}"
        )
    _check_floating(what, "dout", dout)
    C = dout.shape[1]
    _check_channels(what, "gamma", gamma, C)
    _check_channels(what, "std", std, C)
    return _run("channel_norm_backward", backend, dout, xn, gamma, std, bool(batch_statistics))
