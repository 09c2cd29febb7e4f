"""``benchmarks/torch_cnns.py`` builds the representative CNNs again in PyTorch, as the anchor of
the accuracy table and the step-time benchmark. Those comparisons mean something only if the
two are the same network: same weight shapes, and the same products at the same feature-map
sizes (a pooling moved, or left out, changes no weight but every FLOP after it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from xpnet import flops, models  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_cnns  # noqa: E402

NAMES = ["LeNet", "VGGNet", "MiniGoogLeNet", "ResNet"]


def _xpnet_weight_shapes(network) -> list[tuple]:
    """Every convolution's (FN, C, FH, FW) and every Affine's (out, in), PyTorch's layout."""
    shapes = []
    for name, value in network.params.items():
        if name.startswith("W"):
            shapes.append(tuple(value.shape) if value.ndim == 4 else tuple(value.shape[::-1]))
    return sorted(shapes)


def _torch_weight_shapes(net) -> list[tuple]:
    return sorted(tuple(m.weight.shape) for m in net.modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


def _torch_forward_flops(net, input_dim, batch_size) -> int:
    """2 x the multiply-adds of every convolution and linear layer of one forward pass."""
    total = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.in_channels // module.groups * module.kernel_size[0] \
                * module.kernel_size[1]
        else:
            fan_in = module.in_features
        total.append(2 * output.numel() * fan_in)

    hooks = [m.register_forward_hook(count) for m in net.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(batch_size, *input_dim))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(total)


@pytest.mark.parametrize("name", NAMES)
def test_torch_network_is_xpnet_network(name):
    network = getattr(models, name)()
    net = torch_cnns.BUILDERS[name]()
    assert _torch_weight_shapes(net) == _xpnet_weight_shapes(network)
    assert sum(p.numel() for p in net.parameters()) == sum(
        int(v.size) for v in network.params.values())
    assert _torch_forward_flops(net, network.input_shape, 3) == flops.forward_flops(network, 3)


def test_a_moved_pooling_is_seen():
    # the check above must see what weight shapes cannot: MiniGoogLeNet without its stem pool
    network = models.MiniGoogLeNet()
    net = torch_cnns.BUILDERS["MiniGoogLeNet"]()
    stem_pool = next(i for i, m in enumerate(net) if isinstance(m, torch.nn.MaxPool2d))
    without = torch.nn.Sequential(*[m for i, m in enumerate(net) if i != stem_pool])
    assert _torch_weight_shapes(without) == _xpnet_weight_shapes(network)
    assert _torch_forward_flops(without, network.input_shape, 3) > flops.forward_flops(
        network, 3)
