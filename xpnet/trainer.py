"""The book's ``Trainer`` (ch. 6-7), plus what users expect of a training loop.

    >>> trainer = Trainer(network, x_train, t_train, x_test, t_test, epochs=20,
    ...                   mini_batch_size=100, optimizer='Adam', optimizer_param={'lr': 0.001})
    >>> trainer.train()
    >>> trainer.train_loss_list, trainer.train_acc_list, trainer.test_acc_list

The loop is the book's: every step draws a random mini-batch (with replacement), runs
``network.gradient`` and updates the parameters in place; ``train_loss_list`` gets one
loss per step, the accuracy lists one entry per epoch. Differences, and why:

- the loss of a step is the one ``network.gradient`` computed (``network.last_loss``): no
  second forward pass; on the GPU losses are read back in groups (a read is a sync);
- accuracy is taken at the *end* of each epoch (the book: after its first step), so the
  last entry is the trained network's, and in batches, never a whole set's activations.

Beyond the book (keyword-only): ``seed``; ``device`` (the data follows the model); a
progress bar; checkpoints and ``resume=True`` (:mod:`xpnet.checkpoint`, one live run per
directory: :mod:`xpnet.checkpoint_lock`), which continue a killed run to the very
parameters the uninterrupted run reaches, since every step draws from its own random
streams (:mod:`xpnet.step_streams`); ``communicator=`` for data-parallel training
(:mod:`xpnet.distributed`: every rank draws the same global mini-batch and takes its
share; gradients and loss are averaged before the update; rank 0 prints and writes
checkpoints, every rank reads them, so the directory must be one they all see);
``cuda_graphs`` (on the GPU each step is captured once as a CUDA graph and replayed,
:mod:`xpnet.cuda_graph`; ``history['cuda_graphs']`` says whether it ran, and if not why);
``lr_schedule`` (the learning rate of each epoch, :mod:`xpnet.lr_schedule`; the book's is
constant); ``augment`` (moved copies of each training mini-batch, :mod:`xpnet.augment`).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import numpy as np

from xpnet import backend, checkpoint
from xpnet.backend import as_numpy, device_of, get_array_module, get_rng, to_device
from xpnet.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    non_negative_int,
    positive_int,
)
from xpnet.checkpoint import read as _read_checkpoint  # noqa: F401 - its former home
from xpnet.checkpoint_lock import DirectoryLock
from xpnet.cuda_graph import CupyCapturer, DeviceSteps, graph_fallback_reason
from xpnet.loss_growth import LossGrowthCheck
from xpnet.lr_schedule import check_schedule, lr_factor
from xpnet.optimizers import get_optimizer
from xpnet.step_streams import StepStreams

__all__ = ["Trainer", "CheckpointError", "TrainingDivergedError", "CHECKPOINT_NAME"]

# On the GPU, reading a loss back is a device synchronisation; losses are gathered on
# the device and read back together every this many steps (and at every epoch end).
_GPU_LOSS_SYNC_STEPS = 50


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


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
        checkpoint_dir: directory for ``checkpoint.npz`` (created if missing), locked for
            this run from construction to the end of :meth:`train`.
        checkpoint_every: checkpoint every this many steps (default: every epoch).
        resume: continue from the checkpoint in ``checkpoint_dir`` (a fresh start if there
            is none yet); the optimizer, its hyperparameters and the seed must be the
            checkpoint's.
        progress: show a progress bar: None (when verbose and stderr is a terminal),
            True or False.
        communicator: an :class:`xpnet.distributed.Communicator` for data-parallel
            training over several processes (None: this process alone). Each process
            takes its share of every mini-batch of ``mini_batch_size`` samples.
        cuda_graphs: on the GPU, capture the training step once as a CUDA graph and
            replay it (True, the default), or launch every kernel of every step (False).
            Steps that cannot be captured run eagerly with the same results.
        lr_schedule: how the learning rate changes from epoch to epoch: ``'constant'``
            (None, the book's), ``'cosine'`` or ``'step'`` (:mod:`xpnet.lr_schedule`). The
            optimizer's ``lr`` is the base rate; with a schedule the trainer sets
            ``optimizer.lr`` at the start of every epoch, and checkpoints keep the base.
        augment: None, or an augmentation such as :class:`xpnet.augment.ShiftFlip` (its
            ``draw(rng, n)`` and ``apply(x, *draws)``): every training mini-batch is
            moved by draws from the step's random stream. Images (N, C, H, W) only.
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
        cuda_graphs=True,
        lr_schedule=None,
        augment=None,
    ):
        self.network = network
        self.lr_schedule = check_schedule(lr_schedule)
        self.augment = augment if augment is None or getattr(augment, "active", True) else None
        self.communicator = communicator
        self.cuda_graphs = bool(cuda_graphs)
        if communicator is not None and not communicator.is_root:
            verbose, progress = False, False  # rank 0 speaks for the job
        self.verbose = verbose
        self.progress = progress
        self._set_sizes(epochs, mini_batch_size, evaluate_sample_num_per_epoch,
                        (x_train, t_train), (x_test, t_test))
        self._place_model(device)
        self._place_data(x_train, t_train, x_test, t_test)
        if self.augment is not None and self.x_train.ndim != 4:
            raise ValueError(
                f"augment={self.augment!r} moves images (N, C, H, W), but x_train has shape "
                f"{self.x_train.shape}: load the data with flatten=False (a CNN's layout)"
            )
        self._set_optimizer(optimizer, optimizer_param)
        self._reset_position()
        self._set_checkpoints(seed, checkpoint_dir, checkpoint_every)
        try:
            self._start(resume)
        except BaseException:
            self.release_lock()
            raise

    # -- construction, one job each ---------------------------------------------------------

    def _set_sizes(self, epochs, mini_batch_size, evaluate_sample_num, train, test) -> None:
        """Epochs, batch size and evaluation size checked against the data sets."""
        self.epochs = positive_int(epochs, "epochs")
        self.batch_size = positive_int(mini_batch_size, "mini_batch_size")
        for name, (x, t) in (("train", train), ("test", test)):
            if len(x) != len(t):
                raise ValueError(
                    f"x_{name} has {len(x)} samples but t_{name} has {len(t)}; they must match"
                )
            if len(x) == 0:
                raise ValueError(f"the {name} set is empty")
        self.train_size = len(train[0])
        if self.batch_size > self.train_size:
            raise ValueError(
                f"mini_batch_size {self.batch_size} is larger than the training set "
                f"({self.train_size} samples); use a batch size of at most {self.train_size}"
            )
        if evaluate_sample_num is not None:
            evaluate_sample_num = positive_int(evaluate_sample_num, "evaluate_sample_num_per_epoch")
        self.evaluate_sample_num_per_epoch = evaluate_sample_num
        self.iter_per_epoch = max(math.ceil(self.train_size / self.batch_size), 1)
        self.max_iter = self.epochs * self.iter_per_epoch

    def _place_model(self, device) -> None:
        """The model decides where training happens: move it to ``device`` if given."""
        network = self.network
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

    def _place_data(self, x_train, t_train, x_test, t_test) -> None:
        """The data follows the model, in its dtype; labels checked against its outputs."""
        dtype = getattr(self.network, "dtype", None)
        self.x_train, self.t_train, self.x_test, self.t_test = (
            self._to_model(a, dtype) for a in (x_train, t_train, x_test, t_test)
        )
        # Labels are range-checked once here, on the host: the per-step loss skips that check
        # on the GPU, where it would stall every step on a device-to-host transfer.
        n_classes = self.network.predict(self.x_train[:1]).shape[-1]
        for name, t in (("t_train", t_train), ("t_test", t_test)):
            _check_labels(as_numpy(t), n_classes, name)

    def _to_model(self, a, dtype):
        a = to_device(a, self.device)
        # Inputs take the model's dtype once, here, so no step mixes float32 and float64.
        if dtype is not None and a.dtype.kind == "f" and a.dtype != dtype:
            a = a.astype(dtype)
        return a

    def _set_optimizer(self, optimizer, optimizer_param) -> None:
        if optimizer_param is None:  # the book's default, {'lr': 0.01}, whatever the optimizer
            optimizer_param = {} if not isinstance(optimizer, str) else {"lr": 0.01}
        self.optimizer = get_optimizer(optimizer, **dict(optimizer_param))
        _check_hyperparams(self.optimizer)
        if self.lr_schedule != "constant" and getattr(self.optimizer, "lr", None) is None:
            raise ValueError(
                f"lr_schedule={self.lr_schedule!r} needs an optimizer with a learning rate "
                f"lr; {type(self.optimizer).__name__} has none"
            )
        self.base_lr = getattr(self.optimizer, "lr", None)  # what a schedule scales

    def _reset_position(self) -> None:
        """Step 0: the book's counters and lists, and what this process measures."""
        self.current_iter = 0
        self.current_epoch = 0
        self.train_loss_list: list[float] = []
        self.train_acc_list: list[float] = []
        self.test_acc_list: list[float] = []
        self.final_test_acc: float | None = None
        # wall time of each epoch run in this process, evaluation included (not checkpointed:
        # a resumed run times its epochs afresh)
        self.epoch_seconds: list[float] = []
        self._epoch_start = time.perf_counter()
        self._pending_losses: list = []  # (step, 0-d loss array) not yet read back
        self._loss_sync = 1 if self.xp is np else _GPU_LOSS_SYNC_STEPS
        self._device_steps: DeviceSteps | None = None  # made at the first GPU step
        self._loss_growth = LossGrowthCheck()  # warns once if the loss explodes without NaN
        self._bar = None

    def _set_checkpoints(self, seed, checkpoint_dir, checkpoint_every) -> None:
        """The seed of the random streams and where and how often to checkpoint."""
        self._seed_given = seed is not None  # an explicit seed must match a resumed run's
        if seed is None:  # from xpnet's random state, so xpnet.seed(...) governs it too
            seed = int(get_rng(np).integers(2**63))
        self.seed = non_negative_int(seed, "seed")
        self._streams: StepStreams | None = None
        if checkpoint_every is not None:
            checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
        self.checkpoint_every = checkpoint_every
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self._lock: DirectoryLock | None = None

    def _start(self, resume) -> None:
        """Lock the checkpoint directory, agree with the other processes, resume."""
        lock_problem = self._lock_directory()
        if self.communicator is not None:
            self._agree(lock_problem)
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

    def _lock_directory(self) -> str | None:
        """Only the writer (rank 0) locks; with a communicator a refusal is returned, so
        that every rank can learn of it, and raised otherwise."""
        comm = self.communicator
        if self.checkpoint_dir is None or (comm is not None and not comm.is_root):
            return None
        try:
            self._lock = DirectoryLock(self.checkpoint_dir, self._log)
        except CheckpointError as exc:
            if comm is None:
                raise
            return str(exc)
        return None

    def _agree(self, lock_problem) -> None:
        """Every process: the same settings, rank 0's seed (one sequence of global
        mini-batches) and parameters; a lock refused on rank 0 stops them all."""
        comm = self.communicator
        comm.check_consistency(self.network, settings=self._run_settings())
        seed, lock_problem = comm.bcast_object((self.seed, lock_problem), 0, "the training seed")
        if lock_problem is not None:
            raise CheckpointError(lock_problem)
        self.seed = int(seed)
        comm.broadcast_params(self.network.params)

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
            "lr_schedule": self.lr_schedule,
            "augment": None if self.augment is None else repr(self.augment),
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

    # -- the book's loop ----------------------------------------------------------------

    def train_step(self):
        """The book's step: a random mini-batch, its gradient, the update, its loss; at an
        epoch's end, an evaluation. Added: the step's own random streams, averaging over
        processes, losses read back in groups, checkpoints at boundaries."""
        step = self.current_iter
        self._schedule_lr(step)
        with backend.rng_scope(self._step_streams(step)), \
                backend.gpu_memory_hint(batch_size=self.batch_size):
            indices = self._draw_batch_indices(step)
            if self.xp is np and self._device_steps is None:
                loss = self._batch_step(indices)
            else:  # staged on the device; a replayed CUDA graph, or the same step eagerly
                loss = self._gpu_steps().step(step, indices, slot=len(self._pending_losses))
        self._pending_losses.append((step, loss))  # to train_loss_list in _read_losses
        self.current_iter += 1
        self._after_step()

    def train(self) -> dict:
        """Run the remaining steps, then evaluate on the whole test set (in batches).

        Returns :attr:`history`.
        """
        self._open_progress_bar()
        self._epoch_start = time.perf_counter()
        try:
            while self.current_iter < self.max_iter:
                self.train_step()
            self._read_losses()
            if self.checkpoint_dir is not None and not self._is_boundary(self.current_iter):
                self.save_checkpoint()
        finally:
            self._close_progress_bar()
            self.release_lock()
        self.final_test_acc = self._final_test_accuracy()
        self._log("=============== Final Test Accuracy ===============")
        self._log(f"test acc:{self.final_test_acc}")
        return self.history

    # -- inside a step ------------------------------------------------------------------

    def _schedule_lr(self, step: int) -> None:
        """Set the optimizer's learning rate for ``step``'s epoch (a schedule's only)."""
        if self.lr_schedule == "constant":
            return  # the book's: lr is the user's to change between steps
        epoch = min(step // self.iter_per_epoch, self.epochs - 1)
        self.optimizer.lr = self.base_lr * lr_factor(self.lr_schedule, epoch, self.epochs)

    @contextlib.contextmanager
    def _at_base_lr(self):
        """A context in which ``optimizer.lr`` is the base rate (what a checkpoint and the
        history keep: the rate of a step follows from it, the schedule and the step)."""
        if self.lr_schedule == "constant":
            yield
            return
        scheduled, self.optimizer.lr = self.optimizer.lr, self.base_lr
        try:
            yield
        finally:
            self.optimizer.lr = scheduled

    def _step_streams(self, step: int) -> StepStreams:
        """The trainer's random streams, positioned at the start of ``step``."""
        if self._streams is None or self._streams.seed != self.seed:
            self._streams = StepStreams(self.seed)
        return self._streams.start(step)

    def _draw_batch_indices(self, step: int):
        """The samples of ``step``'s mini-batch: (mini_batch_size,) integer indices into
        the training set, drawn with replacement on the host from the step's stream (so
        the CPU and the GPU train on the same batches). Override to draw otherwise."""
        return self._streams(np).integers(0, self.train_size, size=self.batch_size)

    def _batch_step(self, indices):
        """Gather the mini-batch at ``indices`` (on the data's device), take its gradient,
        update; return the loss (0-d, not read back). On the GPU this is what a CUDA graph
        captures."""
        moves = None
        if self.augment is not None:  # drawn for the global batch, as one process would
            moves = self.augment.draw(self._streams(np), len(indices))
        if self.communicator is not None:  # this rank's share of the global batch
            indices = self.communicator.shard(indices)
            moves = None if moves is None else [self.communicator.shard(m) for m in moves]
        x_batch = self.x_train[indices]
        if moves is not None:
            x_batch = self.augment.apply(x_batch, *moves)
        grads, loss = self._gradient(x_batch, self.t_train[indices])
        self.optimizer.update(self.network.params, grads)
        return loss

    def _gpu_steps(self) -> DeviceSteps:
        """The GPU's step runner, made at the first step (it holds device buffers)."""
        if self._device_steps is None:
            capturer = None
            if graph_fallback_reason(self) is None:
                capturer = CupyCapturer(backend.require_gpu())
            self._device_steps = DeviceSteps(self, self._batch_step, capturer,
                                             ring_size=_GPU_LOSS_SYNC_STEPS)
        return self._device_steps

    def _gradient(self, x_batch, t_batch):
        """``(grads, loss)`` of the batch, the loss a 0-d array not read back; with a
        communicator both are the global batch's means."""
        network = self.network
        if hasattr(network, "last_loss"):
            network.last_loss = None
        grads = network.gradient(x_batch, t_batch)
        loss = getattr(network, "last_loss", None)
        if loss is None:  # a network that does not report its loss: one extra forward pass
            loss = network.loss(x_batch, t_batch)
        comm = self.communicator
        if comm is not None:
            loss = comm.allreduce_mean(grads, loss=loss, weight=comm.shard_weight(
                self.batch_size), step=self.current_iter + 1)
        return grads, loss

    def _is_boundary(self, step: int) -> bool:
        """Checkpoint boundaries: every epoch or every checkpoint_every steps."""
        return step % (self.checkpoint_every or self.iter_per_epoch) == 0

    def _after_step(self) -> None:
        """Read losses back when due; at an epoch's end, evaluate; at a boundary, checkpoint."""
        epoch_end = self.current_iter % self.iter_per_epoch == 0
        save = self.checkpoint_dir is not None and self._is_boundary(self.current_iter)
        if len(self._pending_losses) >= self._loss_sync or epoch_end or save:
            self._read_losses()
        if self._bar is not None:
            self._bar.update(1)
        if epoch_end:
            self.current_epoch += 1
            self._evaluate_epoch()
            now = time.perf_counter()
            self.epoch_seconds.append(round(now - self._epoch_start, 3))
            self._epoch_start = now
        if save:
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
        lr = "" if self.lr_schedule == "constant" else f", lr:{self.optimizer.lr:.3g}"
        self._log(
            f"=== epoch:{self.current_epoch}/{self.epochs}, train loss:{loss:.4f}, "
            f"train acc:{train_acc:.4f}, test acc:{test_acc:.4f}{lr} ==="
        )

    def _final_test_accuracy(self) -> float:
        if self.evaluate_sample_num_per_epoch is None and self.test_acc_list and (
            self.current_iter % self.iter_per_epoch == 0
        ):  # the last epoch's evaluation already scored the whole test set
            return self.test_acc_list[-1]
        self._sync_batchnorm()
        return self.accuracy(self.x_test, self.t_test)

    # -- what is shown ------------------------------------------------------------------

    def _open_progress_bar(self) -> None:
        show = self.progress
        if show is None:
            show = bool(self.verbose) and sys.stderr.isatty()
        if show and self.current_iter < self.max_iter:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.max_iter, initial=self.current_iter, unit="step", leave=False,
                dynamic_ncols=True, desc=type(self.network).__name__,
            )

    def _close_progress_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _log(self, line: str) -> None:
        if not self.verbose:
            return
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    @property
    def history(self) -> dict:
        """The lists and settings of the run, as plain JSON-ready data (``lr``: the base
        rate of a schedule)."""
        with self._at_base_lr():
            optimizer_param = {h: getattr(self.optimizer, h) for h in self.optimizer.hyperparams}
        return {
            "model": type(self.network).__name__,
            "optimizer": type(self.optimizer).__name__,
            "optimizer_param": optimizer_param,
            "lr_schedule": self.lr_schedule,
            "augment": None if self.augment is None else repr(self.augment),
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
            "cuda_graphs": self.cuda_graph_status,
        }

    @property
    def cuda_graph_status(self) -> dict:
        """Whether this process's steps ran as CUDA graphs, and if not (or not all) why:
        ``used``, ``reason`` (None when capture was possible), step counts."""
        if self._device_steps is not None:
            return self._device_steps.status()
        return {"used": False, "reason": graph_fallback_reason(self)}

    # -- checkpoints (the file format: xpnet.checkpoint) ----------------------------------

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
        position = {
            "epochs": self.epochs,
            "mini_batch_size": self.batch_size,
            "train_size": self.train_size,
            "current_iter": self.current_iter,
            "current_epoch": self.current_epoch,
            "checkpoint_every": self.checkpoint_every,
            "seed": self.seed,
            "lr_schedule": self.lr_schedule,
        }
        lists = {"train_loss_list": self.train_loss_list, "train_acc_list": self.train_acc_list,
                 "test_acc_list": self.test_acc_list}
        with self._at_base_lr():
            return checkpoint.save(path, self.network, self.optimizer, position, lists)

    def load_checkpoint(self, path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` for this same setup.

        Everything is read and checked before anything is changed (see
        :func:`xpnet.checkpoint.load`): a truncated or inconsistent file, one from another
        model, optimizer, batch size or training set size, or one trained with other
        hyperparameters or another seed than this run asks for, raises CheckpointError and
        leaves the network, the optimizer and the trainer as they were.
        """
        run = {"mini_batch_size": self.batch_size, "train_size": self.train_size,
               "epochs": self.epochs, "iter_per_epoch": self.iter_per_epoch, "seed": self.seed,
               "lr_schedule": self.lr_schedule}
        with self._at_base_lr():
            restored = checkpoint.load(path, self.network, self.optimizer, run,
                                       self._seed_given)
            restored.apply(self.network, self.optimizer)
        self.train_loss_list = restored.history["train_loss_list"]
        self.train_acc_list = restored.history["train_acc_list"]
        self.test_acc_list = restored.history["test_acc_list"]
        tr = restored.trainer
        self.current_iter = tr["current_iter"]
        self.current_epoch = tr["current_epoch"]
        self.seed = tr["seed"]
        if self.checkpoint_every is None:
            self.checkpoint_every = tr["checkpoint_every"]


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
