"""The ``xpnet`` command (also ``python -m xpnet``).

    xpnet train --model SimpleConvNet --dataset fashion-mnist --epochs 2 --out runs/quick
    xpnet search --trials 100 --epochs 50
    xpnet <command> --help

Subcommands live in a registry (:func:`register_command`), so another module can add one
(``bench``, say) with its own arguments without touching the others. Errors raised by
the library (bad names, missing data, a diverged loss, no GPU) are printed as one message
and exit with status 2, never as a traceback (set ``XPNET_DEBUG=1`` to see it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xpnet.lr_schedule import SCHEDULES

__all__ = ["main", "build_parser", "register_command", "COMMANDS", "MODEL_NAMES"]

#: Exit status for errors reported by the library (argparse uses 2 for usage errors too).
EXIT_ERROR = 2

MODEL_NAMES = ("TwoLayerNet", "MultiLayerNet", "MultiLayerNetExtend", "SimpleConvNet",
               "DeepConvNet", "LeNet", "VGGNet", "MiniGoogLeNet", "ResNet")
DATASET_NAMES = ("mnist", "fashion-mnist")
DTYPE_NAMES = ("float32", "float64", "float16")
_CONV_MODELS = ("SimpleConvNet", "DeepConvNet", "LeNet", "VGGNet", "MiniGoogLeNet", "ResNet")
# The representative CNNs (book 7.7, 8.2): built from their own keywords, no --hidden but
# VGGNet's.
_CNN_MODELS = ("LeNet", "VGGNet", "MiniGoogLeNet", "ResNet")
_INPUT_SHAPE = (1, 28, 28)  # one image of either dataset
_MLP_MODELS = ("MultiLayerNet", "MultiLayerNetExtend")


# ---------------------------------------------------------------------------
# The registry of subcommands
# ---------------------------------------------------------------------------


@dataclass
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]  # adds the arguments
    run: Callable[[argparse.Namespace], int]  # returns the exit status
    description: str | None = None


COMMANDS: dict[str, Command] = {}


def register_command(name, *, help, configure, run, description=None) -> Command:
    """Add ``xpnet <name>``: ``configure(parser)`` declares its arguments, ``run(args)``
    does the work and returns an exit status."""
    COMMANDS[name] = Command(name, help, configure, run, description)
    return COMMANDS[name]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from xpnet import __version__

    parser = argparse.ArgumentParser(
        prog="xpnet",
        description="Train and tune the networks of 'Deep Learning from Scratch' on the CPU "
        "or an NVIDIA GPU.",
        epilog="Run 'xpnet <command> --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"xpnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.description or cmd.help,
            formatter_class=_HelpFormatter,
        )
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():  # a warning is one line, like the errors
            warnings.showwarning = _show_warning
            return args._run(args)
    except KeyboardInterrupt:
        print("xpnet: interrupted", file=sys.stderr)
        return 130
    except (
        ValueError,  # bad names and values, corrupt files, unusable checkpoints
        TypeError,
        LookupError,
        OSError,  # missing files, unwritable directories
        RuntimeError,  # DeviceError: no GPU
        ArithmeticError,  # TrainingDivergedError: NaN loss
        MemoryError,  # out of GPU memory
        ImportError,  # an optional dependency
    ) as exc:
        if os.environ.get("XPNET_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"xpnet: error: {message or type(exc).__name__}", file=sys.stderr)
        return EXIT_ERROR


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Print a warning raised while a command runs as ``xpnet: warning: ...``."""
    print(f"xpnet: warning: {message}", file=sys.stderr if file is None else file)


# ---------------------------------------------------------------------------
# Argument types
# ---------------------------------------------------------------------------


def _name_choice(valid, what):
    """An argparse type matching ``valid`` names case-insensitively, listing them if not."""
    lookup = {v.lower(): v for v in valid}

    def parse(text):
        try:
            return lookup[text.lower()]
        except KeyError:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {text!r}; choose one of {', '.join(valid)}"
            ) from None

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_list(text):
    try:
        sizes = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected positive sizes separated by commas (e.g. 100,100), got {text!r}"
        )
    return sizes


def _key_value(text):
    key, sep, value = text.partition("=")
    try:
        if not sep or not key:
            raise ValueError
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=NUMBER (e.g. momentum=0.95), got {text!r}"
        ) from None


def _weight_init_std(text):
    if text.lower() in ("relu", "he", "sigmoid", "xavier"):
        return text.lower()
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected relu, he, sigmoid, xavier or a number, got {text!r}"
        ) from None


def _optimizer_names():
    from xpnet.optimizers import OPTIMIZERS

    return tuple(cls.__name__ for cls in OPTIMIZERS.values())


# ---------------------------------------------------------------------------
# Shared pieces of train and search
# ---------------------------------------------------------------------------


def _add_data_arguments(p, train_size_default=None):
    g = p.add_argument_group("data")
    g.add_argument("--dataset", type=_name_choice(DATASET_NAMES, "dataset"),
                   default="fashion-mnist",
                   help="fashion-mnist (default; works offline once `apt-get install "
                   "dataset-fashion-mnist` has installed it) or mnist (the book's; needs its "
                   "IDX files in --data-dir or $XPNET_DATA/mnist, or the internet to download "
                   "them)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="directory holding the four IDX files (looked in first; otherwise "
                   "$XPNET_DATA, system locations, then a verified download)")
    g.add_argument("--no-download", action="store_true",
                   help="fail instead of downloading a dataset that is not found")
    g.add_argument("--train-size", type=_positive_int, metavar="N", default=train_size_default,
                   help="use only the first N training samples (quick runs)")
    return g


def _add_model_arguments(p, models=MODEL_NAMES, default="TwoLayerNet", hidden_default=None):
    g = p.add_argument_group("model")
    g.add_argument("--model", type=_name_choice(models, "model"), default=default,
                   help=f"one of {', '.join(models)} (any case)")
    g.add_argument("--hidden", type=_int_list, metavar="SIZES", default=hidden_default,
                   help=_hidden_help(models, hidden_default))
    g.add_argument("--activation", choices=("relu", "sigmoid"),
                   help="hidden activation of MultiLayerNet* and LeNet (default relu)")
    if any(m in _CNN_MODELS for m in models):
        g.add_argument("--depth", type=_positive_int, metavar="N",
                       help="ResNet: layers, 6n+2 (default 20); VGGNet: convolutions a "
                       "stage (default 2)")
        g.add_argument("--width", type=_positive_int, metavar="N",
                       help="filters of the first stage of VGGNet (16) and ResNet (16); "
                       "MiniGoogLeNet's branch unit (16)")
    g.add_argument("--weight-init-std", type=_weight_init_std, metavar="STD",
                   help="relu/he, sigmoid/xavier or a number (default: the model's)")
    g.add_argument("--dropout", type=float, metavar="RATIO",
                   help="use Dropout with this ratio (MultiLayerNetExtend)")
    g.add_argument("--batchnorm", action="store_true",
                   help="use Batch Normalization (MultiLayerNetExtend)")
    g.add_argument("--dtype", choices=DTYPE_NAMES, default="float32",
                   help="parameter and compute dtype (float16: for experiments, ch. 8.3.4)")
    return g


# The hidden sizes each model takes by default, for --hidden's help.
_HIDDEN_DEFAULTS = {"TwoLayerNet": "50", "MultiLayerNet": "100,100,100,100,100",
                    "MultiLayerNetExtend": "100,100,100,100,100", "SimpleConvNet": "100",
                    "DeepConvNet": "50", "VGGNet": "50"}


def _hidden_help(models, hidden_default=None) -> str:
    """--hidden's help, naming the defaults of ``models`` only (the ones the command takes)."""
    mlps = [m for m in models if m in _MLP_MODELS]
    others = [m for m in models if m not in _MLP_MODELS and m in _HIDDEN_DEFAULTS]
    parts = []
    if mlps:
        default = (",".join(map(str, hidden_default)) if hidden_default
                   else _HIDDEN_DEFAULTS[mlps[0]])
        parts.append(f"hidden layer sizes separated by commas ({'/'.join(mlps)}; default "
                     f"{default})")
    if others:
        sizes = ", ".join(f"{m}: {_HIDDEN_DEFAULTS[m]}" for m in others)
        parts.append(f"one size for the hidden layer (default {sizes})")
    return "; ".join(parts)


def _device_name(text):
    """--device: cpu or gpu; 'cuda' is taken as gpu, as the library takes it."""
    name = text.lower()
    return "gpu" if name == "cuda" else name


def _add_run_arguments(p, optimizer="Adam", lr=True):
    g = p.add_argument_group("training")
    g.add_argument("--optimizer", type=_name_choice(_optimizer_names(), "optimizer"),
                   default=optimizer, help=f"one of {', '.join(_optimizer_names())} (any case)")
    if lr:
        g.add_argument("--lr", type=float, help="learning rate (default: the optimizer's)")
        g.add_argument("--lr-schedule", choices=SCHEDULES, default="constant",
                       help="how the learning rate changes over the epochs: constant (the "
                       "book's), cosine (down towards 0) or step (a tenth from half-way, a "
                       "hundredth from three quarters)")
    g.add_argument("--optimizer-param", type=_key_value, action="append", default=[],
                   metavar="NAME=VALUE",
                   help="another optimizer hyperparameter, e.g. momentum=0.95 (repeatable)")
    g.add_argument("--batch-size", type=_positive_int, default=100, metavar="N",
                   help="mini-batch size")
    g.add_argument("--seed", type=int,
                   help="seed for initial weights, mini-batches and Dropout (default: none, so "
                   "each run draws its own and is not repeatable; give one to repeat a run)")
    g.add_argument("--device", type=_device_name, choices=("cpu", "gpu"), default="cpu",
                   help="where to train: cpu or gpu (also spelled cuda; needs CuPy and an "
                   "NVIDIA GPU)")
    return g


def _load_data(args, flatten):
    from xpnet.datasets import load_mnist

    (x_train, t_train), (x_test, t_test) = load_mnist(
        normalize=True, flatten=flatten, dataset=args.dataset, data_dir=args.data_dir,
        download=not args.no_download,
    )
    if args.train_size:
        x_train, t_train = x_train[: args.train_size], t_train[: args.train_size]
    if getattr(args, "test_size", None):
        x_test, t_test = x_test[: args.test_size], t_test[: args.test_size]
    return (x_train, t_train), (x_test, t_test)


# Which model takes which of the model options.
_MODEL_OPTIONS = {
    "TwoLayerNet": {"--weight-init-std"},
    "MultiLayerNet": {"--activation", "--weight-decay", "--weight-init-std"},
    "MultiLayerNetExtend": {"--activation", "--weight-decay", "--weight-init-std", "--dropout",
                            "--batchnorm"},
    "SimpleConvNet": {"--weight-init-std"},
    "DeepConvNet": set(),
    "LeNet": {"--activation", "--weight-init-std"},
    "VGGNet": {"--weight-init-std", "--depth", "--width"},
    "MiniGoogLeNet": {"--weight-init-std", "--width"},
    "ResNet": {"--weight-init-std", "--depth", "--width"},
}


def _model_builder(args, input_shape, classes=10):
    """``build(weight_decay=None)`` -> the network the arguments describe.

    input_shape: one sample's shape, (784,) or (1, 28, 28). Options a model does not take
    are refused here, before any data is loaded or any training is done.
    """
    from xpnet import models

    name = args.model
    given = {
        "--activation": args.activation,
        "--weight-decay": getattr(args, "weight_decay", None),
        "--dropout": args.dropout,
        "--batchnorm": args.batchnorm or None,
        "--weight-init-std": args.weight_init_std,
        "--depth": getattr(args, "depth", None),
        "--width": getattr(args, "width", None),
    }
    for flag, value in given.items():
        if value is not None and flag not in _MODEL_OPTIONS[name]:
            takers = [m for m, flags in _MODEL_OPTIONS.items() if flag in flags]
            raise ValueError(f"{flag} does not apply to {name} (only to {', '.join(takers)})")
    hidden = args.hidden
    if hidden is not None and name not in _HIDDEN_DEFAULTS:
        raise ValueError(f"--hidden does not apply to {name}")
    if hidden is not None and name not in _MLP_MODELS and len(hidden) != 1:
        raise ValueError(f"{name} takes one hidden size (--hidden N), got {hidden}")

    cls = getattr(models, name)
    kw = {"dtype": args.dtype, "device": args.device}
    if args.weight_init_std is not None:
        kw["weight_init_std"] = args.weight_init_std
    for flag in ("depth", "width"):
        if given[f"--{flag}"] is not None:
            kw[flag] = given[f"--{flag}"]
    if name in _MLP_MODELS + ("LeNet",) and args.activation:
        kw["activation"] = args.activation
    if name == "MultiLayerNetExtend":
        kw["use_batchnorm"] = args.batchnorm
        if args.dropout is not None:
            kw.update(use_dropout=True, dropout_ration=args.dropout)
    size = math.prod(input_shape)

    def build(weight_decay=None):
        if name == "TwoLayerNet":
            return cls(size, hidden[0] if hidden else 50, classes, **kw)
        if name in _MLP_MODELS:
            wd = getattr(args, "weight_decay", None) if weight_decay is None else weight_decay
            return cls(size, hidden or [100] * 5, classes, weight_decay_lambda=wd or 0, **kw)
        if name in _CNN_MODELS and name != "VGGNet":
            return cls(input_dim=input_shape, output_size=classes, **kw)
        default_hidden = 100 if name == "SimpleConvNet" else 50
        return cls(input_dim=input_shape, hidden_size=hidden[0] if hidden else default_hidden,
                   output_size=classes, **kw)

    return build


def _check_numbers(args) -> None:
    """Refuse, naming the option, numbers no run can use: checked before any data is
    loaded (a NaN momentum would otherwise show up as a diverged loss)."""
    lr = getattr(args, "lr", None)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr must be a positive finite number, got {lr}")
    for name, value in args.optimizer_param:
        if not math.isfinite(value):
            raise ValueError(f"--optimizer-param {name}={value}: the value must be finite")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")


def _augmentation(args, conv: bool):
    """The ShiftFlip that --augment-shift/--augment-flip ask for, or None."""
    if args.augment_shift < 0:
        raise ValueError(f"--augment-shift must be a non-negative number of pixels, got "
                         f"{args.augment_shift}")
    if not (args.augment_shift or args.augment_flip):
        return None
    if not conv:
        raise ValueError(f"--augment-shift and --augment-flip move images: they need a "
                         f"convolutional model ({', '.join(_CONV_MODELS)}), not {args.model}")
    from xpnet.augment import ShiftFlip

    return ShiftFlip(args.augment_shift, flip=args.augment_flip)


def _optimizer_param(args) -> dict:
    param = dict(args.optimizer_param)
    if getattr(args, "lr", None) is not None:
        param["lr"] = args.lr
    return param


def _write_json(path: Path, data) -> None:
    from xpnet.io import atomic_write

    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _prepare_out(out) -> Path | None:
    """The --out directory, created and proven writable now, not after training."""
    if out is None:
        return None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory (created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise OSError(f"--out {out} is not a writable directory ({exc.strerror or exc})") from None
    return out


def _config(args) -> dict:
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


# ---------------------------------------------------------------------------
# xpnet train
# ---------------------------------------------------------------------------


def _configure_train(p):
    _add_model_arguments(p)
    g = _add_data_arguments(p)
    g.add_argument("--test-size", type=_positive_int, metavar="N",
                   help="use only the first N test samples")
    g.add_argument("--eval-samples", type=_positive_int, metavar="N",
                   help="per-epoch accuracy on only the first N samples of each set (the "
                   "book's evaluate_sample_num_per_epoch); the final test accuracy uses all")
    r = _add_run_arguments(p)
    r.add_argument("--epochs", type=_positive_int, default=20, metavar="N",
                   help="passes over the training set")
    r.add_argument("--weight-decay", type=float, metavar="LAMBDA",
                   help="L2 weight decay (MultiLayerNet*)")
    r.add_argument("--augment-shift", type=int, default=0, metavar="PIXELS",
                   help="data augmentation (convolutional models): shift each training image "
                   "by up to PIXELS pixels, at random (book 8.1.1; xpnet.augment)")
    r.add_argument("--augment-flip", action="store_true",
                   help="data augmentation: mirror half of the training images left to right")
    r.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes of an MPI job, started as "
                   "`mpiexec -n N xpnet train --distributed ...`: each process takes "
                   "batch-size/N samples of every mini-batch (MPI on the CPU, NCCL on GPUs); "
                   "rank 0 prints and writes the checkpoints and --out files")
    r.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="on the GPU, launch every kernel of every step instead of replaying "
                   "the step captured once as a CUDA graph (the default; same results)")
    c = p.add_argument_group("checkpoints and output")
    c.add_argument("--checkpoint-dir", metavar="DIR",
                   help="write checkpoint.npz there every epoch (or --checkpoint-every steps)")
    c.add_argument("--checkpoint-every", type=_positive_int, metavar="STEPS",
                   help="checkpoint every STEPS steps instead of every epoch")
    c.add_argument("--resume", action="store_true",
                   help="continue the run whose checkpoint is in --checkpoint-dir")
    c.add_argument("--out", metavar="DIR",
                   help="write params.npz, history.json and (with matplotlib) history.png")
    c.add_argument("--quiet", action="store_true", help="no progress bar, no epoch lines")


def _run_train(args) -> int:
    import xpnet
    from xpnet.trainer import Trainer

    if (args.resume or args.checkpoint_every) and not args.checkpoint_dir:
        raise ValueError("--resume and --checkpoint-every need --checkpoint-dir")
    _check_numbers(args)
    comm = None
    if args.distributed:  # before the model exists: each process picks its GPU here
        from xpnet.distributed import get_communicator

        comm = get_communicator(args.device, verbose=not args.quiet)
    root = comm is None or comm.is_root
    out = _prepare_out(args.out) if root else None  # fails now, not after training
    if args.seed is not None:
        xpnet.seed(args.seed)  # the initial weights
    conv = args.model in _CONV_MODELS
    build = _model_builder(args, _INPUT_SHAPE if conv else (784,))  # checks the options
    augment = _augmentation(args, conv)
    (x_train, t_train), (x_test, t_test) = _load_data(args, flatten=not conv)
    network = build()
    verbose = not args.quiet and root
    if verbose:
        if comm is not None:
            print(f"data-parallel over {comm.size} processes ({type(comm).__name__}), "
                  f"{args.batch_size // comm.size} samples of each mini-batch per process")
        print(f"{network!r} on {args.dataset}: {len(x_train)} training and {len(x_test)} "
              f"test samples, {args.optimizer} {_optimizer_param(args) or '(defaults)'}")
    trainer = Trainer(
        network, x_train, t_train, x_test, t_test, epochs=args.epochs,
        mini_batch_size=args.batch_size, optimizer=args.optimizer,
        optimizer_param=_optimizer_param(args), evaluate_sample_num_per_epoch=args.eval_samples,
        verbose=verbose, seed=args.seed, checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every, resume=args.resume, communicator=comm,
        cuda_graphs=args.cuda_graphs, lr_schedule=args.lr_schedule, augment=augment,
    )
    start = time.perf_counter()
    history = trainer.train()
    history["train_seconds"] = round(time.perf_counter() - start, 3)
    history["dataset"] = args.dataset
    history["train_size"], history["test_size"] = len(x_train), len(x_test)
    history["config"] = _config(args)
    if out is None:
        return 0
    written = [network.save_params(out / "params.npz"), out / "history.json"]
    _write_json(out / "history.json", history)
    try:
        from xpnet.plot import plot_history

        written.append(plot_history(history, out / "history.png"))
    except ImportError:
        print("matplotlib is not installed: no history.png (pip install matplotlib)",
              file=sys.stderr)
    if verbose:
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


register_command(
    "train",
    help="train one of the book's networks on MNIST or Fashion-MNIST",
    description="Train one of the book's networks (ch. 4-8) on MNIST or Fashion-MNIST, "
    "with checkpoints, resume and a history of loss and accuracy.",
    configure=_configure_train,
    run=_run_train,
)


# ---------------------------------------------------------------------------
# xpnet search
# ---------------------------------------------------------------------------


def _configure_search(p):
    _add_model_arguments(p, models=_MLP_MODELS, default="MultiLayerNet",
                         hidden_default=[100] * 6)
    _add_data_arguments(p, train_size_default=500)
    _add_run_arguments(p, optimizer="SGD", lr=False)
    s = p.add_argument_group("search")
    s.add_argument("--trials", type=_positive_int, default=100, metavar="N",
                   help="hyperparameter samples to try")
    s.add_argument("--epochs", type=_positive_int, default=50, metavar="N",
                   help="epochs per trial")
    s.add_argument("--lr-range", type=float, nargs=2, default=[-6.0, -2.0],
                   metavar=("LOW", "HIGH"), help="learning rate = 10**U(LOW, HIGH)")
    s.add_argument("--weight-decay-range", type=float, nargs=2, default=[-8.0, -4.0],
                   metavar=("LOW", "HIGH"), help="weight decay = 10**U(LOW, HIGH)")
    s.add_argument("--validation-rate", type=float, default=0.2, metavar="RATE",
                   help="share of the training samples held out for validation")
    s.add_argument("--top", type=_positive_int, default=5, metavar="N",
                   help="how many of the best to list")
    s.add_argument("--out", metavar="DIR", help="write search.json (every trial) there")
    s.add_argument("--quiet", action="store_true", help="print only the best trials")


def _run_search(args) -> int:
    from xpnet.tuning import random_search

    _check_numbers(args)
    build = _model_builder(args, (784,))
    out = _prepare_out(args.out)
    (x_train, t_train), _ = _load_data(args, flatten=True)  # the test set is not used
    results = random_search(
        build, x_train, t_train, trials=args.trials, epochs=args.epochs,
        mini_batch_size=args.batch_size, optimizer=args.optimizer,
        optimizer_param=dict(args.optimizer_param), lr_range=args.lr_range,
        weight_decay_range=args.weight_decay_range, validation_rate=args.validation_rate,
        seed=args.seed, device=args.device, verbose=not args.quiet,
    )
    if args.quiet:
        for rank, r in enumerate(results[: args.top], start=1):
            print(f"Best-{rank}(val acc:{r.val_acc:.4f}) | lr:{r.lr:.3e}, "
                  f"weight decay:{r.weight_decay:.3e}")
    if out is not None:
        _write_json(out / "search.json", {
            "config": _config(args),
            "trials": [r.to_dict() for r in results],
        })
        if not args.quiet:
            print(f"wrote {out / 'search.json'}")
    return 0


register_command(
    "search",
    help="random search for learning rate and weight decay (book 6.5)",
    description="Random search for the learning rate and weight decay (book 6.5): sample "
    "both on a log scale, train briefly on 80% of the training samples "
    "(--validation-rate), rank by accuracy on the other 20%. The test set is never used.",
    configure=_configure_search,
    run=_run_search,
)


# ``xpnet bench``: the benchmark report (only its arguments load here; the report, when it runs)
from xpnet.bench import cli as _bench  # noqa: E402

register_command(
    "bench",
    help="turn a pytest-benchmark JSON of benchmarks/ into a Markdown report with charts",
    description="Turn a pytest-benchmark JSON (pytest benchmarks/ --benchmark-json=FILE) into "
    "a Markdown report: medians and speed-ups per group, the machine, BLAS and threads, "
    "DeepConvNet's headline figures, scaling with batch and image size; charts as PNGs.",
    configure=_bench.configure_parser,
    run=_bench.run,
)


# ``xpnet book``: the book's own scripts, unchanged, on xpnet (xpnet.book holds it all)
from xpnet import book as _book  # noqa: E402

register_command(
    "book",
    help="run a script of the book's repository unchanged on xpnet (the book's numbers)",
    description=_book.DESCRIPTION,
    configure=_book.configure_parser,
    run=_book.run,
)
