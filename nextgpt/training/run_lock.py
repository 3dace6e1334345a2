"""One writer per run folder: an `fcntl.flock` on `<run>/.lock`, taken by rank 0 before it writes anything.

The kernel drops a flock when its process dies, however it dies, so a killed trainer never leaves a stale lock; the
pid, host and start time written into the file only make the refusal message useful. Two trainers on one folder would
interleave checkpoints and metrics, and a resume started while the old run still writes would be overwritten by it.

    with RunLock(cfg.train.output_dir):
        ...  # train; a second trainer on the folder fails with RunLockedError naming this pid
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunLockedError(ValueError):
    """Another live process holds the run folder's lock; the message names it and the fix."""


class RunLock:
    """Exclusive, non-blocking lock of a run folder, held until `release()` or the process ends.

    Args:
        run_dir: `train.output_dir` (created if missing).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or fail at once.

        Raises:
            RunLockedError: another process holds it (named with pid and host).
            OSError: the folder cannot be created or written (read-only, full disk, ...).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"train.output_dir {self.path.parent} is in use by another trainer ({holder}); wait for it to finish "
                "or stop it, or set train.output_dir to another folder"
            ) from None
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise
            # A file system without flock (some NFS setups): run unguarded, but say so.
            logger.warning("%s: this file system cannot lock (%s); make sure one trainer at a time writes to %s",
                           self.path, err.strerror, self.path.parent)  # fmt: skip
            return self
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays; its content is only informative)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError, OSError):
        info = {}
    if not info.get("pid"):
        return "a process that has not written its pid yet"
    return f"pid {info['pid']} on host {info.get('host', '?')}, started {info.get('started', '?')}"
