"""The layers of chapter 7: ``Convolution`` and ``Pooling`` (max pooling).

Both follow the book's ``common/layers.py`` -- same constructor arguments, same
attributes (``W``, ``b``, ``stride``, ``pad``, ``x``, ``col``, ``col_W``, ``dW``, ``db``;
``pool_h``, ``pool_w``, ``arg_max``) -- and run on the kernels of the ``kernels`` package,
so the same code runs on NumPy (Numba kernels) and CuPy (CUDA kernels).

Layers compute in the dtype of the input they are given: a float32 batch is never
promoted to float64 by float64 weights (the weights are cast for the product instead).
"""

from __future__ import annotations

from xpnet import kernels, threads
from xpnet.backend import get_array_module, is_gpu_array

__all__ = ["Convolution", "Pooling"]


def _check_input(layer: str, x, channels: int | None = None) -> None:
    shape = tuple(getattr(x, "shape", ()))
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


def _output_size(layer, shape, axis, size, window, stride, pad):
    padded = size + 2 * pad
    if window > padded:
        raise ValueError(
            f"{layer}: the filter {axis} {window} is larger than the padded input {axis} "
            f"{padded} (input shape {shape}, pad {pad})"
        )
    if (padded - window) % stride:
        raise ValueError(
            f"{layer}: stride {stride} does not tile the padded input {axis} {padded} with a "
            f"filter of {window} (input shape {shape}, pad {pad}); expected "
            f"({axis} + 2*pad - filter) divisible by the stride"
        )
    return (padded - window) // stride + 1


class Convolution:
    """Convolution layer; W: (FN, C, FH, FW), b: (FN,); x: (N, C, H, W) -> (N, FN, OH, OW).

    ``W`` and ``b`` are kept by reference (as in the book), so an optimizer updating the
    network's ``params`` in place updates the layer too.
    """

    param_names = ("W", "b")  # the layer contract (xpnet.models.Network)

    def __init__(self, W, b, stride=1, pad=0):
        if getattr(W, "ndim", None) != 4:
            raise ValueError(
                f"Convolution: W must be 4-D (FN, C, FH, FW), got shape {getattr(W, 'shape', W)}"
            )
        if tuple(getattr(b, "shape", ())) not in ((W.shape[0],), (W.shape[0], 1, 1)):
            raise ValueError(
                f"Convolution: b must have shape ({W.shape[0]},) for W of shape {W.shape}, got "
                f"{getattr(b, 'shape', b)}"
            )
        if int(stride) < 1 or int(pad) < 0:
            raise ValueError(f"Convolution: need stride >= 1 and pad >= 0, got {stride}, {pad}")
        self.W = W
        self.b = b
        self.stride = int(stride)
        self.pad = int(pad)

        # intermediate data (used by backward)
        self.x = None
        self._col = None
        self.col_W = None

        # gradients of the weight and bias
        self.dW = None
        self.db = None

    def forward(self, x):
        """x: (N, C, H, W) -> out: (N, FN, OH, OW), in x's dtype."""
        FN, C, FH, FW = self.W.shape
        _check_input("Convolution", x, C)
        _, _, H, W = x.shape
        _output_size("Convolution", x.shape, "height", H, FH, self.stride, self.pad)
        _output_size("Convolution", x.shape, "width", W, FW, self.stride, self.pad)
        get_array_module(x, self.W)  # refuses a CPU batch for GPU weights and vice versa
        if not is_gpu_array(x):
            threads.ensure_default()  # kernel workers with single-threaded BLAS, once

        col_W = self.W.reshape(FN, -1).T.astype(x.dtype, copy=False)  # (C*FH*FW, FN)
        b = self.b.reshape(FN).astype(x.dtype, copy=False)
        # = im2col(x) @ col_W + b in NCHW order, without materializing col on the CPU
        out = kernels.conv2d_forward(x, col_W.T.reshape(self.W.shape), b, self.stride, self.pad)

        self.x = x
        self._col = None
        self.col_W = col_W
        return out

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
        """dout: (N, FN, OH, OW) -> dx: (N, C, H, W); sets dW (FN, C, FH, FW) and db (FN,)."""
        if self.x is None:
            raise RuntimeError("Convolution: backward() was called before forward()")
        W = self.col_W.T.reshape(self.W.shape)  # W in the dtype of the forward pass
        dx, self.dW, self.db = kernels.conv2d_backward(self.x, W, dout, self.stride, self.pad)
        return dx


class Pooling:
    """Max pooling; x: (N, C, H, W) -> (N, C, OH, OW), OH = (H + 2*pad - pool_h)//stride + 1.

    Windows that do not fit at the right/bottom edge are dropped, as in the book.
    ``arg_max`` (int32, (N, C, OH, OW)) is the row-major index of each maximum within its
    window; backward routes the gradient there.
    """

    def __init__(self, pool_h, pool_w, stride=2, pad=0):
        self.pool_h = int(pool_h)
        self.pool_w = int(pool_w)
        self.stride = int(stride)
        self.pad = int(pad)

        self.x = None
        self.arg_max = None

    def forward(self, x):
        """x: (N, C, H, W) -> out: (N, C, OH, OW), in x's dtype."""
        _check_input("Pooling", x)
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
