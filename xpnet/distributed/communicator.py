"""The communicator contract: what data-parallel training needs from a group of processes.

``Communicator`` is the abstract contract: a transport supplies five primitives (an in-place
sum allreduce and a broadcast of one flat buffer, a barrier, JSON-object allgather and
broadcast), each bounded by ``timeout`` seconds; everything built on them - packing the
gradients into one fused buffer, averaging, sharding a batch, the consistency check, the
BatchNorm statistics - is here, shared by every transport. The transports are
``xpnet.distributed.mpi`` and ``xpnet.distributed.nccl``; ``launched_by_mpi`` tells whether
there is a world of more than one process at all (see ``get_communicator``).
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import time

import numpy as np

from xpnet import backend

__all__ = ["Communicator", "DistributedError", "default_timeout", "launched_by_mpi"]

TIMEOUT_ENV = "XPNET_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT = 300.0

# Environment variables MPI launchers set in the processes they start: MPICH/Intel MPI
# (Hydra: PMI_*), Open MPI (OMPI_*, PMIX_*), MVAPICH (MV2_*), Slurm's srun with PMI.
_LAUNCHER_VARS = (
    "PMI_SIZE",
    "PMI_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "PMIX_RANK",
    "MV2_COMM_WORLD_SIZE",
    "MPI_LOCALNRANKS",
)

# BatchNormalization's running statistics: not parameters, but part of the model.


class DistributedError(RuntimeError):
    """Distributed training cannot go on: ranks disagree, or a rank stopped answering."""


def default_timeout() -> float:
    """``XPNET_DISTRIBUTED_TIMEOUT`` (seconds) if set, else 300."""
    env = os.environ.get(TIMEOUT_ENV)
    if not env:
        return DEFAULT_TIMEOUT
    try:
        value = float(env)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {env!r}")
    return value


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher (mpiexec, mpirun, srun)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


# ---------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------


class _Layout:
    """Where each array of a dict lives in one flat buffer: ``(key, shape, offset, size)``,
    in sorted key order, so every rank packs the same way whatever its dict order."""

    def __init__(self, arrays: dict, extra: int = 0):
        self.entries = []
        offset = 0
        for key in sorted(arrays):
            a = arrays[key]
            size = int(a.size)
            self.entries.append((key, tuple(a.shape), offset, size))
            offset += size
        self.size = offset  # the arrays; ``extra`` slots follow them
        self.extra = extra

    @staticmethod
    def signature(arrays: dict, extra: int = 0) -> tuple:
        return tuple((k, tuple(arrays[k].shape)) for k in sorted(arrays)) + (extra,)


def _reduce_dtype(dtype) -> np.dtype:
    """The dtype a buffer is reduced in: float32 or float64 (float16 is summed in float32)."""
    return np.promote_types(np.dtype(dtype), np.float32)


def _process_state(pid: int) -> str:
    """``'dead'``, ``'stopped'`` or ``'alive'`` for a process on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "alive"
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "alive"
    if state in "ZX":  # a zombie has died; its parent has not collected it yet
        return "dead"
    if state in "Tt":
        return "stopped"
    return "alive"


class Communicator:
    """What data-parallel training needs from a group of processes.

    Subclasses supply five primitives -- an in-place sum allreduce and broadcast of one
    flat buffer, a barrier, and JSON-object allgather/broadcast -- each bounded by
    ``timeout``; everything else (packing, averaging, consistency, sharding, BatchNorm
    statistics) is here, shared.
    """

    def __init__(self, rank: int, size: int, timeout: float | None = None):
        self.rank = int(rank)
        self.size = int(size)
        self.timeout = default_timeout() if timeout is None else float(timeout)
        if not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._buffers: dict = {}  # (signature, dtype, xp name) -> (layout, flat buffer)
        self._peers: list | None = None  # [(host, pid)] per rank, for fault messages
        self._steps = 0
        self._failed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"

    @property
    def is_root(self) -> bool:
        """Whether this is rank 0, the one that prints, writes checkpoints and history."""
        return self.rank == 0

    # -- primitives (subclasses) ----------------------------------------------------------

    def _allreduce_sum_(self, buf, what: str) -> None:
        """Replace ``buf`` (flat, contiguous) by its sum over all ranks."""
        raise NotImplementedError

    def _broadcast_(self, buf, root: int, what: str) -> None:
        """Replace ``buf`` on every rank by rank ``root``'s."""
        raise NotImplementedError

    def barrier(self, what: str = "a barrier") -> None:
        """Wait until every rank has arrived (at most ``timeout`` seconds)."""
        raise NotImplementedError

    def allgather_object(self, obj, what: str = "an exchange") -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank; obj must be JSON data."""
        raise NotImplementedError

    def bcast_object(self, obj, root: int = 0, what: str = "a broadcast"):
        """Rank ``root``'s obj (JSON data) on every rank."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every process of the job now (after a failure)."""
        raise NotImplementedError

    # -- faults ---------------------------------------------------------------------------

    def _mark_failed(self) -> None:
        """No collective can be trusted any more: refuse new ones, and abort the job at exit
        (MPI_Finalize would wait for the missing peer forever)."""
        if not self._failed:
            self._failed = True
            atexit.register(_abort_at_exit, self)

    def _timeout_error(self, what: str, waited: float) -> DistributedError:
        """The error for a collective that did not complete: which peers are missing."""
        self._mark_failed()
        here = socket.gethostname()
        dead, stopped, silent, remote = [], [], [], []
        for r, (host, pid) in enumerate(self._peers or []):
            if r == self.rank:
                continue
            if host != here:
                remote.append(f"rank {r} (pid {pid} on {host})")
                continue
            state = _process_state(pid)
            label = f"rank {r} (pid {pid} on {host})"
            {"dead": dead, "stopped": stopped, "alive": silent}[state].append(label)
        parts = []
        if dead:
            parts.append(f"{', '.join(dead)} died")
        if stopped:
            parts.append(f"{', '.join(stopped)} is stopped")
        if silent:
            parts.append(f"{', '.join(silent)} is alive but did not take part")
        if remote:
            parts.append(f"{', '.join(remote)} on another host could not be checked")
        who = "; ".join(parts) if parts else "the missing rank could not be identified"
        return DistributedError(
            f"rank {self.rank} of {self.size} waited {waited:.0f} s for {what} and not every "
            f"rank took part: {who}. Training stops here (the job is aborted); the last "
            f"checkpoint written, if any, is intact -- start the job again with --resume "
            f"(resume=True) to continue from it. If steps are legitimately slower than this, raise "
            f"{TIMEOUT_ENV} (now {self.timeout:g} s)."
        )

    def _set_peers(self, peers: list) -> None:
        self._peers = list(peers)

    def _check_alive(self) -> None:
        if self._failed:
            raise DistributedError(
                "this communicator has failed (a rank stopped answering); start the job again"
            )

    # -- packing --------------------------------------------------------------------------

    def _fused(self, arrays: dict, extra: int = 0):
        """The (cached) layout and flat buffer for ``arrays`` plus ``extra`` scalar slots."""
        first = next(iter(arrays.values()))
        xp = backend.get_array_module(*arrays.values())
        dtype = _reduce_dtype(first.dtype)
        for key, a in arrays.items():
            if np.dtype(a.dtype) != np.dtype(first.dtype):
                raise TypeError(
                    f"all arrays must share one dtype to be reduced together; {key} is "
                    f"{a.dtype}, others are {first.dtype}"
                )
        cache_key = (_Layout.signature(arrays, extra), dtype.str, xp.__name__)
        entry = self._buffers.get(cache_key)
        if entry is None:
            layout = _Layout(arrays, extra)
            entry = (layout, xp.empty(layout.size + extra, dtype=dtype))
            self._buffers[cache_key] = entry
        return entry

    @staticmethod
    def _pack(layout: _Layout, buf, arrays: dict) -> None:
        for key, _shape, offset, size in layout.entries:
            buf[offset : offset + size] = arrays[key].reshape(-1)

    # -- what training calls --------------------------------------------------------------

    def broadcast_params(self, params: dict) -> dict:
        """Overwrite every rank's ``params`` with rank 0's, in place (layers and optimizers
        holding the arrays see the values). One fused broadcast. Returns ``params``."""
        self._check_alive()
        if not params:
            return params
        layout, buf = self._fused(params)
        if self.is_root:
            self._pack(layout, buf, params)
        self._broadcast_(buf, 0, "the parameter broadcast from rank 0")
        for key, shape, offset, size in layout.entries:
            params[key][...] = buf[offset : offset + size].reshape(shape)
        return params

    def allreduce_mean(self, grads: dict, *, loss=None, weight: float = 1.0, step=None):
        """Average ``grads`` over the ranks with one allreduce of one fused buffer.

        grads: ``{key: array}`` as returned by ``network.gradient`` (same keys, shapes and
            dtype on every rank). On return each value is replaced by a view of the
            reduced buffer (valid until the next call): the mean over ranks of
            ``weight * grads``.
        loss: optionally this rank's loss (a 0-d array or number); it travels in the same
            buffer, and the mean over ranks of ``weight * loss`` is returned (0-d, on the
            gradients' device). Without it, returns None.
        weight: this rank's share of the global batch relative to an even split,
            :meth:`shard_weight` -- 1.0 when the batch divides evenly.
        step: the training step, named in the error if a rank goes missing.
        """
        self._check_alive()
        if not grads:
            raise ValueError("allreduce_mean got no gradients (an empty dict)")
        extra = 0 if loss is None else 1
        layout, buf = self._fused(grads, extra)
        dtype = next(iter(grads.values())).dtype
        self._pack(layout, buf, grads)
        if loss is not None:
            buf[layout.size] = loss  # stays on the device: no host round trip
        if weight != 1.0:
            buf *= weight
        self._steps += 1
        label = f"step {step}" if step is not None else f"call {self._steps}"
        self._allreduce_sum_(buf, f"the gradient allreduce ({label})")
        buf *= 1.0 / self.size  # exact for a power-of-two world
        for key, shape, offset, size in layout.entries:
            view = buf[offset : offset + size].reshape(shape)
            # float16 gradients were summed in float32: hand them back in their own dtype
            grads[key] = view if view.dtype == dtype else view.astype(dtype)
        return None if loss is None else buf[layout.size].copy()

    def allreduce_sum(self, values, what: str = "a sum over ranks") -> np.ndarray:
        """Host float64 sums over ranks of ``values`` (a number or 1-D array of a few,
        e.g. counts of correct predictions of each rank's evaluation shard)."""
        self._check_alive()
        buf = np.array(values, dtype=np.float64).reshape(-1)
        self._allreduce_sum_(buf, what)
        return buf

    def shard_bounds(self, batch_size: int) -> tuple[int, int]:
        """``(lo, hi)``: this rank's contiguous share ``[lo, hi)`` of a global batch.

        The shares of ranks 0..size-1 follow each other and cover the batch; they differ
        by at most one sample.
        """
        n = int(batch_size)
        if n < self.size:
            raise ValueError(
                f"a mini-batch of {n} samples cannot be split over {self.size} processes; "
                f"use a batch size of at least {self.size} (ideally a multiple of it)"
            )
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def shard(self, indices):
        """This rank's contiguous share of the global batch ``indices`` (same on all ranks)."""
        lo, hi = self.shard_bounds(len(indices))
        return indices[lo:hi]

    def shard_weight(self, batch_size: int) -> float:
        """This rank's share relative to an even split (``n_rank * size / B``): weighting
        by it makes the average over ranks the gradient of the whole batch."""
        lo, hi = self.shard_bounds(batch_size)
        return 1.0 if batch_size % self.size == 0 else (hi - lo) * self.size / batch_size

    # -- consistency ----------------------------------------------------------------------

    def check_consistency(self, model, settings: dict | None = None) -> None:
        """Raise DistributedError on every rank unless all ranks run the same xpnet version
        and hold a model of the same class with the same parameter names, shapes and
        dtypes, and were given the same ``settings`` (JSON-ready ``{name: value}``, e.g.
        the Trainer's optimizer, hyperparameters, batch size, epochs, training-set size
        and seed). Call it once, before training (it also learns where the peers run)."""
        import xpnet

        params = model.params
        mine = {
            "xpnet": xpnet.__version__,
            "model": type(model).__name__,
            "params": {k: [list(v.shape), str(v.dtype)] for k, v in params.items()},
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "settings": _flat_settings(settings or {}),
        }
        everyone = self.allgather_object(mine, "the start-up consistency check")
        self._set_peers([(d["host"], d["pid"]) for d in everyone])
        problems = []
        ref = everyone[0]
        for r, d in enumerate(everyone[1:], start=1):
            if d["xpnet"] != ref["xpnet"]:
                problems.append(f"rank {r} runs xpnet {d['xpnet']}, rank 0 xpnet {ref['xpnet']}")
            if d["model"] != ref["model"]:
                problems.append(f"rank {r} has a {d['model']}, rank 0 a {ref['model']}")
            for key in sorted(set(ref["params"]) | set(d["params"])):
                a, b = ref["params"].get(key), d["params"].get(key)
                if a == b:
                    continue
                if a is None or b is None:
                    has, lacks = (r, 0) if a is None else (0, r)
                    problems.append(f"rank {has} has a parameter {key} that rank {lacks} lacks")
                else:
                    problems.append(
                        f"{key} is {tuple(a[0])} {a[1]} on rank 0 but {tuple(b[0])} {b[1]} "
                        f"on rank {r}"
                    )
            for key in sorted(set(ref["settings"]) | set(d["settings"])):
                a, b = ref["settings"].get(key), d["settings"].get(key)
                if a != b:
                    problems.append(f"{key} is {a} on rank 0 but {b} on rank {r}")
        if problems:
            raise DistributedError(
                "the processes of this job disagree, so their gradients cannot be "
                "averaged: " + "; ".join(problems) + ". Start every process with the same "
                "xpnet, the same model options and the same training settings."
            )

    # -- BatchNormalization statistics ----------------------------------------------------

    def sync_batchnorm(self, model) -> int:
        """Average BatchNormalization's running statistics over the ranks, in place, so
        every replica holds the same ones (the replicas' mean running mean and mean
        running variance). Returns the number of arrays averaged (0: no BatchNorm)."""
        self._check_alive()
        from xpnet.models import named_buffers

        stats = named_buffers(model)  # {'BatchNorm1.running_mean': array, ...} set so far
        shapes = {k: list(v.shape) for k, v in stats.items()}
        everyone = self.allgather_object(shapes, "the BatchNorm statistics check")
        if any(d != everyone[0] for d in everyone):
            raise DistributedError(
                "the ranks hold different BatchNorm running statistics "
                f"({', '.join(f'rank {r}: {sorted(d)}' for r, d in enumerate(everyone))}); "
                "every replica must run the same forward passes"
            )
        if not stats:
            return 0
        arrays = {k: v for k, v in stats.items()}
        layout, buf = self._fused(arrays)
        self._pack(layout, buf, arrays)
        self._allreduce_sum_(buf, "the BatchNorm statistics allreduce")
        buf *= 1.0 / self.size
        for key, shape, offset, size in layout.entries:
            stats[key][...] = buf[offset : offset + size].reshape(shape)
        return len(stats)


def _flat_settings(settings: dict) -> dict:
    """``{'optimizer_param': {'lr': 0.1}}`` -> ``{'optimizer_param.lr': 0.1}``: a mismatch
    is then named by the one value that differs."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


# How long the failed rank waits, after flushing, before it aborts the job. The launcher
# forwards a rank's output through a proxy that also takes the abort request; given the
# abort first, it can end the job before the last lines (the error that names the missing
# rank) reach the user. Paid once, only on the failure path.
ABORT_GRACE_SECONDS = 0.25


def _abort_at_exit(comm: Communicator) -> None:
    """After a failure, MPI_Finalize would wait for the missing peer forever: flush, give
    the launcher a moment to forward the output, abort."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed stream must not keep us from aborting
            pass
    time.sleep(ABORT_GRACE_SECONDS)
    comm.abort(1)


def _backoff_wait(done, deadline: float, spin: float = 0.005) -> bool:
    """Call ``done()`` until it is true (return True) or ``deadline`` passes (False).

    Spins for the first ``spin`` seconds (a collective whose peers have all arrived
    completes fast, and MPI moves data only inside these calls), then sleeps between
    polls, growing to 1 ms, so a rank waiting for a slow peer leaves the CPU to it.
    """
    start = time.monotonic()
    delay = 0.0
    while not done():
        now = time.monotonic()
        if now > deadline:
            return False
        if now - start > spin:
            time.sleep(delay)
            delay = min(max(delay * 2, 20e-6), 1e-3)
    return True


def _spin_time(nbytes: int) -> float:
    """How long to poll without sleeping: 5 ms, plus the time the buffer takes to move at
    a modest 0.5 GB/s, so a large reduction is not slowed by sleeps between its chunks."""
    return 0.005 + nbytes / 0.5e9
