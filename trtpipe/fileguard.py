"""File primitives every stage uses where a file enters or leaves the run: what kind of file a path
is (asked of `stat`, never by reading it), and disk-full errors turned into OutputErrors.

A run reads only regular files (and the directories a SavedModel or an image folder is): a FIFO
would block the first `read()` forever, `/dev/zero` never ends, a socket cannot be opened, and a
directory where a file is expected fails later with a misleading "missing". `special_kind` names
what a path is instead, so messages can say "is a FIFO, not a regular file".

A full disk shows up as ENOSPC, a quota as EDQUOT, and a file-size limit (`ulimit -f`,
RLIMIT_FSIZE) as EFBIG: all three mean "this write did not fit" and end the run as OutputError
(exit 8) naming the path and the space it needed (`disk_full_error`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from trtpipe.errors import OutputError

# errno values that mean "the write did not fit"; EDQUOT is missing on some platforms
DISK_FULL = frozenset(e for e in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None)) if e is not None)

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def special_kind(path: str | Path) -> str | None:
    """What `path` is when it is not a regular file: "missing", "a directory", "a FIFO", "a socket",
    "a character device", "a block device", "a broken symbolic link", "a symbolic link loop" or
    "unreadable (<reason>)"; None for a regular file. Symbolic links are followed. Only `stat` is
    asked: the file is never opened (opening a FIFO blocks).

    Args:
        path: the path to look at.

    Returns:
        None for a regular file, else the phrase above.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "missing"
    except NotADirectoryError:
        return "missing"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"unreadable ({err.strerror or err})"
    if stat.S_ISREG(st.st_mode):
        return None
    for test, name in _KINDS:
        if test(st.st_mode):
            return name
    return "not a regular file"


def not_a_file(path: str | Path, what: str = "") -> str | None:
    """A message for a path that exists but is no regular file ("{what} {path} is a FIFO, not a
    regular file"), or None for a regular file or a missing path (callers word "missing" their
    own way, with a did-you-mean).

    Args:
        path: the path.
        what: how to call it in the message (e.g. "plugin library"); may be empty.

    Returns:
        The message, or None.
    """
    kind = special_kind(path)
    if kind is None or kind == "missing":
        return None
    return f"{what + ' ' if what else ''}{path} is {kind}, not a regular file"


def not_a_directory(path: str | Path, what: str = "") -> str | None:
    """As not_a_file for a path that must be a directory: "{what} {path} is a FIFO, not a
    directory", or None for a directory or a missing path."""
    try:
        if os.path.isdir(path) or not os.path.lexists(path):
            return None
    except OSError:
        return None
    kind = special_kind(path) or "a regular file"
    return f"{what + ' ' if what else ''}{path} is {kind}, not a directory"


def special_files_in(directory: str | Path, limit: int = 5) -> list[tuple[Path, str]]:
    """Entries under `directory` (recursively, symbolic links followed for files, not for
    directories) that are neither regular files nor directories: [(path, kind)], at most `limit`."""
    found = []
    for root, dirs, files in os.walk(directory):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = Path(root) / name
            kind = special_kind(path)
            if kind is not None and kind != "a directory":
                found.append((path, kind))
                if len(found) >= limit:
                    return found
    return found


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when two paths name the same file: equal real paths, or the same inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# --------------------------------------------------------------------------------- disk full

def default_file_mode() -> int:
    """The mode `open(path, "w")` would give a new file: 0o666 less the process umask.

    Files written through `tempfile.mkstemp` (0600) and renamed into place get this mode, so a
    published or predicted file is as readable as any other file the user writes.
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def is_disk_full(err: BaseException) -> bool:
    """True for an OSError meaning the write did not fit (ENOSPC, EDQUOT, EFBIG)."""
    return isinstance(err, OSError) and err.errno in DISK_FULL


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged process may still write on the filesystem holding `path` (or its
    nearest existing parent); None when unknown."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def file_size_limit() -> int | None:
    """This process's RLIMIT_FSIZE in bytes (`ulimit -f`), or None when unlimited/unknown."""
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def size_text(n: int | None) -> str:
    """Bytes as '12.3 MiB' (binary units), '?' for None."""
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def disk_full_error(err: OSError, path: str | Path | None, need: int | None = None,
                    what: str = "", written: int | None = None) -> OutputError:
    """The OutputError (exit 8) for a write that did not fit.

    Args:
        err: the OSError (ENOSPC, EDQUOT or EFBIG).
        path: the file or directory being written (else err.filename2 / err.filename).
        need: bytes the write needed in all, when known.
        what: what was being written ("the plan", "cache entry build/ab12..."), for the message.
        written: bytes written before it failed, when `need` is unknown (the need is more).

    Returns:
        OutputError naming the path, the space needed and what is free there.
    """
    path = path or getattr(err, "filename2", None) or getattr(err, "filename", None)
    free = free_bytes(path) if path else None
    if err.errno == errno.EFBIG:
        limit = file_size_limit()
        cause = ("the file size limit of this process" + (f" ({size_text(limit)}, ulimit -f)" if limit else "")
                 + " or of the filesystem")
    elif err.errno == getattr(errno, "EDQUOT", -1):
        cause = "the disk quota"
    else:
        cause = "no space left on the device"
    needed = (f"it needs {size_text(need)}" if need is not None
              else f"it needs more than the {size_text(written)} written before it failed" if written
              else "its size was not known yet")
    where = f" {what}" if what else ""
    return OutputError(
        f"cannot write{where} {path or '(unknown file)'}: {cause} ({err.strerror or err}); {needed}, "
        f"{size_text(free)} free there; nothing was published",
        hint="free some space (or raise the limit), or point output.dir / --cache-dir at a bigger "
             "filesystem, and run again")


@contextlib.contextmanager
def writing(path: str | Path, need: int | None = None, what: str = "") -> Iterator[None]:
    """`with writing(path, need):` turns a disk-full OSError inside into disk_full_error(...);
    other errors pass through unchanged."""
    try:
        yield
    except OSError as err:
        if is_disk_full(err):
            written = _size_or_none(path)
            raise disk_full_error(err, path, need, what, written) from err
        raise


def _size_or_none(path):
    try:
        p = Path(path)
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size
    except OSError:
        return None
