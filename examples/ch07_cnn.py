"""Chapter 7: convolutional neural networks -- a convolution by hand, SimpleConvNet,
and what its first layer learns.

    python examples/ch07_cnn.py [--device gpu] [--out DIR] [--full] [--data-dir DIR]
                                [--weights DIR]

Writes
  conv_by_hand.png     a digit convolved with a vertical- and a horizontal-edge filter
                       through im2col and one matrix product (7.4.3), then max-pooled
  learning_curves.png  SimpleConvNet training, Adam lr 0.001 (7.5, Figure 7-23)
  filters_before.png   its 30 first-layer 5x5 filters at initialization (Figure 7-24, left)
  filters_after.png    the same filters after training (Figure 7-24, right)
  filters_book.png     the filters of the book's trained SimpleConvNet, when its
                       pretrained ch07/params.pkl is found (--weights) and the data is MNIST
and prints the book's 4x4 example (7.2.3), the check of im2col + product against the
Convolution layer, and the accuracies.

Quick mode trains on 6,000 images for 3 epochs (180 steps: the filters start to show
strokes and blobs, and the figure says how few steps they saw; the book's trained ones show
clear edge and blob detectors); ``--full`` trains the book's 20 epochs on every training
image.
"""

from __future__ import annotations

import sys

import numpy as np
from common import Timer, book_weights, load_data, main, make_parser, save

from xpnet.backend import as_numpy, namespace, to_device
from xpnet.layers import Convolution, Pooling
from xpnet.models import SimpleConvNet
from xpnet.plot import new_figure, plot_filters, plot_history
from xpnet.trainer import Trainer
from xpnet.util import im2col


def book_example(xp):
    """7.2.3: the 4x4 input and 3x3 filter of Figure 7-3 (and 7-4 with bias 3)."""
    x = xp.array([[1, 2, 3, 0], [0, 1, 2, 3], [3, 0, 1, 2], [2, 3, 0, 1]], dtype=xp.float64)
    w = xp.array([[2, 0, 1], [0, 1, 2], [1, 0, 2]], dtype=xp.float64)
    conv = Convolution(w.reshape(1, 1, 3, 3), xp.array([3.0]))
    out = conv.forward(x.reshape(1, 1, 4, 4))[0, 0]
    print("7.2.3 the book's example: input * filter + 3 =", as_numpy(out).tolist(),
          "(the book: [[18, 19], [9, 18]])")


def conv_by_hand(args, xp, image):
    """7.4.3: a convolution is im2col, one matrix product and a reshape."""
    filters = np.array([
        [[1, 0, -1], [2, 0, -2], [1, 0, -1]],  # Sobel: vertical edges
        [[1, 2, 1], [0, 0, 0], [-1, -2, -1]],  # Sobel: horizontal edges
    ], dtype=np.float64).reshape(2, 1, 3, 3)
    x = to_device(image.reshape(1, 1, 28, 28).astype(np.float64), args.device)
    W = to_device(filters, args.device)
    FN, C, FH, FW = W.shape
    col = im2col(x, FH, FW, stride=1, pad=1)  # (1*28*28, 1*3*3): one row per window
    out = col @ W.reshape(FN, -1).T  # (784, 2): every window against every filter
    out = out.reshape(1, 28, 28, FN).transpose(0, 3, 1, 2)  # (N, FN, OH, OW)
    layer = Convolution(W, xp.zeros(FN), stride=1, pad=1)
    diff = float(abs(layer.forward(x) - out).max())
    print(f"7.4.3 im2col {tuple(col.shape)} @ W.T {tuple(W.reshape(FN, -1).T.shape)} -> "
          f"{tuple(out.shape)}; largest difference from the Convolution layer: {diff:.1e}")
    pooled = Pooling(2, 2, stride=2).forward(xp.maximum(out, 0))
    print(f"      max pooling 2x2, stride 2: {tuple(out.shape)} -> {tuple(pooled.shape)}")

    out, pooled = as_numpy(out), as_numpy(pooled)
    fig = new_figure(figsize=(11, 5.2), layout="constrained")
    axes = fig.subplots(2, 4)
    titles = ["vertical edges", "horizontal edges"]
    for row in range(2):
        panels = [(image.reshape(28, 28), "input"), (filters[row, 0], f"filter: {titles[row]}"),
                  (out[0, row], "convolution"), (pooled[0, row], "ReLU + max pool 2x2")]
        for ax, (img, title) in zip(axes[row], panels, strict=True):
            cmap = "gray" if title == "input" else "RdBu_r" if "pool" not in title else "gray"
            lim = float(np.abs(img).max()) or 1.0
            kw = {"vmin": -lim, "vmax": lim} if cmap == "RdBu_r" else {}
            ax.imshow(img, cmap=cmap, interpolation="nearest", **kw)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    save(fig, args, "conv_by_hand.png")


def train(args, x_train, t_train, x_test, t_test, name):
    """7.5: the book's train_convnet.py -- SimpleConvNet, Adam lr 0.001, batch 100."""
    if not args.full:
        x_train, t_train = x_train[:6000], t_train[:6000]
    epochs = 20 if args.full else 3
    network = SimpleConvNet(input_dim=(1, 28, 28),
                            conv_param={"filter_num": 30, "filter_size": 5, "pad": 0,
                                        "stride": 1},
                            hidden_size=100, output_size=10, weight_init_std=0.01,
                            device=args.device)
    plot_filters(network.params["W1"], args.out / "filters_before.png",
                 title="7.6 SimpleConvNet's 30 first-layer filters at initialization "
                 "(random, std 0.01)")
    print(f"wrote {args.out / 'filters_before.png'}")
    before = as_numpy(network.params["W1"]).copy()
    trainer = Trainer(network, x_train, t_train, x_test, t_test, epochs=epochs,
                      mini_batch_size=100, optimizer="Adam", optimizer_param={"lr": 0.001},
                      evaluate_sample_num_per_epoch=None if args.full else 500)
    with Timer() as t:
        trainer.train()
    print(f"7.5 SimpleConvNet: {trainer.max_iter} steps on {len(x_train)} images in "
          f"{t.seconds:.1f} s ({t.seconds / trainer.max_iter * 1e3:.0f} ms/step)")
    after = as_numpy(network.params["W1"])
    change = np.linalg.norm(after - before) / np.linalg.norm(before)
    print(f"    first-layer filters moved by {change:.0%} of their initial norm")
    data = f"{len(x_train)} {name} images"
    plot_history(trainer, args.out / "learning_curves.png",
                 title=f"7.5 SimpleConvNet on {data}, Adam lr 0.001, {epochs} epochs")
    seen = (f"after the book's {epochs} epochs on {data}" if args.full else
            f"after only {trainer.max_iter} steps on {data} (quick mode;\n--full trains the "
            "book's 20 epochs, and the book's trained filters are sharper)")
    plot_filters(network.params["W1"], args.out / "filters_after.png",
                 title=f"7.6 SimpleConvNet's first-layer filters {seen}")
    print(f"wrote {args.out / 'learning_curves.png'}, {args.out / 'filters_after.png'}")


def book_filters(args, x_test, t_test, name):
    path = book_weights(args, 7, name)
    if path is None:
        return
    network = SimpleConvNet(device=args.device)
    network.load_params(path)  # through xpnet's restricted unpickler
    n = len(x_test) if args.full else 500
    acc = network.accuracy(to_device(x_test[:n], args.device), to_device(t_test[:n], args.device))
    print(f"the book's trained SimpleConvNet ({path.name}): accuracy {acc:.4f} on {n} "
          "test images")
    plot_filters(network.params["W1"], args.out / "filters_book.png",
                 title=f"7.6 the first-layer filters of the book's trained SimpleConvNet "
                 f"({path.name})")
    print(f"wrote {args.out / 'filters_book.png'}")


def run(args):
    xp = namespace(args.device)
    book_example(xp)
    (x_train, t_train), (x_test, t_test), name = load_data(args, flatten=False)
    print(f"data: {name}, {len(x_train)} training and {len(x_test)} test images")
    conv_by_hand(args, xp, x_train[0, 0])
    train(args, x_train, t_train, x_test, t_test, name)
    book_filters(args, x_test, t_test, name)


if __name__ == "__main__":
    parser = make_parser(7, "Chapter 7: convolutional networks", data=True, weights=True)
    sys.exit(main(run, parser))
