"""Where the deployment commands may write, and how: one guard for every file `predict` and
`bench` write, and one atomic writer.

A deployment output never replaces what a run published or read (the house rule: nothing the
run reads is ever written or replaced). `protected(pub, inputs)` lists those paths; `guard`
refuses (exit 8) an output whose real path (symbolic links resolved, so OUTPUT_DIR/effdet.plan,
a link into `.runs/current/`, counts as the file it points to; hard links too) is:

* a published artifact (report.json's `artifacts`, report.json, report.md), in OUTPUT_DIR or in
  the run directory it links into;
* anything under OUTPUT_DIR/.runs/ (the run directories themselves);
* the recipe, or a file or directory the run read (absolute paths in the resolved recipe: the
  source model, labels, plugins, validation data; output.dir itself is where predictions go);
* a file this command reads (the images given to `predict`).

`write_atomic` writes a temporary file next to the target and renames it over the target, so a
file is written in full or not at all; any OSError becomes an OutputError naming the path (a full
disk says how much space it needed: fileguard.disk_full_error).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from trtpipe.errors import OutputError
from trtpipe.fileguard import default_file_mode, disk_full_error, is_disk_full, not_a_directory, same_file


class Protected:
    """The paths a deployment command must not write (see the module docstring)."""

    def __init__(self, files: dict[str, str], trees: dict[str, str]) -> None:
        self.files = files  # real path -> what it is
        self.trees = trees  # real path of a directory nothing may be written under -> what it is

    def why(self, path: str | Path) -> str | None:
        """What `path` is when it must not be written ("the published artifact report.json"), else None."""
        real = os.path.realpath(path)
        if real in self.files:
            return self.files[real]
        for tree, what in self.trees.items():
            if real == tree or real.startswith(tree.rstrip(os.sep) + os.sep):
                return what
        for other, what in self.files.items():  # hard links
            if os.path.exists(real) and same_file(real, other):
                return what
        return None


def protected(pub: Any, inputs: Iterable[str | Path] = ()) -> Protected:
    """The Protected set of a published run (trtpipe.deploy.published.Published) and of the files
    this command reads.

    Args:
        pub: the Published directory.
        inputs: files the command reads (images).

    Returns:
        Protected.
    """
    files: dict[str, str] = {}
    trees: dict[str, str] = {}
    names = set((pub.report.get("artifacts") or {})) | {"report.json", "report.md"}
    for name in sorted(names):
        for base in (pub.dir, pub.files):
            files[os.path.realpath(base / name)] = f"the published artifact {name}"
    trees[os.path.realpath(pub.dir / ".runs")] = "inside OUTPUT_DIR/.runs/ (the run directories)"
    if pub.files != pub.dir:
        trees[os.path.realpath(pub.files)] = "inside the published run directory"
    rec = pub.report.get("recipe") or {}
    if isinstance(rec.get("path"), str):
        files[os.path.realpath(rec["path"])] = "the recipe"
    out_dir = os.path.realpath(pub.dir)
    for value in _strings(pub.recipe):
        if os.path.isabs(value) and os.path.exists(value) and os.path.realpath(value) != out_dir:
            real = os.path.realpath(value)
            (trees if os.path.isdir(real) else files)[real] = f"read by the run ({value})"
    for path in inputs:
        files[os.path.realpath(path)] = f"an input of this command ({path})"
    return Protected(files, trees)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def guard(path: str | Path, prot: Protected, option: str) -> None:
    """Refuse to write `path` when it is protected.

    Args:
        path: the file (or directory) about to be written.
        prot: the Protected set.
        option: the option that chose it, for the hint ("--json PATH").

    Raises:
        OutputError: `path` is a published artifact, under OUTPUT_DIR/.runs/, the recipe, or a file
            the run or this command reads.
    """
    why = prot.why(path)
    if why is not None:
        raise OutputError(f"{path}: will not write here: it is {why}; deployment commands never replace what a "
                          "run published or read", hint=f"choose another place with {option}")


def make_dir(path: Path, option: str) -> bool:
    """Create the output directory `path` (and parents). Returns True when it was created.

    Raises:
        OutputError: `path` exists and is not a directory, or it cannot be created.
    """
    msg = not_a_directory(path, "the output directory")
    if msg:
        raise OutputError(msg, hint=f"choose a directory with {option}")
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _error(err, path, "cannot create the directory", option) from None
    return not existed


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], option: str, what: str = "") -> None:
    """Write `path` in full or not at all: `write(fh)` fills a temporary file in the same directory,
    which then replaces `path`.

    Args:
        path: the file to write.
        write: called with the binary file object.
        option: the option that chose the place, for the hint.
        what: what the file is, for the message ("the benchmark result").

    Raises:
        OutputError: the directory or file cannot be written (missing, read-only, not a directory,
            disk full, quota, file-size limit), naming `path`.
    """
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, default_file_mode())  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise _error(err, path, f"cannot write{' ' + what if what else ''}", option) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _error(err: OSError, path: Path, doing: str, option: str) -> OutputError:
    if is_disk_full(err):
        return disk_full_error(err, path)
    return OutputError(f"{path}: {doing}: {err.strerror or err}", hint=f"choose a writable place with {option}")
