"""NCCL through cupy.cuda.nccl, on device buffers: the GPU transport of data-parallel training."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from xpnet import backend
from xpnet.distributed.communicator import (
    Communicator,
    DistributedError,
    _backoff_wait,
)
from xpnet.distributed.mpi import MPICommunicator

__all__ = ["NCCLCommunicator"]


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
