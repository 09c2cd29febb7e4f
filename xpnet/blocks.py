"""The building blocks of the book's representative CNNs (8.2): per-channel batch
normalization, ResNet's residual block and GoogLeNet's Inception block.

Each is a layer in the book's sense (``forward``/``backward``, gradients in ``d<name>``).
The two blocks are composites: they are made of xpnet layers (``Convolution``,
``SpatialBatchNormalization``, ``Relu``, ``Pooling``) that hold the parameters, and they
list them in ``sublayers()``, which a :class:`xpnet.models.Network` walks to find the
parameters and buffers inside (the layer contract, README "Your own layer").

Everything here computes with the array namespace of its input, so it runs on NumPy and
CuPy alike.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from xpnet import kernels
from xpnet.backend import get_array_module
from xpnet.kernels import conv_output_size
from xpnet.layers import BatchNormalization, Relu, check_dout, check_input

__all__ = ["InceptionBlock", "ResidualBlock", "SpatialBatchNormalization"]


class SpatialBatchNormalization(BatchNormalization):
    """Per-channel batch normalization of a conv output: x: (N, C, H, W), gamma, beta: (C,).

    Statistics are taken over N, H and W for each channel (``BatchNorm2d`` of other
    frameworks); ``running_mean``/``running_var`` (C,) start at 0 and 1 and are buffers,
    saved with the parameters. ``forward(x, train_flg=True)``, ``momentum`` and ``eps`` as
    the book's ``BatchNormalization`` (whose per-unit normalization stays as it is).

    The arithmetic is ``xpnet.kernels.channel_norm_forward/backward`` (two passes over the
    activations each way on the CPU, sums in float64); forward keeps ``xn`` (the normalized
    input) and ``std`` (C,) for backward.
    """

    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None):
        xp = get_array_module(gamma)
        if running_mean is None:
            running_mean = xp.zeros_like(gamma)
        if running_var is None:
            running_var = xp.ones_like(gamma)
        super().__init__(gamma, beta, momentum, running_mean, running_var)
        self._per_channel = True

    def _check(self, x):
        x = check_input(x, "SpatialBatchNormalization")
        channels = int(np.size(self.gamma))
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(
                f"SpatialBatchNormalization: expected x of shape (N, {channels}, H, W) for "
                f"gamma of {channels} entries, got shape {tuple(x.shape)}"
            )
        if np.size(self.running_mean) != channels or np.size(self.running_var) != channels:
            raise ValueError(
                f"SpatialBatchNormalization: running_mean and running_var must have "
                f"{channels} entries, got {np.size(self.running_mean)} and "
                f"{np.size(self.running_var)}"
            )
        return x

    def forward(self, x, train_flg=True):
        """x: (N, C, H, W) -> (N, C, H, W), ``gamma * (x - mean) / std + beta`` per channel."""
        x = self._check(x)
        xp = get_array_module(x, self.gamma, self.beta)
        N, C, H, W = x.shape
        self.input_shape = x.shape
        self._train = bool(train_flg)
        if self._train:
            out, self.xn, mu, var = kernels.channel_norm_forward(x, self.gamma, self.beta,
                                                                 self.eps)
            m = self.momentum  # in place, so references held elsewhere stay current
            self.running_mean *= m
            self.running_mean += (1 - m) * mu.reshape(self.running_mean.shape)
            self.running_var *= m
            self.running_var += (1 - m) * var.reshape(self.running_var.shape)
            self.batch_size = N * H * W
        else:  # the running statistics are state: used in x's dtype
            var = self.running_var.reshape(-1).astype(x.dtype, copy=False)
            mean = self.running_mean.reshape(-1).astype(x.dtype, copy=False)
            out, self.xn, _, _ = kernels.channel_norm_forward(x, self.gamma, self.beta,
                                                              self.eps, mean, var)
        self.std = xp.sqrt(var + x.dtype.type(self.eps))
        return out

    def backward(self, dout):
        """dout: (N, C, H, W) -> dx: (N, C, H, W); sets dgamma, dbeta (C,)."""
        check_dout(dout, self.input_shape, "SpatialBatchNormalization")
        gamma = get_array_module(dout).reshape(self.gamma, -1)  # a Python float: one channel
        dx, dgamma, dbeta = kernels.channel_norm_backward(dout, self.xn, gamma, self.std,
                                                          self._train)
        self.dgamma = dgamma.reshape(np.shape(self.gamma))
        self.dbeta = dbeta.reshape(np.shape(self.beta))
        return dx


def _plan(layers) -> list:
    """The forward plan of a layer sequence, read once as a network reads its own layers
    (``xpnet.models``: a Convolution makes the output of a Relu right after it)."""
    from xpnet.models import _fuse_conv_relu, _takes_train_flg  # at call time: xpnet.models
    #                                                              imports this module
    return _fuse_conv_relu([(layer, _takes_train_flg(layer)) for layer in layers])


def _forward_chain(plan, x, train_flg):
    from xpnet.models import run_plan

    return run_plan(plan, x, train_flg)


def _backward_chain(layers, dout):
    for layer in reversed(layers):
        dout = layer.backward(dout)
    return dout


def _check_layers(block: str, what: str, layers) -> list:
    layers = list(layers)
    for layer in layers:
        if not (hasattr(layer, "forward") and hasattr(layer, "backward")):
            raise TypeError(
                f"{block}: {what} must hold layers (objects with forward and backward), "
                f"got {type(layer).__name__}"
            )
    return layers


class ResidualBlock:
    """ResNet's basic block (book 8.2.3): ``relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))``.

    x: (N, C, H, W) -> (N, C', H', W'). ``conv1`` (3x3, pad 1, any stride) and ``conv2``
    (3x3, pad 1, stride 1) are ``Convolution`` layers, ``bn1``/``bn2`` their
    ``SpatialBatchNormalization``. The shortcut ``s`` is the identity (``shortcut=None``;
    C' = C, stride 1) or a projection: a sequence of layers such as a 1x1 strided
    convolution and its batch normalization, that maps x to the main branch's shape.
    Backward sends the sum's gradient through both branches and adds what they return.
    """

    takes_train_flg = True  # the layer contract: forward(x, train_flg)

    def __init__(self, conv1, bn1, conv2, bn2, shortcut=None):
        self.main = _check_layers("ResidualBlock", "the main branch",
                                  [conv1, bn1, Relu(), conv2, bn2])
        self.shortcut = _check_layers("ResidualBlock", "shortcut", shortcut or ())
        self._main_plan, self._shortcut_plan = _plan(self.main), _plan(self.shortcut)
        self.relu = Relu()
        self.out_shape = None

    def sublayers(self) -> OrderedDict:
        """``{name: layer}`` of the layers inside, for the network's registry."""
        conv1, bn1, relu1, conv2, bn2 = self.main
        named = OrderedDict(conv1=conv1, bn1=bn1, relu1=relu1, conv2=conv2, bn2=bn2)
        for i, layer in enumerate(self.shortcut, start=1):
            named[f"shortcut{i}"] = layer
        named["relu"] = self.relu
        return named

    def forward(self, x, train_flg=True):
        """x: (N, C, H, W) -> (N, C', H', W')."""
        x = check_input(x, "ResidualBlock")  # once: the identity shortcut passes x itself
        main = _forward_chain(self._main_plan, x, train_flg)
        skip = _forward_chain(self._shortcut_plan, x, train_flg)
        if main.shape != skip.shape:
            raise ValueError(
                f"ResidualBlock: the main branch gives shape {tuple(main.shape)} but the "
                f"shortcut {tuple(skip.shape)}; give a projection shortcut (a 1x1 convolution "
                "with the main branch's stride and output channels) when the shapes change"
            )
        out = self.relu.forward(main + skip)
        self.out_shape = out.shape
        return out

    def backward(self, dout):
        """dout: (N, C', H', W') -> dx: (N, C, H, W), the sum of both branches' dx."""
        check_dout(dout, self.out_shape, "ResidualBlock")
        dsum = self.relu.backward(dout)
        return _backward_chain(self.main, dsum) + _backward_chain(self.shortcut, dsum)

    def paths(self) -> tuple:
        """The layer sequences run on the block's input: the main path and the shortcut
        (empty for the identity), for whoever walks the network's layers (``xpnet.flops``)."""
        return (tuple(self.main), tuple(self.shortcut))

    def output_shape(self, input_shape):
        """Per-sample output shape (C', H', W') for an input (C, H, W)."""
        conv1, conv2 = self.main[0], self.main[3]
        return _conv_output_shape(conv2, _conv_output_shape(conv1, input_shape))


def _conv_output_shape(conv, shape):
    fn, _, fh, fw = conv.W.shape
    return (int(fn), conv_output_size(shape[1], fh, conv.stride, conv.pad),
            conv_output_size(shape[2], fw, conv.stride, conv.pad))


class InceptionBlock:
    """GoogLeNet's Inception block (book 8.2.2): parallel branches on the same input, their
    outputs concatenated on channels.

    ``branches``: a sequence of layer sequences, each mapping x: (N, C, H, W) to
    (N, C_i, H, W) -- typically a 1x1 convolution; 1x1 then 3x3 (pad 1); 1x1 then 5x5
    (pad 2); 3x3 max pooling (stride 1, pad 1) then 1x1, each convolution followed by its
    activation. Output (N, sum C_i, H, W); backward splits dout by channels, runs each
    branch back and adds their dx.
    """

    takes_train_flg = True  # the layer contract: forward(x, train_flg)

    def __init__(self, branches):
        self.branches = [_check_layers("InceptionBlock", f"branch {i}", branch)
                         for i, branch in enumerate(branches, start=1)]
        if not self.branches or not all(self.branches):
            raise ValueError("InceptionBlock: give at least one branch, each with a layer")
        self._plans = [_plan(branch) for branch in self.branches]
        self.channels = None  # C_i of each branch in the last forward pass
        self.out_shape = None

    def sublayers(self) -> OrderedDict:
        """``{'branch<i>.<j>': layer}`` of the layers inside, for the network's registry."""
        return OrderedDict(
            (f"branch{i}.{j}", layer)
            for i, branch in enumerate(self.branches, start=1)
            for j, layer in enumerate(branch, start=1)
        )

    def forward(self, x, train_flg=True):
        """x: (N, C, H, W) -> (N, sum C_i, H, W)."""
        x = check_input(x, "InceptionBlock")  # once, not in every branch
        outs = [_forward_chain(plan, x, train_flg) for plan in self._plans]
        if len({(o.shape[0], *o.shape[2:]) for o in outs}) != 1:
            raise ValueError(
                "InceptionBlock: the branches give outputs of shapes "
                f"{[tuple(o.shape) for o in outs]}; all must share N, H and W (pad each "
                "convolution by filter_size // 2, pool with stride 1 and pad 1)"
            )
        self.channels = [int(o.shape[1]) for o in outs]
        out = get_array_module(x).concatenate(outs, axis=1)
        self.out_shape = out.shape
        return out

    def backward(self, dout):
        """dout: (N, sum C_i, H, W) -> dx: (N, C, H, W)."""
        check_dout(dout, self.out_shape, "InceptionBlock")
        xp = get_array_module(dout)
        dx = None
        start = 0
        for branch, channels in zip(self.branches, self.channels):
            # each branch's layers take a C-contiguous dout, as their forward output was
            part = xp.ascontiguousarray(dout[:, start:start + channels])
            d = _backward_chain(branch, part)
            dx = d if dx is None else dx + d
            start += channels
        return dx

    def paths(self) -> tuple:
        """The branches, each a layer sequence run on the block's input (``xpnet.flops``)."""
        return tuple(tuple(branch) for branch in self.branches)

    def output_shape(self, input_shape):
        """Per-sample output shape (sum C_i, H, W) for an input (C, H, W)."""
        channels = 0
        for branch in self.branches:
            convs = [layer for layer in branch if hasattr(layer, "W")]
            channels += int(convs[-1].W.shape[0]) if convs else int(input_shape[0])
        return (channels, int(input_shape[1]), int(input_shape[2]))
