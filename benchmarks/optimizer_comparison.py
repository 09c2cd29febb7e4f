"""The book's ch. 6.1.8 optimizer comparison, on Fashion-MNIST.

A 5-layer MultiLayerNet (four hidden layers of 100 ReLU units, He initialisation) is
trained for 2,000 iterations with mini-batches of 128 by SGD, Momentum, AdaGrad and
Adam at the book's learning rates (the optimizers' defaults: 0.01, 0.01, 0.01, 0.001).
As in the book, every optimizer sees the same mini-batch at each iteration; here they
also start from the same initial weights. The book's finding: SGD learns slowest, so it
ends with the highest loss.

    python benchmarks/optimizer_comparison.py [--iterations 2000] [--data-dir DIR]
        [--plot curves.png]

Prints the smoothed final loss (the book's ``smooth_curve``, last value) and the mean
loss of the last 100 iterations for each optimizer, and the test accuracy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import xpnet
from xpnet.backend import get_rng, to_scalar
from xpnet.datasets import load_mnist
from xpnet.models import MultiLayerNet
from xpnet.optimizers import SGD, AdaGrad, Adam, Momentum
from xpnet.util import smooth_curve


def compare(x_train, t_train, x_test, t_test, iterations=2000, batch_size=128, seed=0):
    """Train one network per optimizer on shared mini-batches.

    Returns ``{name: {"loss": [per-iteration loss], "test_acc": float, "seconds": float}}``.
    """
    optimizers = {"SGD": SGD(), "Momentum": Momentum(), "AdaGrad": AdaGrad(), "Adam": Adam()}
    networks = {}
    for name in optimizers:
        xpnet.seed(seed)  # the same initial weights for every optimizer
        networks[name] = MultiLayerNet(784, [100, 100, 100, 100], 10)
    xpnet.seed(seed + 1)
    rng = get_rng(np)
    results = {name: {"loss": [], "seconds": 0.0} for name in optimizers}
    for _ in range(iterations):
        batch_mask = rng.integers(0, len(x_train), size=batch_size)
        x_batch, t_batch = x_train[batch_mask], t_train[batch_mask]
        for name, opt in optimizers.items():
            net = networks[name]
            start = time.perf_counter()
            grads = net.gradient(x_batch, t_batch)
            opt.update(net.params, grads)
            results[name]["seconds"] += time.perf_counter() - start
            results[name]["loss"].append(to_scalar(net.last_loss))
    for name, net in networks.items():
        results[name]["test_acc"] = net.accuracy(x_test, t_test)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="directory of the Fashion-MNIST IDX files")
    parser.add_argument("--plot", metavar="PNG", help="also draw the smoothed loss curves")
    args = parser.parse_args(argv)

    (x_train, t_train), (x_test, t_test) = load_mnist(dataset="fashion-mnist",
                                                      data_dir=args.data_dir)
    start = time.perf_counter()
    results = compare(x_train, t_train, x_test, t_test, args.iterations, args.batch_size,
                      args.seed)
    total = time.perf_counter() - start
    print(f"Fashion-MNIST, MultiLayerNet 784-100-100-100-100-10, {args.iterations} iterations, "
          f"batch {args.batch_size}, seed {args.seed} ({total:.1f} s in all)")
    print(f"{'optimizer':<10} {'lr':>6} {'smoothed final loss':>20} {'mean loss, last 100':>20} "
          f"{'test acc':>9}")
    lrs = {"SGD": 0.01, "Momentum": 0.01, "AdaGrad": 0.01, "Adam": 0.001}
    for name, r in results.items():
        loss = np.asarray(r["loss"])
        r["smoothed_final"] = float(smooth_curve(loss)[-1])
        r["last100"] = float(loss[-100:].mean())
        print(f"{name:<10} {lrs[name]:>6} {r['smoothed_final']:>20.4f} {r['last100']:>20.4f} "
              f"{r['test_acc']:>9.4f}")
    worst = max(results, key=lambda k: results[k]["smoothed_final"])
    print(f"highest final loss: {worst} (the book: SGD)")
    if args.plot:
        from xpnet.plot import new_figure, save_figure

        fig = new_figure(figsize=(6, 4), layout="constrained")
        ax = fig.add_subplot()
        for name, r in results.items():
            ax.plot(smooth_curve(r["loss"]), label=name)
        ax.set_xlabel("iterations")
        ax.set_ylabel("loss")
        ax.set_ylim(0, 1.5)
        ax.legend()
        save_figure(fig, args.plot)
    return 0 if worst == "SGD" else 1


if __name__ == "__main__":
    raise SystemExit(main())
