"""What every chapter example shares: its command line, its data and its output folder.

Like the book's ``common/`` package, this is imported by the chapter scripts next to it
(``python examples/ch03_neural_network.py`` puts ``examples/`` on ``sys.path``). It only
wires the command line to xpnet's public API; the deep-learning code is in the chapters.

Every example takes::

    --device {cpu,gpu}   where the networks run (gpu needs CuPy and an NVIDIA GPU)
    --out DIR            where the figures go (default out/chNN)
    --full               the book's full-length runs instead of the quick ones
    --seed N             xpnet.seed(N) before anything random
    --threads N          CPU threads for BLAS and the Numba kernels (default: every core)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

try:
    import xpnet
except ImportError:  # run from a clone without `pip install -e .`: use the clone's xpnet
    sys.path.insert(0, str(REPO))
    import xpnet

from xpnet import backend  # noqa: E402
from xpnet.datasets import DatasetError, load_idx_pair, load_mnist  # noqa: E402
from xpnet.io import ParameterFileError  # noqa: E402
from xpnet.plot import save_figure  # noqa: E402
from xpnet.threads import set_num_threads  # noqa: E402

# The book's pretrained parameter files, by chapter, under the names its repository gives
# them (each in that chapter's folder: ch03/sample_weight.pkl, ...).
BOOK_REPOSITORY = "https://github.com/oreilly-japan/deep-learning-from-scratch"
BOOK_FILES = {3: "sample_weight.pkl", 7: "params.pkl", 8: "deep_convnet_params.pkl"}

# Fashion-MNIST's ten classes, by label (the dataset's own names).
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


def make_parser(chapter: int, description: str, *, data=False, weights=False):
    """The argument parser of chapter ``chapter``'s example."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="cpu (default) or gpu")
    parser.add_argument(
        "--out", type=Path, default=Path("out") / f"ch{chapter:02d}",
        help=f"folder for the figures (default out/ch{chapter:02d})",
    )
    parser.add_argument("--full", action="store_true", help="the book's full-length runs")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="CPU threads for BLAS and the Numba kernels (default: every core)",
    )
    if data:
        parser.add_argument(
            "--dataset", choices=("mnist", "fashion-mnist"), default="mnist",
            help="mnist (the book's; default) or fashion-mnist. MNIST is used when its files "
            "are on this machine (--data-dir, $XPNET_DATA/mnist, /usr/share/datasets/mnist); "
            "otherwise Fashion-MNIST, which the quick start installs",
        )
        parser.add_argument(
            "--data-dir", type=Path, default=None,
            help="a folder with MNIST's IDX files: the four standard ones, or one "
            "images-idx3-ubyte.gz + labels-idx1-ubyte.gz pair (split 8,000 training / "
            "2,000 test); looked in before xpnet's usual places",
        )
    if weights:
        files = ", ".join(f"ch{c:02d}/{name}" for c, name in BOOK_FILES.items())
        parser.add_argument(
            "--weights", type=Path, default=None,
            help=f"the book's pretrained parameters: a checkout of {BOOK_REPOSITORY}, or a "
            f"folder holding its files ({files}) directly or in their chNN folders. "
            "Without it, the example trains a network itself",
        )
    return parser


def main(run, parser, argv=None) -> int:
    """Parse the command line, check the device, make the output folder and ``run(args)``.

    A device that cannot be used (``--device gpu`` without CuPy or a GPU) ends the example
    with xpnet's one-sentence DeviceError and exit status 2, as do missing data files and
    unreadable or refused parameter files.
    """
    args = parser.parse_args(argv)
    try:
        args.device = backend.check_device(args.device)
    except (backend.DeviceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None:
        set_num_threads(args.threads)
    xpnet.seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        run(args)
    except (backend.DeviceError, DatasetError, ParameterFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - start:.1f} s; figures in {args.out}")
    return 0


def load_data(args, flatten=True, inference_only=False):
    """``(x_train, t_train), (x_test, t_test), name`` as the book's ``load_mnist`` gives them.

    In quick mode (no ``--full``) at most 8,000 training and 2,000 test images are kept,
    so that a quick run costs the same whichever dataset it finds.

    ``--dataset mnist``: the standard MNIST files from ``--data-dir`` or xpnet's usual
    places; or, when ``--data-dir`` holds only the 10,000 digits of MNIST's test set, those
    split 8,000 for training and 2,000 for testing (all 10,000 for testing when
    ``inference_only``, e.g. for the book's pretrained weights). No MNIST at all: a printed
    note, then Fashion-MNIST (same format, same shapes).
    """
    (x_train, t_train), (x_test, t_test), name = _load(args, flatten, inference_only)
    if not args.full:
        n_test = 10000 if inference_only else 2000
        x_train, t_train = x_train[:8000], t_train[:8000]
        x_test, t_test = x_test[:n_test], t_test[:n_test]
    return (x_train, t_train), (x_test, t_test), name


def _load(args, flatten, inference_only):
    name = args.dataset
    if name == "mnist":
        pair = [args.data_dir / f for f in ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz")
                ] if args.data_dir is not None else []
        if pair and all(p.exists() for p in pair):
            images, labels = pair
            x, t = load_idx_pair(images, labels, flatten=flatten)
            if inference_only:
                return (x[:0], t[:0]), (x, t), "MNIST (10,000 test digits)"
            return (x[:8000], t[:8000]), (x[8000:], t[8000:]), "MNIST (10,000 digits, 8k/2k)"
        for where in dict.fromkeys((args.data_dir, None)):  # --data-dir, then xpnet's usual places
            try:
                train, test = load_mnist(flatten=flatten, data_dir=where, download=False)
                return train, test, "MNIST"
            except DatasetError:
                pass
        print("note: MNIST, the book's dataset, is not on this machine (see --data-dir); "
              "using Fashion-MNIST, the quick start's: same shapes, ten kinds of clothing, "
              "accuracies lower than the book's digits")
        name = "fashion-mnist"
    train, test = load_mnist(flatten=flatten, dataset=name)
    return train, test, "Fashion-MNIST"


def book_weights(args, chapter, data_name):
    """Path of chapter ``chapter``'s pretrained pickle under ``--weights``, or None.

    ``--weights DIR`` may hold the file itself (``DIR/params.pkl``) or be a checkout of the
    book's repository (``DIR/ch07/params.pkl``). The book trained them on MNIST digits, so
    with any other data (``data_name``) they are not used. None comes with a note saying why.
    """
    name = BOOK_FILES[chapter]
    where = f"ch{chapter:02d}/{name} of {BOOK_REPOSITORY}"
    if args.weights is None:
        print(f"note: no --weights DIR given, so not the book's pretrained {where}")
        return None
    for path in (args.weights / name, args.weights / f"ch{chapter:02d}" / name):
        if path.is_file():
            if not data_name.startswith("MNIST"):
                print(f"note: the book's {name} was trained on MNIST digits; with "
                      f"{data_name} it is not used")
                return None
            return path
    print(f"note: the book's {name} is neither in {args.weights} nor in "
          f"{args.weights / f'ch{chapter:02d}'} (it is {where})")
    return None


def class_name(label, data_name) -> str:
    """What a label means: a digit for MNIST, a kind of clothing for Fashion-MNIST."""
    if data_name.startswith("Fashion"):
        return FASHION_MNIST_CLASSES[int(label)]
    return str(int(label))


def save(fig, args, name):
    """Write ``fig`` to ``--out/name`` (atomically, via xpnet.plot) and say so."""
    path = save_figure(fig, args.out / name)
    print(f"wrote {path}")
    return path


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
