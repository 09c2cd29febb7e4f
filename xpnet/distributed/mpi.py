"""MPI through mpi4py, on host buffers: the CPU transport of data-parallel training."""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np

from xpnet import backend
from xpnet.distributed.communicator import (
    Communicator,
    _backoff_wait,
    _spin_time,
)

__all__ = ["MPICommunicator"]


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
