"""The book's ``Trainer`` (ch. 6-7), plus what users expect of a training loop.

    >>> trainer = Trainer(network, x_train, t_train, x_test, t_test, epochs=20,
    ...                   mini_batch_size=100, optimizer='Adam', optimizer_param={'lr': 0.001})
    >>> trainer.train()
    >>> trainer.train_loss_list, trainer.train_acc_list, trainer.test_acc_list

As in the book, every step draws a random mini-batch (with replacement, like
``np.random.choice``), runs ``network.gradient`` and updates the parameters in place.
Unlike the book's trainer, the loss of a step is the one ``network.gradient`` just
computed (``network.last_loss``), so no second forward pass is spent on it, and
accuracy is evaluated in batches, never holding a whole test set's activations.
The accuracy lists get one entry per epoch, as in the book, but taken at the *end* of
each epoch (the book's trainer evaluates after the first step of each), so the last
entry is the trained network's accuracy and equals the final test accuracy.

Beyond the book (all keyword-only): ``seed`` for reproducible runs; ``device``
(``'cpu'``/``'gpu'``; the data follows the model); a tqdm progress bar; checkpoints
(``checkpoint_dir``, ``checkpoint_every``) holding parameters, optimizer state, the
position in training and what the random streams need, written atomically; and
``resume=True``, which continues a killed run to the very parameters the
uninterrupted run would have reached.

Reproducibility and resume: every step draws from its own random streams, generators
seeded from ``(seed, step)`` alone and owned by the trainer, never from a process-global
state: the mini-batch (:meth:`Trainer._draw_batch_indices`, on the host) and, through
``xpnet.backend.rng_scope``, whatever the network draws during the step (Dropout masks,
on the network's device). So a run with checkpoints equals one without, a run resumed
from a checkpoint draws exactly what the uninterrupted run drew after that point (on the
CPU and the GPU alike: no generator state needs saving), and Trainers in several threads
do not disturb each other. A resumed run must keep the optimizer, its hyperparameters
and the seed it was started with: a change is refused, naming the old and new values.

A checkpoint directory belongs to one live run: the trainer holds a lock on it
(``checkpoint.lock``, recording its pid and host) from construction to the end of
:meth:`Trainer.train`; a second run is refused, naming the holder, and a lock left by a
killed process is taken over. Temporary files a killed checkpoint write left behind are
removed then.

Data-parallel training (``communicator=``, see :mod:`xpnet.distributed`): every process
draws the same global mini-batch, computes the gradient of its own contiguous share and
the gradients (and the loss) are averaged in one allreduce before the update; evaluation
is split over the processes too. Only rank 0 prints and writes checkpoints; every rank
reads the checkpoint on resume, so the checkpoint directory must be one they all see.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: checkpoint directories are not locked
    fcntl = None

from xpnet import backend
from xpnet.backend import as_numpy, device_of, get_array_module, get_rng, to_device
from xpnet.io import atomic_write
from xpnet.loss_growth import LossGrowthCheck
from xpnet.optimizers import get_optimizer

__all__ = ["Trainer", "CheckpointError", "TrainingDivergedError", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.npz"
LOCK_NAME = "checkpoint.lock"
_FORMAT = "xpnet-checkpoint"
_VERSION = 1
# On the GPU, reading a loss back is a device synchronisation; losses are gathered on
# the device and read back together every this many steps (and at every epoch end).
_GPU_LOSS_SYNC_STEPS = 50


class CheckpointError(ValueError):
    """A checkpoint cannot be used: truncated, corrupt, or written for another run."""


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _positive_int(value, name):
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(value, name):
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_hyperparams(optimizer) -> None:
    """Every hyperparameter finite, the learning rate positive: refused before any step
    (a NaN momentum would otherwise surface as a diverged loss)."""
    name = type(optimizer).__name__
    for h in getattr(optimizer, "hyperparams", ()):
        value = getattr(optimizer, h)
        if not math.isfinite(value):
            raise ValueError(f"{name} hyperparameter {h} must be a finite number, got {value!r}")
    lr = getattr(optimizer, "lr", None)
    if lr is not None and not lr > 0:
        raise ValueError(f"{name} learning rate lr must be positive, got {lr!r}")


class Trainer:
    """Train ``network`` on ``(x_train, t_train)``, evaluating on ``(x_test, t_test)``.

    Args:
        network: a book-style network: ``params`` (dict), ``gradient(x, t)``,
            ``accuracy(x, t)``; ``last_loss`` after ``gradient`` (else ``loss(x, t)`` is
            called), ``to(device)`` for ``device=``.
        x_train: (N, ...) inputs; t_train: (N,) labels or (N, classes) one-hot.
        x_test, t_test: the evaluation set, same layout.
        epochs: number of passes; one epoch is ``ceil(N / mini_batch_size)`` steps.
        mini_batch_size: samples per step (drawn at random with replacement).
        optimizer, optimizer_param: a name from ``xpnet.optimizers`` (any case) and
            its hyperparameters, or an optimizer instance (then no ``optimizer_param``).
        evaluate_sample_num_per_epoch: evaluate per-epoch accuracy on only the first
            this-many samples of each set (None: all).
        verbose: print a line per epoch and the final test accuracy.
        seed: seed of the mini-batch draws and Dropout masks, a non-negative integer
            (None: drawn from xpnet's current random state, so ``xpnet.seed(0)`` beforehand
            also makes runs repeat; on resume, the checkpoint's).
        device: ``'cpu'`` or ``'gpu'``: move the model there (``network.to``) and the data
            with it; None keeps the model where it is and brings the data to it.
        checkpoint_dir: directory for ``checkpoint.npz`` (created if missing).
        checkpoint_every: checkpoint every this many steps (default: every epoch).
        resume: continue from the checkpoint in ``checkpoint_dir`` (a fresh start if there
            is none yet).
        progress: show a progress bar: None (when verbose and stderr is a terminal),
            True or False.
        communicator: an :class:`xpnet.distributed.Communicator` for data-parallel
            training over several processes (None: this process alone). Each process
            takes its share of every mini-batch of ``mini_batch_size`` samples.
    """

    def __init__(
        self,
        network,
        x_train,
        t_train,
        x_test,
        t_test,
        epochs=20,
        mini_batch_size=100,
        optimizer="SGD",
        optimizer_param=None,
        evaluate_sample_num_per_epoch=None,
        verbose=True,
        *,
        seed=None,
        device=None,
        checkpoint_dir=None,
        checkpoint_every=None,
        resume=False,
        progress=None,
        communicator=None,
    ):
        self.network = network
        self.communicator = communicator
        if communicator is not None and not communicator.is_root:
            verbose, progress = False, False  # rank 0 speaks for the job
        self.verbose = verbose
        self.epochs = _positive_int(epochs, "epochs")
        self.batch_size = _positive_int(mini_batch_size, "mini_batch_size")
        for name, x, t in (("train", x_train, t_train), ("test", x_test, t_test)):
            if len(x) != len(t):
                raise ValueError(
                    f"x_{name} has {len(x)} samples but t_{name} has {len(t)}; they must match"
                )
            if len(x) == 0:
                raise ValueError(f"the {name} set is empty")
        self.train_size = len(x_train)
        if self.batch_size > self.train_size:
            raise ValueError(
                f"mini_batch_size {self.batch_size} is larger than the training set "
                f"({self.train_size} samples); use a batch size of at most {self.train_size}"
            )
        if evaluate_sample_num_per_epoch is not None:
            evaluate_sample_num_per_epoch = _positive_int(
                evaluate_sample_num_per_epoch, "evaluate_sample_num_per_epoch"
            )
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch

        # The model decides where training happens; the data follows it.
        if device is not None:
            device = backend.check_device(device)
            if hasattr(network, "to"):
                network.to(device)
            elif _model_device(network) != device:
                raise TypeError(
                    f"{type(network).__name__} has no .to(device); move its params to "
                    f"{device!r} yourself or use a network from xpnet.models"
                )
        self.device = _model_device(network)
        self.xp = backend.namespace(self.device)
        dtype = getattr(network, "dtype", None)
        self.x_train, self.t_train, self.x_test, self.t_test = (
            self._to_model(a, dtype) for a in (x_train, t_train, x_test, t_test)
        )
        # Labels are range-checked once here, on the host: the per-step loss skips that check
        # on the GPU, where it would stall every step on a device-to-host transfer.
        n_classes = network.predict(self.x_train[:1]).shape[-1]
        for name, t in (("t_train", t_train), ("t_test", t_test)):
            _check_labels(as_numpy(t), n_classes, name)

        if optimizer_param is None:  # the book's default, {'lr': 0.01}, whatever the optimizer
            optimizer_param = {} if not isinstance(optimizer, str) else {"lr": 0.01}
        self.optimizer = get_optimizer(optimizer, **dict(optimizer_param))
        _check_hyperparams(self.optimizer)

        self.iter_per_epoch = max(math.ceil(self.train_size / self.batch_size), 1)
        self.max_iter = self.epochs * self.iter_per_epoch
        self.current_iter = 0
        self.current_epoch = 0
        self.train_loss_list: list[float] = []
        self.train_acc_list: list[float] = []
        self.test_acc_list: list[float] = []
        # wall time of each epoch run in this process, evaluation included (not checkpointed:
        # a resumed run times its epochs afresh)
        self.epoch_seconds: list[float] = []
        self._epoch_start = time.perf_counter()
        self.final_test_acc: float | None = None

        self._seed_given = seed is not None  # an explicit seed must match a resumed run's
        if seed is None:  # from xpnet's random state, so xpnet.seed(...) governs it too
            seed = int(get_rng(np).integers(2**63))
        self.seed = _non_negative_int(seed, "seed")
        if checkpoint_every is not None:
            checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every")
        self.checkpoint_every = checkpoint_every
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.progress = progress
        self._pending_losses: list = []  # (step, 0-d loss array) not yet read back
        self._loss_sync = 1 if self.xp is np else _GPU_LOSS_SYNC_STEPS
        self._streams: _StepStreams | None = None
        self._bar = None
        self._loss_growth = LossGrowthCheck()  # warns once if the loss explodes without NaN
        self._lock: _DirectoryLock | None = None
        try:
            self._start(communicator, resume)
        except BaseException:
            self.release_lock()
            raise

    def _start(self, communicator, resume) -> None:
        """Agree with the other processes, lock the checkpoint directory, resume."""
        network = self.network
        lock_problem = None
        if self.checkpoint_dir is not None and (communicator is None or communicator.is_root):
            try:  # only the writer locks; the others learn of a refusal below
                self._lock = _DirectoryLock(self.checkpoint_dir, self._log)
            except CheckpointError as exc:
                if communicator is None:
                    raise
                lock_problem = str(exc)
        if communicator is not None:  # one seed, one sequence of global mini-batches
            communicator.check_consistency(network, settings=self._run_settings())
            seed, lock_problem = communicator.bcast_object(
                (self.seed, lock_problem), 0, "the training seed"
            )
            if lock_problem is not None:
                raise CheckpointError(lock_problem)
            self.seed = int(seed)
            communicator.broadcast_params(network.params)

        path = self.checkpoint_path
        if path is not None and path.exists():
            if not resume:
                raise CheckpointError(
                    f"{path} already exists; pass resume=True (--resume) to continue that run, "
                    "or choose another checkpoint directory"
                )
            self.load_checkpoint(path)
            self._check_same_position()
            # epochs counted as the epoch lines count them (epoch:1/N is the first)
            mid_epoch = self.current_iter % self.iter_per_epoch != 0
            where = (f"in epoch {self.current_epoch + 1}/{self.epochs}" if mid_epoch
                     else f"after epoch {self.current_epoch}/{self.epochs}")
            self._log(f"resumed from {path} {where}, step {self.current_iter} of {self.max_iter}")
        elif resume and path is not None:
            self._check_same_position()
            self._log(f"no checkpoint in {self.checkpoint_dir} yet; starting from the beginning")

    def _run_settings(self) -> dict:
        """What every process of a data-parallel run must agree on (the seed as given:
        None is rank 0's, drawn)."""
        opt = self.optimizer
        return {
            "optimizer": type(opt).__name__,
            "optimizer_param": {h: getattr(opt, h) for h in getattr(opt, "hyperparams", ())},
            "mini_batch_size": self.batch_size,
            "epochs": self.epochs,
            "train_size": self.train_size,
            "seed": self.seed if self._seed_given else None,
        }

    def release_lock(self) -> None:
        """Give up the checkpoint directory (done at the end of :meth:`train`)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __del__(self):
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def _check_same_position(self) -> None:
        """Every process must have resumed from the same checkpoint (a shared directory)."""
        comm = self.communicator
        if comm is None:
            return
        steps = comm.allgather_object(self.current_iter, "the resume position check")
        if len(set(steps)) > 1:
            from xpnet.distributed import DistributedError

            raise DistributedError(
                f"the processes resumed at different steps {steps} (rank order): the "
                f"checkpoint directory {self.checkpoint_dir} must be one every process sees "
                "(a shared filesystem)"
            )

    # -- data ---------------------------------------------------------------------------

    def _to_model(self, a, dtype):
        a = to_device(a, self.device)
        # Inputs take the model's dtype once, here, so no step mixes float32 and float64.
        if dtype is not None and a.dtype.kind == "f" and a.dtype != dtype:
            a = a.astype(dtype)
        return a

    # -- one step -----------------------------------------------------------------------

    def _is_boundary(self, step: int) -> bool:
        """Checkpoint boundaries: every epoch or every checkpoint_every steps."""
        return step % (self.checkpoint_every or self.iter_per_epoch) == 0

    def _step_streams(self, step: int) -> _StepStreams:
        """The trainer's random streams, positioned at the start of ``step``."""
        if self._streams is None or self._streams.seed != self.seed:
            self._streams = _StepStreams(self.seed)
        return self._streams.start(step)

    def _draw_batch_indices(self, step: int):
        """The samples of ``step``'s mini-batch: (mini_batch_size,) integer indices into
        the training set, drawn with replacement on the host from the step's stream (so
        the CPU and the GPU train on the same batches). Override to draw otherwise."""
        return self._streams(np).integers(0, self.train_size, size=self.batch_size)

    def train_step(self):
        """One mini-batch step; at an epoch's end, evaluate; at a boundary, checkpoint."""
        step = self.current_iter
        with backend.rng_scope(self._step_streams(step)):  # Dropout draws from it too
            loss = self._learn(step)
        self._pending_losses.append((step, loss))
        self.current_iter += 1
        self._after_step()

    def _learn(self, step: int):
        """Draw the mini-batch of ``step``, compute the gradient, update: returns the loss
        (a 0-d array, not read back)."""
        batch_mask = self.xp.asarray(self._draw_batch_indices(step))  # to the data's device
        comm = self.communicator
        if comm is not None:  # the same global batch on every rank; this rank's share of it
            weight = comm.shard_weight(self.batch_size)
            batch_mask = comm.shard(batch_mask)
        x_batch = self.x_train[batch_mask]  # gathered on the data's device
        t_batch = self.t_train[batch_mask]

        network = self.network
        if hasattr(network, "last_loss"):
            network.last_loss = None
        with backend.gpu_memory_hint(batch_size=self.batch_size):
            grads = network.gradient(x_batch, t_batch)
            loss = getattr(network, "last_loss", None)
            if loss is None:  # a network that does not report its loss: one extra forward pass
                loss = network.loss(x_batch, t_batch)
            if comm is not None:  # mean gradient and loss of the global batch
                loss = comm.allreduce_mean(
                    grads, loss=loss, weight=weight, step=self.current_iter + 1
                )
            self.optimizer.update(network.params, grads)
        return loss

    def _after_step(self) -> None:
        """Read losses back when due; at an epoch's end, evaluate; at a boundary, checkpoint."""
        epoch_end = self.current_iter % self.iter_per_epoch == 0
        checkpoint = self.checkpoint_dir is not None and self._is_boundary(self.current_iter)
        if len(self._pending_losses) >= self._loss_sync or epoch_end or checkpoint:
            self._read_losses()
        if self._bar is not None:
            self._bar.update(1)
        if epoch_end:
            self.current_epoch += 1
            self._evaluate_epoch()
            now = time.perf_counter()
            self.epoch_seconds.append(round(now - self._epoch_start, 3))
            self._epoch_start = now
        if checkpoint:
            self.save_checkpoint()

    def _read_losses(self) -> None:
        """Move pending losses to ``train_loss_list``; stop at the first NaN/inf."""
        if not self._pending_losses:
            return
        steps, losses = zip(*self._pending_losses)
        self._pending_losses.clear()
        if len(losses) == 1:
            values = [backend.to_scalar(losses[0])]
        else:  # one transfer for all of them
            xp = get_array_module(*losses)
            values = as_numpy(xp.stack([xp.asarray(v) for v in losses])).tolist()
        for step, value in zip(steps, values):
            if not math.isfinite(value):
                lr = getattr(self.optimizer, "lr", None)
                hint = f" (now {lr:g})" if lr is not None else ""
                raise TrainingDivergedError(
                    f"the training loss became {value} at step {step + 1} (epoch "
                    f"{step // self.iter_per_epoch + 1}); training stopped. Try a lower "
                    f"learning rate{hint}."
                )
            self.train_loss_list.append(float(value))
            self._loss_growth.check(float(value), step + 1, self.optimizer)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{self.train_loss_list[-1]:.4f}", refresh=False)

    # -- evaluation ---------------------------------------------------------------------

    @property
    def eval_batch_size(self) -> int:
        return max(self.batch_size, 100)

    def accuracy(self, x, t) -> float:
        """Accuracy of the network on ``(x, t)``, computed ``eval_batch_size`` samples at a
        time (the activations of one batch at most)."""
        n, size = len(x), self.eval_batch_size
        comm = self.communicator
        lo, hi = 0, n
        if comm is not None and n >= comm.size:  # each rank scores its share
            lo, hi = comm.shard_bounds(n)
        correct = 0.0
        with backend.gpu_memory_hint(batch_size=size):
            for i in range(lo, hi, size):
                xb, tb = x[i : min(i + size, hi)], t[i : min(i + size, hi)]
                correct += backend.to_scalar(self.network.accuracy(xb, tb)) * len(xb)
        if comm is not None and (lo, hi) != (0, n):
            correct = float(comm.allreduce_sum([correct], "the accuracy sum")[0])
        return correct / n

    def _sync_batchnorm(self) -> None:
        """Average BatchNorm's running statistics over the ranks (they are per-replica in
        training), so every rank evaluates and rank 0 saves the same ones."""
        if self.communicator is not None:
            self.communicator.sync_batchnorm(self.network)

    def _evaluate_epoch(self) -> None:
        k = self.evaluate_sample_num_per_epoch
        x_tr, t_tr, x_te, t_te = self.x_train, self.t_train, self.x_test, self.t_test
        if k is not None:
            x_tr, t_tr, x_te, t_te = x_tr[:k], t_tr[:k], x_te[:k], t_te[:k]
        self._sync_batchnorm()
        train_acc = self.accuracy(x_tr, t_tr)
        test_acc = self.accuracy(x_te, t_te)
        self.train_acc_list.append(train_acc)
        self.test_acc_list.append(test_acc)
        recent = self.train_loss_list[-self.iter_per_epoch :]
        loss = sum(recent) / len(recent) if recent else float("nan")
        self._log(
            f"=== epoch:{self.current_epoch}/{self.epochs}, train loss:{loss:.4f}, "
            f"train acc:{train_acc:.4f}, test acc:{test_acc:.4f} ==="
        )

    # -- the loop -----------------------------------------------------------------------

    def train(self) -> dict:
        """Run the remaining steps, then evaluate on the whole test set (in batches).

        Returns :attr:`history`.
        """
        show = self.progress
        if show is None:
            show = bool(self.verbose) and sys.stderr.isatty()
        if show and self.current_iter < self.max_iter:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.max_iter, initial=self.current_iter, unit="step", leave=False,
                dynamic_ncols=True, desc=type(self.network).__name__,
            )
        self._epoch_start = time.perf_counter()
        try:
            while self.current_iter < self.max_iter:
                self.train_step()
            self._read_losses()
            if self.checkpoint_dir is not None and not self._is_boundary(self.current_iter):
                self.save_checkpoint()
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self.release_lock()
        if self.evaluate_sample_num_per_epoch is None and self.test_acc_list and (
            self.current_iter % self.iter_per_epoch == 0
        ):  # the last epoch's evaluation already scored the whole test set
            self.final_test_acc = self.test_acc_list[-1]
        else:
            self._sync_batchnorm()
            self.final_test_acc = self.accuracy(self.x_test, self.t_test)
        self._log("=============== Final Test Accuracy ===============")
        self._log(f"test acc:{self.final_test_acc}")
        return self.history

    def _log(self, line: str) -> None:
        if not self.verbose:
            return
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    @property
    def history(self) -> dict:
        """The lists and settings of the run, as plain JSON-ready data."""
        return {
            "model": type(self.network).__name__,
            "optimizer": type(self.optimizer).__name__,
            "optimizer_param": {h: getattr(self.optimizer, h) for h in self.optimizer.hyperparams},
            "epochs": self.epochs,
            "mini_batch_size": self.batch_size,
            "iter_per_epoch": self.iter_per_epoch,
            "seed": self.seed,
            "device": self.device,
            "train_loss_list": list(self.train_loss_list),
            "train_acc_list": list(self.train_acc_list),
            "test_acc_list": list(self.test_acc_list),
            "final_test_acc": self.final_test_acc,
            "epoch_seconds": list(self.epoch_seconds),
        }

    # -- checkpoints --------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.checkpoint_dir is None else self.checkpoint_dir / CHECKPOINT_NAME

    def save_checkpoint(self, path=None) -> Path:
        """Write parameters, layer buffers, optimizer state, position and history to one
        ``.npz`` (no pickle), atomically: a reader sees the old file or the new one.

        With a communicator every rank must call it (BatchNorm statistics are averaged
        first); rank 0 writes."""
        self._read_losses()  # never checkpoint a diverged run
        self._sync_batchnorm()
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: give checkpoint_dir to the Trainer")
        if self.communicator is not None and not self.communicator.is_root:
            return path  # the replicas are identical: rank 0 writes for all
        path.parent.mkdir(parents=True, exist_ok=True)
        params = self.network.params
        opt = self.optimizer.state_dict()
        arrays = {f"params/{k}": as_numpy(v) for k, v in params.items()}
        for name, value in _buffers(self.network).items():
            arrays[f"buffers/{name}"] = as_numpy(value)
        for slot, d in opt["state"].items():
            for k, v in d.items():
                arrays[f"optimizer/{slot}/{k}"] = v
        arrays["history/train_loss_list"] = np.asarray(self.train_loss_list, np.float64)
        arrays["history/train_acc_list"] = np.asarray(self.train_acc_list, np.float64)
        arrays["history/test_acc_list"] = np.asarray(self.test_acc_list, np.float64)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "model": type(self.network).__name__,
            "params": {k: [list(v.shape), str(v.dtype)] for k, v in params.items()},
            "optimizer": {k: opt[k] for k in ("name", "hyperparams", "step")},
            "optimizer_slots": sorted(opt["state"]),
            "trainer": {
                "epochs": self.epochs,
                "mini_batch_size": self.batch_size,
                "train_size": self.train_size,
                "current_iter": self.current_iter,
                "current_epoch": self.current_epoch,
                "checkpoint_every": self.checkpoint_every,
                "seed": self.seed,
            },
        }
        arrays["meta"] = np.array(json.dumps(meta))
        with atomic_write(path, "wb") as f:
            np.savez(f, **arrays)
        return path

    def load_checkpoint(self, path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` for this same setup.

        Everything is read and checked before anything is changed: every array's exact
        shape and dtype (nothing is broadcast), BatchNormalization's running statistics
        (required when the network has them), every position and setting recorded. A
        truncated or inconsistent file, one from another model, optimizer, batch size or
        training set size, or one trained with other hyperparameters or another seed than
        this run asks for, raises CheckpointError and leaves the network, the optimizer
        and the trainer as they were.
        """
        path = Path(path)
        meta, arrays = _read_checkpoint(path)
        try:
            tr = _checked_meta(meta)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} is corrupt: {exc}") from None

        def mismatch(what):
            return CheckpointError(f"checkpoint {path} does not fit this run: {what}")

        if meta["model"] != type(self.network).__name__:
            raise mismatch(
                f"it was written for a {meta['model']}, this network is a "
                f"{type(self.network).__name__}"
            )
        for key, here in (("mini_batch_size", self.batch_size), ("train_size", self.train_size)):
            if tr[key] != here:
                raise mismatch(f"{key} was {tr[key]}, now {here}")
        self._check_resumable_position(tr, mismatch)
        self._check_same_settings(path, meta, tr)
        params = self.network.params
        problems = _exact_problems(arrays, "params/", _layouts(params))
        if problems:  # the optimizer state then differs the same way: name the cause only
            raise mismatch("; ".join(problems))
        layers = _buffer_layers(self.network)
        problems = _exact_problems(arrays, "buffers/", _buffer_layouts(layers))
        opt_state, opt_problems = self._optimizer_state(meta, arrays)
        problems += opt_problems + _history_problems(arrays, tr)
        if problems:
            raise mismatch("; ".join(problems))

        # All checked: now change things (nothing below can fail on the file's content).
        self.optimizer.load_state_dict(opt_state, params)
        for k, p in params.items():
            p[...] = get_array_module(p).asarray(arrays[f"params/{k}"])  # in place
        for name in _buffer_layouts(layers):
            layer_name, attr = name.rsplit(".", 1)
            setattr(layers[layer_name], attr, self.xp.asarray(arrays[f"buffers/{name}"]))
        self.train_loss_list = arrays["history/train_loss_list"].tolist()
        self.train_acc_list = arrays["history/train_acc_list"].tolist()
        self.test_acc_list = arrays["history/test_acc_list"].tolist()
        self.current_iter = tr["current_iter"]
        self.current_epoch = tr["current_epoch"]
        self.seed = tr["seed"]
        if self.checkpoint_every is None:
            self.checkpoint_every = tr["checkpoint_every"]

    def _check_resumable_position(self, tr: dict, mismatch) -> None:
        if tr["current_iter"] > self.max_iter:
            raise mismatch(
                f"it is at step {tr['current_iter']}, past this run's {self.max_iter} steps "
                f"({self.epochs} epochs); ask for at least {tr['current_epoch']} epochs"
            )
        if tr["current_epoch"] != tr["current_iter"] // self.iter_per_epoch:
            raise mismatch(
                f"it says epoch {tr['current_epoch']} at step {tr['current_iter']}, but an "
                f"epoch has {self.iter_per_epoch} steps"
            )

    def _check_same_settings(self, path: Path, meta: dict, tr: dict) -> None:
        """A resumed run trains with what it was started with, or is refused."""
        saved, opt = meta["optimizer"], self.optimizer
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
        if self._seed_given and tr["seed"] != self.seed:
            changes.append(f"seed {tr['seed']} -> {self.seed}")
        if changes:
            raise CheckpointError(
                f"cannot resume from {path} with other settings than its run's "
                f"({', '.join(changes)}; checkpoint -> now): resume with the checkpoint's "
                "values, or start a new run in another checkpoint directory"
            )

    def _optimizer_state(self, meta: dict, arrays: dict) -> tuple[dict, list[str]]:
        """The optimizer's state dict from the checkpoint, and what is wrong with it:
        the optimizer's slots, each empty (saved before the first update) or one array
        per parameter of exactly its shape and dtype."""
        slots = getattr(self.optimizer, "slots", ())
        state = {s: {} for s in meta["optimizer_slots"]}
        for k, v in arrays.items():
            if k.startswith("optimizer/"):
                _, slot, key = k.split("/", 2)
                state.setdefault(slot, {})[key] = v
        problems = []
        if set(state) != set(slots):
            problems.append(f"optimizer slots {sorted(state)}, expected {sorted(slots)}")
        layouts = _layouts(self.network.params)
        filled = {bool(d) for d in state.values()}
        for slot, d in state.items():
            if d or len(filled) > 1:  # all empty or all full
                problems += _exact_problems(arrays, f"optimizer/{slot}/", layouts)
        opt_state = {**meta["optimizer"], "state": state}
        return opt_state, problems


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
        _positive_int(tr[key], f"trainer.{key}")
    for key in ("current_iter", "current_epoch", "seed"):
        _non_negative_int(tr[key], f"trainer.{key}")
    if tr["checkpoint_every"] is not None:
        _positive_int(tr["checkpoint_every"], "trainer.checkpoint_every")
    opt = meta["optimizer"]
    if not isinstance(opt["name"], str) or not isinstance(opt["hyperparams"], dict):
        raise TypeError("its optimizer name or hyperparameters are malformed")
    _non_negative_int(opt["step"], "optimizer.step")
    for h, value in opt["hyperparams"].items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(
            value
        ):
            raise ValueError(f"optimizer hyperparameter {h} must be a finite number, got {value!r}")
    slots = meta["optimizer_slots"]
    if not isinstance(slots, list) or not all(isinstance(s, str) for s in slots):
        raise TypeError("its optimizer slots are not a list of names")
    return tr


class _StepStreams:
    """A trainer's random streams: ``xp -> Generator``, whose state at the start of each
    step is a function of ``(seed, step)`` alone.

    On the host one PCG64, made once, is moved to ``seed``'s stream advanced by
    ``step * 2**64`` at every :meth:`start` (a reset and a jump: microseconds, no new
    generator per step; a step would have to draw 2**64 numbers to reach the next one's).
    A device generator (CuPy's cannot jump) is seeded from ``(seed, step)`` when the step
    first asks for one: a step that draws nothing on the GPU makes none.
    """

    __slots__ = ("seed", "step", "_bits", "_origin", "_host", "_device")

    def __init__(self, seed: int):
        self.seed, self.step = seed, None
        self._bits = np.random.PCG64(np.random.SeedSequence(seed))
        self._origin = self._bits.state
        self._host = np.random.Generator(self._bits)
        self._device: dict = {}

    def start(self, step: int) -> _StepStreams:
        self._bits.state = self._origin
        self._bits.advance(step << 64)
        self._device.clear()
        self.step = step
        return self

    def __call__(self, xp=np):
        if xp is np:
            return self._host
        rng = self._device.get(xp.__name__)
        if rng is None:  # CuPy's generators take an integer seed
            ss = np.random.SeedSequence(self.seed, spawn_key=(self.step,))
            rng = xp.random.default_rng(int(ss.generate_state(1, np.uint64)[0] >> 1))
            self._device[xp.__name__] = rng
        return rng


class _DirectoryLock:
    """An exclusive lock on a checkpoint directory, for one live run.

    ``flock`` on ``<dir>/checkpoint.lock``: the kernel drops it when its process dies, so a
    lock left by a killed run is taken over; the file names the holder (pid, host) while
    it is held, so a refusal can name it. Taking the lock creates the directory and
    removes the temporary files of checkpoint writes a killed run left behind (no live
    writer can own them now). Without ``fcntl`` (Windows) nothing is locked.
    """

    def __init__(self, directory: Path, log):
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _lock_holder(fd) or "another process"
            os.close(fd)
            raise CheckpointError(
                f"checkpoint directory {directory} is in use by {holder} (lock file {path}); "
                "wait for that run to end, or choose another checkpoint directory"
            ) from None
        previous = _lock_holder(fd)  # a holder that never released it: killed
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        self._fd = fd
        if previous:
            log(f"took over the lock on {directory} left by {previous}, which ended without "
                "releasing it")
        stale = list(directory.glob(f".{CHECKPOINT_NAME}.*.tmp"))
        for tmp in stale:
            tmp.unlink(missing_ok=True)
        if stale:
            log(f"removed {len(stale)} temporary file(s) of an interrupted checkpoint write")

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)  # an empty lock file: released, not abandoned
            os.close(fd)


def _lock_holder(fd: int) -> str | None:
    """'process PID on HOST' from a lock file's content, or None if it is empty."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096)
    if not text:
        return None
    try:
        info = json.loads(text)
        return f"process {int(info['pid'])} on {info['host']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


def _check_labels(t: np.ndarray, n_classes: int, name: str) -> None:
    """Integer labels must lie in [0, n_classes); one-hot targets need no check."""
    if t.dtype.kind in "iu" and t.size and (t.min() < 0 or t.max() >= n_classes):
        raise ValueError(
            f"{name} holds labels from {t.min()} to {t.max()}, but the network has "
            f"{n_classes} outputs; labels must lie in [0, {n_classes})"
        )


def _model_device(network) -> str:
    devices = {device_of(p) for p in network.params.values()}
    if len(devices) != 1:
        raise backend.DeviceError(
            f"{type(network).__name__} has parameters on several devices ({sorted(devices)}); "
            "move it with network.to('cpu') or network.to('gpu')"
        )
    return devices.pop()


# Layers may hold state that is not a parameter but shapes what the network predicts:
# BatchNormalization's running statistics. Checkpoints carry them too.
_BUFFER_ATTRS = ("running_mean", "running_var")


def _buffer_layers(network) -> dict:
    layers = getattr(network, "layers", None) or {}
    # The book keeps DeepConvNet's layers in a list; their positions name them.
    items = layers.items() if isinstance(layers, dict) else enumerate(layers)
    return {
        str(name): layer for name, layer in items if any(hasattr(layer, a) for a in _BUFFER_ATTRS)
    }


def _buffers(network) -> dict:
    """``{'<layer>.<attr>': array}`` of the buffers set so far (the book creates them
    lazily, at the first forward pass)."""
    out = {}
    for name, layer in _buffer_layers(network).items():
        for attr in _BUFFER_ATTRS:
            value = getattr(layer, attr, None)
            if value is not None:
                out[f"{name}.{attr}"] = value
    return out


def _buffer_layouts(layers: dict) -> dict:
    """``{'<layer>.<attr>': (shape, dtype)}`` every buffer of these layers must have: that of
    the buffer set, else that of the layer's ``gamma`` (one entry per feature or channel)."""
    out = {}
    for name, layer in layers.items():
        gamma = getattr(layer, "gamma", None)
        for attr in _BUFFER_ATTRS:
            value = getattr(layer, attr, None)
            if value is None and gamma is not None:
                out[f"{name}.{attr}"] = ((int(np.size(gamma)),), np.dtype(gamma.dtype))
            elif value is not None:
                out[f"{name}.{attr}"] = (tuple(value.shape), np.dtype(value.dtype))
    return out


def _read_checkpoint(path: Path) -> tuple[dict, dict]:
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
        if meta.get("format") != _FORMAT:
            raise KeyError("format")
        if meta.get("version") != _VERSION:
            raise CheckpointError(
                f"checkpoint {path} has format version {meta.get('version')}; this xpnet "
                f"reads version {_VERSION}"
            )
        for k in meta["params"]:
            if f"params/{k}" not in arrays:
                raise KeyError(f"params/{k}")
        for k in ("train_loss_list", "train_acc_list", "test_acc_list"):
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
