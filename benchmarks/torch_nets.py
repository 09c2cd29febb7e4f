"""The book's SimpleConvNet and DeepConvNet in PyTorch: the same layers, sizes, dropout,
initialization scales and optimizer (Adam, lr 0.001, eps 1e-7 as the book's Adam), so a
benchmark compares the frameworks and nothing else.

    net = deep_convnet()                      # float32, on the CPU
    step = train_step_fn(net)                 # step(x, t) -> loss: forward, backward, Adam
    y = infer(net, x)                         # eval mode, no autograd
"""

from __future__ import annotations

import torch
from torch import nn


def _he_(layer: nn.Module, fan_in: int) -> nn.Module:
    nn.init.normal_(layer.weight, std=(2.0 / fan_in) ** 0.5)
    nn.init.zeros_(layer.bias)
    return layer


def simple_convnet(input_dim=(1, 28, 28), filter_num=30, filter_size=5, hidden_size=100,
                   output_size=10, weight_init_std=0.01) -> nn.Sequential:
    """Conv(30, 5x5) - ReLU - MaxPool(2, 2) - Linear(100) - ReLU - Linear(10), as ch. 7."""
    C, H, W = input_dim
    conv_h, conv_w = H - filter_size + 1, W - filter_size + 1
    flat = filter_num * (conv_h // 2) * (conv_w // 2)
    net = nn.Sequential(
        nn.Conv2d(C, filter_num, filter_size),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(flat, hidden_size),
        nn.ReLU(),
        nn.Linear(hidden_size, output_size),
    )
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=weight_init_std)
            nn.init.zeros_(m.bias)
    return net


def deep_convnet(input_dim=(1, 28, 28), hidden_size=50, output_size=10) -> nn.Sequential:
    """The ch. 8 network: six 3x3 convolutions (16, 16, 32, 32 with pad 2, 64, 64), three
    2x2 max-pools, Linear(50) - ReLU - Dropout(0.5) - Linear(10) - Dropout(0.5), He init."""
    C, H, W = input_dim
    layers: list[nn.Module] = []
    channels = C
    for i, (fn, pad) in enumerate([(16, 1), (16, 1), (32, 1), (32, 2), (64, 1), (64, 1)]):
        layers += [_he_(nn.Conv2d(channels, fn, 3, padding=pad), channels * 9), nn.ReLU()]
        H, W = H + 2 * pad - 2, W + 2 * pad - 2
        channels = fn
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2, 2))
            H, W = H // 2, W // 2
    flat = channels * H * W
    layers += [
        nn.Flatten(),
        _he_(nn.Linear(flat, hidden_size), flat),
        nn.ReLU(),
        nn.Dropout(0.5),
        _he_(nn.Linear(hidden_size, output_size), hidden_size),
        nn.Dropout(0.5),
    ]
    return nn.Sequential(*layers)


def train_step_fn(net: nn.Module, lr=0.001):
    """A function step(x, t) doing one training step (forward, backward, Adam update)."""
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, t):
        net.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), t)
        loss.backward()
        opt.step()
        return loss

    step.optimizer = opt  # for a learning-rate schedule
    return step


def infer(net: nn.Module, x):
    """Scores in eval mode (dropout off), without autograd."""
    net.eval()
    with torch.inference_mode():
        return net(x)
