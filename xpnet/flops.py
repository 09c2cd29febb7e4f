"""A FLOP model of the book's networks: the matrix products of a forward pass and of a
training step, computed from the layer shapes.

What is counted: every matrix product (GEMM) the layers run, at ``2*M*N*K`` floating-point
operations for an (M, K) @ (K, N) product (one multiply and one add per term).

- ``Convolution`` (im2col + GEMM): forward ``col @ col_W`` with M = N*OH*OW, K = C*FH*FW,
  N = FN; backward ``dout.T @ col`` (dW) and ``dout @ col_W.T`` (dcol), the same size each.
- ``Affine``: forward ``x @ W`` (M = batch, K = inputs, N = outputs); backward ``dout @ W.T``
  (dx) and ``x.T @ dout`` (dW).

So a training step (forward + backward) costs three times the forward GEMMs. The first
layer's input gradient is counted too, because the book's ``backward`` computes it (a
framework that skips it, as PyTorch does, does a little less work for the same step).

Not counted: bias additions, ReLU, pooling, dropout, softmax, the loss, the optimizer's
update, and the data movement of im2col/col2im. They are O(activations), not
O(activations x filter size); for DeepConvNet at batch 100 they are a few percent of the
GEMM count. The figures therefore measure how close a step gets to the machine's GEMM
peak, the one number that bounds it from above.

    >>> from xpnet.models import DeepConvNet
    >>> training_step_flops(DeepConvNet(), batch_size=100) / 1e9   # GFLOP per step
"""

from __future__ import annotations

from dataclasses import dataclass

from xpnet.kernels import conv_output_size

__all__ = [
    "Gemm",
    "forward_gemms",
    "forward_flops",
    "training_step_gemms",
    "training_step_flops",
    "flops_per_sample",
]


@dataclass(frozen=True)
class Gemm:
    """One matrix product (M, K) @ (K, N) of a layer; ``flops`` = 2*M*N*K."""

    layer: str  # e.g. 'Conv1', 'Affine2' (position among the layers of that kind)
    role: str  # 'forward', 'dW' or 'dx'
    m: int
    n: int
    k: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k


def _layers(network) -> list:
    """The layers ``predict`` runs, in order, as the network's layer registry has them."""
    from xpnet.models import layer_registry

    return [layer for layer, _ in layer_registry(network).forward]


def _input_shape(network) -> tuple:
    shape = getattr(network, "input_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    first = _layers(network)[0]  # an MLP without a recorded input shape: W1 is (inputs, hidden)
    return (int(first.W.shape[0]),)


def forward_gemms(network, batch_size: int) -> list[Gemm]:
    """The GEMMs of one forward pass of ``network`` on a batch of ``batch_size``.

    ``network`` is an xpnet model (anything with ``layers`` of xpnet's layer classes and,
    for convolutional networks, ``input_shape`` = (C, H, W)). Shapes are propagated layer
    by layer from (batch_size, *input_shape); layers without a GEMM keep the shape, or
    change it as their optional ``output_shape(per-sample input shape)`` says (the layer
    contract, :class:`xpnet.models.Network`).
    """

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    gemms: list[Gemm] = []
    _walk(_layers(network), _input_shape(network), int(batch_size), {"Conv": 0, "Affine": 0},
          gemms)
    return gemms


def _walk(layers, shape: tuple, n: int, counts: dict, gemms: list) -> tuple:
    """Append the GEMMs of ``layers`` run in order on a per-sample ``shape`` to ``gemms``
    (named by ``counts``, layers of a kind numbered in order); return the output shape.

    A block (``xpnet.blocks``) lists in ``paths()`` the layer sequences it runs on its
    input (a residual block's main path and shortcut, an Inception block's branches):
    each is walked from the block's input, and ``output_shape`` gives the block's output.
    """
    from xpnet.convolution import Convolution, Pooling
    from xpnet.layers import Affine

    for layer in layers:
        if isinstance(layer, Convolution):
            counts["Conv"] += 1
            gemm, shape = _conv_gemm(layer, shape, n, f"Conv{counts['Conv']}")
            gemms.append(gemm)
        elif isinstance(layer, Affine):
            counts["Affine"] += 1
            gemm, shape = _affine_gemm(layer, shape, n, f"Affine{counts['Affine']}")
            gemms.append(gemm)
        else:
            for path in getattr(layer, "paths", lambda: ())():
                _walk(path, shape, n, counts, gemms)
            if hasattr(layer, "output_shape"):  # a layer that changes the shape
                shape = tuple(int(s) for s in layer.output_shape(shape))
            elif isinstance(layer, Pooling):
                oh = conv_output_size(shape[1], layer.pool_h, layer.stride, layer.pad)
                ow = conv_output_size(shape[2], layer.pool_w, layer.stride, layer.pad)
                shape = (shape[0], oh, ow)
        # Relu, Sigmoid, Dropout, BatchNormalization: same shape, no GEMM
    return shape


def _conv_gemm(layer, shape: tuple, n: int, name: str) -> tuple[Gemm, tuple]:
    """A convolution's forward GEMM on a (C, H, W) sample shape, and its output shape."""
    fn, c, fh, fw = (int(s) for s in layer.W.shape)
    if len(shape) != 3 or shape[0] != c:
        raise ValueError(
            f"flops: a Convolution with W of shape {tuple(layer.W.shape)} got a per-sample "
            f"input of shape {shape}; expected ({c}, H, W)"
        )
    oh = conv_output_size(shape[1], fh, layer.stride, layer.pad)
    ow = conv_output_size(shape[2], fw, layer.stride, layer.pad)
    return Gemm(name, "forward", n * oh * ow, fn, c * fh * fw), (fn, oh, ow)


def _affine_gemm(layer, shape: tuple, n: int, name: str) -> tuple[Gemm, tuple]:
    """An Affine's forward GEMM on any sample shape (flattened), and its output shape."""
    k, out = (int(s) for s in layer.W.shape)
    size = 1
    for s in shape:
        size *= s
    if size != k:
        raise ValueError(
            f"flops: an Affine with W of shape {tuple(layer.W.shape)} got a per-sample "
            f"input of shape {shape} ({size} values); expected {k}"
        )
    return Gemm(name, "forward", n, out, k), (out,)


def training_step_gemms(network, batch_size: int) -> list[Gemm]:
    """The GEMMs of forward + backward: each forward product, then its dW and dx products.

    For a forward (M, K) @ (K, N): dW is (K, M) @ (M, N) and dx is (M, N) @ (N, K), the
    same 2*M*N*K each.
    """
    gemms = []
    for g in forward_gemms(network, batch_size):
        gemms += [g, Gemm(g.layer, "dW", g.k, g.n, g.m), Gemm(g.layer, "dx", g.m, g.k, g.n)]
    return gemms


def forward_flops(network, batch_size: int) -> int:
    """GEMM FLOPs of one forward pass (inference) on ``batch_size`` samples."""
    return sum(g.flops for g in forward_gemms(network, batch_size))


def training_step_flops(network, batch_size: int) -> int:
    """GEMM FLOPs of one training step (forward + backward) on ``batch_size`` samples:
    three times :func:`forward_flops`. The optimizer's update is elementwise (not counted)."""
    return sum(g.flops for g in training_step_gemms(network, batch_size))


def flops_per_sample(network) -> dict:
    """``{'forward': ..., 'training_step': ...}`` GEMM FLOPs per sample (batch-independent)."""
    return {
        "forward": forward_flops(network, 1),
        "training_step": training_step_flops(network, 1),
    }
