"""Chapter 2: perceptrons -- the AND, NAND and OR gates, and XOR by two layers.

    python examples/ch02_perceptron.py [--device gpu] [--out DIR]

Prints the truth tables (2.3, 2.5.2) and writes ``decision_regions.png``: the region where
each gate outputs 1, evaluated on a grid of real-valued inputs. AND, NAND and OR are cut
by one straight line (Figures 2-6, 2-7); no line separates XOR's 1s from its 0s, but the
two-layer perceptron ``AND(NAND(x1, x2), OR(x1, x2))`` carves the non-linear region
between two lines (Figure 2-8).
"""

from __future__ import annotations

import sys

import numpy as np
from common import main, make_parser, save

from xpnet.backend import as_numpy, namespace
from xpnet.perceptron import AND, NAND, OR, XOR
from xpnet.plot import new_figure

GATES = {"AND": AND, "NAND": NAND, "OR": OR, "XOR": XOR}
# w1, w2, b of the single-layer gates (the book's values), for drawing their lines.
LINES = {"AND": (0.5, 0.5, -0.7), "NAND": (-0.5, -0.5, 0.7), "OR": (0.5, 0.5, -0.2)}


def truth_tables():
    inputs = [(0, 0), (1, 0), (0, 1), (1, 1)]
    print("x1 x2 | " + " ".join(f"{name:>4}" for name in GATES))
    for x1, x2 in inputs:
        print(f" {x1}  {x2} | " + " ".join(f"{gate(x1, x2):>4}" for gate in GATES.values()))
    for name, gate in GATES.items():
        ones = [xy for xy in inputs if gate(*xy) == 1]
        print(f"{name}: 1 for {ones}")


def decision_regions(args, xp):
    # The gates take arrays of any real values: w1*x1 + w2*x2 + b > 0 on every grid point.
    grid = np.linspace(-0.5, 1.5, 201)
    g1, g2 = np.meshgrid(grid, grid)
    x1, x2 = xp.asarray(g1), xp.asarray(g2)
    fig = new_figure(figsize=(12, 3.4), layout="constrained")
    axes = fig.subplots(1, 4)
    corners = np.array([(0, 0), (1, 0), (0, 1), (1, 1)])
    for ax, (name, gate) in zip(axes, GATES.items(), strict=True):
        region = as_numpy(gate(x1, x2))
        ax.contourf(g1, g2, region, levels=[-0.5, 0.5, 1.5], colors=["#ffffff", "#c6dbef"])
        out = np.array([gate(int(a), int(b)) for a, b in corners])
        ax.scatter(*corners[out == 0].T, marker="^", s=90, c="tab:red", label="0", zorder=3)
        ax.scatter(*corners[out == 1].T, marker="o", s=90, c="tab:blue", label="1", zorder=3)
        if name in LINES:
            w1, w2, b = LINES[name]
            ax.plot(grid, -(w1 * grid + b) / w2, color="k", linewidth=1)
            ax.set_title(f"{name}: linear, {w1:g}x1 {w2:+g}x2 {b:+g} > 0", fontsize=9)
        else:
            for w1, w2, b in (LINES["NAND"], LINES["OR"]):  # the two first-layer lines
                ax.plot(grid, -(w1 * grid + b) / w2, color="k", linewidth=1, linestyle="--")
            ax.set_title("XOR = AND(NAND, OR): non-linear", fontsize=9)
        ax.set_xlim(-0.5, 1.5)
        ax.set_ylim(-0.5, 1.5)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", title="output")
    save(fig, args, "decision_regions.png")


def run(args):
    xp = namespace(args.device)
    truth_tables()
    # The same gates on whole arrays of inputs, on the chosen device.
    a, b = xp.array([0, 1, 0, 1]), xp.array([0, 0, 1, 1])
    print(f"XOR on arrays ({xp.__name__}):", as_numpy(XOR(a, b)))
    decision_regions(args, xp)


if __name__ == "__main__":
    parser = make_parser(2, "Chapter 2: perceptrons and logic gates")
    sys.exit(main(run, parser))
