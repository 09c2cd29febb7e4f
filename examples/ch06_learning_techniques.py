"""Chapter 6: techniques for learning -- optimizers, weight initialization, Batch
Normalization, regularization and hyperparameter search.

    python examples/ch06_learning_techniques.py [--device gpu] [--out DIR] [--full]
                                                [--data-dir DIR]

Writes
  optimizer_paths.png       SGD, Momentum, AdaGrad and Adam on f(x, y) = x²/20 + y²
                            from (-7, 2) (Figures 6-3, 6-5, 6-6, 6-8)
  optimizer_compare.png     the four on the data, MultiLayerNet 4x100 (Figure 6-9)
  weight_init_hist.png      activations of 5 layers for each weight scale (Figures 6-10,
                            6-11, 6-13, 6-14)
  weight_init_compare.png   std 0.01 vs Xavier vs He on the data (Figure 6-15)
  batchnorm.png             with and without Batch Normalization, for several weight
                            scales (Figure 6-19)
  overfitting.png           300 training images: plain, weight decay 0.1, Dropout 0.2
                            (Figures 6-20, 6-21, 6-23)
  hyperparameter_search.png random search of lr and weight decay (6.5.3, Figure 6-24)

Quick mode runs each experiment shorter (fewer steps, weight scales and trials) than the
book; ``--full`` runs them at the book's length.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
from common import Timer, load_data, main, make_parser, save

from xpnet.backend import as_numpy, get_rng, namespace, to_device, to_scalar
from xpnet.functions import relu, sigmoid
from xpnet.initializers import init_weight
from xpnet.loss_growth import LossGrowthWarning
from xpnet.models import MultiLayerNet, MultiLayerNetExtend
from xpnet.optimizers import SGD, AdaGrad, Adam, Momentum
from xpnet.plot import new_figure
from xpnet.trainer import Trainer, TrainingDivergedError
from xpnet.tuning import random_search
from xpnet.util import smooth_curve

# ---------------------------------------------------------------------------
# 6.1 Optimizers
# ---------------------------------------------------------------------------


def f(x, y):
    return x**2 / 20.0 + y**2


def df(x, y):
    return x / 10.0, 2.0 * y


def optimizer_paths(args):
    """6.1.7: 30 updates of each optimizer on x²/20 + y², the book's learning rates."""
    optimizers = {"SGD": SGD(lr=0.95), "Momentum": Momentum(lr=0.1),
                  "AdaGrad": AdaGrad(lr=1.5), "Adam": Adam(lr=0.3)}
    X, Y = np.meshgrid(np.arange(-10, 10, 0.02), np.arange(-5, 5, 0.02))
    Z = f(X, Y)
    Z[Z > 7] = 0  # the book's trick: draw only the contours near the minimum
    fig = new_figure(figsize=(10, 8), layout="constrained")
    for i, (name, optimizer) in enumerate(optimizers.items()):
        params = {"x": np.array([-7.0]), "y": np.array([2.0])}
        path = []
        for _ in range(30):
            path.append((params["x"][0], params["y"][0]))
            gx, gy = df(params["x"], params["y"])
            optimizer.update(params, {"x": gx, "y": gy})
        path = np.array(path)
        print(f"6.1 {name:8s} after 30 steps: ({params['x'][0]:+.4f}, {params['y'][0]:+.4f})")
        ax = fig.add_subplot(2, 2, i + 1)
        ax.contour(X, Y, Z)
        ax.plot(path[:, 0], path[:, 1], "o-", color="red", markersize=3)
        ax.plot(0, 0, "+", color="k", markersize=12)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.set_title(name)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    save(fig, args, "optimizer_paths.png")


def train_losses(networks, optimizers, x_train, t_train, steps, batch_size=128):
    """The book's comparison loop: every network sees the same mini-batch at each step.

    networks, optimizers: dicts keyed alike. Returns {key: [loss per step]}.
    """
    first = next(iter(networks.values()))
    x_train, t_train = (to_device(a, first.device) for a in (x_train, t_train))
    rng = get_rng(first.xp)
    losses = {key: [] for key in networks}
    for _ in range(steps):
        mask = rng.integers(0, len(x_train), size=batch_size)
        x_batch, t_batch = x_train[mask], t_train[mask]
        for key, network in networks.items():
            grads = network.gradient(x_batch, t_batch)
            optimizers[key].update(network.params, grads)
            losses[key].append(network.last_loss)  # read back once, at the end
    return {key: [to_scalar(v) for v in values] for key, values in losses.items()}


def plot_losses(args, losses, title, name):
    fig = new_figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    markers = iter("o^sDv")
    for key, values in losses.items():
        steps = np.arange(len(values))
        ax.plot(steps, smooth_curve(values), marker=next(markers),
                markevery=max(1, len(values) // 10), label=key)
    ax.set_xlabel("iterations")
    ax.set_ylabel("loss")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best")
    save(fig, args, name)


def optimizer_compare(args, x_train, t_train, name):
    steps = 2000 if args.full else 150
    optimizers = {"SGD": SGD(), "Momentum": Momentum(), "AdaGrad": AdaGrad(), "Adam": Adam()}
    networks = {key: MultiLayerNet(784, [100] * 4, 10, device=args.device) for key in optimizers}
    with Timer() as t:
        losses = train_losses(networks, optimizers, x_train, t_train, steps)
    print(f"6.1.8 optimizers on {name}, {steps} steps ({t.seconds:.1f} s); final smoothed loss:")
    for key, values in losses.items():
        print(f"      {key:8s} {smooth_curve(values)[-1]:.4f}")
    plot_losses(args, losses, f"6.1.8 optimizers: MultiLayerNet 4x100 on {name},\n{steps} "
                "steps of 128 images", "optimizer_compare.png")


# ---------------------------------------------------------------------------
# 6.2 Weight initialization
# ---------------------------------------------------------------------------


def weight_init_histograms(args, xp):
    """6.2.2: 1000 random inputs through 5 layers of 100 units; where do activations go?"""
    cases = [("sigmoid", "std=1", 1.0), ("sigmoid", "std=0.01", 0.01),
             ("sigmoid", "Xavier", "xavier"), ("ReLU", "std=0.01", 0.01),
             ("ReLU", "Xavier", "xavier"), ("ReLU", "He", "he")]
    x0 = get_rng(xp).standard_normal((1000, 100))
    fig = new_figure(figsize=(12, 13), layout="constrained")
    rows = fig.subfigures(len(cases), 1)
    for row, (act_name, init_name, std) in zip(rows, cases, strict=True):
        activation = sigmoid if act_name == "sigmoid" else relu
        x = x0
        axes = row.subplots(1, 5)
        spreads = []
        for i, ax in enumerate(axes):
            w = init_weight((100, 100), std, dtype=np.float64, xp=xp)
            x = activation(x @ w)
            a = as_numpy(x).ravel()
            spreads.append(a.std())
            ax.hist(a, bins=30, range=(0, 1))
            ax.set_title(f"{i + 1}-layer", fontsize=9)
            if act_name == "ReLU":  # as the book: clip the tall bar of zeros to see the rest
                ax.set_ylim(0, 7000)
            if i:
                ax.set_yticks([])
        clipped = " (bar at 0 clipped)" if act_name == "ReLU" else ""
        row.suptitle(f"{act_name}, weights {init_name}{clipped}", fontsize=10)
        print(f"6.2.2 {act_name:7s} {init_name:8s} activation std by layer: "
              + " ".join(f"{s:.3f}" for s in spreads))
    save(fig, args, "weight_init_hist.png")


def weight_init_compare(args, x_train, t_train, name):
    steps = 2000 if args.full else 150
    inits = {"std=0.01": 0.01, "Xavier": "sigmoid", "He": "relu"}
    networks = {key: MultiLayerNet(784, [100] * 4, 10, weight_init_std=std, device=args.device)
                for key, std in inits.items()}
    optimizers = {key: SGD(lr=0.01) for key in inits}
    losses = train_losses(networks, optimizers, x_train, t_train, steps)
    print(f"6.2.4 weight initializations on {name}, SGD lr 0.01, {steps} steps; final loss: "
          + ", ".join(f"{k} {smooth_curve(v)[-1]:.4f}" for k, v in losses.items()))
    plot_losses(args, losses, f"6.2.4 weight scales: MultiLayerNet 4x100 (ReLU) on {name},\n"
                f"SGD lr 0.01, {steps} steps of 128 images", "weight_init_compare.png")


# ---------------------------------------------------------------------------
# 6.3 Batch Normalization
# ---------------------------------------------------------------------------


def batchnorm(args, x_train, t_train, name):
    """6.3.2: 1000 images, 5x100 net, SGD lr 0.01 -- accuracy per epoch with and without
    Batch Normalization, for weight scales from 1 down to 1e-4.

    In float64, as the book: with weights of scale 1 and no Batch Normalization the
    activations grow by about 7x per layer until the loss overflows -- the divergence the
    figure shows. Such a run stops with TrainingDivergedError and is marked where it
    stopped."""
    x_train, t_train = x_train[:1000], t_train[:1000]
    scales = np.logspace(0, -4, num=16) if args.full else np.array([1.0, 0.1, 0.01, 0.001])
    epochs = 20 if args.full else 10
    ncols = 4
    nrows = int(np.ceil(len(scales) / ncols))
    fig = new_figure(figsize=(3.2 * ncols, 2.8 * nrows + 0.5), layout="constrained")
    print("6.3.2 runs without Batch Normalization may diverge here on purpose: their "
          "overflow warnings are silenced and the figure marks them")
    for i, w in enumerate(scales):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        epochs_axis = np.arange(1, epochs + 1)
        final = {}
        for use_bn, style in ((True, "-"), (False, "--")):
            label = "Batch Normalization" if use_bn else "Normal (without BatchNorm)"
            acc, diverged = batchnorm_run(args, x_train, t_train, w, use_bn, epochs)
            final[use_bn] = acc[-1] if acc and not diverged else float("nan")
            (line,) = ax.plot(epochs_axis[: len(acc)], acc, linestyle=style, label=label)
            if diverged:
                at = len(acc) + 1  # the epoch during which the loss overflowed
                ax.plot([at], [0.0], marker="x", markersize=10, markeredgewidth=2,
                        color=line.get_color(), clip_on=False, linestyle="none",
                        label="diverged (loss overflowed)")
                ax.text(0.5, 0.6, f"without BatchNorm:\ndiverged in epoch {at}", ha="center",
                        transform=ax.transAxes, fontsize=8, color=line.get_color())
        print(f"6.3.2 weight scale {w:.4g}: train accuracy after {epochs} epochs "
              f"{final[True]:.3f} with Batch Norm, " + (
                  f"{final[False]:.3f} without" if not np.isnan(final[False])
                  else "diverged without"))
        ax.set_xlim(0.5, epochs + 0.5)
        ax.set_ylim(0, 1.0)
        ax.set_title(f"W: {w:.4g}", fontsize=10)
        ax.set_xlabel("epochs", fontsize=8)
        ax.set_ylabel("train accuracy", fontsize=8)
    handles = {}
    for ax in fig.axes:  # one legend for every panel, each label once
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=3)
    fig.suptitle(f"6.3.2 Batch Normalization: MultiLayerNetExtend 5x100 on 1000 {name} "
                 "images, SGD lr 0.01, by weight scale W")
    save(fig, args, "batchnorm.png")


def batchnorm_run(args, x_train, t_train, w, use_bn, epochs):
    """One run of 6.3.2: (training accuracy per epoch, whether the loss overflowed)."""
    network = MultiLayerNetExtend(784, [100] * 5, 10, weight_init_std=w,
                                  use_batchnorm=use_bn, dtype=np.float64, device=args.device)
    # The book plots training accuracy only; the "test" set is a token 100 images.
    trainer = Trainer(network, x_train, t_train, x_train[:100], t_train[:100],
                      epochs=epochs, optimizer="SGD", optimizer_param={"lr": 0.01},
                      verbose=False)
    # Large weights without Batch Normalization are meant to blow up: no overflow warnings.
    with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", LossGrowthWarning)
        try:
            trainer.train()
        except TrainingDivergedError:
            return trainer.train_acc_list, True
    return trainer.train_acc_list, False


# ---------------------------------------------------------------------------
# 6.4 Regularization
# ---------------------------------------------------------------------------


def overfitting(args, x_train, t_train, x_test, t_test, name):
    """6.4: 300 training images, 6x100 net -- plain, with weight decay, with Dropout."""
    x_train, t_train = x_train[:300], t_train[:300]
    epochs = 201 if args.full else 80
    # Quick mode takes larger steps, so that 80 epochs reach what the book's 200 do, and
    # scores each epoch on 500 test images instead of all of them.
    lr = 0.01 if args.full else 0.02
    evaluate = None if args.full else 300
    builds = {
        "plain": lambda: MultiLayerNet(784, [100] * 6, 10, device=args.device),
        "weight decay 0.1": lambda: MultiLayerNet(784, [100] * 6, 10, weight_decay_lambda=0.1,
                                                  device=args.device),
        "Dropout 0.2": lambda: MultiLayerNetExtend(784, [100] * 6, 10, use_dropout=True,
                                                   dropout_ration=0.2, device=args.device),
    }
    fig = new_figure(figsize=(12, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (label, build) in zip(axes, builds.items(), strict=True):
        trainer = Trainer(build(), x_train, t_train, x_test, t_test, epochs=epochs,
                          optimizer="SGD", optimizer_param={"lr": lr}, verbose=False,
                          evaluate_sample_num_per_epoch=evaluate)
        trainer.train()
        train_acc, test_acc = trainer.train_acc_list, trainer.test_acc_list
        print(f"6.4 {label:16s}: train acc {train_acc[-1]:.3f}, test acc {test_acc[-1]:.3f}, "
              f"gap {train_acc[-1] - test_acc[-1]:.3f}")
        epochs_axis = np.arange(1, epochs + 1)
        ax.plot(epochs_axis, train_acc, marker="o", markevery=10, label="train")
        ax.plot(epochs_axis, test_acc, marker="s", markevery=10, label="test")
        ax.set_ylim(0, 1.0)
        ax.set_xlabel("epochs")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{label} (lr {lr})")
        ax.legend(loc="best")  # where it covers the fewest points
    fig.suptitle(f"6.4 overfitting: MultiLayerNet 6x100 on 300 {name} images")
    save(fig, args, "overfitting.png")


# ---------------------------------------------------------------------------
# 6.5 Hyperparameter search
# ---------------------------------------------------------------------------


def hyperparameter_search(args, x_train, t_train, name):
    """6.5.3: lr = 10^U(-6, -2), weight decay = 10^U(-8, -4), validation split of 500
    training images; trained briefly, ranked by validation accuracy."""
    trials, epochs = (100, 50) if args.full else (8, 20)

    def build(weight_decay):
        return MultiLayerNet(784, [100] * 6, 10, weight_decay_lambda=weight_decay,
                             device=args.device)

    with Timer() as t:
        results = random_search(build, x_train[:500], t_train[:500], trials=trials,
                                epochs=epochs, seed=args.seed, device=args.device,
                                verbose=False)
    print(f"6.5.3 random search: {trials} trials of {epochs} epochs in {t.seconds:.1f} s")
    for rank, r in enumerate(results[:5], start=1):
        print(f"      Best-{rank} (val acc:{r.val_acc:.3f}) | lr:{r.lr:.3e}, "
              f"weight decay:{r.weight_decay:.3e}")
    lr = np.array([r.lr for r in results])
    wd = np.array([r.weight_decay for r in results])
    acc = np.nan_to_num(np.array([r.val_acc for r in results]))

    fig = new_figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    points = left.scatter(lr, wd, c=acc, cmap="viridis", vmin=0, vmax=1, s=40)
    left.scatter(lr[:5], wd[:5], facecolors="none", edgecolors="red", s=120)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("learning rate")
    left.set_ylabel("weight decay")
    left.set_title("each trial, coloured by validation accuracy;\nthe best 5 circled in red",
                   fontsize=10)
    fig.colorbar(points, ax=left)
    right.scatter(lr, acc, s=30)
    right.set_xscale("log")
    right.set_xlabel("learning rate")
    right.set_ylabel("validation accuracy")
    right.set_ylim(0, 1.0)
    right.set_title(f"{trials} trials, {epochs} epochs each")
    fig.suptitle(f"6.5.3 random search: MultiLayerNet 6x100 on 500 {name} images")
    save(fig, args, "hyperparameter_search.png")


def run(args):
    xp = namespace(args.device)
    optimizer_paths(args)
    weight_init_histograms(args, xp)
    (x_train, t_train), (x_test, t_test), name = load_data(args)
    print(f"data: {name}, {len(x_train)} training and {len(x_test)} test images")
    optimizer_compare(args, x_train, t_train, name)
    weight_init_compare(args, x_train, t_train, name)
    batchnorm(args, x_train, t_train, name)
    overfitting(args, x_train, t_train, x_test, t_test, name)
    hyperparameter_search(args, x_train, t_train, name)


if __name__ == "__main__":
    parser = make_parser(6, "Chapter 6: techniques for learning", data=True)
    sys.exit(main(run, parser))
