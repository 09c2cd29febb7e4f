"""The layers of chapter 7: ``Convolution`` and ``Pooling`` (max pooling).

Both follow the book's ``common/layers.py`` -- same constructor arguments, same
attributes (``W``, ``b``, ``stride``, ``pad``, ``x``, ``col``, ``col_W``, ``dW``, ``db``;
``pool_h``, ``pool_w``, ``arg_max``) -- and run on the kernels of the ``kernels`` package,
so the same code runs on NumPy (Numba kernels) and CuPy (CUDA kernels).

dtype: a layer computes in NumPy's promotion of its input and its parameters, as the
book's layers do (float32 images with the book's float64 weights: float64). xpnet's
networks cast their input to their own dtype, so a float32 network stays float32.

Output sizes are floored as in the book's im2col, ``1 + (H + 2*pad - FH) // stride``:
windows that would run past the bottom/right edge are dropped.
"""

from __future__ import annotations

import numpy as np

from xpnet import kernels, threads
from xpnet.backend import get_array_module, is_gpu_array

__all__ = ["AvgPooling", "Convolution", "GlobalAvgPooling", "Pooling"]


def _check_input(layer: str, x, channels: int | None = None):
    """x as a 4-D floating array (a nested list becomes a NumPy array, as for the other
    layers); ValueError/TypeError naming ``layer`` otherwise."""
    if not hasattr(x, "dtype"):
        x = np.asarray(x)  # Python lists (CPU only)
    shape = tuple(x.shape)
    if len(shape) != 4:
        raise ValueError(
            f"{layer}: expected a 4-D input (N, C, H, W), got shape {shape}; "
            "reshape flat images with x.reshape(-1, C, H, W)"
        )
    if x.dtype.kind != "f":
        raise TypeError(
            f"{layer}: expected a floating input (float16, float32 or float64), got {x.dtype}"
        )
    if shape[0] == 0:
        raise ValueError(f"{layer}: the input batch is empty, shape {shape}")
    if channels is not None and shape[1] != channels:
        raise ValueError(
            f"{layer}: input of shape {shape} has {shape[1]} channels, but the filters "
            f"expect C={channels} (input (N, {channels}, H, W))"
        )
    return x


def _window_argument(layer: str, name: str, value, minimum: int) -> int:
    """``value`` as an int for the argument ``name`` of ``layer`` (stride, pad, pool size).

    One integer for both axes, as in the book: a tuple, a float such as ``1.5`` (never
    truncated silently) or a value below ``minimum`` is an error naming the layer.
    """
    if isinstance(value, (tuple, list)):
        raise TypeError(
            f"{layer}: {name} must be one integer used for both height and width, got "
            f"{value!r}; per-axis values are not supported"
        )
    return kernels.check_integer(f"{layer}: {name}", value, minimum)


def _pool_window(layer: str, pool_h, pool_w, stride, pad) -> tuple[int, int, int, int]:
    """A pooling layer's (pool_h, pool_w, stride, pad), each checked by ``_window_argument``."""
    return (_window_argument(layer, "pool_h", pool_h, 1),
            _window_argument(layer, "pool_w", pool_w, 1),
            _window_argument(layer, "stride", stride, 1),
            _window_argument(layer, "pad", pad, 0))


def _check_window_fits(layer, shape, axis, size, window, pad):
    if window > size + 2 * pad:
        raise ValueError(
            f"{layer}: the filter {axis} {window} is larger than the padded input {axis} "
            f"{size + 2 * pad} (input shape {shape}, pad {pad})"
        )


def _bias_vector(b, filters: int, layer: str = "Convolution"):
    """The bias as given, checked: one value per filter, (FN,) or (FN, 1, 1), or a scalar
    that every filter shares (the book's ``Convolution(W, 0)``)."""
    shape = tuple(getattr(b, "shape", ()))
    if shape not in ((), (filters,), (filters, 1, 1)):
        raise ValueError(
            f"{layer}: b must have shape ({filters},) for {filters} filters, or be a scalar, "
            f"got shape {shape}"
        )
    return b


class Convolution:
    """Convolution layer; W: (FN, C, FH, FW), b: (FN,) or a scalar shared by all filters;
    x: (N, C, H, W) -> (N, FN, OH, OW).

    ``W`` and ``b`` are kept by reference (as in the book), so an optimizer updating the
    network's ``params`` in place updates the layer too. ``stride`` and ``pad`` are one
    integer each (for both axes).
    """

    param_names = ("W", "b")  # the layer contract (xpnet.models.Network)

    def __init__(self, W, b, stride=1, pad=0):
        if getattr(W, "ndim", None) != 4:
            raise ValueError(
                f"Convolution: W must be 4-D (FN, C, FH, FW), got shape {getattr(W, 'shape', W)}"
            )
        self.W = W
        self.b = _bias_vector(b, W.shape[0])
        self.stride = _window_argument("Convolution", "stride", stride, 1)
        self.pad = _window_argument("Convolution", "pad", pad, 0)

        # intermediate data (used by backward)
        self.x = None
        self._col = None
        self.col_W = None

        # gradients of the weight and bias
        self.dW = None
        self.db = None

    def forward(self, x, *, relu=False):
        """x: (N, C, H, W) -> out: (N, FN, OH, OW), in NumPy's promotion of x, W and b.

        ``relu=True`` (keyword only, beyond the book) returns the output of a ``Relu`` layer
        after this one instead, made in the same pass (``kernels.conv2d_forward``); the
        network hands it to that layer (:meth:`xpnet.layers.Relu.take_output`). This
        layer's backward is the same either way: it needs only x.
        """
        FN, C, FH, FW = self.W.shape
        x = _check_input("Convolution", x, C)
        _, _, H, W = x.shape
        _check_window_fits("Convolution", x.shape, "height", H, FH, self.pad)
        _check_window_fits("Convolution", x.shape, "width", W, FW, self.pad)
        xp = get_array_module(x, self.W)  # refuses a CPU batch for GPU weights and vice versa
        if not is_gpu_array(x):
            threads.ensure_default()  # kernel workers with single-threaded BLAS, once

        # The kernels take one dtype; casting is a no-op when x, W and b already agree.
        dtype = xp.result_type(x, self.W, self.b)
        x = x.astype(dtype, copy=False)
        col_W = self.W.reshape(FN, -1).T.astype(dtype, copy=False)  # (C*FH*FW, FN)
        b = xp.asarray(self.b, dtype=dtype).reshape(-1)
        if b.size != FN:  # a scalar bias, shared by every filter
            b = xp.full(FN, b[0], dtype=dtype)
        if self._pointwise():
            out = _pointwise_forward(x, col_W.T, b, self.stride)
            if relu:
                out = kernels.relu_forward(out)
        else:
            # = im2col(x) @ col_W + b in NCHW order, without materializing col on the CPU
            out = kernels.conv2d_forward(x, col_W.T.reshape(self.W.shape), b, self.stride,
                                         self.pad, relu=relu)

        self.x = x
        self._col = None
        self.col_W = col_W
        return out

    def _pointwise(self) -> bool:
        """A 1x1 filter without padding on the GPU: each output pixel is a (FN, C) GEMM of
        one input pixel, so no im2col is needed. (The CPU kernels never build the im2col
        matrix and spread the work over every core: measured faster there, 1.4-1.5x on
        2 cores at batch 100, so the CPU keeps them.)"""
        return (self.W.shape[2] == self.W.shape[3] == 1 and self.pad == 0
                and is_gpu_array(self.W))

    @property
    def col(self):
        """im2col of the last input, (N*OH*OW, C*FH*FW) -- built on first access only.

        The kernels never need it whole (backward recomputes it chunk by chunk), so it is
        not kept between forward and backward; reading it costs one im2col.
        """
        if self._col is None and self.x is not None:
            _, _, FH, FW = self.W.shape
            self._col = kernels.im2col(self.x, FH, FW, self.stride, self.pad)
        return self._col

    @col.setter
    def col(self, value):
        self._col = value

    def backward(self, dout):
        """dout: (N, FN, OH, OW) -> dx: (N, C, H, W); sets dW (FN, C, FH, FW) and db (FN,)
        (per filter, also for a scalar ``b``, as in the book)."""
        if self.x is None:
            raise RuntimeError("Convolution: backward() was called before forward()")
        if self._pointwise():
            dx, dW, self.db = _pointwise_backward(self.x, self.col_W.T, dout, self.stride)
            self.dW = dW.reshape(self.W.shape)
            return dx
        W = self.col_W.T.reshape(self.W.shape)  # W in the dtype of the forward pass
        dx, self.dW, self.db = kernels.conv2d_backward(self.x, W, dout, self.stride, self.pad)
        return dx


def _pointwise_input(x, stride):
    """x: (N, C, H, W) -> (N, C, OH*OW): the pixels a 1x1 filter with ``stride`` sees."""
    if stride > 1:
        x = x[:, :, ::stride, ::stride]  # OH = 1 + (H - 1) // stride, as conv_output_size
    N, C, OH, OW = x.shape
    return x.reshape(N, C, OH * OW), (OH, OW)  # a copy only when strided


def _pointwise_forward(x, W2, b, stride):
    """1x1 convolution: x (N, C, H, W), W2 (FN, C), b (FN,) -> (N, FN, OH, OW)."""
    xp = get_array_module(x, W2)
    x3, (OH, OW) = _pointwise_input(x, stride)
    out = xp.matmul(W2, x3)  # (N, FN, OH*OW): one GEMM per image, no im2col
    out += b.reshape(1, -1, 1)
    return out.reshape(x.shape[0], W2.shape[0], OH, OW)


def _pointwise_backward(x, W2, dout, stride):
    """Gradients of :func:`_pointwise_forward`: dout (N, FN, OH, OW) ->
    dx (N, C, H, W), dW (FN, C), db (FN,), in dout's dtype (as ``conv2d_backward``)."""
    xp = get_array_module(x, W2)
    N, C, H, W = x.shape
    FN = W2.shape[0]
    OH = kernels.conv_output_size(H, 1, stride, 0)
    OW = kernels.conv_output_size(W, 1, stride, 0)
    if tuple(dout.shape) != (N, FN, OH, OW):
        raise ValueError(
            f"Convolution: dout of shape {tuple(dout.shape)} does not match the forward "
            f"output of shape {(N, FN, OH, OW)}"
        )
    dtype = dout.dtype
    x3, _ = _pointwise_input(x.astype(dtype, copy=False), stride)
    W2 = W2.astype(dtype, copy=False)
    d3 = dout.reshape(N, FN, OH * OW)
    db = d3.sum(axis=(0, 2))
    dW = xp.tensordot(d3, x3, axes=([0, 2], [0, 2]))  # (FN, C), one GEMM over the batch
    dx3 = xp.matmul(W2.T, d3)  # (N, C, OH*OW)
    if stride == 1:
        return dx3.reshape(x.shape), dW, db
    dx = xp.zeros(x.shape, dtype=dtype)
    dx[:, :, ::stride, ::stride] = dx3.reshape(N, C, OH, OW)  # pixels the filter skipped: 0
    return dx, dW, db


class Pooling:
    """Max pooling; x: (N, C, H, W) -> (N, C, OH, OW), OH = (H + 2*pad - pool_h)//stride + 1.

    Windows that do not fit at the right/bottom edge are dropped, as in the book.
    ``arg_max`` (int32, (N, C, OH, OW)) is the row-major index of each maximum within its
    window; backward routes the gradient there.
    """

    def __init__(self, pool_h, pool_w, stride=2, pad=0):
        self.pool_h, self.pool_w, self.stride, self.pad = _pool_window(
            "Pooling", pool_h, pool_w, stride, pad)

        self.x = None
        self.arg_max = None

    def forward(self, x):
        """x: (N, C, H, W) -> out: (N, C, OH, OW), in x's dtype."""
        x = _check_input("Pooling", x)
        for axis, size, window in (
            ("height", x.shape[2], self.pool_h),
            ("width", x.shape[3], self.pool_w),
        ):
            if window > size + 2 * self.pad:
                raise ValueError(
                    f"Pooling: the {self.pool_h}x{self.pool_w} window is larger than the padded "
                    f"input {axis} {size + 2 * self.pad} (input shape {tuple(x.shape)}, "
                    f"pad {self.pad})"
                )
        out, self.arg_max = kernels.maxpool_forward(
            x, self.pool_h, self.pool_w, self.stride, self.pad
        )
        self.x = x
        return out

    def backward(self, dout):
        """dout: (N, C, OH, OW) -> dx: (N, C, H, W)."""
        if self.x is None:
            raise RuntimeError("Pooling: backward() was called before forward()")
        return kernels.maxpool_backward(
            dout, self.arg_max, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad
        )


class AvgPooling:
    """Average pooling; x: (N, C, H, W) -> (N, C, OH, OW), OH = (H + 2*pad - pool_h)//stride + 1.

    Each output is the mean of its pool_h x pool_w window; padding counts as zeros (every
    window divides by pool_h * pool_w, as PyTorch's ``AvgPool2d`` default). Windows that do
    not fit at the right/bottom edge are dropped, as ``Pooling`` drops them; the pad must be
    smaller than the window. Backward shares each dout evenly over its window.
    """

    def __init__(self, pool_h, pool_w, stride=2, pad=0):
        self.pool_h, self.pool_w, self.stride, self.pad = _pool_window(
            "AvgPooling", pool_h, pool_w, stride, pad)
        self.input_shape = None

    def forward(self, x):
        """x: (N, C, H, W) -> out: (N, C, OH, OW), in x's dtype."""
        x = _check_input("AvgPooling", x)
        out = kernels.avgpool_forward(x, self.pool_h, self.pool_w, self.stride, self.pad)
        self.input_shape = tuple(x.shape)
        return out

    def backward(self, dout):
        """dout: (N, C, OH, OW) -> dx: (N, C, H, W)."""
        if self.input_shape is None:
            raise RuntimeError("AvgPooling: backward() was called before forward()")
        return kernels.avgpool_backward(
            dout, self.input_shape, self.pool_h, self.pool_w, self.stride, self.pad
        )


class GlobalAvgPooling:
    """Global average pooling: x: (N, C, H, W) -> (N, C), the mean of each channel's plane.

    An ``AvgPooling`` whose window is the whole image (the head of networks that end in
    one value per channel instead of a large Affine layer).
    """

    def __init__(self):
        self.input_shape = None

    @staticmethod
    def output_shape(input_shape):
        """Per-sample output shape (C,) for an input (C, H, W) (the layer contract)."""
        return (int(input_shape[0]),)

    def forward(self, x):
        """x: (N, C, H, W) -> out: (N, C), in x's dtype."""
        x = _check_input("GlobalAvgPooling", x)
        N, C, H, W = x.shape
        out = kernels.avgpool_forward(x, H, W, 1, 0)  # (N, C, 1, 1)
        self.input_shape = tuple(x.shape)
        return out.reshape(N, C)

    def backward(self, dout):
        """dout: (N, C) -> dx: (N, C, H, W), each pixel dout / (H * W)."""
        if self.input_shape is None:
            raise RuntimeError("GlobalAvgPooling: backward() was called before forward()")
        N, C, H, W = self.input_shape
        if tuple(dout.shape) != (N, C):
            raise ValueError(
                f"GlobalAvgPooling: dout of shape {tuple(dout.shape)} does not match the "
                f"forward output; expected {(N, C)}"
            )
        return kernels.avgpool_backward(dout.reshape(N, C, 1, 1), self.input_shape, H, W, 1, 0)
