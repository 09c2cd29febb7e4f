"""A data-parallel world in one process, for tests that need a communicator but no MPI."""

from __future__ import annotations

import json

from xpnet.distributed import Communicator


class Replicas(Communicator):
    """Rank ``rank`` of a world of ``size`` identical replicas: every rank holds what this one
    holds, so a sum over the ranks is ``size`` times the buffer and a broadcast from rank 0
    delivers this rank's own values. A rank other than 0 therefore trains on its own shard
    exactly as it would in the real world. ``calls`` records each fused collective as
    (kind, elements, dtype, what)."""

    def __init__(self, rank: int = 0, size: int = 2, timeout: float = 5):
        super().__init__(rank, size, timeout=timeout)
        self.calls = []

    def _allreduce_sum_(self, buf, what):
        self.calls.append(("allreduce", buf.size, buf.dtype, what))
        buf *= self.size

    def _broadcast_(self, buf, root, what):
        self.calls.append(("broadcast", buf.size, buf.dtype, what))

    def broadcast_params(self, params):
        if not self.is_root and params:  # rank 0's values are this rank's: pack them here
            layout, buf = self._fused(params)
            self._pack(layout, buf, params)
        return super().broadcast_params(params)

    def barrier(self, what="a barrier"):
        pass

    def allgather_object(self, obj, what="an exchange"):
        return [json.loads(json.dumps(obj))] * self.size

    def bcast_object(self, obj, root=0, what="a broadcast"):
        return obj
