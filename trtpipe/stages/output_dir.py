"""output.dir for one run: created, locked, owned by one recipe, and where rejected graphs are kept.

* Lock: a run holds an exclusive flock on `output.dir/.trt-pipeline.lock` from before its first
  stage until it has published (cache/lock.py; the file is removed on release). So two runs into
  one directory, of one recipe or of two, never interleave; the second waits, and says so.
* Owner: `output.dir/.trt-pipeline.json` names the recipe (real path and name) whose artifacts the
  directory holds; it is written with each published set. A directory holding another recipe's
  artifacts is refused (exit 8) unless the run has `--take-over` (or `--force`), which hands the directory over (the
  other recipe's files are removed when the new set is published). A directory written by an
  earlier trt-pipeline has no marker: its report.json says whose it is.
* Rejected graphs: when a stage fails on a model that lives in the run's staging directory (which
  is deleted), that model is kept as `output.dir/failed/<stage>.onnx`, apart from the published
  files, replaced by the next failure and removed by the next successful publish; the error
  message names that path instead of the deleted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtpipe.cache.files import copy_model
from trtpipe.cache.lock import FileLock, is_abandoned
from trtpipe.errors import OutputError, PipelineError
from trtpipe.fileguard import special_kind
from trtpipe.stages.publish import published_names, remove_stale_versions, remove_stray_weights
from trtpipe.stages.run_files import FAILED_DIR, LOCK, MARKER, RUNS_DIR, STAGING_PREFIX

FORMAT = 1


class OutputDir:
    """`with OutputDir(path, recipe_path, name, force=...) as out:` for the whole run (module docstring)."""

    def __init__(self, path: str | Path, recipe_path: str | Path, recipe_name: str, *, force: bool = False,
                 where: str = "", on_wait: Callable[[str | None], Any] | None = None) -> None:
        self.path = Path(path)
        self.recipe_path = os.path.realpath(recipe_path)
        self.recipe_name = recipe_name
        self.force = force
        self.where = where
        self._lock = FileLock(self.path / LOCK, on_wait=on_wait, remove=True)

    @property
    def marker(self) -> dict[str, Any]:
        """What `.trt-pipeline.json` says once this run has published."""
        return {"format": FORMAT, "recipe": self.recipe_path, "name": self.recipe_name}

    def __enter__(self) -> OutputDir:
        try:
            if os.path.lexists(self.path) and not self.path.is_dir():
                raise OutputError(f"{self.where}output directory {self.path} is {special_kind(self.path) or 'a file'}, "
                                  "not a directory", hint="set output.dir to a directory (it is created if missing)")
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{self.where}output directory {self.path} is not writable: {err.strerror or err}",
                              hint="set output.dir in the recipe to a directory you can write") from err
        self.check_owner()  # refuse at once rather than after waiting for another run
        for name, keeps in ((RUNS_DIR, "its published versions"), (FAILED_DIR, "rejected graphs")):
            p = self.path / name  # never followed elsewhere: the run writes only inside output.dir
            if os.path.islink(p) or (os.path.lexists(p) and not p.is_dir()):
                kind = "a symbolic link" if os.path.islink(p) else special_kind(p) or "a file"
                raise OutputError(f"{self.where}{p} is {kind}, not a directory; trt-pipeline keeps {keeps} there",
                                  hint="remove it")
        lock_kind = special_kind(self.path / LOCK)
        if os.path.islink(self.path / LOCK) or lock_kind not in (None, "missing"):
            raise OutputError(f"{self.where}{self.path / LOCK} is {lock_kind or 'a symbolic link'}; "
                              "trt-pipeline keeps its lock file there", hint="remove it")
        try:
            self._lock.acquire()
        except OSError as err:
            raise OutputError(f"{self.where}cannot lock output directory {self.path}: {err.strerror or err}") from err
        try:
            self.check_owner()
            self._clean()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> bool:
        self._lock.release()
        return False

    # owner ----------------------------------------------------------------------------------
    def owner(self) -> dict[str, Any] | None:
        """{"recipe": path, "name": name} of the recipe whose artifacts the directory holds, or None."""
        marker = self.path / MARKER
        if os.path.lexists(marker):
            kind = special_kind(marker)
            if kind is not None or os.path.islink(marker):
                raise OutputError(f"{self.where}{marker} is {kind or 'a symbolic link'}, not trt-pipeline's owner "
                                  "marker (a regular file)", hint="remove it")
            return _read_json(marker)
        report = self.path / "report.json"  # an output directory of an earlier trt-pipeline
        if special_kind(report) is None:
            rec = (_read_json(report) or {}).get("recipe")
            if isinstance(rec, dict) and isinstance(rec.get("path"), str):
                return {"recipe": rec["path"], "name": rec.get("name")}
        return None

    def check_owner(self) -> None:
        """Raises OutputError when the directory holds another recipe's artifacts (unless --take-over)."""
        owner = self.owner()
        if not owner or not isinstance(owner.get("recipe"), str):
            return
        theirs = owner["recipe"]
        if os.path.realpath(theirs) == self.recipe_path:
            return
        if not os.path.exists(theirs) and owner.get("name") == self.recipe_name:
            return  # the same recipe, moved or renamed
        if self.force:
            return
        raise OutputError(
            f"{self.where}output directory {self.path} holds the artifacts of recipe '{owner.get('name')}' "
            f"({theirs}); this run is recipe '{self.recipe_name}' ({self.recipe_path}). Two recipes in one "
            "directory would mix their artifacts",
            hint="give each recipe its own output.dir (default: build/<name> next to the recipe), or run with "
                 "--take-over to replace the other recipe's artifacts (cached stages stay cached)")

    # leftovers ------------------------------------------------------------------------------
    def _clean(self):
        """What killed runs left: staging directories no live run owns, unpublished versions."""
        for d in self.path.glob(STAGING_PREFIX + "*"):
            if d.is_dir() and not d.is_symlink() and is_abandoned(d):
                shutil.rmtree(d, ignore_errors=True)
        remove_stale_versions(self.path)
        remove_stray_weights(self.path, published_names(self.path))
        for tmp in self.path.glob(".*.link-*"):
            if tmp.is_symlink():
                with contextlib.suppress(OSError):
                    tmp.unlink()

    # rejected graphs ------------------------------------------------------------------------
    def keep_failed(self, err: PipelineError, staging_dir: Path | None, final_name: str | None = None) -> None:
        """Keep the models a failed stage's message names in the staging directory as
        `failed/<stage>.onnx` (more than one: `failed/<stage>.<name>`), and rewrite the message
        to name them there. A build failure keeps the model given to the builder even when the
        message names no file (a crash, a timeout). Best effort: a failure to copy leaves the
        message as it was."""
        if staging_dir is None or not staging_dir.is_dir():
            return
        stage = getattr(err, "stage", "failed") or "failed"
        named = _staged_names(str(err), staging_dir)
        models = [n for n in named if n.endswith(".onnx")]
        extra = None
        if not models and stage == "build" and final_name and (staging_dir / final_name).is_file():
            models, extra = [final_name], final_name
        if not models:
            return
        failed = self.path / FAILED_DIR
        try:
            if failed.is_symlink() or (os.path.lexists(failed) and not failed.is_dir()):
                return
            failed.mkdir(exist_ok=True)
            for old in failed.iterdir():  # one run's rejected graphs at a time
                if old.is_file() or old.is_symlink():
                    old.unlink()
            for i, name in enumerate(models):
                dest = failed / (f"{stage}.onnx" if i == 0 else f"{stage}.{name}")
                tmp = Path(tempfile.mkdtemp(dir=failed, prefix=".tmp-"))
                try:
                    copy_model(staging_dir / name, tmp / dest.name)
                    for f in tmp.iterdir():
                        os.replace(f, failed / f.name)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                old_path = str(staging_dir / name)
                err.message = err.message.replace(old_path, str(dest))
                if err.hint:
                    err.hint = err.hint.replace(old_path, str(dest))
                if name == extra:
                    err.message += f"\n  the model given to the builder is kept at {dest}"
        except (OSError, ValueError):
            return


def _staged_names(text, staging_dir):
    """File names of the staging directory that `text` mentions as `<staging_dir>/<name>`."""
    names = []
    for match in re.finditer(re.escape(str(staging_dir)) + r"/([^/\s'\"]+)", text):
        cand = match.group(1)
        while cand and not (staging_dir / cand).is_file():
            cand = cand[:-1]  # trailing punctuation of the sentence
        if cand and cand not in names:
            names.append(cand)
    return names


def _read_json(path):
    try:
        if Path(path).stat().st_size > 2**20:
            return None
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
