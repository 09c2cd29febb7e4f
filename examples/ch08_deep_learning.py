"""Chapter 8: deep learning -- DeepConvNet, its mistakes, half precision, and speed.

    python examples/ch08_deep_learning.py [--device gpu] [--out DIR] [--full]
                                          [--weights DIR] [--data-dir DIR]

Uses the book's trained DeepConvNet (``ch08/deep_convnet_params.pkl`` of the book's
repository, found through --weights) on MNIST. Without it (or without MNIST) it trains a
network here and says how far: in quick mode a SimpleConvNet for a few hundred steps (a
DeepConvNet step takes ten times as long on a CPU), with ``--full`` DeepConvNet for the
book's 20 epochs. Writes
  misclassified.png  test images it gets wrong, "true → predicted" (Figure 8-3)
  dtype_speed.png    inference time of one batch in float64, float32 and float16 on this
                     device, with the accuracy of each (8.3.4)
and prints the accuracies, float16 against float64 (the book: the same accuracy at half
the bits), and the speed-ups measured by the benchmark suite (8.3), pointing to
``benchmarks/RESULTS.md`` for the rest.

Quick mode scores 500 test images; ``--full`` scores all of them.
"""

from __future__ import annotations

import re
import sys

import numpy as np
from common import (
    FASHION_MNIST_CLASSES,
    REPO,
    Timer,
    book_weights,
    load_data,
    main,
    make_parser,
    save,
)

from xpnet.backend import as_numpy, namespace, to_device
from xpnet.models import DeepConvNet, SimpleConvNet
from xpnet.plot import new_figure, plot_misclassified
from xpnet.trainer import Trainer

RESULTS = REPO / "benchmarks" / "RESULTS.md"


QUICK_STEPS = 300  # SimpleConvNet, batch 100: about 80% on Fashion-MNIST, 96% on MNIST


def get_network(args):
    """The network whose mistakes and dtypes the chapter shows, and the test set.

    Returns ``(network, weights file, x_test, t_test, dataset name, what the network is)``:
    the book's DeepConvNet when its weights and MNIST are here, else one trained now.
    """
    (x_train, t_train), (x_test, t_test), name = load_data(args, flatten=False,
                                                           inference_only=True)
    path = book_weights(args, 8, name)
    if path is not None:
        network = DeepConvNet(device=args.device)
        network.load_params(path)  # through xpnet's restricted unpickler
        print(f"loaded the book's DeepConvNet from {path.name}")
        return network, path, x_test, t_test, name, f"the book's DeepConvNet ({path.name})"
    if not len(x_train):  # the inference-only split of a 10,000-image folder
        (x_train, t_train), (x_test, t_test), name = load_data(args, flatten=False)
    if args.full:  # the book's train_deepnet.py
        network, epochs, steps = DeepConvNet(device=args.device), 20, None
    else:
        network, epochs, steps = SimpleConvNet(device=args.device), 1, QUICK_STEPS
    model = type(network).__name__
    trainer = Trainer(network, x_train, t_train, x_test[:500], t_test[:500], epochs=epochs,
                      optimizer="Adam", optimizer_param={"lr": 0.001}, verbose=args.full)
    if steps is not None:  # a fraction of an epoch: the steps, not the epoch, set the cost
        trainer.max_iter = steps
    print(f"training {model} for {trainer.max_iter} steps of 100 {name} images (Adam, lr "
          "0.001) instead")
    with Timer() as timer:
        trainer.train()
    saved = network.save_params(args.out / f"{model.lower()}_params.npz")
    what = f"{model} trained here for {trainer.max_iter} steps"
    print(f"      {what} in {timer.seconds:.0f} s")
    return network, saved, x_test, t_test, name, what


def misclassified(args, network, x, t, name, what):
    """8.1.2: which images does the network get wrong?"""
    with Timer() as timer:
        scores = []
        for i in range(0, len(x), 100):
            scores.append(as_numpy(network.predict(to_device(x[i : i + 100], args.device))))
        y = np.concatenate(scores).argmax(axis=1)
    acc = float(np.mean(y == t))
    model = type(network).__name__
    print(f"8.1 {model} ({network.dtype}): accuracy {acc:.4f} on {len(x)} {name} test images, "
          f"{len(x) / timer.seconds:.0f} images/s on {args.device}")
    classes = FASHION_MNIST_CLASSES if name.startswith("Fashion") else None
    title = (f"8.1 mistakes of {what} on {len(x)} {name} test images "
             f"(accuracy {acc:.1%}): true → predicted")
    shown = plot_misclassified(x, t, y, args.out / "misclassified.png", max_view=20,
                               class_names=classes, title=title)
    print(f"wrote {args.out / 'misclassified.png'} ({len(shown)} of {int(np.sum(y != t))} "
          "mistakes shown)")
    return acc


def half_precision(args, model, weights, x, t, name):
    """8.3.4: the same weights in float64, float32 and float16 on the same images."""
    n = len(x)
    results = {}
    for dtype in (np.float64, np.float32, np.float16):
        network = model(dtype=dtype, device=args.device)
        network.load_params(weights)
        network.predict(to_device(x[:2], args.device))  # warm-up: kernels compiled, memory set
        with Timer() as timer:
            y = np.concatenate([
                as_numpy(network.predict(to_device(x[i : i + 100], args.device)))
                for i in range(0, n, 100)
            ])
        results[np.dtype(dtype).name] = (y, timer.seconds)
    y64 = results["float64"][0].astype(np.float64)
    print(f"8.3.4 {model.__name__} on {n} test images, {args.device}:")
    for name, (y, seconds) in results.items():
        acc = float(np.mean(y.argmax(axis=1) == t))
        agree = float(np.mean(y.argmax(axis=1) == y64.argmax(axis=1)))
        diff = float(np.abs(y.astype(np.float64) - y64).max())
        print(f"      {name}: accuracy {acc:.4f}, same class as float64 for {agree:.1%}, "
              f"largest score difference {diff:.2e}, {seconds:.2f} s")
        results[name] = (acc, seconds)

    fig = new_figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    names = list(results)
    seconds = [results[k][1] for k in names]
    bars = ax.bar(names, seconds, color=["tab:blue", "tab:green", "tab:orange"])
    for bar, k in zip(bars, names, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(),
                f"acc {results[k][0]:.3f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel(f"seconds for {n} images")
    ax.set_ylim(0, max(seconds) * 1.2)
    ax.set_title(f"8.3.4 {model.__name__} inference by dtype: {n} {name} test images, "
                 f"{args.device}", fontsize=10)
    save(fig, args, "dtype_speed.png")


def speedup_table():
    """8.3: the benchmark suite's speed-ups in a few lines; the tables stay in the file."""
    if not RESULTS.is_file():
        print(f"8.3 no benchmark results yet ({RESULTS.relative_to(REPO)}); run the "
              "benchmark suite to measure the CPU/GPU speed-ups")
        return
    text = RESULTS.read_text(encoding="utf-8")
    # The report's bold rows are its headline figures (the speed-ups); its float16 lines
    # are 8.3.4's point; the GPU section's row naming the GPU speed-up is 8.3.2's.
    def section(pattern):  # the lines of the level-2 section whose title matches
        found = re.search(rf"(?m)^## {pattern}$(?s:.*?)(?=^## )", text + "\n## ")
        return found.group().splitlines() if found else []

    headline = section(r"[^\n]* at batch \d+")
    lines = [line for line in headline if line.startswith("|") and "**" in line]
    lines += [line for line in headline if line.startswith("float16 ")]
    lines += [line for line in section("On an NVIDIA GPU") if "GPU speed-up" in line]
    print(f"8.3 measured by the benchmark suite (every table: {RESULTS.relative_to(REPO)}):")
    for line in lines:
        cells = [c.strip().replace("**", "") for c in line.strip("|").split("|")]
        print("      " + ": ".join(c for c in cells if c))


def run(args):
    namespace(args.device)
    network, weights, x_test, t_test, name, what = get_network(args)
    t_test = np.asarray(t_test).astype(np.int64)
    n = len(x_test) if args.full else 500
    misclassified(args, network, x_test[:n], t_test[:n], name, what)
    half_precision(args, type(network), weights, x_test[:n], t_test[:n], name)
    speedup_table()


if __name__ == "__main__":
    parser = make_parser(8, "Chapter 8: deep learning", data=True, weights=True)
    sys.exit(main(run, parser))
