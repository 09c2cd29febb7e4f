"""Chapter 5: backpropagation -- computational graphs, the gradient check, and
TwoLayerNet trained by backprop.

    python examples/ch05_backprop.py [--device gpu] [--out DIR] [--full] [--data-dir DIR]

Writes
  computational_graph.png  the apples-and-oranges graph (Figure 5-17) with each node's
                           forward value and, in red, the derivative flowing back
  gradient_timing.png      one gradient of the same network and batch by numerical
                           differentiation and by backpropagation (log scale)
  learning_curves.png      TwoLayerNet trained by backprop (5.7.4)
and prints the graph's numbers (the book's 715, 110, 2.2, 3.3, 165, 650), the gradient
check (5.7.3, differences ~1e-10) and the times.
"""

from __future__ import annotations

import sys

import numpy as np
from common import Timer, load_data, main, make_parser, save
from matplotlib.patches import Circle

from xpnet.backend import namespace, to_device
from xpnet.layers import AddLayer, MulLayer
from xpnet.models import TwoLayerNet
from xpnet.plot import new_figure, plot_history
from xpnet.trainer import Trainer


def apples_and_oranges():
    """5.4.2: 2 apples at 100, 3 oranges at 150, 10% tax -- forward, then backward."""
    apple, apple_num, orange, orange_num, tax = 100, 2, 150, 3, 1.1
    mul_apple, mul_orange = MulLayer(), MulLayer()
    add_fruit, mul_tax = AddLayer(), MulLayer()

    apple_price = mul_apple.forward(apple, apple_num)
    orange_price = mul_orange.forward(orange, orange_num)
    all_price = add_fruit.forward(apple_price, orange_price)
    price = mul_tax.forward(all_price, tax)

    dprice = 1
    dall_price, dtax = mul_tax.backward(dprice)
    dapple_price, dorange_price = add_fruit.backward(dall_price)
    dorange, dorange_num = mul_orange.backward(dorange_price)
    dapple, dapple_num = mul_apple.backward(dapple_price)

    print(f"5.4.2 price: {price:g}")
    print(f"      dApple: {dapple:g}, dApple_num: {dapple_num:g}, dOrange: {dorange:g}, "
          f"dOrange_num: {dorange_num:g}, dTax: {dtax:g}")
    return {
        "apple": (apple, dapple), "apple_num": (apple_num, dapple_num),
        "orange": (orange, dorange), "orange_num": (orange_num, dorange_num),
        "tax": (tax, dtax), "apple_price": (apple_price, dapple_price),
        "orange_price": (orange_price, dorange_price), "all_price": (all_price, dall_price),
        "price": (price, dprice),
    }


def draw_graph(args, v):
    """Nodes as circles, edges labelled with forward values (black) and derivatives (red)."""
    fig = new_figure(figsize=(10, 5.4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(-0.8, 10.6)
    ax.set_ylim(0, 5)
    ax.set_aspect("equal")
    ax.axis("off")
    nodes = {"x_apple": (3, 4), "x_orange": (3, 1), "+": (5.5, 2.5), "x_tax": (7.5, 2.5)}
    sources = {"apple": (0.6, 4.6), "apple_num": (0.6, 3.2), "orange": (0.6, 1.8),
               "orange_num": (0.6, 0.4), "tax": (6.2, 4.5)}
    edges = [("apple", sources["apple"], nodes["x_apple"]),
             ("apple_num", sources["apple_num"], nodes["x_apple"]),
             ("orange", sources["orange"], nodes["x_orange"]),
             ("orange_num", sources["orange_num"], nodes["x_orange"]),
             ("apple_price", nodes["x_apple"], nodes["+"]),
             ("orange_price", nodes["x_orange"], nodes["+"]),
             ("all_price", nodes["+"], nodes["x_tax"]),
             ("tax", sources["tax"], nodes["x_tax"]),
             ("price", nodes["x_tax"], (9.6, 2.5))]
    for name, (x0, y0), (x1, y1) in edges:
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "->", "shrinkA": 14, "shrinkB": 14})
        value, grad = v[name]
        # Beside the arrow, not on it: the value on one side, the derivative on the other,
        # along the edge's normal (pointing up, or right for a vertical edge).
        length = np.hypot(x1 - x0, y1 - y0)
        nx, ny = -(y1 - y0) / length, (x1 - x0) / length
        mx, my = x0 + 0.4 * (x1 - x0), y0 + 0.4 * (y1 - y0)  # nearer the tail: no overlaps
        ax.text(mx + 0.3 * nx, my + 0.3 * ny, f"{value:g}", ha="center", va="center",
                fontsize=10)
        ax.text(mx - 0.3 * nx, my - 0.3 * ny, f"{grad:g}", ha="center", va="center",
                fontsize=10, color="tab:red")
    for name, (x, y) in sources.items():
        ax.text(x - 0.1, y, name.replace("_", " "), ha="right", va="center", fontsize=9)
    for label, (x, y) in nodes.items():
        ax.add_patch(Circle((x, y), 0.35, fill=False, linewidth=1.5))
        ax.text(x, y, "×" if label.startswith("x") else "+", ha="center", va="center",
                fontsize=14)
    ax.text(9.7, 2.5, "price", va="center", fontsize=9)
    ax.set_title("5.4 buying apples and oranges: forward values (black) and backward "
                 "derivatives (red)")
    save(fig, args, "computational_graph.png")


def gradient_check(args, x_train, t_train):
    """5.7.3: backprop's gradients against numerical ones on 3 images, both in float64."""
    hidden = 50 if args.full else 10
    network = TwoLayerNet(784, hidden, 10, dtype=np.float64, device=args.device)
    x_batch, t_batch = (to_device(a[:3], args.device) for a in (x_train, t_train))
    with Timer() as num:
        grad_numerical = network.numerical_gradient(x_batch, t_batch)
    with Timer() as bp:
        grad_backprop = network.gradient(x_batch, t_batch)
    print(f"5.7.3 gradient check, TwoLayerNet(784, {hidden}, 10), 3 images, mean |difference|:")
    for key in grad_numerical:
        diff = float(abs(grad_backprop[key] - grad_numerical[key]).mean())
        print(f"      {key}: {diff:.3e}")
    print(f"      numerical gradient {num.seconds:.3f} s, backprop {bp.seconds * 1e3:.3f} ms: "
          f"{num.seconds / bp.seconds:.0f}x")

    fig = new_figure(figsize=(5.5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(["backprop", "numerical\ngradient"], [bp.seconds, num.seconds],
            color=["tab:green", "tab:gray"])
    ax.set_xscale("log")
    ax.set_xlabel("seconds for one gradient (log scale)")
    ax.set_title(f"5.7.3 TwoLayerNet(784, {hidden}, 10), 3 images: backprop "
                 f"{num.seconds / bp.seconds:.0f}x faster")
    for y, s in enumerate([bp.seconds, num.seconds]):
        ax.text(s, y, f" {s:.2g} s", va="center")
    ax.set_xlim(right=num.seconds * 30)
    save(fig, args, "gradient_timing.png")


def train(args, x_train, t_train, x_test, t_test, name):
    """5.7.4: the book's train_neuralnet.py -- 784-50-10, SGD lr 0.1, batch 100."""
    network = TwoLayerNet(784, 50, 10, device=args.device)
    trainer = Trainer(network, x_train, t_train, x_test, t_test,
                      epochs=17 if args.full else 5, mini_batch_size=100,
                      optimizer="SGD", optimizer_param={"lr": 0.1})
    with Timer() as t:
        trainer.train()
    print(f"trained by backprop: {trainer.max_iter} steps in {t.seconds:.1f} s "
          f"({t.seconds / trainer.max_iter * 1e3:.2f} ms/step, batch 100)")
    plot_history(trainer, args.out / "learning_curves.png",
                 title=f"5.7.4 TwoLayerNet(784, 50, 10) by backprop on {len(x_train)} {name} "
                 "images, SGD lr 0.1")
    print(f"wrote {args.out / 'learning_curves.png'}")


def run(args):
    namespace(args.device)
    draw_graph(args, apples_and_oranges())
    (x_train, t_train), (x_test, t_test), name = load_data(args)
    print(f"data: {name}, {len(x_train)} training and {len(x_test)} test images")
    gradient_check(args, x_train, t_train)
    train(args, x_train, t_train, x_test, t_test, name)


if __name__ == "__main__":
    parser = make_parser(5, "Chapter 5: backpropagation", data=True)
    sys.exit(main(run, parser))
