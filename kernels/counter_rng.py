"""Counter-based random numbers: uniform float32 in [0, 1) as a pure function of
``(seed, step, draw, i)``, the same bits on the CPU (NumPy) and on the GPU (Numba CUDA).

A CUDA graph replays the kernels it captured with the arguments it captured, so a random
source whose state lives on the host (or advances with each call) would give the same
Dropout mask on every replay. A counter-based generator has no state: the numbers are a
hash of where they are used. The Trainer keeps ``[seed, step]`` in a device array and moves
``step`` on before each step; a kernel reads it there, so each replay draws fresh numbers,
reproducibly, and a resumed run draws exactly what the interrupted one would have.

The hash is Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy
as 1, 2, 3", SC11; the Random123 library), the generator cuRAND and PyTorch use on GPUs:

* key (2 x 32 bits) = the 64-bit ``seed``, low word first;
* counter (4 x 32 bits) = ``(i // 4, draw, step low word, step high word)``;
* element ``i`` takes word ``i % 4`` of the output, so one Philox call serves four elements;
* a word ``w`` becomes ``(w >> 8) * 2**-24``: 24 random bits, exactly representable in
  float32, uniform on the grid ``{0, 2**-24, ..., 1 - 2**-24}``.

``draw`` numbers the independent draws of one step (first Dropout layer 0, the next 1...).

Two implementations with the same arithmetic (64-bit products of 32-bit words, masked):
``philox4x32_10`` / ``uniform`` on NumPy arrays, vectorised, and the device functions
``philox4x32_10_device`` / ``uniform_device`` for ``@cuda.jit`` kernels.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float32, uint64

__all__ = ["ROUNDS", "philox4x32_10", "uniform", "philox4x32_10_device", "uniform_device",
           "bits_to_uniform_device", "philox_for_group_device"]

ROUNDS = 10

# Philox4x32 constants (Random123): the round multipliers and the Weyl key increments.
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_SHIFT8 = np.uint64(8)
_WORD_SCALE = np.float32(2.0**-24)
_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------
# NumPy twin
# ---------------------------------------------------------------------------


def philox4x32_10(counter, key):
    """Philox4x32-10 of ``counter`` (4 words) under ``key`` (2 words).

    counter: four uint32 values or arrays (broadcastable); key: two uint32 values.
    Returns the four output words as uint64 arrays holding 32-bit values.
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _MASK32 for c in counter)
    k0, k1 = (np.uint64(int(k) & 0xFFFFFFFF) for k in key)
    for _ in range(ROUNDS - 1):
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return _round(c0, c1, c2, c3, k0, k1)


def _round(c0, c1, c2, c3, k0, k1):
    """One Philox round: two 32x32->64-bit products, their halves swapped and xored."""
    p0 = _M0 * c0
    p1 = _M1 * c2
    return ((p1 >> _SHIFT32) ^ c1 ^ k0, p1 & _MASK32, (p0 >> _SHIFT32) ^ c3 ^ k1, p0 & _MASK32)


def uniform(seed, step, draw, n):
    """Uniform float32 in [0, 1) for elements ``i = 0 .. n-1`` of draw ``draw`` at ``step``.

    seed, step: 64-bit integers (taken modulo 2**64, so an int64 seed's bits are used as
    they are); draw: 0 <= draw < 2**32; n: 0 <= n < 2**31. Returns float32 (n,).
    """
    n, draw = int(n), int(draw)
    if not 0 <= n < 2**31:
        raise ValueError(f"uniform: n must lie in [0, 2**31), got {n}")
    if not 0 <= draw < 2**32:
        raise ValueError(f"uniform: draw must lie in [0, 2**32), got {draw}")
    seed, step = int(seed) & _MASK64, int(step) & _MASK64
    groups = np.arange((n + 3) // 4, dtype=np.uint64)
    words = philox4x32_10((groups, draw, step & 0xFFFFFFFF, step >> 32),
                          (seed & 0xFFFFFFFF, seed >> 32))
    bits = np.stack(np.broadcast_arrays(*words), axis=1).reshape(-1)[:n]
    return (bits >> _SHIFT8).astype(np.float32) * _WORD_SCALE


# ---------------------------------------------------------------------------
# Device functions: the same arithmetic, for @cuda.jit kernels
# ---------------------------------------------------------------------------


@cuda.jit(device=True, inline="always")
def _round_device(c0, c1, c2, c3, k0, k1):
    p0 = _M0 * c0
    p1 = _M1 * c2
    return ((p1 >> _SHIFT32) ^ c1 ^ k0, p1 & _MASK32, (p0 >> _SHIFT32) ^ c3 ^ k1, p0 & _MASK32)


@cuda.jit(device=True, inline="always")
def philox4x32_10_device(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint64 operands holding 32-bit words; returns four such words."""
    for _ in range(ROUNDS - 1):
        c0, c1, c2, c3 = _round_device(c0, c1, c2, c3, k0, k1)
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return _round_device(c0, c1, c2, c3, k0, k1)


@cuda.jit(device=True, inline="always")
def bits_to_uniform_device(word):
    """A 32-bit word (uint64) -> float32 in [0, 1) from its top 24 bits, as ``uniform``."""
    return float32(word >> _SHIFT8) * _WORD_SCALE


@cuda.jit(device=True, inline="always")
def philox_for_group_device(seed, step, draw, group):
    """The four words of element group ``group`` (elements 4*group .. 4*group+3);
    seed and step are int64 (their bits are used), draw and group non-negative."""
    key = uint64(seed)
    counter = uint64(step)
    return philox4x32_10_device(uint64(group), uint64(draw), counter & _MASK32,
                                counter >> _SHIFT32, key & _MASK32, key >> _SHIFT32)


@cuda.jit(device=True, inline="always")
def uniform_device(seed, step, draw, i):
    """Element ``i`` of ``uniform(seed, step, draw, n)``, computed on the device."""
    w0, w1, w2, w3 = philox_for_group_device(seed, step, draw, i >> 2)
    lane = i & 3
    if lane == 0:
        word = w0
    elif lane == 1:
        word = w1
    elif lane == 2:
        word = w2
    else:
        word = w3
    return bits_to_uniform_device(word)
