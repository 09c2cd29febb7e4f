"""How many CPU threads xpnet uses: Numba's kernels and the BLAS behind ``np.dot``, together.

xpnet parallelizes its convolutions itself: the batch is split between ``n`` worker
threads, each running Numba kernels and *single-threaded* BLAS products on its own
samples (``kernels.cpu``); pooling and ReLU are split between the same workers. A BLAS
with its own pool of ``n`` threads on top would oversubscribe the cores: OpenBLAS's idle
threads keep spinning for a while after each product (an Affine layer's, say) and then
compete with the convolution workers that run next -- measured on 2 cores, that made a
DeepConvNet step 1.4x slower. So ``set_num_threads(n)`` sets both pools at once:
``n`` threads for xpnet's kernels and, by default, 1 for BLAS (``blas_threads=n`` lets
BLAS use ``n`` threads in products outside the kernels, for other work in the process).

    >>> from xpnet.threads import set_num_threads, get_num_threads
    >>> set_num_threads(2)
    2
    >>> get_num_threads()
    2

The default ``n`` is the number of cores this process may run on (its CPU affinity), or
the ``XPNET_NUM_THREADS`` environment variable when set. The first convolution on the
CPU applies this default unless ``set_num_threads`` was called before.
"""

from __future__ import annotations

import contextlib
import os
import threading

__all__ = [
    "default_num_threads",
    "ensure_default",
    "get_num_threads",
    "num_threads",
    "set_num_threads",
]

_lock = threading.Lock()
_configured = False  # set_num_threads was called (by the user, or by ensure_default)


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


def set_num_threads(n: int | None = None, *, blas_threads: int = 1) -> int:
    """Use ``n`` threads (default: ``default_num_threads()``) for xpnet's kernels and
    ``blas_threads`` (default 1, see the module's docstring) for BLAS. Returns ``n``.

    Numba cannot grow its pool past the size it started with (``NUMBA_NUM_THREADS``,
    by default the CPU count); asking for more is an error that says so.
    """
    global _configured
    import numba
    from threadpoolctl import threadpool_limits

    n = min(default_num_threads(), _max_numba_threads()) if n is None else _checked(n)
    blas_threads = _checked_blas(blas_threads)
    with _lock:
        numba.set_num_threads(n)
        # without a `with`, threadpool_limits keeps the limit for the rest of the process
        threadpool_limits(limits=blas_threads, user_api="blas")
        _configured = True
    return n


def ensure_default() -> None:
    """Apply ``set_num_threads()`` once, unless the user has already chosen."""
    if not _configured:
        set_num_threads()


def _checked_blas(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"blas_threads must be a positive integer, got {n!r}")
    return n


def get_num_threads() -> int:
    """The number of threads xpnet's kernels use now."""
    import numba

    return int(numba.get_num_threads())


@contextlib.contextmanager
def num_threads(n: int, *, blas_threads: int = 1):
    """Use ``n`` kernel threads (and ``blas_threads`` for BLAS) inside a ``with`` block, then
    go back to the previous setting."""
    import numba
    from threadpoolctl import threadpool_limits

    before = get_num_threads()
    n = _checked(n)
    with threadpool_limits(limits=_checked_blas(blas_threads), user_api="blas"):  # restored
        numba.set_num_threads(n)
        try:
            yield n
        finally:
            numba.set_num_threads(before)
