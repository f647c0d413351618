"""Inter-process locks on files (flock): one run per recipe at a time, and cache pruning that
never deletes an entry a running build is reading.

An flock belongs to an open file description, so the kernel drops it when its process dies,
SIGKILL included: a crashed run never leaves a stale lock behind. `is_abandoned()` uses the same
property to tell leftovers of dead runs (temporary cache entries, staging directories) from
directories a live run still owns.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are then not serialized (documented in the README)
    fcntl = None

OWNER_FILE = ".owner.lock"

# Every lock this process holds. A forked child (the build worker) inherits their descriptors, and
# an flock lives as long as any descriptor of it: the child closes its copies at once, so the
# parent's release (a close) or death still frees the lock.
_HELD: set[FileLock] = set()


def _drop_inherited() -> None:
    for lock in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(lock._fd)
        lock._fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited)


class FileLock:
    """`with FileLock(path, shared=False, on_wait=callback):` blocks until the lock is held.

    `on_wait(holder)` is called once if the lock is busy, with whatever the holder wrote into the
    lock file (its pid), so the user learns why nothing happens.

    `remove=True` (exclusive locks only) deletes the lock file on release, so it leaves no trace in
    a directory users look at (output.dir). That is safe because a locker checks, once it holds
    the flock, that the path still names the file it locked, and starts over if not (a waiter
    may have opened the file its predecessor has just removed)."""

    def __init__(self, path: str | Path, shared: bool = False,
                 on_wait: Callable[[str | None], Any] | None = None, remove: bool = False) -> None:
        self.path = Path(path)
        self.shared = shared
        self.on_wait = on_wait
        self.remove = remove and not shared
        self._fd = None

    def acquire(self, blocking: bool = True) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        waited = False
        while True:
            # never through a symbolic link: the pid written below would land in whatever it names
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            if fcntl is None:
                self._fd = fd
                _HELD.add(self)
                return True
            mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if not blocking:
                    os.close(fd)
                    return False
                if self.on_wait and not waited:
                    self.on_wait(_read_holder(fd))
                waited = True
                fcntl.flock(fd, mode)
            if self.remove and not _names(self.path, fd):  # its holder removed it meanwhile: take the new one
                os.close(fd)
                continue
            break
        if not self.shared:  # who holds it, for the next waiter's message
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _HELD.add(self)
        return True

    def release(self) -> None:
        if self._fd is not None:
            if self.remove and fcntl is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)  # while still held: the next locker sees it is gone
            os.close(self._fd)  # closing drops the flock
            self._fd = None
            _HELD.discard(self)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> bool:
        self.release()
        return False


def _names(path, fd):
    """Whether `path` still names the open file `fd`."""
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_holder(fd):
    try:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or None
    except OSError:
        return None


def own_directory(directory: str | Path) -> FileLock:
    """Mark `directory` as owned by this process until the returned lock is released (or the
    process dies). Pair with is_abandoned()."""
    lock = FileLock(Path(directory) / OWNER_FILE)
    lock.acquire()
    return lock


def is_abandoned(directory: str | Path, grace_s: float = 600) -> bool:
    """True when no live process owns `directory`: its owner lock can be taken, or it has no owner
    file and is older than `grace_s` (killed between creating it and locking it)."""
    owner = Path(directory) / OWNER_FILE
    if not owner.exists():
        try:
            return time.time() - Path(directory).stat().st_mtime > grace_s
        except OSError:
            return False
    probe = FileLock(owner)
    if probe.acquire(blocking=False):
        probe.release()
        return True
    return False


@contextlib.contextmanager
def held(*locks: FileLock) -> Iterator[None]:
    """Acquire several locks in order; release in reverse."""
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield
