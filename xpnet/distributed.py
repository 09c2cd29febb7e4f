"""Data-parallel training over several processes (book 8.3.3, "distributed learning").

Each process (a *rank*) holds a full replica of the network. Every step, all ranks draw
the same global mini-batch (same seed), each takes its own contiguous shard of it,
computes gradients on that shard, and the gradients are averaged across the ranks with
one allreduce before the optimizer step -- so every replica applies the same update and
stays identical to the others. Parameters are broadcast from rank 0 at the start.

    $ mpiexec -n 4 xpnet train --distributed ...         # the command line

    >>> comm = get_communicator()          # None (single-process) outside an MPI launcher
    >>> comm.check_consistency(network)    # same xpnet, same parameter names/shapes/dtypes
    >>> comm.broadcast_params(network.params)
    >>> idx = rng.integers(0, N, size=B)   # the same global batch on every rank
    >>> lo, hi = comm.shard_bounds(B)
    >>> grads = network.gradient(x[idx[lo:hi]], t[idx[lo:hi]])
    >>> loss = comm.allreduce_mean(grads, loss=network.last_loss, weight=comm.shard_weight(B))
    >>> optimizer.update(network.params, grads)

The engines are the ones ChainerMN and Horovod use, not a home-made protocol:

- :class:`MPICommunicator` -- MPI through ``mpi4py`` on NumPy buffers (CuPy arrays are
  staged through the host);
- :class:`NCCLCommunicator` -- NCCL through ``cupy.cuda.nccl`` on GPU buffers, with MPI
  only to hand the NCCL id from rank 0 to the others (a world of one needs no MPI).

Design decisions, each visible in the code below:

- **One fused buffer per step.** The gradients (and the loss) are packed into a single
  contiguous buffer and reduced with one collective call, not one call per parameter:
  a network with 14 parameter arrays pays one latency, not 14. After the call the
  gradient dict holds views of that buffer (valid until the next ``allreduce_mean``).
  float16 parameters are reduced in float32 (MPI has no half type, and a sum of halves
  loses digits).
- **Exactness.** With equal shards the mean is ``(g_0 + ... + g_{n-1}) / n``; for two
  ranks that is bit-for-bit the sum of the two halves of the one-process batch
  gradient, so 2 processes with batch B/2 reproduce 1 process with batch B (to rounding
  of the per-shard sums, about 1e-15 relative in float64). Uneven shards (B not a
  multiple of the world size) are weighted by their size (:meth:`shard_weight`).
- **BatchNormalization: per-replica statistics.** In training mode each replica
  normalises with the mean and variance of its own shard (as PyTorch's
  DistributedDataParallel does without SyncBatchNorm): no extra communication per
  layer per step. Each replica therefore also updates its own running statistics;
  :meth:`Communicator.sync_batchnorm` averages them over the replicas (running_mean: the
  mean of the replicas' running means; running_var: the mean of their running
  variances), and the trainer calls it before every evaluation and checkpoint, so the
  saved and evaluated statistics are the replicas' average and identical on every rank.
  (With BatchNorm, B/2 per replica is therefore *not* the same computation as B in one
  process: the batch statistics come from B/2 samples.)
- **Random streams.** The ranks share one seed so that they draw the same global
  mini-batches; Dropout draws from that same stream, so the k-th sample of every shard
  gets the same mask (the masks are still independent across the samples of a shard and
  across steps). Runs with Dropout are therefore reproducible for a given world size, but
  not equal to a one-process run -- nor are runs with BatchNorm (above).
- **Faults never hang.** Every collective is non-blocking (``Iallreduce``, ``Ibcast``,
  ``Ibarrier`` ...) and waited for with a deadline (``timeout`` seconds, default
  ``XPNET_DISTRIBUTED_TIMEOUT`` or 300). When it passes, :class:`DistributedError` names
  the rank(s) that did not take part -- for peers on the same host it checks whether
  their process died, is stopped, or is alive but silent -- and the process aborts the
  MPI job when it exits (``MPI_Abort``), since ``MPI_Finalize`` would wait for the dead
  peer forever. MPI launchers (MPICH's Hydra, Open MPI) usually stop the whole job
  themselves when one process is killed; the deadline covers what they cannot see: a
  hung or stopped process, a lost network, or a launcher told not to clean up.
- **Consistency at start.** :meth:`Communicator.check_consistency` compares the xpnet
  version, the model class and every parameter's name, shape and dtype across ranks --
  and, from the Trainer, the optimizer and its hyperparameters, the batch size, the
  epochs, the training-set size and the seed -- and raises one clear error naming the
  mismatch, on every rank, before any training (replicas given another learning rate
  would otherwise diverge silently, another batch size hang until the deadline).
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time

import numpy as np

from xpnet import backend

__all__ = [
    "Communicator",
    "DistributedError",
    "MPICommunicator",
    "NCCLCommunicator",
    "get_communicator",
    "launched_by_mpi",
]

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
# Choosing a communicator
# ---------------------------------------------------------------------------


def get_communicator(device: str = "cpu", *, timeout: float | None = None, verbose=True):
    """The communicator of this MPI job, or None for single-process training.

    Started by an MPI launcher with more than one process: an :class:`MPICommunicator`
    (``device='cpu'``) or an :class:`NCCLCommunicator` (``device='gpu'``; each process
    takes GPU ``local rank % GPU count``). Otherwise -- no launcher, ``mpi4py`` missing,
    or a world of one -- None, after printing (when ``verbose``) one line to stderr
    saying that training runs as a single process, and why.
    """
    reason = None
    if not launched_by_mpi():
        reason = "not started by an MPI launcher such as mpiexec"
    else:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            reason = (
                f"mpi4py is not installed ({exc}); install it with "
                "`pip install -e '.[distributed]'` in the xpnet checkout"
            )
        else:
            if MPI.COMM_WORLD.Get_size() == 1:
                reason = "the MPI job has one process"
    if reason is not None:
        if verbose:
            print(f"xpnet: running as single-process training ({reason})", file=sys.stderr)
        return None
    if backend.check_device(device) == "gpu":
        return NCCLCommunicator(MPI.COMM_WORLD, timeout=timeout)
    return MPICommunicator(MPI.COMM_WORLD, timeout=timeout)


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


def _abort_at_exit(comm: Communicator) -> None:
    """After a failure, MPI_Finalize would wait for the missing peer forever: abort."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed stream must not keep us from aborting
            pass
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


# ---------------------------------------------------------------------------
# MPI (mpi4py), on host buffers
# ---------------------------------------------------------------------------


class MPICommunicator(Communicator):
    """Communicator over an ``mpi4py`` communicator (default ``MPI.COMM_WORLD``).

    Reductions run on NumPy buffers; CuPy arrays are copied to the host and back (use
    :class:`NCCLCommunicator` on GPUs).
    """

    def __init__(self, comm=None, *, timeout: float | None = None):
        from mpi4py import MPI

        self._MPI = MPI
        self._comm = MPI.COMM_WORLD if comm is None else comm
        super().__init__(self._comm.Get_rank(), self._comm.Get_size(), timeout)
        # where every rank runs, so a fault message can say which one went missing
        peers = self.allgather_object([socket.gethostname(), os.getpid()], "the start-up")
        self._set_peers([tuple(p) for p in peers])

    def _wait(self, request, what: str, nbytes: int = 0) -> None:
        start = time.monotonic()
        if not _backoff_wait(request.Test, start + self.timeout, _spin_time(nbytes)):
            raise self._timeout_error(what, time.monotonic() - start)

    def _allreduce_sum_(self, buf, what):
        host = buf if isinstance(buf, np.ndarray) else backend.as_numpy(buf)
        self._wait(self._comm.Iallreduce(self._MPI.IN_PLACE, host), what, host.nbytes)
        if host is not buf:
            buf[...] = backend.get_array_module(buf).asarray(host)

    def _broadcast_(self, buf, root, what):
        host = buf if isinstance(buf, np.ndarray) else backend.as_numpy(buf)
        self._wait(self._comm.Ibcast(host, root=root), what, host.nbytes)
        if host is not buf:
            buf[...] = backend.get_array_module(buf).asarray(host)

    def barrier(self, what="a barrier"):
        self._check_alive()
        self._wait(self._comm.Ibarrier(), what)

    def allgather_object(self, obj, what="an exchange"):
        self._check_alive()
        data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
        sizes = np.zeros(self.size, dtype=np.int64)
        self._wait(self._comm.Iallgather(np.array([data.size], np.int64), sizes), what)
        counts = [int(s) for s in sizes]
        displs = [0, *np.cumsum(counts)[:-1].tolist()]
        out = np.empty(sum(counts), dtype=np.uint8)
        self._wait(
            self._comm.Iallgatherv(data, [out, counts, displs, self._MPI.BYTE]), what
        )
        return [json.loads(out[d : d + c].tobytes()) for d, c in zip(displs, counts)]

    def bcast_object(self, obj, root=0, what="a broadcast"):
        self._check_alive()
        data = json.dumps(obj).encode() if self.rank == root else b""
        size = np.array([len(data)], dtype=np.int64)
        self._wait(self._comm.Ibcast(size, root=root), what)
        buf = np.empty(int(size[0]), dtype=np.uint8)
        if self.rank == root:
            buf[:] = np.frombuffer(data, dtype=np.uint8)
        self._wait(self._comm.Ibcast(buf, root=root), what)
        return json.loads(buf.tobytes())

    def abort(self, code=1):
        self._comm.Abort(code)


# ---------------------------------------------------------------------------
# NCCL (cupy.cuda.nccl), on device buffers
# ---------------------------------------------------------------------------


class NCCLCommunicator(Communicator):
    """Communicator over NCCL on CuPy arrays, one GPU per process.

    ``mpi_comm`` (an mpi4py communicator) only carries the NCCL unique id from rank 0 to
    the others and the small start-up exchanges; without it the world is this one
    process (rank 0 of 1), which exercises the whole NCCL path on a single GPU.

    The collectives are queued on CuPy's current stream, so they run in order with the
    computation and the host does not wait for them. The deadline is checked one step
    late: before launching a collective, the host waits (with the deadline) for the
    previous one to have finished on the GPU.
    """

    def __init__(self, mpi_comm=None, *, timeout: float | None = None):
        cp = backend.require_gpu()
        try:
            from cupy.cuda import nccl
        except ImportError as exc:  # a CuPy built without NCCL
            raise DistributedError(
                f"NCCL is not available to CuPy ({exc}); install NCCL "
                "(`pip install nvidia-nccl-cu12`) or train on the CPU over MPI"
            ) from None
        if not getattr(nccl, "available", True):
            raise DistributedError(
                "this CuPy build has no NCCL support; install NCCL "
                "(`pip install nvidia-nccl-cu12`) or train on the CPU over MPI"
            )
        self._cp = cp
        self._nccl = nccl
        self._mpi = mpi_comm
        # the small host-side exchanges (NCCL id, consistency check) go over MPI
        self._host = None if mpi_comm is None else MPICommunicator(mpi_comm, timeout=timeout)
        rank, size = (0, 1) if mpi_comm is None else (mpi_comm.Get_rank(), mpi_comm.Get_size())
        super().__init__(rank, size, timeout)
        if self._host is not None:
            self._set_peers(self._host._peers)
        self._types = {
            np.dtype(np.float16): nccl.NCCL_FLOAT16,
            np.dtype(np.float32): nccl.NCCL_FLOAT32,
            np.dtype(np.float64): nccl.NCCL_FLOAT64,
        }
        if mpi_comm is not None:
            # One GPU per process: the processes on one host take GPUs 0, 1, ... in turn.
            from mpi4py import MPI

            local = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
            count = cp.cuda.runtime.getDeviceCount()
            cp.cuda.Device(local.Get_rank() % count).use()
            local.Free()
        uid = nccl.get_unique_id() if rank == 0 else None
        if mpi_comm is not None:
            uid = tuple(self.bcast_object(list(uid) if uid else None, 0, "the NCCL id"))
        self._comm = nccl.NcclCommunicator(size, uid, rank)
        self._aborted = False
        self._pending = None  # event recorded after the last collective
        self._pending_what = ""

    def _stream(self):
        return self._cp.cuda.get_current_stream()

    def _wait_pending(self) -> None:
        """Wait (at most ``timeout``) for the last collective to finish on the GPU."""
        event, self._pending = self._pending, None
        if event is None:
            return
        start = time.monotonic()

        def done():
            try:
                self._comm.check_async_error()
            except getattr(self._nccl, "NcclError", RuntimeError) as exc:
                self._mark_failed()
                raise DistributedError(
                    f"NCCL reported an error in {self._pending_what}: {exc}; training stops "
                    "here (the job is aborted)"
                ) from None
            return event.done

        if not _backoff_wait(done, start + self.timeout):
            self._aborted = True
            self._comm.abort()  # frees the GPU from the stuck kernel
            raise self._timeout_error(self._pending_what, time.monotonic() - start)

    def _launch(self, call, what: str, *, wait: bool) -> None:
        self._wait_pending()
        stream = self._stream()
        call(stream.ptr)
        self._pending = stream.record()
        self._pending_what = what
        if wait:
            self._wait_pending()

    def _dtype(self, buf):
        try:
            return self._types[np.dtype(buf.dtype)]
        except KeyError:
            raise TypeError(f"NCCL cannot reduce {buf.dtype} buffers") from None

    def _device_buffer(self, buf):
        return buf if backend.is_gpu_array(buf) else self._cp.asarray(buf)

    def _allreduce_sum_(self, buf, what):
        dev = self._device_buffer(buf)
        nccl = self._nccl

        def call(stream_ptr):
            self._comm.allReduce(
                dev.data.ptr, dev.data.ptr, dev.size, self._dtype(dev), nccl.NCCL_SUM, stream_ptr
            )

        # host buffers (small sums) are read right after: wait for them
        self._launch(call, what, wait=dev is not buf)
        if dev is not buf:
            buf[...] = self._cp.asnumpy(dev)

    def _broadcast_(self, buf, root, what):
        dev = self._device_buffer(buf)

        def call(stream_ptr):
            self._comm.bcast(dev.data.ptr, dev.size, self._dtype(dev), root, stream_ptr)

        self._launch(call, what, wait=True)
        if dev is not buf:
            buf[...] = self._cp.asnumpy(dev)

    def barrier(self, what="a barrier"):
        self._check_alive()
        one = self._cp.zeros(1, dtype=np.float32)
        self._allreduce_sum_(one, what)
        self._wait_pending()

    def allgather_object(self, obj, what="an exchange"):
        self._check_alive()
        if self._host is None:
            return [json.loads(json.dumps(obj))]
        return self._host.allgather_object(obj, what)

    def bcast_object(self, obj, root=0, what="a broadcast"):
        self._check_alive()
        if self._host is None:
            return json.loads(json.dumps(obj))
        return self._host.bcast_object(obj, root, what)

    def _set_peers(self, peers):
        super()._set_peers(peers)
        if self._host is not None:
            self._host._set_peers(peers)

    def abort(self, code=1):
        try:
            if not self._aborted:  # aborting an NCCL communicator twice is undefined
                self._aborted = True
                self._comm.abort()
        finally:
            if self._mpi is not None:
                self._mpi.Abort(code)
            else:
                os._exit(code)
