"""Artifacts are written to a private staging directory and moved into place only on success.

The staging directory sits inside the output directory so the final `os.replace` is a same-
filesystem rename: readers see either the old plan or the new one, never a partial file, and a
failed run leaves the previous outputs untouched.
"""

import os
import shutil
import tempfile
from pathlib import Path

from .cache_files import atomic_write as atomic_write_bytes, sha256_file
from .errors import OutputError

__all__ = ["Staging", "atomic_write_bytes", "sha256_file"]  # the file helpers are shared with the cache


class Staging:
    """`with Staging(out_dir, where) as st:` -> st.path(name) for files; st.publish() moves them."""

    def __init__(self, out_dir, where=""):
        self.out_dir = Path(out_dir)
        self.where = where
        self.dir = None
        self.published = {}

    def __enter__(self):
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(dir=self.out_dir, prefix=".trtpipe-staging-"))
        except OSError as err:
            raise OutputError(f"{self.where}output directory {self.out_dir} is not writable: "
                              f"{err.strerror or err}",
                              hint="set output.dir in the recipe to a directory you can write")
        return self

    def path(self, name):
        return self.dir / name

    def publish(self, names):
        """Move staged files into the output directory; returns {name: final path}."""
        for name in names:
            src = self.dir / name
            if src.is_dir():
                dst = self.out_dir / name
                if dst.exists():
                    shutil.rmtree(dst)
                os.replace(src, dst)
            else:
                os.replace(src, self.out_dir / name)
            self.published[name] = self.out_dir / name
        return self.published

    def __exit__(self, *exc):
        if self.dir and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        return False
