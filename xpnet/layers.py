"""The layers of chapters 5-7 (the book's ``common/layers.py``), on NumPy or CuPy.

Every layer has ``forward`` and ``backward(dout)``; layers with parameters keep
references to them (``W``, ``b``, ``gamma``, ``beta``) and leave their gradients in
``dW``, ``db`` (``dgamma``, ``dbeta``) after ``backward``. Parameters are updated in
place by the optimizers, so a layer always sees the current values. What a network reads
of a layer (``param_names``, ``buffer_names``, ``takes_train_flg``) is the layer contract
of :class:`xpnet.models.Network`.

dtype: a layer computes in the dtype of what it is given -- float32 in, float32 out;
with parameters, NumPy's promotion of input and parameters, as the book's layers do (the
same dtype when both match, as in every network xpnet builds, which casts its input).
Bad input raises one clear error: TypeError for non-floating arrays, ValueError for
empty batches and shape mismatches.

``Convolution`` and ``Pooling`` (chapter 7) live in ``xpnet.convolution`` and are
re-exported here, so ``from xpnet.layers import *`` is the book's ``common.layers``.
"""

from __future__ import annotations

import math

import numpy as np

from xpnet import kernels
from xpnet.backend import (
    device_step_values,
    get_array_module,
    get_rng,
    is_gpu_array,
    next_device_draw,
)
from xpnet.functions import _check_probabilities, check_targets, sigmoid, softmax_cross_entropy

__all__ = [
    "MulLayer",
    "AddLayer",
    "Relu",
    "Sigmoid",
    "Affine",
    "SoftmaxWithLoss",
    "Dropout",
    "BatchNormalization",
]


# ---------------------------------------------------------------------------
# Checks shared by the layers
# ---------------------------------------------------------------------------


def check_input(x, layer: str, name: str = "x"):
    """``x`` as a non-empty floating array; TypeError/ValueError naming ``layer`` otherwise."""
    if not hasattr(x, "dtype"):
        x = np.asarray(x)  # Python numbers and lists (CPU only)
    if x.dtype.kind != "f":
        raise TypeError(
            f"{layer}: {name} must be a floating array (float16, float32 or float64), "
            f"got dtype {x.dtype}; convert it with {name}.astype(np.float32)"
        )
    if x.size == 0:
        raise ValueError(f"{layer}: {name} of shape {x.shape} is empty (an empty batch?)")
    return x


def check_dout(dout, expected_shape, layer: str):
    """``dout`` must have the shape of the forward output (scalars broadcast)."""
    if expected_shape is None:
        raise RuntimeError(f"{layer}: backward() was called before forward()")
    shape = getattr(dout, "shape", ())
    if shape != () and tuple(shape) != tuple(expected_shape):
        raise ValueError(
            f"{layer}: dout of shape {tuple(shape)} does not match the forward output "
            f"of shape {tuple(expected_shape)}"
        )
    return dout


def _unbroadcast(grad, shape):
    """Sum ``grad`` over the axes along which an input of ``shape`` was broadcast."""
    if getattr(grad, "shape", ()) == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad


# ---------------------------------------------------------------------------
# Chapter 5: computational graphs
# ---------------------------------------------------------------------------


class MulLayer:
    """``out = x * y`` (numbers or arrays, broadcasting); backward gives ``(dx, dy)``."""

    def __init__(self):
        self.x = None
        self.y = None

    def forward(self, x, y):
        self.x = x
        self.y = y
        return x * y

    def backward(self, dout):
        if self.x is None:
            raise RuntimeError("MulLayer: backward() was called before forward()")
        dx = _unbroadcast(dout * self.y, np.shape(self.x))  # swap x and y
        dy = _unbroadcast(dout * self.x, np.shape(self.y))
        return dx, dy


class AddLayer:
    """``out = x + y`` (numbers or arrays, broadcasting); backward passes ``dout`` to both."""

    def __init__(self):
        self.x_shape = None
        self.y_shape = None

    def forward(self, x, y):
        self.x_shape = np.shape(x)
        self.y_shape = np.shape(y)
        return x + y

    def backward(self, dout):
        if self.x_shape is None:
            raise RuntimeError("AddLayer: backward() was called before forward()")
        dx = _unbroadcast(dout * 1, self.x_shape)
        dy = _unbroadcast(dout * 1, self.y_shape)
        return dx, dy


class Relu:
    """``max(0, x)``; x: any shape.

    Keeps its output ``out`` for backward, as ``Sigmoid`` does (the book's ``mask``, the
    entries where x <= 0, is exactly ``out <= 0`` and is derived from it on access): no
    mask array is stored, and on the CPU forward and backward are one pass each
    (``kernels.relu_forward``/``relu_backward``). As with ``Sigmoid``, modifying the
    returned array in place before ``backward`` changes the gradient.
    """

    def __init__(self):
        self.out = None

    @property
    def mask(self):
        """Boolean array, True where the last input was <= 0 (the book's attribute)."""
        return None if self.out is None else self.out <= 0

    def forward(self, x):
        x = check_input(x, "Relu")
        self.out = kernels.relu_forward(x)
        return self.out

    def take_output(self, out):
        """Take ``out``, this layer's forward output made by the layer before it in the same
        pass (``Convolution.forward(x, relu=True)``), as if ``forward`` had computed it:
        ``backward`` then works from it. Returns it."""
        self.out = out
        return out

    def backward(self, dout):
        check_dout(dout, None if self.out is None else self.out.shape, "Relu")
        xp = get_array_module(dout, self.out)  # refuses arrays of two devices
        if not hasattr(dout, "dtype") or dout.shape != self.out.shape:  # a scalar
            dout = xp.broadcast_to(xp.asarray(dout, dtype=self.out.dtype), self.out.shape)
        # A new array: the book zeroes dout in place, which would corrupt a caller's array.
        # Zeroed units pass 0, as the book's dout[mask] = 0 does.
        return kernels.relu_backward(dout, self.out)


class Sigmoid:
    """``1 / (1 + exp(-x))``; x: any shape. Keeps its output ``out`` for backward."""

    def __init__(self):
        self.out = None

    def forward(self, x):
        x = check_input(x, "Sigmoid")
        self.out = sigmoid(x)
        return self.out

    def backward(self, dout):
        check_dout(dout, None if self.out is None else self.out.shape, "Sigmoid")
        return dout * (1.0 - self.out) * self.out


def _dot(a, b, xp):
    """``a @ b`` in their (common) dtype. NumPy has no BLAS for float16, and its own float16
    product is ~100x slower than float32's: there the product runs in float32 and is rounded
    to float16 once (more accurate too). CuPy's float16 product uses cuBLAS as it is."""
    if xp is np and a.dtype == np.float16:
        return np.dot(a.astype(np.float32), b.astype(np.float32)).astype(np.float16)
    return xp.dot(a, b)


class Affine:
    """``out = x @ W + b``. W: (D, M), b: (M,).

    x: (N, D), or any rank (N, d1, d2, ...) with d1*d2*... == D (flattened per sample,
    e.g. a conv output (N, C, H, W)), or one sample (D,). ``dx`` has x's shape.
    """

    param_names = ("W", "b")  # the layer contract (xpnet.models.Network)

    def __init__(self, W, b):
        self.W = W
        self.b = b
        self.x = None
        self.original_x_shape = None
        self.dW = None
        self.db = None

    def _check(self, x):
        W, b = self.W, self.b
        if getattr(W, "ndim", None) != 2:
            raise ValueError(
                f"Affine: W must be 2-D (in_features, out_features), got shape {np.shape(W)}"
            )
        if np.size(b) != W.shape[1] or np.shape(b)[-1:] != (W.shape[1],):
            raise ValueError(
                f"Affine: b of shape {np.shape(b)} does not match W of shape {W.shape}; "
                f"expected b of shape ({W.shape[1]},)"
            )
        x = check_input(x, "Affine")
        features = x.size if x.ndim <= 1 else math.prod(x.shape[1:])
        if x.ndim == 0 or features != W.shape[0]:
            raise ValueError(
                f"Affine: x of shape {x.shape} has {features} features per sample, but W of "
                f"shape {W.shape} expects {W.shape[0]}; pass x of shape (N, {W.shape[0]})"
            )
        return x

    def forward(self, x):
        x = self._check(x)
        xp = get_array_module(x, self.W, self.b)
        self.original_x_shape = x.shape
        x2 = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)
        # Mixed dtypes (the book's float32 images with float64 weights) are promoted as
        # NumPy would, but explicitly: a mixed-dtype matmul skips BLAS and is ~30x slower.
        dtype = xp.result_type(x2.dtype, self.W.dtype, self.b.dtype)
        self.x = x2.astype(dtype, copy=False)
        out = _dot(self.x, self.W.astype(dtype, copy=False), xp) + self.b.reshape(-1)
        return out.reshape(-1) if x.ndim == 1 else out

    def backward(self, dout):
        if self.original_x_shape is None:
            raise RuntimeError("Affine: backward() was called before forward()")
        expected = (self.W.shape[1],) if len(self.original_x_shape) == 1 else (
            self.x.shape[0], self.W.shape[1])
        check_dout(dout, expected, "Affine")
        xp = get_array_module(dout, self.W)
        dtype = xp.result_type(self.x.dtype, getattr(dout, "dtype", self.x.dtype))
        dout = xp.broadcast_to(xp.asarray(dout, dtype=dtype), expected)  # scalars too
        dout2 = dout.reshape(self.x.shape[0], -1)
        dx = _dot(dout2, self.W.astype(dtype, copy=False).T, xp)
        self.dW = _dot(self.x.astype(dtype, copy=False).T, dout2, xp)
        self.db = dout2.sum(axis=0).reshape(np.shape(self.b))
        return dx.reshape(self.original_x_shape)


class SoftmaxWithLoss:
    """Softmax followed by the cross-entropy loss; x: (N, C) scores or (C,) for one sample.

    ``forward(x, t)`` takes integer labels t (N,) or one-hot t (N, C) and returns the mean
    loss (0-d, in x's dtype). The loss is computed from the log-softmax of the scores, so
    ``backward`` returns exactly its gradient ``(y - t) / N`` (times ``dout``). On the GPU
    (CuPy float32/float64) one fused kernel computes the loss, ``y`` and that gradient
    together (``kernels.cuda_fused``), and ``backward`` returns the stored gradient.
    """

    def __init__(self):
        self.loss = None
        self.y = None  # softmax output
        self.t = None  # targets as given (checked)
        self._kind = None
        self._dx = None  # the GPU's gradient, computed by the forward kernel

    def forward(self, x, t):
        x = check_input(x, "SoftmaxWithLoss")
        self._dx = None
        if _fused_on_gpu(x):
            from xpnet.kernels import cuda_fused

            _, x = _check_probabilities(x, "SoftmaxWithLoss")
            self._kind, self.t = check_targets(x, t, "SoftmaxWithLoss")
            self.loss, self.y, self._dx = cuda_fused.softmax_cross_entropy(x, self.t)
            return self.loss
        self.loss, self.y, self._kind, self.t = softmax_cross_entropy(x, t)
        return self.loss

    def backward(self, dout=1):
        if self.y is None:
            raise RuntimeError("SoftmaxWithLoss: backward() was called before forward()")
        if self._dx is not None:
            return self._scaled(self._dx, dout)
        xp = get_array_module(self.y)
        batch_size = 1 if self.y.ndim == 1 else self.y.shape[0]
        if self._kind == "onehot":
            dx = (self.y - self.t) / batch_size
        else:
            dx = self.y.copy()
            if self.y.ndim == 1:
                dx[self.t] -= 1
            else:
                dx[xp.arange(batch_size), self.t] -= 1
            dx /= batch_size
        return self._scaled(dx, dout)

    @staticmethod
    def _scaled(dx, dout):
        """``dx * dout``, skipped for the usual ``dout=1``."""
        if not (isinstance(dout, (int, float)) and dout == 1):
            dx = dx * dout
        return dx


def _fused_on_gpu(x):
    """Whether ``x`` goes to the fused GPU kernels: a CuPy float32/float64 array."""
    return is_gpu_array(x) and x.dtype in (np.float32, np.float64)


# ---------------------------------------------------------------------------
# Chapter 6: Dropout and Batch Normalization
# ---------------------------------------------------------------------------


class Dropout:
    """Drop each unit with probability ``dropout_ratio`` while training (book 6.4.3).

    ``forward(x, train_flg=True)``: training multiplies by a fresh random 0/1 ``mask``
    drawn on x's device from ``xpnet.backend.get_rng`` (so ``xpnet.seed`` fixes it);
    evaluation multiplies by ``1 - dropout_ratio`` (the book's scaling, not inverted).
    ``rng``, if given, is the generator the masks come from instead (anything with
    ``random(size, dtype)``, e.g. ``numpy.random.default_rng(0)``; its draws move to x's
    device), so two networks can be given the same masks.

    On the GPU inside a Trainer's step (``xpnet.backend.device_step_scope``), without
    ``rng``, the mask is counter-based: ``kernels.counter_rng.uniform(seed, step, draw,
    x.size) > dropout_ratio``, drawn and applied by one kernel that reads seed and step on
    the device (so a CUDA graph replays it right); ``draw`` numbers the step's Dropout
    layers in forward order.
    """

    takes_train_flg = True  # the layer contract (xpnet.models.Network)

    def __init__(self, dropout_ratio=0.5, rng=None):
        ratio = float(dropout_ratio)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"Dropout: dropout_ratio must be in [0, 1), got {dropout_ratio!r}")
        self.dropout_ratio = ratio
        self.rng = rng
        self.mask = None
        self._train = True
        self._shape = None

    def forward(self, x, train_flg=True):
        x = check_input(x, "Dropout")
        xp = get_array_module(x)
        self._train = bool(train_flg)
        self._shape = x.shape
        if self._train:
            counter_based = self.rng is None and is_gpu_array(x)
            step_values = device_step_values(xp) if counter_based else None
            if step_values is not None:
                return self._forward_counter_based(x, step_values)
            # float32 uniforms are plenty for a comparison and half the memory traffic.
            rng = get_rng(xp) if self.rng is None else self.rng
            self.mask = xp.asarray(rng.random(x.shape, dtype=xp.float32)) > self.dropout_ratio
            return x * self.mask
        return x * x.dtype.type(1.0 - self.dropout_ratio)

    def _forward_counter_based(self, x, step_values):
        """The GPU's fused mask-and-apply; float16 goes through float32 (exactly: x*1, x*0)."""
        from xpnet.kernels import cuda_fused

        draw = next_device_draw()
        if not _fused_on_gpu(x):
            out, self.mask = cuda_fused.dropout_forward(x.astype(np.float32),
                                                        self.dropout_ratio, step_values, draw)
            return out.astype(x.dtype)
        out, self.mask = cuda_fused.dropout_forward(x, self.dropout_ratio, step_values, draw)
        return out

    def backward(self, dout):
        check_dout(dout, self._shape, "Dropout")
        if self._train:
            if _fused_on_gpu(dout) and getattr(dout, "shape", None) == self.mask.shape:
                from xpnet.kernels import cuda_fused

                return cuda_fused.dropout_backward(dout, self.mask)
            return dout * self.mask
        return dout * (1.0 - self.dropout_ratio)


class BatchNormalization:
    """Batch normalization (book 6.3): ``gamma * (x - mean) / sqrt(var + 1e-6) + beta``.

    x: (N, D) with gamma, beta of D entries (per feature); or a conv output (N, C, H, W)
    with gamma of C entries (per channel, statistics over N, H, W -- what users of other
    frameworks expect) or of C*H*W entries (the book's per-unit normalization).
    ``forward(x, train_flg=True)`` uses batch statistics and updates ``running_mean``/
    ``running_var`` (``momentum`` 0.9); ``train_flg=False`` uses the running statistics.
    """

    eps = 10e-7  # the book's value (1e-6)
    # the layer contract (xpnet.models.Network)
    param_names = ("gamma", "beta")
    buffer_names = ("running_mean", "running_var")
    takes_train_flg = True

    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None):
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"BatchNormalization: momentum must be in [0, 1], got {momentum!r}")
        self.gamma = gamma
        self.beta = beta
        self.momentum = momentum
        self.input_shape = None  # 4-D for a conv output, 2-D after an Affine
        self.running_mean = running_mean
        self.running_var = running_var
        # kept for backward
        self.batch_size = None
        self.xc = None
        self.xn = None
        self.std = None
        self.dgamma = None
        self.dbeta = None
        self._per_channel = False
        self._train = True

    # -- layout: everything is computed on a 2-D (rows, features) view ---------------

    def _to_2d(self, x):
        size = np.size(self.gamma)
        if np.size(self.beta) != size:
            raise ValueError(
                f"BatchNormalization: gamma of shape {np.shape(self.gamma)} and beta of shape "
                f"{np.shape(self.beta)} must have the same number of entries"
            )
        n = x.shape[0] if x.ndim else 0
        per_sample = math.prod(x.shape[1:]) if x.ndim >= 2 else 0
        if x.ndim == 4 and size == x.shape[1] and size != per_sample:
            N, C, H, W = x.shape
            self._per_channel = True
            return x.transpose(0, 2, 3, 1).reshape(N * H * W, C)
        if x.ndim >= 2 and size == per_sample:
            self._per_channel = False
            return x.reshape(n, -1)
        expected = f"(N, {size})"
        if x.ndim == 4:
            expected += f" or (N, {size}, H, W) for per-channel statistics"
        raise ValueError(
            f"BatchNormalization: x of shape {x.shape} does not match gamma with {size} "
            f"entries; expected x of shape {expected}"
        )

    def _from_2d(self, y2, shape):
        if self._per_channel:
            N, C, H, W = shape
            xp = get_array_module(y2)
            return xp.ascontiguousarray(y2.reshape(N, H, W, C).transpose(0, 3, 1, 2))
        return y2.reshape(shape)

    # -- forward / backward ----------------------------------------------------------

    def forward(self, x, train_flg=True):
        x = check_input(x, "BatchNormalization")
        self.input_shape = x.shape
        x2 = self._to_2d(x)
        out = self._forward(x2, bool(train_flg))
        return self._from_2d(out, x.shape)

    def _forward(self, x, train_flg):
        xp = get_array_module(x, self.gamma, self.beta)
        D = x.shape[1]
        if self.running_mean is None:
            self.running_mean = xp.zeros(D, dtype=x.dtype)
            self.running_var = xp.zeros(D, dtype=x.dtype)
        elif np.size(self.running_mean) != D or np.size(self.running_var) != D:
            raise ValueError(
                f"BatchNormalization: running_mean of shape {np.shape(self.running_mean)} and "
                f"running_var of shape {np.shape(self.running_var)} must have {D} entries"
            )
        gamma = self.gamma.reshape(-1)
        beta = self.beta.reshape(-1)
        self._train = train_flg
        if train_flg:
            mu = x.mean(axis=0)
            xc = x - mu
            var = (xc * xc).mean(axis=0)
            std = xp.sqrt(var + self.eps)
            xn = xc / std
            self.batch_size = x.shape[0]
            self.xc = xc
            self.xn = xn
            self.std = std
            # In place, so references held elsewhere (a model's saved state) stay current.
            m = self.momentum
            self.running_mean *= m
            self.running_mean += (1 - m) * mu.reshape(self.running_mean.shape)
            self.running_var *= m
            self.running_var += (1 - m) * var.reshape(self.running_var.shape)
        else:
            # The running statistics are state, not parameters: use them in x's dtype.
            mean = self.running_mean.reshape(-1).astype(x.dtype, copy=False)
            var = self.running_var.reshape(-1).astype(x.dtype, copy=False)
            xc = x - mean
            std = xp.sqrt(var + self.eps)
            xn = xc / std
            self.xn = xn
            self.std = std
        return gamma * xn + beta

    def backward(self, dout):
        check_dout(dout, self.input_shape, "BatchNormalization")
        dout2 = self._to_2d(dout)
        dx = self._backward(dout2)
        return self._from_2d(dx, self.input_shape)

    def _backward(self, dout):
        gamma = self.gamma.reshape(-1)
        dbeta = dout.sum(axis=0)
        dgamma = (self.xn * dout).sum(axis=0)
        dxn = gamma * dout
        if self._train:
            dxc = dxn / self.std
            dstd = -((dxn * self.xc) / (self.std * self.std)).sum(axis=0)
            dvar = 0.5 * dstd / self.std
            dxc = dxc + (2.0 / self.batch_size) * self.xc * dvar
            dmu = dxc.sum(axis=0)
            dx = dxc - dmu / self.batch_size
        else:  # running statistics are constants
            dx = dxn / self.std
        self.dgamma = dgamma.reshape(np.shape(self.gamma))
        self.dbeta = dbeta.reshape(np.shape(self.beta))
        return dx


# ---------------------------------------------------------------------------
# Chapter 7: Convolution and Pooling, from xpnet.convolution
# ---------------------------------------------------------------------------

# Imported last, so that xpnet.convolution may itself use the checks above.
from xpnet.convolution import AvgPooling, Convolution, GlobalAvgPooling, Pooling  # noqa: E402

__all__ += ["Convolution", "Pooling", "AvgPooling", "GlobalAvgPooling"]

# The blocks of the representative CNNs (book 8.2), from xpnet.blocks. They subclass and
# use the layers above, so xpnet.blocks imports this module: they are looked up on first
# use (PEP 562) rather than imported here, which lets either module be imported first.
_BLOCKS = ("SpatialBatchNormalization", "ResidualBlock", "InceptionBlock")
__all__ += list(_BLOCKS)


def __getattr__(name):
    if name in _BLOCKS:
        from xpnet import blocks

        return getattr(blocks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_BLOCKS))
