"""Artifacts are written to a private staging directory and moved into place only on success.

The staging directory sits inside the output directory so the final `os.replace` is a same-
filesystem rename: readers see either the old plan or the new one, never a partial file, and a
failed run leaves the previous outputs untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from trtpipe.cache.files import atomic_write as atomic_write_bytes
from trtpipe.cache.files import sha256_file
from trtpipe.errors import OutputError

__all__ = ["Staging", "atomic_write_bytes", "sha256_file"]  # the file helpers are shared with the cache


class Staging:
    """`with Staging(out_dir, where) as st:` -> st.path(name) for files; st.publish() moves them."""

    def __init__(self, out_dir: str | Path, where: str = "") -> None:
        self.out_dir = Path(out_dir)
        self.where = where
        self.dir = None
        self.published = {}

    def __enter__(self) -> Staging:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(dir=self.out_dir, prefix=".trtpipe-staging-"))
        except OSError as err:
            raise OutputError(f"{self.where}output directory {self.out_dir} is not writable: "
                              f"{err.strerror or err}",
                              hint="set output.dir in the recipe to a directory you can write") from err
        return self

    def path(self, name: str) -> Path:
        return self.dir / name

    def publish(self, names: Sequence[str]) -> dict[str, Path]:
        """Move staged files into the output directory; returns {name: final path}.

        Every destination is checked before the first move, so a blocked one (say, a directory
        where the plan goes) fails the run with nothing moved."""
        for name in names:
            dst = self.out_dir / name
            if dst.is_dir() and not (self.dir / name).is_dir():
                raise OutputError(f"{self.where}cannot publish {name}: {dst} is a directory",
                                  hint="remove it or choose another output.dir")
        try:
            for name in names:
                src, dst = self.dir / name, self.out_dir / name
                if src.is_dir() and dst.exists():
                    shutil.rmtree(dst)
                os.replace(src, dst)
                self.published[name] = dst
        except OSError as err:
            raise OutputError(f"{self.where}cannot publish into {self.out_dir}: {err.strerror or err}") from err
        return self.published

    def __exit__(self, *exc: object) -> bool:
        if self.dir and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        return False
