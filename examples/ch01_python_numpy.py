"""Chapter 1: Python and NumPy -- arrays, broadcasting, element access, Matplotlib.

    python examples/ch01_python_numpy.py [--device gpu] [--out DIR]

Prints the book's NumPy examples (1.5) computed on the chosen device (NumPy on the CPU,
CuPy on the GPU: the same code, through ``xpnet.backend.namespace``), and writes
``sin_cos.png`` (1.6.2, Figure 1-6) and ``image.png`` (1.6.3: an image shown -- here a
digit of the dataset instead of the book's photograph).
"""

from __future__ import annotations

import sys

import numpy as np
from common import class_name, load_data, main, make_parser, save

from xpnet.backend import as_numpy, namespace
from xpnet.plot import new_figure


def numpy_tour(xp):
    """Section 1.5 on the device's array namespace, printed as the book prints it."""
    x = xp.array([1.0, 2.0, 3.0])
    y = xp.array([2.0, 4.0, 6.0])
    print("1.5.3 element-wise arithmetic")
    print("  x + y =", x + y, "  x - y =", x - y, "  x * y =", x * y, "  x / y =", x / y)
    print("  x / 2.0 =", x / 2.0, "  (a scalar is broadcast)")

    A = xp.array([[1, 2], [3, 4]])
    B = xp.array([[3, 0], [0, 6]])
    print("1.5.4 N-dimensional arrays: A.shape =", A.shape, " A.dtype =", A.dtype)
    print("  A + B =\n", A + B, "\n  A * B =\n", A * B, "\n  A * 10 =\n", A * 10)

    print("1.5.5 broadcasting: (2, 2) * (2,) -- B = [10, 20] is stretched over the rows")
    print("  A * [10, 20] =\n", A * xp.array([10, 20]))

    X = xp.array([[51, 55], [14, 19], [0, 4]])
    print("1.5.6 element access: X =\n", X)
    print("  X[0] =", X[0], "  X[0][1] =", int(X[0][1]))
    print("  rows one by one:", [as_numpy(row).tolist() for row in X])
    flat = X.flatten()
    print("  X.flatten() =", flat)
    print("  X[np.array([0, 2, 4])] =", flat[xp.array([0, 2, 4])])
    print("  X > 15 =", flat > 15, "  X[X > 15] =", flat[flat > 15])


def plot_sin_cos(args, xp):
    """Figure 1-6: sin and cos on [0, 6) in steps of 0.1 (computed on the device)."""
    x = xp.arange(0, 6, 0.1)
    y1, y2 = xp.sin(x), xp.cos(x)
    fig = new_figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    x, y1, y2 = as_numpy(x), as_numpy(y1), as_numpy(y2)
    ax.plot(x, y1, label="sin")
    ax.plot(x, y2, linestyle="--", label="cos")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("1.6 sin & cos")
    ax.legend()
    save(fig, args, "sin_cos.png")


def show_image(args):
    """1.6.3: ``imshow`` of an image -- the first training image of the dataset."""
    (x_train, t_train), (x_test, t_test), name = load_data(args, flatten=False)
    x, t = (x_train, t_train) if len(x_train) else (x_test, t_test)
    img = x[0, 0]  # (1, 28, 28) -> (28, 28)
    print(f"image: {name}, label {int(t[0])}, shape {img.shape}, values in "
          f"[{img.min():.1f}, {img.max():.1f}], dtype {img.dtype}")
    fig = new_figure(figsize=(3.2, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(np.asarray(img), cmap="gray")
    label = int(t[0])
    meaning = class_name(label, name)
    ax.set_title(f"{name.split(' ')[0]}, first image:\nlabel {label}"
                 + ("" if meaning == str(label) else f" ({meaning})"), fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    save(fig, args, "image.png")


def run(args):
    xp = namespace(args.device)
    print(f"array namespace on {args.device}: {xp.__name__} {xp.__version__}")
    numpy_tour(xp)
    plot_sin_cos(args, xp)
    show_image(args)


if __name__ == "__main__":
    parser = make_parser(1, "Chapter 1: NumPy and Matplotlib", data=True)
    sys.exit(main(run, parser))
