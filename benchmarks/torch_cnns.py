"""The representative CNNs of ``xpnet.models`` (LeNet, VGGNet, MiniGoogLeNet, ResNet) in
PyTorch: the same layers, sizes, initialization scales (He, or Xavier for a sigmoid LeNet;
biases zero; batch normalization gamma 1, beta 0, eps 1e-6, running statistics momentum
0.9 in the book's sense), so a benchmark or an accuracy run compares the frameworks and
nothing else.

    net = resnet(depth=20)                    # float32, on the CPU
    step = torch_nets.train_step_fn(net)      # forward, backward, Adam (the book's eps)

Run as a script, it trains one of them on (Fashion-)MNIST with the recipe of ``xpnet train``
(Adam, random mini-batches drawn with replacement at each step, as the book's trainer
draws them; the learning rate of each epoch from ``xpnet.lr_schedule`` and the data
augmentation of ``xpnet.augment``, the same code ``xpnet train --lr-schedule
--augment-shift --augment-flip`` uses; the test accuracy after each epoch), the PyTorch
side of the accuracy table:

    python benchmarks/torch_cnns.py --model ResNet --epochs 12 --lr-schedule cosine --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from torch import nn

from xpnet.lr_schedule import SCHEDULES

BN_EPS = 1e-6  # the book's BatchNormalization eps (10e-7)
BN_MOMENTUM = 0.1  # PyTorch's convention: the book's momentum 0.9


def _init_(layer: nn.Module, gain: float = 2.0) -> nn.Module:
    """Normal weights with std sqrt(gain / fan_in) (He: 2, Xavier as the book: 1), zero bias."""
    fan_in = layer.weight[0].numel()
    nn.init.normal_(layer.weight, std=(gain / fan_in) ** 0.5)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _conv_bn_relu(cin: int, cout: int, size: int, stride: int = 1) -> list[nn.Module]:
    return [_init_(nn.Conv2d(cin, cout, size, stride, size // 2, bias=False)),
            nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM), nn.ReLU()]


def lenet(input_dim=(1, 28, 28), activation="relu", filter_nums=(6, 16),
          hidden_sizes=(120, 84), output_size=10) -> nn.Sequential:
    """conv 5x5 (pad 2) - act - maxpool - conv 5x5 - act - maxpool - 120 - act - 84 - act - 10."""
    act, gain = {"relu": (nn.ReLU, 2.0), "sigmoid": (nn.Sigmoid, 1.0)}[activation]
    C, H, W = input_dim
    layers: list[nn.Module] = []
    for filters, pad in zip(filter_nums, (2, 0)):
        layers += [_init_(nn.Conv2d(C, filters, 5, padding=pad), gain), act(),
                   nn.MaxPool2d(2, 2)]
        C, H, W = filters, (H + 2 * pad - 4) // 2, (W + 2 * pad - 4) // 2
    layers.append(nn.Flatten())
    size = C * H * W
    for hidden in hidden_sizes:
        layers += [_init_(nn.Linear(size, hidden), gain), act()]
        size = hidden
    layers.append(_init_(nn.Linear(size, output_size), gain))
    return nn.Sequential(*layers)


def vgg_net(input_dim=(1, 28, 28), width=16, depth=2, stages=3, hidden_size=50,
            output_size=10, dropout_ratio=0.5) -> nn.Sequential:
    """``stages`` x (``depth`` x (conv 3x3 pad 1 - relu) - maxpool) - affine - relu -
    dropout - affine - dropout, as ``xpnet.models.VGGNet``."""
    C, H, W = input_dim
    layers: list[nn.Module] = []
    for stage in range(stages):
        for _ in range(depth):
            layers += [_init_(nn.Conv2d(C, width * 2**stage, 3, padding=1)), nn.ReLU()]
            C = width * 2**stage
        layers.append(nn.MaxPool2d(2, 2))
        H, W = H // 2, W // 2
    layers += [nn.Flatten(), _init_(nn.Linear(C * H * W, hidden_size)), nn.ReLU()]
    if dropout_ratio:
        layers.append(nn.Dropout(dropout_ratio))
    layers.append(_init_(nn.Linear(hidden_size, output_size)))
    if dropout_ratio:
        layers.append(nn.Dropout(dropout_ratio))
    return nn.Sequential(*layers)


class Inception(nn.Module):
    """1x1; 1x1 -> 3x3; 1x1 -> 5x5; maxpool 3x3 -> 1x1; each conv with BN and ReLU."""

    def __init__(self, cin, c1, c3_reduce, c3, c5_reduce, c5, pool_proj):
        super().__init__()
        self.branches = nn.ModuleList([
            nn.Sequential(*_conv_bn_relu(cin, c1, 1)),
            nn.Sequential(*_conv_bn_relu(cin, c3_reduce, 1), *_conv_bn_relu(c3_reduce, c3, 3)),
            nn.Sequential(*_conv_bn_relu(cin, c5_reduce, 1), *_conv_bn_relu(c5_reduce, c5, 5)),
            nn.Sequential(nn.MaxPool2d(3, 1, 1), *_conv_bn_relu(cin, pool_proj, 1)),
        ])

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], dim=1)


def mini_googlenet(input_dim=(1, 28, 28), width=16, output_size=10) -> nn.Sequential:
    """stem conv 3x3 (4w) - maxpool - Inception (8w) - maxpool - Inception (15w) - global
    average pooling - affine, as ``xpnet.models.MiniGoogLeNet``."""
    w = width
    return nn.Sequential(
        *_conv_bn_relu(input_dim[0], 4 * w, 3), nn.MaxPool2d(2, 2),
        Inception(4 * w, 2 * w, 2 * w, 4 * w, w, w, w), nn.MaxPool2d(2, 2),
        Inception(8 * w, 4 * w, 4 * w, 6 * w, w, 3 * w, 2 * w),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), _init_(nn.Linear(15 * w, output_size)),
    )


class ResidualBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), shortcut: identity or a 1x1
    strided convolution with batch normalization."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        conv1, bn1, _ = _conv_bn_relu(cin, cout, 3, stride)
        conv2, bn2, _ = _conv_bn_relu(cout, cout, 3)
        self.main = nn.Sequential(conv1, bn1, nn.ReLU(), conv2, bn2)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(*_conv_bn_relu(cin, cout, 1, stride)[:2])
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.main(x) + self.shortcut(x))


def resnet(input_dim=(1, 28, 28), depth=20, width=16, output_size=10) -> nn.Sequential:
    """ResNet-(6n+2): stem conv 3x3 - 3 stages of n residual blocks (w, 2w, 4w filters) -
    global average pooling - affine, as ``xpnet.models.ResNet``."""
    n = (depth - 2) // 6
    layers: list[nn.Module] = [*_conv_bn_relu(input_dim[0], width, 3)]
    cin = width
    for stage in range(3):
        for k in range(n):
            stride = 2 if stage > 0 and k == 0 else 1
            layers.append(ResidualBlock(cin, width * 2**stage, stride))
            cin = width * 2**stage
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), _init_(nn.Linear(cin, output_size))]
    return nn.Sequential(*layers)


BUILDERS = {"LeNet": lenet, "VGGNet": vgg_net, "MiniGoogLeNet": mini_googlenet,
            "ResNet": resnet}


def _accuracy(net: nn.Module, x, t, batch=100) -> float:
    import torch_nets

    correct = 0
    for i in range(0, len(x), batch):
        correct += int((torch_nets.infer(net, x[i:i + batch]).argmax(1) == t[i:i + batch]).sum())
    return correct / len(x)


def train(args) -> list[float]:
    """Train ``args.model`` as ``xpnet train`` does; returns the test accuracy of each epoch."""
    import torch_nets

    from xpnet.augment import ShiftFlip
    from xpnet.datasets import load_mnist
    from xpnet.lr_schedule import lr_factor

    (x_train, t_train), (x_test, t_test) = load_mnist(
        normalize=True, flatten=False, dataset=args.dataset, data_dir=args.data_dir)
    if args.train_size:
        x_train, t_train = x_train[:args.train_size], t_train[:args.train_size]
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    kw = {k: v for k, v in (("depth", args.depth), ("width", args.width)) if v is not None}
    net = BUILDERS[args.model](**kw)
    step = torch_nets.train_step_fn(net, lr=args.lr)
    augment = None
    if args.augment_shift or args.augment_flip:  # xpnet's own, on the host batch
        augment = ShiftFlip(args.augment_shift, flip=args.augment_flip)
    x_host = x_train.astype(np.float32)
    x_train, x_test = torch.from_numpy(x_train).float(), torch.from_numpy(x_test).float()
    t_train = torch.from_numpy(t_train.astype(np.int64))
    t_test = torch.from_numpy(t_test.astype(np.int64))
    steps = max(len(x_train) // args.batch_size, 1)
    history = []
    for epoch in range(1, args.epochs + 1):
        for group in step.optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(args.lr_schedule, epoch - 1, args.epochs)
        start = time.perf_counter()
        for _ in range(steps):
            idx = rng.integers(0, len(x_train), args.batch_size)
            x = x_train[idx] if augment is None else torch.from_numpy(augment(x_host[idx], rng))
            loss = step(x, t_train[torch.from_numpy(idx)])
        seconds = time.perf_counter() - start
        n_eval = len(x_test) if epoch == args.epochs else (args.eval_samples or len(x_test))
        history.append(_accuracy(net, x_test[:n_eval], t_test[:n_eval]))
        lr = step.optimizer.param_groups[0]["lr"]
        print(f"epoch {epoch}/{args.epochs}: lr {lr:.3g}, loss {loss.item():.4f}, test acc "
              f"{history[-1]:.4f} on {n_eval} ({1000 * seconds / steps:.0f} ms/step)",
              flush=True)
    return history


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train a representative CNN in PyTorch with "
                                "xpnet train's recipe")
    p.add_argument("--model", choices=sorted(BUILDERS), required=True)
    p.add_argument("--depth", type=int, help="ResNet: 6n+2 layers; VGGNet: convolutions a stage")
    p.add_argument("--width", type=int, help="the first stage's filters (MiniGoogLeNet's unit)")
    p.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--lr-schedule", choices=SCHEDULES, default="constant",
                   help="the learning rate of each epoch (xpnet.lr_schedule)")
    p.add_argument("--augment-shift", type=int, default=0, metavar="PIXELS",
                   help="shift each training image by up to PIXELS (xpnet.augment.ShiftFlip)")
    p.add_argument("--augment-flip", action="store_true",
                   help="mirror half of the training images left to right")
    p.add_argument("--eval-samples", type=int, default=None,
                   help="score each epoch but the last on the first N test samples")
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    history = train(args)
    print(f"final test accuracy {history[-1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
