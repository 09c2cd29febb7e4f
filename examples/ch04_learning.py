"""Chapter 4: learning from data -- numerical differentiation, gradients, gradient descent,
and TwoLayerNet trained by numerical gradient.

    python examples/ch04_learning.py [--device gpu] [--out DIR] [--full] [--data-dir DIR]

Writes
  numerical_diff.png     f(x) = 0.01x^2 + 0.1x with its tangent at x = 5 (Figure 4-7), and
                         the error of the forward and central differences against h: the
                         rounding error that makes h = 1e-50 give 0 (4.3.1)
  gradient_field.png     minus the gradient of f(x0, x1) = x0^2 + x1^2 (Figure 4-9)
  gradient_descent.png   gradient descent's path from (-3, 4), lr = 0.1 (Figure 4-10)
  numerical_training.png a small TwoLayerNet trained by numerical gradient, step for step
                         beside a twin trained by backpropagation (ch. 5) on the same batches
  learning_curves.png    the book's TwoLayerNet training (4.5.2-4.5.3): loss per
                         iteration, train/test accuracy per epoch (Figures 4-11, 4-12)
and prints the numbers and the times.
"""

from __future__ import annotations

import sys

import numpy as np
from common import Timer, load_data, main, make_parser, save

from xpnet.backend import get_rng, namespace, to_device, to_scalar
from xpnet.gradient import (
    gradient_descent,
    numerical_diff,
    numerical_gradient,
    numerical_gradient_2d,
    relative_error,
)
from xpnet.models import TwoLayerNet
from xpnet.plot import new_figure, plot_history
from xpnet.trainer import Trainer


def function_1(x):
    return 0.01 * x**2 + 0.1 * x


def function_2(x):
    return x[0] ** 2 + x[1] ** 2 if x.ndim == 1 else (x**2).sum(axis=-1)


def differentiation(args):
    """4.3: the bad and the good numerical derivative, and where the bad one goes wrong."""
    h_bad = 1e-50
    print(f"4.3.1 np.float32(1e-50) = {np.float32(h_bad)}: (f(x+h) - f(x)) / h with h = 1e-50 "
          f"gives {(function_1(5 + h_bad) - function_1(5)) / h_bad}")
    print(f"4.3.2 numerical_diff(f, 5) = {numerical_diff(function_1, 5):.10f} "
          f"(true 0.2), numerical_diff(f, 10) = {numerical_diff(function_1, 10):.10f} (true 0.3)")

    # The error against h, on sin at x = 1 (a quadratic's central difference would be exact
    # but for rounding): truncation error shrinks with h, rounding error grows as h shrinks.
    hs = np.logspace(-16, -1, 61)
    forward = np.abs((np.sin(1 + hs) - np.sin(1)) / hs - np.cos(1))
    central = np.abs((np.sin(1 + hs) - np.sin(1 - hs)) / (2 * hs) - np.cos(1))
    best = hs[np.argmin(central)]
    print(f"      sin'(1) by central difference: smallest error {central.min():.1e} at "
          f"h={best:.0e}; "
          f"at h=1e-4 {central[np.argmin(np.abs(hs - 1e-4))]:.1e}")
    fig = new_figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    x = np.arange(0.0, 20.0, 0.1)
    slope = numerical_diff(function_1, 5)
    left.plot(x, function_1(x), label="f(x) = 0.01x² + 0.1x")
    tangent = slope * (x - 5) + function_1(5)
    left.plot(x, tangent, linestyle="--", label=f"tangent at x=5, slope {slope:.4f}")
    left.set_xlabel("x")
    left.set_ylabel("f(x)")
    left.legend()
    left.set_title("numerical differentiation")
    # +1e-18 keeps exact zeros (h so small that x + h == x) on the log axis
    right.loglog(hs, forward + 1e-18, label="forward (f(x+h) - f(x)) / h")
    right.loglog(hs, central + 1e-18, label="central (f(x+h) - f(x-h)) / 2h")
    right.axvline(1e-4, color="gray", linestyle=":", label="h = 1e-4 (the book's)")
    right.set_xlabel("h")
    right.set_ylabel("|error| of the derivative of sin at 1")
    right.set_title("truncation error (large h) vs rounding error (small h)")
    right.legend(fontsize=8)
    save(fig, args, "numerical_diff.png")


def gradient_field(args):
    """4.4: the gradient of x0² + x1² points away from the minimum; minus it, towards it."""
    for point in ([3.0, 4.0], [0.0, 2.0], [3.0, 0.0]):
        g = numerical_gradient(function_2, np.array(point))
        print(f"4.4 numerical_gradient(function_2, {point}) = {g.round(6)}")
    x0, x1 = np.meshgrid(np.arange(-2, 2.5, 0.25), np.arange(-2, 2.5, 0.25))
    X = np.stack([x0.ravel(), x1.ravel()], axis=1)
    grad = numerical_gradient_2d(function_2, X)
    fig = new_figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.quiver(X[:, 0], X[:, 1], -grad[:, 0], -grad[:, 1], angles="xy", color="#666666")
    ax.set_xlim(-2, 2)
    ax.set_ylim(-2, 2)
    ax.set_xlabel("x0")
    ax.set_ylabel("x1")
    ax.set_title("-∇f of f(x0, x1) = x0² + x1²")
    ax.grid()
    save(fig, args, "gradient_field.png")


def descent(args):
    """4.4.1: gradient descent from (-3, 4), and what too large or too small a rate does."""
    x, history = gradient_descent(function_2, np.array([-3.0, 4.0]), lr=0.1, step_num=20,
                                  return_history=True)
    print(f"4.4.1 gradient_descent(lr=0.1, 20 steps) from (-3, 4): {x.round(6)}")
    for lr in (10.0, 1e-10):
        far = gradient_descent(function_2, np.array([-3.0, 4.0]), lr=lr, step_num=100)
        print(f"      lr={lr:g}, 100 steps: {far}")
    fig = new_figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([-5, 5], [0, 0], "--b")
    ax.plot([0, 0], [-5, 5], "--b")
    ax.plot(history[:, 0], history[:, 1], "o")
    ax.set_xlim(-3.5, 3.5)
    ax.set_ylim(-4.5, 4.5)
    ax.set_xlabel("X0")
    ax.set_ylabel("X1")
    ax.set_title("gradient descent, lr = 0.1, 20 steps")
    save(fig, args, "gradient_descent.png")


def numerical_training(args, x_train, t_train, name):
    """TwoLayerNet trained by numerical gradient on a small subset -- and a twin trained on
    the same batches by backpropagation, which follows the same path far faster."""
    hidden, batch, steps, lr = (10, 20, 60, 0.3) if args.full else (5, 10, 3, 0.5)
    x_small, t_small = x_train[:100], t_train[:100]
    slow = TwoLayerNet(784, hidden, 10, dtype=np.float64, device=args.device)
    fast = TwoLayerNet(784, hidden, 10, dtype=np.float64, device=args.device)
    for key in slow.params:  # the same initial weights
        fast.params[key][...] = slow.params[key]
    rng = get_rng(np)
    loss_num, loss_bp, t_num, t_bp, errors = [], [], 0.0, 0.0, []
    for _ in range(steps):
        idx = rng.integers(0, len(x_small), batch)
        xb, tb = (to_device(a[idx], args.device) for a in (x_small, t_small))
        with Timer() as numerical:
            g_num = slow.numerical_gradient(xb, tb)
        loss_num.append(to_scalar(slow.loss(xb, tb)))
        with Timer() as backprop:
            g_bp = fast.gradient(xb, tb)
            loss_bp.append(to_scalar(fast.last_loss))
        t_num, t_bp = t_num + numerical.seconds, t_bp + backprop.seconds
        # the check: backprop's gradient at the very same weights as the numerical one
        g_check = slow.gradient(xb, tb)
        errors.append(max(relative_error(g_num[k], g_check[k]) for k in g_num))
        for net, grads in ((slow, g_num), (fast, g_bp)):
            for key in net.params:
                net.params[key] -= lr * grads[key]
    n_params = sum(int(v.size) for v in slow.params.values())
    print(f"4.5 TwoLayerNet(784, {hidden}, 10), {n_params} parameters, batch {batch}, "
          f"{steps} steps on {len(x_small)} images:")
    print(f"    numerical gradient {t_num / steps:.3f} s/step, backprop {t_bp / steps * 1e3:.3f} "
          f"ms/step ({t_num / t_bp:.0f}x faster)")
    # A step of h = 1e-4 across a ReLU's kink makes an occasional larger difference.
    print(f"    relative difference from backprop's gradient at the same weights: median "
          f"{np.median(errors):.1e}, largest {max(errors):.1e}")
    print(f"    loss {loss_num[0]:.4f} -> {loss_num[-1]:.4f} (numerical), "
          f"{loss_bp[0]:.4f} -> {loss_bp[-1]:.4f} (backprop)")

    # What the book's network (784-50-10, batch 100) would cost: one loss evaluation timed,
    # two per parameter per step.
    book = TwoLayerNet(784, 50, 10, device=args.device)
    xb, tb = (to_device(a[:100], args.device) for a in (x_train, t_train))
    with Timer() as one:
        for _ in range(10):
            book.loss(xb, tb)
    per_step = one.seconds / 10 * 2 * sum(int(v.size) for v in book.params.values())
    print(f"    the book's TwoLayerNet(784, 50, 10), batch 100: about {per_step:.0f} s per "
          f"numerical-gradient step, {per_step * 10000 / 3600:.0f} hours for its 10,000 steps")

    fig = new_figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    steps_axis = np.arange(1, steps + 1)
    ax.plot(steps_axis, loss_num, "o-", label=f"numerical gradient ({t_num / steps:.2f} s/step)")
    ax.plot(steps_axis, loss_bp, "x--", label=f"backprop ({t_bp / steps * 1e3:.2f} ms/step)")
    if steps <= 20:
        ax.set_xticks(steps_axis)
    ax.set_xlabel("step")
    ax.set_ylabel("loss of the batch")
    ax.set_title(f"4.5 TwoLayerNet(784, {hidden}, 10) on {len(x_small)} {name} images")
    ax.legend()
    save(fig, args, "numerical_training.png")


def learning_curves(args, x_train, t_train, x_test, t_test, name):
    """4.5.2-4.5.3: the book's TwoLayerNet(784, 50, 10), SGD lr 0.1, batch 100 (gradients by
    backpropagation, as the book's own ch04/train_neuralnet.py does for speed)."""
    network = TwoLayerNet(784, 50, 10, device=args.device)
    trainer = Trainer(network, x_train, t_train, x_test, t_test,
                      epochs=17 if args.full else 8, mini_batch_size=100,
                      optimizer="SGD", optimizer_param={"lr": 0.1}, verbose=True)
    with Timer() as t:
        trainer.train()
    print(f"trained {trainer.max_iter} steps in {t.seconds:.1f} s")
    plot_history(trainer, args.out / "learning_curves.png",
                 title=f"4.5 TwoLayerNet(784, 50, 10) on {len(x_train)} {name} images, SGD lr 0.1")
    print(f"wrote {args.out / 'learning_curves.png'}")


def run(args):
    namespace(args.device)
    differentiation(args)
    gradient_field(args)
    descent(args)
    (x_train, t_train), (x_test, t_test), name = load_data(args)
    print(f"data: {name}, {len(x_train)} training and {len(x_test)} test images")
    numerical_training(args, x_train, t_train, name)
    learning_curves(args, x_train, t_train, x_test, t_test, name)


if __name__ == "__main__":
    parser = make_parser(4, "Chapter 4: learning by numerical gradient", data=True)
    sys.exit(main(run, parser))
