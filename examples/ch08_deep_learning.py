"""Chapter 8: deep learning -- DeepConvNet, its mistakes, half precision, and speed.

    python examples/ch08_deep_learning.py [--device gpu] [--out DIR] [--full]
                                          [--weights DIR] [--data-dir DIR]

Uses the book's trained DeepConvNet (``deep_convnet_params.pkl``, from --weights) or,
without it, trains one briefly. Writes
  misclassified.png  test images it gets wrong, "label -> prediction" (Figure 8-3)
  dtype_speed.png    inference time of one batch in float64, float32 and float16 on this
                     device, with the accuracy of each (8.3.4)
and prints the accuracies, float16 against float64 (the book: the same accuracy at half
the bits), and the CPU/GPU speed-up table of the benchmark suite when
``benchmarks/RESULTS.md`` is there (8.3).

Quick mode scores 500 test images; ``--full`` scores all of them.
"""

from __future__ import annotations

import re
import sys

import numpy as np
from common import REPO, Timer, book_weights, load_data, main, make_parser, save

from xpnet.backend import as_numpy, namespace, to_device
from xpnet.models import DeepConvNet
from xpnet.plot import new_figure, plot_misclassified
from xpnet.trainer import Trainer

RESULTS = REPO / "benchmarks" / "RESULTS.md"


def get_network(args):
    """The book's trained DeepConvNet and the test set, or one trained briefly here."""
    path = book_weights(args, "ch08_deep_convnet_params.pkl")
    if path is not None:
        (_, _), (x_test, t_test), name = load_data(args, flatten=False, inference_only=True)
        network = DeepConvNet(device=args.device)
        network.load_params(path)  # through xpnet's restricted unpickler
        print(f"loaded the book's DeepConvNet from {path.name}")
        return network, path, x_test, t_test, name
    (x_train, t_train), (x_test, t_test), name = load_data(args, flatten=False)
    epochs, n = (5, len(x_train)) if args.full else (1, 1000)
    print(f"training DeepConvNet on {n} images for {epochs} epoch(s) instead (Adam lr 0.001)")
    network = DeepConvNet(device=args.device)
    Trainer(network, x_train[:n], t_train[:n], x_test[:500], t_test[:500], epochs=epochs,
            optimizer="Adam", optimizer_param={"lr": 0.001}).train()
    saved = network.save_params(args.out / "deep_convnet_params.npz")
    return network, saved, x_test, t_test, name


def misclassified(args, network, x, t):
    """8.1.2: which images does a 99% network get wrong?"""
    with Timer() as timer:
        scores = []
        for i in range(0, len(x), 100):
            scores.append(as_numpy(network.predict(to_device(x[i : i + 100], args.device))))
        y = np.concatenate(scores).argmax(axis=1)
    acc = float(np.mean(y == t))
    print(f"8.1 DeepConvNet ({network.dtype}): accuracy {acc:.4f} on {len(x)} test images, "
          f"{len(x) / timer.seconds:.0f} images/s on {args.device}")
    shown = plot_misclassified(x, t, y, args.out / "misclassified.png", max_view=20)
    print(f"wrote {args.out / 'misclassified.png'} ({len(shown)} of {int(np.sum(y != t))} "
          "mistakes shown)")
    return acc


def half_precision(args, weights, x, t):
    """8.3.4: the same weights in float64, float32 and float16 on the same images."""
    n = len(x)
    results = {}
    for dtype in (np.float64, np.float32, np.float16):
        network = DeepConvNet(dtype=dtype, device=args.device)
        network.load_params(weights)
        network.predict(to_device(x[:2], args.device))  # warm-up: kernels compiled, memory set
        with Timer() as timer:
            y = np.concatenate([
                as_numpy(network.predict(to_device(x[i : i + 100], args.device)))
                for i in range(0, n, 100)
            ])
        results[np.dtype(dtype).name] = (y, timer.seconds)
    y64 = results["float64"][0].astype(np.float64)
    print(f"8.3.4 DeepConvNet on {n} test images, {args.device}:")
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
    ax.set_title(f"DeepConvNet inference by dtype on {args.device}")
    save(fig, args, "dtype_speed.png")


def speedup_table():
    """8.3: the benchmark suite's headline table (CPU, and GPU when its run had one)."""
    if not RESULTS.is_file():
        print(f"8.3 no benchmark results yet ({RESULTS.relative_to(REPO)}); run the "
              "benchmark suite to measure the CPU/GPU speed-ups")
        return
    text = RESULTS.read_text(encoding="utf-8")
    # The report's level-2 sections; the headline one is "## <network> at batch <n>".
    sections = re.split(r"(?m)^(?=## )", text)
    headline = [s for s in sections if re.match(r"## .* at batch \d+", s)]
    speed = [s for s in sections if re.search(r"speed-up", s, re.IGNORECASE)]
    chosen = (headline or speed or [text])[0]
    print(f"8.3 from {RESULTS.relative_to(REPO)}:")
    print(chosen.strip())
    gpu = [s for s in sections if s.startswith("## On an NVIDIA GPU")]
    if gpu:  # 8.3.2: the same network on a GPU, when a GPU check was recorded
        print(gpu[0].strip())


def run(args):
    namespace(args.device)
    network, weights, x_test, t_test, name = get_network(args)
    t_test = np.asarray(t_test).astype(np.int64)
    n = len(x_test) if args.full else 500
    print(f"data: {name}, scoring {n} test images")
    misclassified(args, network, x_test[:n], t_test[:n])
    half_precision(args, weights, x_test[:n], t_test[:n])
    speedup_table()


if __name__ == "__main__":
    parser = make_parser(8, "Chapter 8: deep learning", data=True, weights=True)
    sys.exit(main(run, parser))
