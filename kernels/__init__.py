"""xpnet.kernels: the convolution core - im2col, col2im, max-pool, the fused convolution, ReLU.

The repository keeps this package in its top-level ``kernels/`` folder; it installs and
imports as ``xpnet.kernels``. It depends on ``xpnet.backend`` only, and the layers
(``xpnet.layers``, ``xpnet.convolution``, ``xpnet.util``) depend on it.

The entry points below are the contract. Each takes arrays of one backend and returns arrays
of the same backend, dtype and device; each checks its shapes and window arguments first
(``check_integer``, and the output size ``conv_output_size``), so a bad one is one
ValueError or TypeError naming it, never an out-of-bounds access in a kernel. Then it
dispatches on the array's module: NumPy arrays go to ``xpnet.kernels.cpu`` (Numba ``@njit``),
CuPy arrays to ``xpnet.kernels.cuda`` (Numba CUDA, imported only when a CuPy array arrives,
so importing this package never needs CUDA). An op that a backend module does not define -
the convolution pair and ReLU on CuPy - falls back to ``xpnet.kernels.generic``: the book's
im2col + GEMM + col2im, and array expressions, on the array's own namespace.
``xpnet.kernels.reference`` holds plain versions with the same signatures: the tests' oracle.

Layout (the book's): ``col`` has rows ordered (N, out_h, out_w) and columns ordered
(C, FH, FW), so ``W.reshape(FN, -1).T`` multiplies it directly.

    col = im2col(x, FH, FW, stride, pad)                 # x: (N, C, H, W)
    dx = col2im(dcol, x.shape, FH, FW, stride, pad)      # the adjoint of im2col
    out, argmax = maxpool_forward(x, PH, PW, stride, pad)
    dx = maxpool_backward(dout, argmax, x.shape, PH, PW, stride, pad)

    out = conv2d_forward(x, W, b, stride, pad)           # the Convolution layer's products
    dx, dW, db = conv2d_backward(x, W, dout, stride, pad)

    out = relu_forward(x)                                # max(x, 0): one pass, no mask
    dx = relu_backward(dout, out)                        # 0 where out <= 0, else dout

The convolution pair is fused on the CPU (im2col and GEMM per cache-sized chunk, so the full
``col`` is never built: it would not fit the caches); on the GPU one large cuBLAS product
over the whole ``col`` is the fast way, which is what the generic fallback does.
"""

from __future__ import annotations

import operator

from xpnet.kernels.reference import conv_output_size

__all__ = [
    "check_integer",
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "conv_output_size",
    "im2col",
    "maxpool_backward",
    "maxpool_forward",
    "relu_backward",
    "relu_forward",
]


def _backend(a):
    """The kernel module for an array: xpnet.kernels.cpu for NumPy, .cuda for CuPy."""
    module = type(a).__module__.partition(".")[0]
    if module == "numpy":
        from xpnet.kernels import cpu

        return cpu
    if module == "cupy":
        from xpnet.kernels import cuda

        return cuda
    raise TypeError(
        f"kernels take a numpy.ndarray or a cupy.ndarray, got {type(a).__module__}."
        f"{type(a).__name__}"
    )


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
    backend = _backend(x)
    fh, fw, stride, pad, _, _ = _check("im2col", x.shape, filter_h, filter_w, stride, pad)
    return backend.im2col(x, fh, fw, stride, pad)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """col: (N*out_h*out_w, C*filter_h*filter_w) -> x: input_shape (N, C, H, W), overlaps summed."""
    backend = _backend(col)
    input_shape = tuple(int(s) for s in input_shape)
    fh, fw, stride, pad, out_h, out_w = _check(
        "col2im", input_shape, filter_h, filter_w, stride, pad
    )
    N, C = input_shape[:2]
    expected = (N * out_h * out_w, C * fh * fw)
    if tuple(col.shape) != expected:
        raise ValueError(
            f"col2im: col of shape {tuple(col.shape)} does not match input_shape {input_shape} "
            f"with a {fh}x{fw} filter, stride {stride}, pad {pad}; expected {expected}"
        )
    return backend.col2im(col, input_shape, fh, fw, stride, pad)


def _check_pool(what, shape, pool_h, pool_w, stride, pad):
    """``_check`` for a pooling window, which must also be wider than the padding."""
    checked = _check(what, shape, pool_h, pool_w, stride, pad, "pool_h", "pool_w")
    ph, pw, _, pad = checked[:4]
    if pad >= min(ph, pw):
        # a wider pad would make windows of padding only, which have no maximum
        raise ValueError(f"{what}: pad must be smaller than the {ph}x{pw} window, got {pad}")
    return checked


def maxpool_forward(x, pool_h, pool_w, stride=1, pad=0):
    """x: (N, C, H, W) -> (out, argmax), both (N, C, out_h, out_w); argmax int32 in-window."""
    backend = _backend(x)
    ph, pw, stride, pad, _, _ = _check_pool("maxpool_forward", x.shape, pool_h, pool_w, stride, pad)
    return backend.maxpool_forward(x, ph, pw, stride, pad)


def maxpool_backward(dout, argmax, input_shape, pool_h, pool_w, stride=1, pad=0):
    """dout, argmax: (N, C, out_h, out_w) -> dx: input_shape (N, C, H, W).

    ``argmax`` must be an integer array of in-window indices, as maxpool_forward returns:
    another dtype is a TypeError, and an index outside its window (or pointing into the
    padding) an IndexError -- on the GPU possibly raised by a later call, see
    ``kernels.cuda``.
    """
    backend = _backend(dout)
    input_shape = tuple(int(s) for s in input_shape)
    ph, pw, stride, pad, out_h, out_w = _check_pool(
        "maxpool_backward", input_shape, pool_h, pool_w, stride, pad
    )
    _check_argmax_dtype(argmax)
    expected = (*input_shape[:2], out_h, out_w)
    for name, a in (("dout", dout), ("argmax", argmax)):
        if tuple(a.shape) != expected:
            raise ValueError(
                f"maxpool_backward: {name} of shape {tuple(a.shape)} does not match input_shape "
                f"{input_shape} with a {ph}x{pw} window, stride {stride}, pad {pad}; "
                f"expected {expected}"
            )
    return backend.maxpool_backward(dout, argmax, input_shape, ph, pw, stride, pad)


def _check_argmax_dtype(argmax):
    """An argmax must hold integers: a float one would be truncated to an index silently.
    (The indices' range is checked by the backends, inside the kernels.)"""
    dtype = getattr(argmax, "dtype", None)
    if dtype is None or dtype.kind not in "iu":
        raise TypeError(
            f"maxpool_backward: argmax must be an integer array (the int32 one maxpool_forward "
            f"returns), got {dtype if dtype is not None else type(argmax).__name__}"
        )


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


def _impl(a, name):
    """Op ``name`` of ``a``'s backend module, else the generic version (im2col + GEMM)."""
    backend = _backend(a)
    if hasattr(backend, name):
        return getattr(backend, name)
    from xpnet.kernels import generic

    return getattr(generic, name)


def conv2d_forward(x, W, b, stride=1, pad=0):
    """x: (N, C, H, W), W: (FN, C, FH, FW), b: (FN,) -> out: (N, FN, OH, OW), x's dtype.

    ``out[n, f] = sum_c correlate(x[n, c], W[f, c]) + b[f]``, i.e. ``im2col(x) @ W.T + b``
    in NCHW order: what the book's Convolution.forward returns.
    """
    impl = _impl(x, "conv2d_forward")
    *_, stride, pad, _, _ = _check_conv("conv2d_forward", x.shape, W, stride, pad)
    if b.size != W.shape[0]:
        raise ValueError(
            f"conv2d_forward: b of shape {tuple(b.shape)} does not match {W.shape[0]} filters"
        )
    return impl(x, W, b, stride, pad)


def conv2d_backward(x, W, dout, stride=1, pad=0):
    """x: (N, C, H, W), W: (FN, C, FH, FW), dout: (N, FN, OH, OW) -> (dx, dW, db).

    dx: (N, C, H, W), dW: (FN, C, FH, FW), db: (FN,), in dout's dtype: the gradients the
    book's Convolution.backward computes, x being the input of the forward pass.
    """
    impl = _impl(x, "conv2d_backward")
    *_, stride, pad, out_h, out_w = _check_conv("conv2d_backward", x.shape, W, stride, pad)
    expected = (x.shape[0], W.shape[0], out_h, out_w)
    if tuple(dout.shape) != expected:
        raise ValueError(
            f"conv2d_backward: dout of shape {tuple(dout.shape)} does not match the forward "
            f"output; expected {expected}"
        )
    return impl(x, W, dout, stride, pad)


def relu_forward(x):
    """x: any shape -> out = max(x, 0) (a NaN stays NaN), a new array of x's dtype.

    Reads views with strided rows in place and returns a contiguous array.
    """
    return _impl(x, "relu_forward")(x)


def relu_backward(dout, out):
    """dout, out: the shape of relu_forward's result ``out`` -> dx: 0 where out <= 0
    (exactly where the input was <= 0), else dout; a new array, dout is left as it was."""
    if tuple(dout.shape) != tuple(out.shape):
        raise ValueError(
            f"relu_backward: dout of shape {tuple(dout.shape)} does not match the forward "
            f"output of shape {tuple(out.shape)}"
        )
    return _impl(dout, "relu_backward")(dout, out)
