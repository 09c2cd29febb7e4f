"""Data-parallel training over several processes (book 8.3.3, "distributed learning").

Each process (a *rank*) holds a full replica of the network. Every step all ranks draw the
same global mini-batch (same seed), each computes the gradients of its own contiguous shard,
and one allreduce averages them before the optimizer step, so every replica applies the
same update and stays identical. Parameters are broadcast from rank 0 at the start.

    $ mpiexec -n 4 xpnet train --distributed ...         # the command line

    >>> comm = get_communicator()          # None (single-process) outside an MPI launcher
    >>> comm.check_consistency(network)    # same xpnet, same parameter names/shapes/dtypes
    >>> comm.broadcast_params(network.params)
    >>> idx = rng.integers(0, N, size=B)   # the same global batch on every rank
    >>> lo, hi = comm.shard_bounds(B)
    >>> grads = network.gradient(x[idx[lo:hi]], t[idx[lo:hi]])
    >>> loss = comm.allreduce_mean(grads, loss=network.last_loss, weight=comm.shard_weight(B))
    >>> optimizer.update(network.params, grads)

One module per job:

- ``communicator``: the contract (``Communicator``: five transport primitives, and on them
  the fused-buffer averaging, sharding, consistency check and BatchNorm statistics sync),
  ``DistributedError``, the deadline (``XPNET_DISTRIBUTED_TIMEOUT``);
- ``mpi``: ``MPICommunicator``, MPI through mpi4py on host buffers (the CPU);
- ``nccl``: ``NCCLCommunicator``, NCCL through ``cupy.cuda.nccl`` on GPU buffers, MPI only
  handing out the NCCL id;
- here: ``get_communicator``, which picks one, or None for a world of one process.

Why it is built this way (docs/distributed.md has the details and the measurements): one
fused buffer and one collective per step, not one per parameter; equal shards reproduce
the one-process gradient to rounding; BatchNorm normalises per replica and its running
statistics are averaged before every evaluation and checkpoint; every collective waits
with a deadline, so a dead or silent rank is a ``DistributedError`` naming it, never a hang.
"""

from __future__ import annotations

import sys

from xpnet import backend
from xpnet.distributed.communicator import (  # noqa: F401 - the settings re-exported too
    _LAUNCHER_VARS,
    DEFAULT_TIMEOUT,
    TIMEOUT_ENV,
    Communicator,
    DistributedError,
    default_timeout,
    launched_by_mpi,
)
from xpnet.distributed.mpi import MPICommunicator
from xpnet.distributed.nccl import NCCLCommunicator

__all__ = [
    "Communicator",
    "DistributedError",
    "MPICommunicator",
    "NCCLCommunicator",
    "get_communicator",
    "launched_by_mpi",
]


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
