"""Content hashes that cache keys are made of: canonical JSON digests, file and directory hashes
remembered across runs, the versions of the libraries a stage uses, and the files a recipe value
names. The code a stage depends on is hashed by cache/code.py."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from trtpipe.cache.files import atomic_write, sha256_file


def digest(obj: Any) -> str:
    """sha256 of a JSON-able value in canonical form."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def versions(*dists: str) -> dict[str, str | None]:
    """{distribution: installed version or None}, read from metadata: importing TensorFlow to
    ask it would cost seconds. Each distribution is looked up once per process."""
    return {name: _version(name) for name in dists}


@functools.lru_cache(maxsize=None)
def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


class Hasher:
    """sha256 of files and directories, remembered per (path, size, mtime, inode) under the cache
    so a re-run does not re-read gigabytes of unchanged weights. A file modified within the last
    2 s is always re-read (its mtime may not have ticked yet)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) / "filehash" if root else None
        self._mem = {}
        self._inodes = {}  # (device, size, mtime, inode) -> sha256, this process only

    def known(self, path: str | Path) -> str | None:
        """The sha256 this process computed or wrote for the file as it is now, else None (no disk
        memo: for checking cache entries, where only this run's own writes are trusted)."""
        st = Path(path).stat()
        return self._inodes.get((st.st_dev, st.st_size, st.st_mtime_ns, st.st_ino))

    def remember(self, path: str | Path, sha: str) -> None:
        """Record the sha256 of a file this process just wrote and hashed while writing it."""
        path = Path(path).resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        self._mem[str(path)] = (stamp, sha)
        self._inodes[(st.st_dev, *stamp)] = sha

    def file(self, path: str | Path) -> str:
        """sha256 of a file's content (hex), remembered per (size, mtime, inode): by path across
        runs, and by inode within a run (a hard link of a file hashed before is not re-read)."""
        path = Path(path).resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        if str(path) in self._mem and self._mem[str(path)][0] == stamp:
            return self._mem[str(path)][1]
        linked = self._inodes.get((st.st_dev, *stamp))
        if linked is not None:
            self._mem[str(path)] = (stamp, linked)
            return linked
        memo = self.root / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json" if self.root else None
        fresh = time.time() - st.st_mtime < 2
        if memo and not fresh:
            try:
                saved = json.loads(memo.read_text())
                if saved["stamp"] == stamp:
                    self._mem[str(path)] = (stamp, saved["sha256"])
                    return saved["sha256"]
            except (OSError, ValueError, KeyError):
                pass
        value = sha256_file(path)
        self._mem[str(path)] = (stamp, value)
        self._inodes[(st.st_dev, *stamp)] = value
        if memo and not fresh:
            with contextlib.suppress(OSError):
                atomic_write(memo, json.dumps({"path": str(path), "stamp": stamp, "sha256": value}).encode())
        return value

    def tree(self, directory: str | Path) -> str:
        """Hash of a directory's files (relative names + contents)."""
        directory = Path(directory)
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        return digest([[p.relative_to(directory).as_posix(), self.file(p)] for p in files])

    def path(self, path: str | Path) -> str:
        return self.tree(path) if Path(path).is_dir() else self.file(path)

    def onnx_file(self, path: str | Path) -> str:
        """An ONNX file plus the external data files it names (found in the wire format, without
        importing onnx: review/model_names.external_locations; an unreadable model names none, the
        source stage reports it)."""
        from trtpipe.review.model_names import external_locations
        path = Path(path)
        own = self.file(path)
        key = ("deps", str(path.resolve()), own)
        if key not in self._mem:
            self._mem[key] = external_locations(path)
        deps = [[loc, self.file(path.parent / loc)] for loc in self._mem[key] if (path.parent / loc).is_file()]
        return digest([own, deps])


def referenced_files(value: Any, base: str | Path | None, hasher: Hasher) -> dict[str, str]:
    """Content hashes of files/directories named by string values (pass parameters, data specs)."""
    found = {}

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, str) and v and len(v) < 4096 and ("/" in v or "." in v):
            p = Path(v) if os.path.isabs(v) else Path(base or ".") / v
            with contextlib.suppress(OSError, ValueError):
                # not the recipe's own directory or a parent of it ("." or ".."): no tree to hash there
                if p.exists() and not Path(base or ".").resolve().is_relative_to(p.resolve()):
                    found[v] = hasher.path(p)
    walk(value)
    return found


def data_files(data_cfg: Any, base: str | Path | None, hasher: Hasher) -> dict[str, str | None]:
    """Content hashes of the data a `validate.data` / `precision.calibration` mapping names (`npz`,
    `images.dir`), whatever their names look like (`imgs` has no "/" or "." for referenced_files to
    notice); None for a path that does not exist (the stage reports it)."""
    if not isinstance(data_cfg, dict):
        return {}
    named = [data_cfg.get("npz"), (data_cfg.get("images") or {}).get("dir") if isinstance(data_cfg.get("images"),
                                                                                         dict) else None]
    found = {}
    for value in (v for v in named if isinstance(v, str) and v):
        path = Path(value) if os.path.isabs(value) else Path(base or ".") / value
        try:
            found[value] = hasher.path(path) if path.exists() else None
        except OSError:
            found[value] = None
    return found
