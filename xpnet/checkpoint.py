"""The training checkpoint file: write, read and check one ``.npz`` (no pickle).

A checkpoint holds what a killed run needs to continue to the very parameters the
uninterrupted run would have reached:

    meta                        JSON: format, version, model, parameter layouts, optimizer
                                name/hyperparameters/step/slots, trainer position
    params/<key>                the network's parameters (``W1``, ``gamma1``...)
    buffers/<layer>.<attr>      the layers' buffers (``BatchNorm1.running_mean``)
    optimizer/<slot>/<key>      the optimizer's per-parameter state
    history/<list>              ``train_loss_list``, ``train_acc_list``, ``test_acc_list``

:func:`save` writes atomically (a reader sees the old file or the new one). :func:`load`
reads and checks everything against the run that asks -- every array's exact shape and
dtype, every count and hyperparameter -- and returns a :class:`Restored` that changes
nothing until :meth:`Restored.apply`: a bad file raises :class:`CheckpointError` and leaves
the network, the optimizer and the trainer as they were.

Parameters and buffers are found through the network's layer registry
(:func:`xpnet.models.layer_registry`), as parameter files and BatchNorm synchronisation
find them.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xpnet.backend import as_numpy, get_array_module
from xpnet.io import atomic_write
from xpnet.lr_schedule import check_schedule
from xpnet.models import layer_registry

__all__ = ["CHECKPOINT_NAME", "CheckpointError", "Restored", "load", "read", "save"]

CHECKPOINT_NAME = "checkpoint.npz"
FORMAT = "xpnet-checkpoint"
VERSION = 1  # the version written; READABLE the versions read
READABLE = (1,)
HISTORY = ("train_loss_list", "train_acc_list", "test_acc_list")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: truncated, corrupt, or written for another run."""


def is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(value, name: str) -> int:
    """``value`` as an int if it is a positive integer, else ValueError naming ``name``."""
    if not is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(value, name: str) -> int:
    """``value`` as an int if it is a non-negative integer, else ValueError naming ``name``."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def save(path: Path, network, optimizer, trainer: dict, history: dict) -> Path:
    """Write ``network``'s parameters and buffers, ``optimizer``'s state, the trainer's
    position (``trainer``: epochs, mini_batch_size, train_size, current_iter,
    current_epoch, checkpoint_every, seed, lr_schedule) and ``history`` (the three lists)
    to ``path``, atomically. Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    params = network.params
    opt = optimizer.state_dict()
    arrays = {f"params/{k}": as_numpy(v) for k, v in params.items()}
    for name, value in layer_registry(network).named_buffers().items():
        arrays[f"buffers/{name}"] = as_numpy(value)
    for slot, d in opt["state"].items():
        for k, v in d.items():
            arrays[f"optimizer/{slot}/{k}"] = v
    for name in HISTORY:
        arrays[f"history/{name}"] = np.asarray(history[name], np.float64)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": type(network).__name__,
        "params": {k: [list(v.shape), str(v.dtype)] for k, v in params.items()},
        "optimizer": {k: opt[k] for k in ("name", "hyperparams", "step")},
        "optimizer_slots": sorted(opt["state"]),
        "trainer": dict(trainer),
    }
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)
    return path


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def read(path: Path) -> tuple[dict, dict]:
    """``(meta, arrays)`` of the checkpoint at ``path``, its structure checked (a readable
    archive, this format and a version this xpnet reads, every listed array present);
    CheckpointError otherwise."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {exc}); "
            "delete it (or pick another checkpoint directory) to start afresh"
        ) from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
        if meta.get("format") != FORMAT:
            raise KeyError("format")
        if meta.get("version") not in READABLE:
            raise CheckpointError(
                f"checkpoint {path} has format version {meta.get('version')}; this xpnet "
                f"reads version {', '.join(map(str, READABLE))}"
            )
        for k in meta["params"]:
            if f"params/{k}" not in arrays:
                raise KeyError(f"params/{k}")
        for k in HISTORY:
            if f"history/{k}" not in arrays:
                raise KeyError(f"history/{k}")
        meta["trainer"]["current_iter"]  # noqa: B018 - presence check
    except (AttributeError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(
            f"{path} is not an xpnet training checkpoint (missing {exc})"
        ) from None
    return meta, arrays


@dataclass
class Restored:
    """A checkpoint checked against a run; :meth:`apply` is the only change it makes."""

    opt_state: dict
    params: dict  # params key -> array
    buffers: dict  # '<layer>.<attr>' -> array
    history: dict  # list name -> list of floats
    trainer: dict  # the meta's trainer section

    def apply(self, network, optimizer) -> None:
        """Write the parameters (in place), buffers and optimizer state: nothing here can
        fail on the file's content, it was all checked."""
        params = network.params
        optimizer.load_state_dict(self.opt_state, params)
        for k, p in params.items():
            p[...] = get_array_module(p).asarray(self.params[k])  # in place
        xp = get_array_module(*params.values())
        slots = layer_registry(network).buffers
        for name, value in self.buffers.items():
            slots[name].set(xp.asarray(value))


def load(path, network, optimizer, run: dict, seed_given: bool) -> Restored:
    """Read ``path`` and check it against this run; change nothing.

    ``run``: mini_batch_size, train_size, epochs, iter_per_epoch and seed of the run that
    resumes; with ``seed_given`` its seed must be the checkpoint's. The checkpoint must
    be for this model and optimizer (same hyperparameters), batch size and training set
    size, at a step this run reaches; every array of exactly this network's and
    optimizer's shapes and dtypes (nothing is broadcast), the buffers included.
    Raises CheckpointError saying what does not fit.
    """
    path = Path(path)
    meta, arrays = read(path)
    try:
        tr = _checked_meta(meta)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt: {exc}") from None

    def mismatch(what):
        return CheckpointError(f"checkpoint {path} does not fit this run: {what}")

    if meta["model"] != type(network).__name__:
        raise mismatch(
            f"it was written for a {meta['model']}, this network is a {type(network).__name__}"
        )
    for key in ("mini_batch_size", "train_size"):
        if tr[key] != run[key]:
            raise mismatch(f"{key} was {tr[key]}, now {run[key]}")
    _check_position(tr, run, mismatch)
    _check_schedule(tr, run, mismatch)
    _check_same_settings(path, meta, tr, optimizer, run["seed"] if seed_given else None)
    problems = _exact_problems(arrays, "params/", _layouts(network.params))
    if problems:  # the optimizer state then differs the same way: name the cause only
        raise mismatch("; ".join(problems))
    problems = _exact_problems(arrays, "buffers/", _buffer_layouts(network, arrays))
    opt_state, opt_problems = _optimizer_state(meta, arrays, optimizer, network.params)
    problems += opt_problems + _history_problems(arrays, tr)
    if problems:
        raise mismatch("; ".join(problems))
    return Restored(
        opt_state=opt_state,
        params={k: arrays[f"params/{k}"] for k in network.params},
        buffers={k[len("buffers/"):]: v for k, v in arrays.items() if k.startswith("buffers/")},
        history={name: arrays[f"history/{name}"].tolist() for name in HISTORY},
        trainer=tr,
    )


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _check_position(tr: dict, run: dict, mismatch) -> None:
    max_iter = run["epochs"] * run["iter_per_epoch"]
    if tr["current_iter"] > max_iter:
        raise mismatch(
            f"it is at step {tr['current_iter']}, past this run's {max_iter} steps "
            f"({run['epochs']} epochs); ask for at least {tr['current_epoch']} epochs"
        )
    if tr["current_epoch"] != tr["current_iter"] // run["iter_per_epoch"]:
        raise mismatch(
            f"it says epoch {tr['current_epoch']} at step {tr['current_iter']}, but an "
            f"epoch has {run['iter_per_epoch']} steps"
        )


def _check_schedule(tr: dict, run: dict, mismatch) -> None:
    """The same learning-rate schedule (a checkpoint without one: constant), spread over
    the same number of epochs, so that every step keeps the rate it had."""
    saved, now = tr.get("lr_schedule", "constant"), run.get("lr_schedule", "constant")
    if saved != now:
        raise mismatch(f"its learning-rate schedule was {saved}, now {now}")
    if saved != "constant" and tr["epochs"] != run["epochs"]:
        raise mismatch(
            f"its {saved} learning-rate schedule spans {tr['epochs']} epochs, this run asks "
            f"for {run['epochs']}; resume with epochs={tr['epochs']} (--epochs)"
        )


def _check_same_settings(path: Path, meta: dict, tr: dict, opt, seed) -> None:
    """A resumed run trains with what it was started with (``seed``: None if the run did
    not choose one), or is refused naming the old and new values."""
    saved = meta["optimizer"]
    changes = []
    if saved["name"] != type(opt).__name__:
        changes.append(f"optimizer {saved['name']} -> {type(opt).__name__}")
    else:
        ours = {h: getattr(opt, h) for h in getattr(opt, "hyperparams", ())}
        theirs = saved["hyperparams"]
        changes += [
            f"{h} {theirs.get(h)} -> {ours.get(h)}"
            for h in sorted(set(ours) | set(theirs))
            if theirs.get(h) != ours.get(h)
        ]
    if seed is not None and tr["seed"] != seed:
        changes.append(f"seed {tr['seed']} -> {seed}")
    if changes:
        raise CheckpointError(
            f"cannot resume from {path} with other settings than its run's "
            f"({', '.join(changes)}; checkpoint -> now): resume with the checkpoint's "
            "values, or start a new run in another checkpoint directory"
        )


def _optimizer_state(meta: dict, arrays: dict, optimizer, params: dict) -> tuple[dict, list]:
    """The optimizer's state dict from the checkpoint, and what is wrong with it: the
    optimizer's slots, each empty (saved before the first update) or one array per
    parameter of exactly its shape and dtype."""
    slots = getattr(optimizer, "slots", ())
    state = {s: {} for s in meta["optimizer_slots"]}
    for k, v in arrays.items():
        if k.startswith("optimizer/"):
            _, slot, key = k.split("/", 2)
            state.setdefault(slot, {})[key] = v
    problems = []
    if set(state) != set(slots):
        problems.append(f"optimizer slots {sorted(state)}, expected {sorted(slots)}")
    layouts = _layouts(params)
    filled = {bool(d) for d in state.values()}
    for slot, d in state.items():
        if d or len(filled) > 1:  # all empty or all full
            problems += _exact_problems(arrays, f"optimizer/{slot}/", layouts)
    return {**meta["optimizer"], "state": state}, problems


def _buffer_layouts(network, arrays: dict) -> dict:
    """``{'<layer>.<attr>': (shape, dtype)}`` each buffer of ``network`` must have in the
    file. A buffer its layer has not created yet and whose layout cannot be told (a layer
    without parameters) takes the file's."""
    registry = layer_registry(network)
    layouts = {}
    for name in registry.buffers:
        layout = registry.buffer_layout(name)
        saved = arrays.get(f"buffers/{name}")
        if layout is None and saved is not None:
            layout = (saved.shape, saved.dtype)
        if layout is not None:
            layouts[name] = layout
    return layouts


def _layouts(arrays: dict) -> dict:
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in arrays.items()}


def _exact_problems(arrays: dict, prefix: str, expected: dict) -> list[str]:
    """What is wrong with the arrays named ``prefix + name`` against ``expected``
    (``{name: (shape, dtype)}``): missing, unexpected, or another shape or dtype exactly
    (a scalar or one row would otherwise broadcast)."""
    found = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    problems = []
    for name in sorted(set(found) | set(expected)):
        if name not in expected:
            problems.append(f"it has {prefix}{name}, which this run does not")
        elif name not in found:
            problems.append(f"{prefix}{name} is missing")
        else:
            shape, dtype = expected[name]
            a = found[name]
            if a.shape != shape or a.dtype != dtype:
                problems.append(
                    f"{prefix}{name} is {a.dtype} of shape {a.shape}, this run needs "
                    f"{dtype} of shape {shape}"
                )
    return problems


def _history_problems(arrays: dict, tr: dict) -> list[str]:
    """The lists: 1-D, finite float64, one loss per step and one accuracy per epoch."""
    problems = []
    lengths = {"train_loss_list": tr["current_iter"], "train_acc_list": tr["current_epoch"],
               "test_acc_list": tr["current_epoch"]}
    for name, length in lengths.items():
        a = arrays[f"history/{name}"]
        if a.dtype != np.float64 or a.shape != (length,) or not np.isfinite(a).all():
            problems.append(
                f"history/{name} must hold {length} finite float64 values, it is {a.dtype} "
                f"of shape {a.shape}"
            )
    return problems


def _checked_meta(meta: dict) -> dict:
    """The trainer section of a checkpoint's meta, after checking every field: counts are
    non-negative integers, hyperparameters finite numbers. Raises ValueError/TypeError/
    KeyError naming the field."""
    if not isinstance(meta.get("model"), str):
        raise TypeError("its model name is not a string")
    tr = meta["trainer"]
    for key in ("epochs", "mini_batch_size", "train_size"):
        positive_int(tr[key], f"trainer.{key}")
    for key in ("current_iter", "current_epoch", "seed"):
        non_negative_int(tr[key], f"trainer.{key}")
    if tr["checkpoint_every"] is not None:
        positive_int(tr["checkpoint_every"], "trainer.checkpoint_every")
    if "lr_schedule" in tr:
        check_schedule(tr["lr_schedule"])
    opt = meta["optimizer"]
    if not isinstance(opt["name"], str) or not isinstance(opt["hyperparams"], dict):
        raise TypeError("its optimizer name or hyperparameters are malformed")
    non_negative_int(opt["step"], "optimizer.step")
    for h, value in opt["hyperparams"].items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(
            value
        ):
            raise ValueError(f"optimizer hyperparameter {h} must be a finite number, got {value!r}")
    slots = meta["optimizer_slots"]
    if not isinstance(slots, list) or not all(isinstance(s, str) for s in slots):
        raise TypeError("its optimizer slots are not a list of names")
    return tr
