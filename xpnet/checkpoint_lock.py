"""One live run per checkpoint directory: an exclusive lock, and the clean-up of what a
killed run left behind.

``flock`` on ``<dir>/checkpoint.lock``: the kernel drops it when its process dies, so a
lock left by a killed run is taken over; while held, the file names the holder (pid, host)
so a refusal can name it, and it is emptied on release (empty: released; non-empty when
taken: its holder was killed). Without ``fcntl`` (Windows) nothing is locked.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: checkpoint directories are not locked
    fcntl = None

from xpnet.checkpoint import CHECKPOINT_NAME, CheckpointError

__all__ = ["LOCK_NAME", "DirectoryLock"]

LOCK_NAME = "checkpoint.lock"


class DirectoryLock:
    """An exclusive lock on a checkpoint directory, for one live run.

    Taking it creates the directory and removes the temporary files of checkpoint writes
    a killed run left behind (no live writer can own them now). ``log(line)`` is told of
    a lock taken over and of files removed. Raises CheckpointError naming the holder if
    another live process has it.
    """

    def __init__(self, directory: Path, log):
        directory.mkdir(parents=True, exist_ok=True)
        self._fd = _acquire(directory)
        previous = _holder(self._fd)  # a holder that never released it: killed
        os.ftruncate(self._fd, 0)
        os.write(self._fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        if previous:
            log(f"took over the lock on {directory} left by {previous}, which ended without "
                "releasing it")
        removed = remove_stale_temporaries(directory)
        if removed:
            log(f"removed {removed} temporary file(s) of an interrupted checkpoint write")

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)  # an empty lock file: released, not abandoned
            os.close(fd)


def remove_stale_temporaries(directory: Path) -> int:
    """Remove the temporary files of interrupted checkpoint writes; returns how many."""
    stale = list(directory.glob(f".{CHECKPOINT_NAME}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def _acquire(directory: Path) -> int:
    """The lock file's descriptor, locked; CheckpointError naming the holder if taken."""
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder(fd) or "another process"
        os.close(fd)
        raise CheckpointError(
            f"checkpoint directory {directory} is in use by {holder} (lock file {path}); "
            "wait for that run to end, or choose another checkpoint directory"
        ) from None
    return fd


def _holder(fd: int) -> str | None:
    """'process PID on HOST' from a lock file's content, or None if it is empty."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096)
    if not text:
        return None
    try:
        info = json.loads(text)
        return f"process {int(info['pid'])} on {info['host']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"
