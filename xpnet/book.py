"""Run the book's own scripts, unchanged, on xpnet: ``xpnet book [--seed S] SCRIPT.py [args]``.

    cd deep-learning-from-scratch/ch05
    xpnet book --seed 0 train_neuralnet.py          # or: python -m xpnet.book ...

For that run only, an import hook (a meta-path finder placed first on ``sys.meta_path``)
serves the book's ``common.*`` modules and ``dataset.mnist`` from xpnet, with the book's
module semantics:

- each served module holds what the book's holds, so a star import brings the same names
  (``from common.optimizer import *`` brings ``np`` too);
- networks built by xpnet (``common.multi_layer_net``...) are float64, as the book's;
- the random source is NumPy's global ``np.random``, drawn in the book's order (weights by
  ``np.random.randn``, Dropout masks by ``np.random.rand``, ``shuffle_dataset`` by
  ``np.random.permutation``, the Trainer's mini-batches by ``np.random.choice``), so
  ``np.random.seed(s)`` -- or ``--seed s`` -- gives the book's numbers;
- ``load_mnist`` reads the IDX files through xpnet's search order (``--data-dir``, then
  ``$XPNET_DATA``, system locations, a verified download), never the book's downloader.

The script runs as ``python SCRIPT.py args`` would run it: as ``__main__``, with
``sys.argv`` = ``[SCRIPT.py, *args]`` and its own folder first on ``sys.path``, so its
local modules (``two_layer_net``, ``simple_convnet``, ``deep_convnet``) are the book's own,
built on xpnet's layers. Everything is put back when the run ends.
"""

# ruff: noqa: NPY002 - the book draws from np.random's global state, and so must this module

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.abc
import importlib.machinery
import os
import runpy
import sys
import traceback
from collections.abc import Callable, Iterator

import numpy as np  # the book's random source is NumPy's global state: legacy calls are the point

__all__ = [
    "BOOK_MODULES", "BookImporter", "GlobalNumpyRandom", "book_mode", "book_trainer_class",
    "run_script", "main",
]

# ---------------------------------------------------------------------------
# The served modules: name -> the names a book script finds in it
# ---------------------------------------------------------------------------

_FUNCTION_NAMES = (
    "identity_function", "step_function", "sigmoid", "sigmoid_grad", "relu", "relu_grad",
    "softmax", "sum_squared_error", "cross_entropy_error", "softmax_loss",
)
_LAYER_NAMES = (
    "Relu", "Sigmoid", "Affine", "SoftmaxWithLoss", "Dropout", "BatchNormalization",
    "Convolution", "Pooling",
)
_OPTIMIZER_NAMES = ("SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam")
_UTIL_NAMES = ("smooth_curve", "shuffle_dataset", "conv_output_size", "im2col", "col2im")


def _names(module, names) -> dict:
    return {name: getattr(module, name) for name in names}


def _functions() -> dict:
    from xpnet import functions

    return {"np": np, **_names(functions, _FUNCTION_NAMES)}


def _gradient() -> dict:
    from xpnet import gradient

    return {"np": np, **_names(gradient, ("numerical_gradient_2d", "numerical_gradient"))}


def _layers() -> dict:
    from xpnet import layers, util

    # The book's common/layers.py star-imports common.functions and takes im2col/col2im.
    return {**_functions(), **_names(util, ("im2col", "col2im")), **_names(layers, _LAYER_NAMES)}


def _optimizer() -> dict:
    from xpnet import optimizers

    return {"np": np, **_names(optimizers, _OPTIMIZER_NAMES)}


def _util() -> dict:
    from xpnet import util

    return {"np": np, **_names(util, _UTIL_NAMES)}


def _trainer() -> dict:
    return {"sys": sys, "os": os, **_optimizer(), "Trainer": book_trainer_class()}


def _network_module(class_name: str) -> Callable[[], dict]:
    """common.multi_layer_net(_extend): the book's imports, then xpnet's network class."""

    def build() -> dict:
        from collections import OrderedDict

        from xpnet import gradient, models

        return {
            "sys": sys, "os": os, "OrderedDict": OrderedDict, **_layers(),
            "numerical_gradient": gradient.numerical_gradient,
            class_name: getattr(models, class_name),
        }

    return build


def _mnist() -> dict:
    import gzip
    import pickle

    return {"os": os, "gzip": gzip, "pickle": pickle, "np": np, "load_mnist": _load_mnist}


def _package() -> dict:
    return {}


#: Module name -> a function building the namespace the book's module would have.
BOOK_MODULES: dict[str, Callable[[], dict]] = {
    "common": _package,
    "common.functions": _functions,
    "common.gradient": _gradient,
    "common.layers": _layers,
    "common.optimizer": _optimizer,
    "common.util": _util,
    "common.trainer": _trainer,
    "common.multi_layer_net": _network_module("MultiLayerNet"),
    "common.multi_layer_net_extend": _network_module("MultiLayerNetExtend"),
    "dataset": _package,
    "dataset.mnist": _mnist,
}
_PACKAGES = ("common", "dataset")

# Where load_mnist looks first during a run (the --data-dir of `xpnet book`).
_data_dir: str | None = None


def _load_mnist(normalize=True, flatten=True, one_hot_label=False):
    """The book's ``dataset.mnist.load_mnist``, read through xpnet's dataset search order."""
    from xpnet import datasets

    return datasets.load_mnist(normalize, flatten, one_hot_label, data_dir=_data_dir)


class BookImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A meta-path finder and loader serving ``modules`` (name -> namespace builder).

    Packages (``common``, ``dataset``) have an empty ``__path__``: a module of theirs that
    is not served is not found, rather than read from the book's folders.
    """

    def __init__(self, modules: dict[str, Callable[[], dict]] = BOOK_MODULES):
        self.modules = modules

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.modules:
            return None
        return importlib.machinery.ModuleSpec(
            fullname, self, origin="xpnet.book", is_package=fullname in _PACKAGES
        )

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module):
        module.__dict__.update(self.modules[module.__name__]())


# ---------------------------------------------------------------------------
# The book's random source and Trainer
# ---------------------------------------------------------------------------


class GlobalNumpyRandom:
    """The calls xpnet makes on its random Generator, answered from NumPy's global state.

    The book draws everything from ``np.random``: weights with ``randn``, Dropout masks
    with ``rand``, shuffles with ``permutation``. Drawing the same way, in the same order,
    makes ``np.random.seed(s)`` reproduce the book's numbers.
    """

    def standard_normal(self, size=None, dtype=None):
        out = np.asarray(np.random.randn(*_shape(size)))  # float64, as the book's weights
        return out if dtype is None else out.astype(dtype, copy=False)

    def random(self, size=None, dtype=None):
        # float64 whatever dtype is asked: Dropout compares these with its ratio, and the
        # book compares float64 uniforms.
        return np.asarray(np.random.rand(*_shape(size)))

    def permutation(self, n):
        return np.random.permutation(n)

    def integers(self, low, high=None, size=None):
        return np.random.randint(low, high, size)

    @property
    def bit_generator(self):
        return self  # for xpnet.backend.get_rng_state: ``rng.bit_generator.state``

    @property
    def state(self):
        return np.random.get_state(legacy=False)

    @state.setter
    def state(self, value):
        np.random.set_state(value)


def _shape(size) -> tuple:
    if size is None:
        return ()
    return tuple(size) if isinstance(size, (tuple, list)) else (int(size),)


@functools.cache
def book_trainer_class() -> type:
    """The served ``common.trainer.Trainer`` (built on first use, so that importing this
    module -- the ``xpnet`` command does -- stays light)."""
    from xpnet.trainer import Trainer

    class BookTrainer(Trainer):
        """The book's ``common.trainer.Trainer`` on xpnet's Trainer.

        What differs from xpnet's Trainer is the book's: each step draws its mini-batch
        with ``np.random.choice(train_size, batch_size)``, scores the updated network on
        that batch with one more ``network.loss`` (and prints it), and an "epoch" is
        ``train_size / batch_size`` steps, evaluated after its *first* step; ``train``
        runs ``int(epochs * iter_per_epoch)`` steps, then scores the whole test set.
        """

        def __init__(self, network, x_train, t_train, x_test, t_test, epochs=20,
                     mini_batch_size=100, optimizer="SGD", optimizer_param=None,
                     evaluate_sample_num_per_epoch=None, verbose=True):
            # seed=0: xpnet's Trainer would otherwise draw its seed, moving np.random on.
            super().__init__(
                network, x_train, t_train, x_test, t_test, epochs, mini_batch_size, optimizer,
                {"lr": 0.01} if optimizer_param is None else optimizer_param,
                evaluate_sample_num_per_epoch, verbose, seed=0, progress=False,
            )
            self.iter_per_epoch = max(self.train_size / self.batch_size, 1)
            self.max_iter = int(self.epochs * self.iter_per_epoch)

        def train_step(self):
            batch_mask = np.random.choice(self.train_size, self.batch_size)
            x_batch, t_batch = self.x_train[batch_mask], self.t_train[batch_mask]
            grads = self.network.gradient(x_batch, t_batch)
            self.optimizer.update(self.network.params, grads)
            loss = self.network.loss(x_batch, t_batch)
            self.train_loss_list.append(loss)
            self._log(f"train loss:{loss}")
            if self.current_iter % self.iter_per_epoch == 0:
                self.current_epoch += 1
                self._evaluate_epoch()
            self.current_iter += 1

        def _evaluate_epoch(self):
            k = self.evaluate_sample_num_per_epoch
            train_acc = self.network.accuracy(self.x_train[:k], self.t_train[:k])
            test_acc = self.network.accuracy(self.x_test[:k], self.t_test[:k])
            self.train_acc_list.append(train_acc)
            self.test_acc_list.append(test_acc)
            self._log(
                f"=== epoch:{self.current_epoch}, train acc:{train_acc}, "
                f"test acc:{test_acc} ==="
            )

        def train(self):
            for _ in range(self.max_iter):
                self.train_step()
            self.final_test_acc = self.network.accuracy(self.x_test, self.t_test)
            self._log("=============== Final Test Accuracy ===============")
            self._log(f"test acc:{self.final_test_acc}")
            return self.history

    return BookTrainer


# ---------------------------------------------------------------------------
# Running a script
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def book_mode(data_dir=None) -> Iterator[BookImporter]:
    """Serve the book's modules from xpnet, in float64 with NumPy's global random source,
    until the block ends; then put back what was there (modules, dtype, random source)."""
    global _data_dir
    from xpnet import backend

    hidden = _take_modules(_served_name)
    importer = BookImporter()
    sys.meta_path.insert(0, importer)
    saved_dtype, saved_dir = backend.get_default_dtype(), _data_dir
    backend.set_default_dtype(np.float64)
    _data_dir = None if data_dir is None else os.fspath(data_dir)
    try:
        # the book's random source is NumPy's global np.random
        with backend.random_source(GlobalNumpyRandom(), np):
            yield importer
    finally:
        _data_dir = saved_dir
        backend.set_default_dtype(saved_dtype)
        sys.meta_path.remove(importer)
        _take_modules(_served_name)
        sys.modules.update(hidden)


def _served_name(name: str) -> bool:
    return name in BOOK_MODULES or name.startswith(tuple(p + "." for p in _PACKAGES))


def _take_modules(predicate) -> dict:
    """Remove the modules whose names satisfy ``predicate`` from ``sys.modules``; return them."""
    taken = {name: sys.modules[name] for name in list(sys.modules) if predicate(name)}
    for name in taken:
        del sys.modules[name]
    return taken


@contextlib.contextmanager
def _as_main_script(path: str, args) -> Iterator[None]:
    """``sys.argv`` and ``sys.path`` as ``python path args`` sets them; afterwards, forget the
    modules imported from the script's folder (another script's ``two_layer_net`` differs)."""
    folder = os.path.dirname(path)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [path, *args]
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
        _take_modules(lambda name: _is_under(sys.modules[name], folder))


def _is_under(module, folder: str) -> bool:
    file = getattr(module, "__file__", None)
    return bool(file) and os.path.dirname(os.path.abspath(file)) == folder


def run_script(path, args=(), *, seed=None, data_dir=None) -> dict:
    """Run the book's script ``path`` with ``args`` on xpnet, as ``python path args`` would.

    seed: ``np.random.seed(seed)`` just before the script starts (None: leave the state).
    data_dir: where ``load_mnist`` looks first. Returns the script's globals.
    Raises FileNotFoundError for a missing script; the script's own errors propagate.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such script: {path}")
    with book_mode(data_dir), _as_main_script(path, [str(a) for a in args]):
        if seed is not None:
            np.random.seed(seed)
        return runpy.run_path(path, run_name="__main__")


# ---------------------------------------------------------------------------
# Command line: `xpnet book` and `python -m xpnet.book`
# ---------------------------------------------------------------------------

DESCRIPTION = (
    "Run a script of the book's repository, unchanged, on xpnet: its imports of common.* "
    "and dataset.mnist are served by xpnet (float64, NumPy's global random source), so a "
    "run with --seed prints the book's numbers. Arguments after SCRIPT go to the script."
)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, metavar="S",
                   help="np.random.seed(S) before the script starts (the book's random source)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="directory holding the MNIST IDX files, looked in first by load_mnist "
                   "(otherwise $XPNET_DATA, system locations, then a verified download)")
    p.add_argument("script", metavar="SCRIPT.py", help="the book's script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")


def run(args: argparse.Namespace) -> int:
    """Run the script; its uncaught exception is printed as Python prints it (status 1)."""
    if not os.path.isfile(args.script):
        raise FileNotFoundError(f"no such script: {args.script}")
    try:
        run_script(args.script, args.args, seed=args.seed, data_dir=args.data_dir)
    except Exception:  # the script's own error: a traceback, as `python SCRIPT.py` shows
        traceback.print_exc()
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xpnet.book", description=DESCRIPTION)
    configure_parser(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FileNotFoundError as exc:
        print(f"xpnet book: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
