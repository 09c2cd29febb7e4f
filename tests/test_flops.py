"""The FLOP model (xpnet.flops) on networks small enough to count by hand."""

import pytest

from xpnet import flops
from xpnet.models import DeepConvNet, SimpleConvNet, TwoLayerNet


def test_two_layer_net_by_hand():
    net = TwoLayerNet(784, 50, 10)
    # x (100, 784) @ W1 (784, 50), then (100, 50) @ W2 (50, 10): 2*M*N*K each
    forward = 2 * 100 * 784 * 50 + 2 * 100 * 50 * 10
    assert forward == 7_940_000
    assert flops.forward_flops(net, 100) == forward
    assert flops.training_step_flops(net, 100) == 3 * forward


def test_small_convnet_by_hand():
    net = SimpleConvNet(
        input_dim=(1, 6, 6),
        conv_param={"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1},
        hidden_size=4,
        output_size=3,
    )
    gemms = flops.forward_gemms(net, 5)
    # conv: 6x6 -> 4x4, col (5*16, 1*3*3) @ (9, 2); pool 2x2/2 -> 2x2, 2*2*2 = 8 features;
    # then (5, 8) @ (8, 4) and (5, 4) @ (4, 3)
    assert [(g.layer, g.m, g.n, g.k) for g in gemms] == [
        ("Conv1", 80, 2, 9),
        ("Affine1", 5, 4, 8),
        ("Affine2", 5, 3, 4),
    ]
    assert flops.forward_flops(net, 5) == 2 * 80 * 2 * 9 + 2 * 5 * 4 * 8 + 2 * 5 * 3 * 4 == 3320


def test_stride_and_pad_change_the_output_size():
    net = SimpleConvNet(
        input_dim=(3, 9, 9),
        conv_param={"filter_num": 4, "filter_size": 3, "pad": 1, "stride": 2},
        hidden_size=6,
        output_size=2,
    )
    conv = flops.forward_gemms(net, 2)[0]
    # (9 + 2*1 - 3) // 2 + 1 = 5, so M = 2*5*5; K = C*FH*FW = 27
    assert (conv.m, conv.n, conv.k) == (50, 4, 27)


def test_deep_convnet_per_sample():
    per_sample = flops.flops_per_sample(DeepConvNet())
    # OH*OW * FN * C*3*3 * 2 for the six convolutions (28, 28, 14, 16, 8, 8 pixels wide),
    # then the two Affine layers
    expected = 2 * (
        784 * 16 * 9
        + 784 * 16 * 144
        + 196 * 32 * 144
        + 256 * 32 * 288
        + 64 * 64 * 288
        + 64 * 64 * 576
        + 1024 * 50
        + 50 * 10
    )
    assert per_sample["forward"] == expected == 17_544_680
    assert per_sample["training_step"] == 3 * expected
    assert flops.forward_flops(DeepConvNet(), 100) == 100 * expected


def test_training_step_roles_have_the_backward_shapes():
    net = TwoLayerNet(6, 5, 4)
    gemms = flops.training_step_gemms(net, 3)
    first = [(g.role, g.m, g.n, g.k) for g in gemms if g.layer == "Affine1"]
    # forward (3, 6) @ (6, 5); dW = x.T (6, 3) @ dout (3, 5); dx = dout (3, 5) @ W.T (5, 6)
    assert first == [("forward", 3, 5, 6), ("dW", 6, 5, 3), ("dx", 3, 6, 5)]
    assert all(g.flops == 2 * 3 * 5 * 6 for g in gemms if g.layer == "Affine1")


def test_bad_batch_size_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        flops.forward_flops(TwoLayerNet(4, 3, 2), 0)


def _products_run(network, batch_size):
    """The 2*M*N*K of every product a forward pass really runs, read from the arrays the
    Convolution and Affine layers see (the oracle for networks built of blocks)."""
    import numpy as np

    from xpnet.convolution import Convolution
    from xpnet.layers import Affine

    seen = []
    originals = {cls: cls.forward for cls in (Convolution, Affine)}

    def conv_forward(self, x, *args, **kwargs):
        out = originals[Convolution](self, x, *args, **kwargs)
        fn, c, fh, fw = self.W.shape
        seen.append(2 * out.shape[0] * out.shape[2] * out.shape[3] * fn * c * fh * fw)
        return out

    def affine_forward(self, x, *args, **kwargs):
        out = originals[Affine](self, x, *args, **kwargs)
        seen.append(2 * x.shape[0] * self.W.shape[0] * self.W.shape[1])
        return out

    Convolution.forward, Affine.forward = conv_forward, affine_forward
    try:
        x = np.zeros((batch_size, *network.input_shape), np.float32)
        network.predict(x, train_flg=False)
    finally:
        Convolution.forward, Affine.forward = originals[Convolution], originals[Affine]
    return seen


@pytest.mark.parametrize("name", ["ResNet", "MiniGoogLeNet", "VGGNet", "LeNet", "DeepConvNet"])
def test_networks_of_blocks_count_every_product_they_run(name):
    from xpnet import models

    network = getattr(models, name)()
    run = _products_run(network, 2)
    gemms = flops.forward_gemms(network, 2)
    assert sorted(g.flops for g in gemms) == sorted(run)
    assert flops.training_step_flops(network, 2) == 3 * sum(run)


def test_resnet20_by_hand():
    from xpnet.models import ResNet

    # stem 3x3 1->16 at 28x28; stage 1: 6 convs 16->16 at 28x28; stage 2 at 14x14: 16->32
    # (stride 2), 32->32, the 1x1 projection 16->32, then 4 convs 32->32; stage 3 at 7x7 the
    # same with 64 channels; global average pooling, then (64 -> 10)
    per_sample = 2 * (
        784 * 16 * 9 + 6 * 784 * 16 * 144
        + 196 * 32 * 144 + 196 * 32 * 288 + 196 * 32 * 16 + 4 * 196 * 32 * 288
        + 49 * 64 * 288 + 49 * 64 * 576 + 49 * 64 * 32 + 4 * 49 * 64 * 576
        + 64 * 10
    )
    assert flops.forward_flops(ResNet(), 3) == 3 * per_sample


def test_mini_googlenet_by_hand():
    from xpnet.models import MiniGoogLeNet

    # each product is (positions x output channels x fan-in). Stem 3x3 1->64 at 28x28, then a
    # pool; Inception 1 at 14x14 from 64 channels: 1x1 ->32; 1x1 ->32 then 3x3 32->64; 1x1
    # ->16 then 5x5 16->16; the pool branch's 1x1 ->16 (128 out). A pool; Inception 2 at 7x7
    # from 128: 1x1 ->64; 1x1 ->64 then 3x3 64->96; 1x1 ->16 then 5x5 16->48; pool 1x1 ->32
    # (240 out); global average pooling, then (240 -> 10)
    per_sample = 2 * (
        784 * 64 * 9
        + 196 * (32 * 64 + 32 * 64 + 64 * 32 * 9 + 16 * 64 + 16 * 16 * 25 + 16 * 64)
        + 49 * (64 * 128 + 64 * 128 + 96 * 64 * 9 + 16 * 128 + 48 * 16 * 25 + 32 * 128)
        + 240 * 10
    )
    assert flops.forward_flops(MiniGoogLeNet(), 3) == 3 * per_sample
