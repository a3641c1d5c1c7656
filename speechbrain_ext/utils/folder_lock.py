"""One run per output folder: an exclusive lock with the holder's PID.

The pipeline takes the lock of its output folder before doing anything; a
second pipeline on the same folder stops with one line naming the PID that
holds it. The lock is an ``flock`` on ``OUT/.lock``, which the kernel
releases when the holder dies however it dies (even ``kill -9``), so a
lock left by a killed run is stale by construction: the next run takes it
over (and says so) instead of waiting for a human to delete a file.

Example
-------
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> with FolderLock(folder):
...     FolderLock(folder).acquire()  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
speechbrain_ext.utils.folder_lock.FolderLockedError: ...: already in use by \
another run (PID ..., started ...); wait for it to end, stop it, or choose \
another output folder
"""

import fcntl
import os
import sys
import time

from speechbrain.utils.logger import get_logger

from speechbrain_ext.utils.io_utils import process_alive

logger = get_logger(__name__)

LOCK_NAME = ".lock"


class FolderLockedError(RuntimeError):
    """Raised when another live process holds the folder's lock."""


class FolderLock:
    """Exclusive, process-lifetime lock of a folder (``flock`` on ``.lock``).

    Arguments
    ---------
    folder : str
        The folder to lock (created if needed).
    """

    def __init__(self, folder):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd = None

    def _holder(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                fields = f.read().split(maxsplit=2)
        except OSError:
            return None, ""
        if not fields or not fields[0].isdigit():
            return None, ""
        return int(fields[0]), " ".join(fields[1:])

    def acquire(self):
        """Take the lock or raise.

        Returns
        -------
        int or None
            The PID of a dead run whose stale lock was taken over, if any.

        Raises
        ------
        FolderLockedError
            One line naming the folder and the PID holding it.
        """
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid, since = self._holder()
            holder = f"PID {pid}" if pid else "another process"
            raise FolderLockedError(
                f"{self.folder}: already in use by another run ({holder}"
                f"{', started ' + since if since else ''}); wait for it to "
                "end, stop it, or choose another output folder"
            ) from None
        previous, _ = self._holder()
        stale = previous if previous and previous != os.getpid() else None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        os.write(fd, f"{os.getpid()} {started}\n".encode())
        os.fsync(fd)
        self._fd = fd
        if stale is not None:
            state = "still running?" if process_alive(stale) else "gone"
            logger.info(
                "%s: took over the lock left by PID %d (%s)",
                self.folder,
                stale,
                state,
            )
        return stale

    def release(self):
        """Empty the lock file and release the lock."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        """Acquire; see :meth:`acquire`."""
        self.acquire()
        return self

    def __exit__(self, *exc):
        """Release."""
        self.release()


def end_with_parent():
    """In a child process: be sent SIGTERM when the parent process dies.

    Meant as ``subprocess.Popen(..., preexec_fn=end_with_parent)``: killing
    the pipeline (even with ``kill -9``) then ends the stage it started
    instead of leaving it running as an orphan. Linux only (``prctl``
    ``PR_SET_PDEATHSIG``); elsewhere it does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGTERM)
