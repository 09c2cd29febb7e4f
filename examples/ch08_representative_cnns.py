"""Chapter 8.2 (and 7.7): the representative CNNs -- LeNet, VGG, GoogLeNet, ResNet -- trained
side by side.

    python examples/ch08_representative_cnns.py [--device gpu] [--out DIR] [--full]
                                                [--dataset fashion-mnist] [--data-dir DIR]

The book describes the networks that made deep learning but builds only DeepConvNet;
``xpnet.models`` has them all (``LeNet``, ``VGGNet``, ``MiniGoogLeNet``, ``ResNet``). This
trains each with the same recipe (Adam, lr 0.001, random mini-batches of 100) and writes
  representative_cnns.png  test accuracy against the number of parameters and against the
                           time of one training step, one point per network
printing each network's parameters, step time and accuracy.

Quick mode (under a minute on 2 cores) trains small versions of them -- ResNet-8 instead
of ResNet-20, narrower VGG and Inception blocks -- for 25 to 200 steps each on 8,000
training images, and scores 1,000 test images: enough to see them learn and to compare
their cost, not their accuracy. ``--full`` trains the full-size networks on the whole
training set for the epochs below, the learning rate lowered once an epoch on a cosine
(``xpnet.lr_schedule``; hours for ResNet-20 and MiniGoogLeNet on a CPU), and scores the
whole test set: the recipe ``benchmarks/torch_cnns.py --lr-schedule cosine`` trains
PyTorch's same networks with, for the comparison of accuracies.
"""

from __future__ import annotations

import sys

import numpy as np
from common import Timer, load_data, main, make_parser, save

from xpnet import models
from xpnet.backend import get_rng, namespace, to_device
from xpnet.lr_schedule import lr_factor
from xpnet.optimizers import Adam
from xpnet.plot import new_figure

BATCH = 100
LR = 0.001

# name -> (class, keywords, epochs) of --full: the accuracy table's epochs, without its
# augmentation (xpnet train --augment-shift 2 --augment-flip adds it)
FULL = {
    "LeNet": (models.LeNet, {}, 20),
    "VGGNet": (models.VGGNet, {}, 20),
    "MiniGoogLeNet": (models.MiniGoogLeNet, {}, 25),
    "ResNet-20": (models.ResNet, {"depth": 20}, 20),
}
# name -> (class, keywords, training steps) of quick mode: small versions, few steps
QUICK = {
    "LeNet": (models.LeNet, {}, 200),
    "VGGNet (width 8)": (models.VGGNet, {"width": 8}, 60),
    "MiniGoogLeNet (width 8)": (models.MiniGoogLeNet, {"width": 8}, 25),
    "ResNet-8 (width 8)": (models.ResNet, {"depth": 8, "width": 8}, 25),
}
QUICK_TEST_IMAGES = 1000


def train(network, x_train, t_train, steps, device, epochs=None):
    """``steps`` Adam steps on random mini-batches (drawn as the book's trainer draws them),
    over ``epochs`` equal epochs on a cosine schedule (None: at one rate). Returns the mean
    seconds of a step, the first step (warm-up) left out."""
    optimizer = Adam(lr=LR)
    rng = get_rng(np)
    times = []
    for i in range(steps):
        if epochs is not None:
            optimizer.lr = LR * lr_factor("cosine", i * epochs // steps, epochs)
        idx = rng.choice(len(x_train), BATCH)
        x = to_device(x_train[idx], device)
        t = to_device(t_train[idx], device)
        with Timer() as timer:
            optimizer.update(network.params, network.gradient(x, t))
            network.last_loss.item()  # waits for the device, so the time is the step's
        times.append(timer.seconds)
    return float(np.mean(times[1:] if len(times) > 1 else times))


def compare(args):
    """Train each network; returns rows (name, parameters, step seconds, accuracy)."""
    (x_train, t_train), (x_test, t_test), name = load_data(args, flatten=False)
    if not args.full:
        x_test, t_test = x_test[:QUICK_TEST_IMAGES], t_test[:QUICK_TEST_IMAGES]
    table = FULL if args.full else QUICK
    print(f"{name}: {len(x_train)} training and {len(x_test)} test images, Adam lr {LR}, "
          f"batch {BATCH}")
    rows = []
    for label, (cls, kw, length) in table.items():
        network = cls(device=args.device, **kw)
        steps = length * max(len(x_train) // BATCH, 1) if args.full else length
        step = train(network, x_train, t_train, steps, args.device,
                     epochs=length if args.full else None)
        accuracy = network.accuracy(x_test, t_test, batch_size=BATCH)
        size = sum(int(v.size) for v in network.params.values())
        rows.append((label, size, step, accuracy))
        print(f"  {label:24s} {size:8,d} parameters  {1000 * step:7.1f} ms/step  "
              f"{steps:6d} steps  test accuracy {accuracy:.4f}")
    return rows, name


def plot(args, rows, name):
    fig = new_figure(figsize=(9, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, column, xlabel in ((axes[0], 1, "parameters"),
                               (axes[1], 2, f"training step, batch {BATCH} (ms)")):
        for row in rows:
            value = row[column] * (1000 if column == 2 else 1)
            ax.scatter(value, 100 * row[3])
            ax.annotate(row[0], (value, 100 * row[3]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.tick_params(axis="x", which="minor", labelbottom=False)  # no crowded labels
        ax.margins(x=0.3)  # room for the names
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test accuracy on {name} (%)")
    mode = "full recipe" if args.full else "quick mode: small versions, a few steps"
    fig.suptitle(f"The representative CNNs ({mode})")
    save(fig, args, "representative_cnns.png")


def run(args):
    namespace(args.device)  # a GPU that cannot be used: one clear error, before any work
    rows, name = compare(args)
    plot(args, rows, name)


if __name__ == "__main__":
    parser = make_parser(8, "Chapter 8.2: LeNet, VGG, GoogLeNet and ResNet compared",
                         data=True)
    sys.exit(main(run, parser))
