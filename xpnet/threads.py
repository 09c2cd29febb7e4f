"""How many CPU threads xpnet uses: Numba's kernels and the BLAS behind ``np.dot``, together.

A training step alternates between Numba kernels (im2col, col2im, pooling) and BLAS
products; they never run at the same time, so both may use every core -- but they must
not use *more* than the cores there are (a container often sees the host's CPU count),
and a user who asks for 2 threads means 2 for both. ``set_num_threads(n)`` sets the two
pools at once:

    >>> from xpnet.threads import set_num_threads, get_num_threads
    >>> set_num_threads(2)
    >>> get_num_threads()
    2

The default is the number of cores this process may run on (its CPU affinity), or the
``XPNET_NUM_THREADS`` environment variable when set.
"""

from __future__ import annotations

import contextlib
import os
import threading

__all__ = ["default_num_threads", "get_num_threads", "num_threads", "set_num_threads"]

_lock = threading.Lock()


def default_num_threads() -> int:
    """``XPNET_NUM_THREADS`` if set, else the number of CPUs in this process's affinity mask."""
    env = os.environ.get("XPNET_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"XPNET_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"XPNET_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def _max_numba_threads() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def _checked(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    limit = _max_numba_threads()
    if n > limit:
        raise ValueError(
            f"cannot use {n} threads: Numba's pool was started with {limit} "
            "(set the NUMBA_NUM_THREADS environment variable before starting Python to raise it)"
        )
    return n


def set_num_threads(n: int | None = None) -> int:
    """Use ``n`` threads (default: ``default_num_threads()``) for Numba kernels and BLAS.

    Numba cannot grow its pool past the size it started with (``NUMBA_NUM_THREADS``,
    by default the CPU count); asking for more is an error that says so. Returns ``n``.
    """
    import numba
    from threadpoolctl import threadpool_limits

    n = min(default_num_threads(), _max_numba_threads()) if n is None else _checked(n)
    with _lock:
        numba.set_num_threads(n)
        # without a `with`, threadpool_limits keeps the limit for the rest of the process
        threadpool_limits(limits=n, user_api="blas")
    return n


def get_num_threads() -> int:
    """The number of threads Numba's kernels use now (BLAS is kept at the same number)."""
    import numba

    return int(numba.get_num_threads())


@contextlib.contextmanager
def num_threads(n: int):
    """Use ``n`` threads inside a ``with`` block, then go back to the previous setting."""
    import numba
    from threadpoolctl import threadpool_limits

    before = get_num_threads()
    with threadpool_limits(limits=_checked(n), user_api="blas"):  # restores BLAS on exit
        numba.set_num_threads(n)
        try:
            yield n
        finally:
            numba.set_num_threads(before)
