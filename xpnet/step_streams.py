"""A training run's random streams, one per step, a function of ``(seed, step)`` alone.

Every draw of a training step -- its mini-batch on the host, Dropout's masks on the
network's device (through :func:`xpnet.backend.rng_scope`) -- comes from the step's own
streams, never from a process-global state. So a run with checkpoints equals one without,
a run resumed at step k draws exactly what the uninterrupted run drew from step k on (no
generator state is saved), and trainers in several threads do not disturb each other.
"""

from __future__ import annotations

import numpy as np

__all__ = ["StepStreams"]


class StepStreams:
    """``streams(xp) -> Generator`` for the current step; :meth:`start` moves to a step.

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

    def start(self, step: int) -> StepStreams:
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
