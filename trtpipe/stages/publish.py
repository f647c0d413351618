"""Artifacts are staged privately, then published into output.dir as one set that switches at once.

A run writes its artifacts into a staging directory inside output.dir (`.trtpipe-staging-*`,
removed when the run ends, and by the next run if it was killed). Publishing then never leaves a
mix of two runs' files, even when killed half-way (SIGKILL, power loss):

1. the staged files are moved (same-filesystem renames) into a new version directory
   `.runs/<id>/`, with `.published.json` listing them, and synced;
2. each public name (`effdet.plan`, `effdet.onnx`, `report.json`, ...) is a symbolic link
   `output.dir/<name> -> .runs/current/<name>`, created once; a name new in this set points at
   nothing until step 3, which a reader sees as "this file does not exist yet": the old set;
3. one symbolic link, `.runs/current -> <id>`, is replaced with rename(2), which is atomic: from
   that instant every public name resolves into the new set;
4. links of names the new set no longer has, older versions and `failed/` are removed.

External weights are the exception to step 2: onnx refuses to read a weights file that is a
symbolic link (`onnx.load("out/m.onnx")` looks for a regular `out/m.onnx.data`). So a model's
`.data` file is named after its content (`m.onnx.<sha256[:16]>.data`, the model's `location`
rewritten to match: `name_data_by_content`) and moved into output.dir itself as a plain regular
file (onnx refuses hard links too) before the switch; the old set's weights file keeps its own
name until step 4 removes it. Each model finds exactly its own weights through its public path,
whichever set a reader sees (the copy in `.runs/<id>/` is the graph alone).

A reader opening `output.dir/effdet.plan` sees the old set before step 3 and the new one after it,
never a plan from one run with a report from another. (A reader who wants several files of one set
while a publish may run resolves `.runs/current` once and reads them from that directory.) An
output directory written by an earlier trt-pipeline (plain files, no `.runs/`) is first turned
into a version of its own, file by file with identical content, so that switch is safe too.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from trtpipe.cache.files import atomic_write as atomic_write_bytes
from trtpipe.cache.files import fsync_dir, sha256_file
from trtpipe.cache.store import pause
from trtpipe.errors import OutputError
from trtpipe.fileguard import disk_full_error, is_disk_full, special_kind
from trtpipe.stages.run_files import (
    DATA_NAME,
    FAILED_DIR,
    MARKER,
    RUNS_DIR,
    STAGING_PREFIX,
    legacy_artifact_names,
)

__all__ = ["Staging", "atomic_write_bytes", "sha256_file", "current_version", "published_names"]

CURRENT = "current"
SET_FILE = ".published.json"
# a model's external weights named after their content: published as regular files (module docstring)


class Staging:
    """`with Staging(out_dir, where) as st:` -> st.path(name) for files; st.publish() switches them in."""

    def __init__(self, out_dir: str | Path, where: str = "") -> None:
        self.out_dir = Path(out_dir)
        self.where = where
        self.dir = None
        self.published = {}

    def __enter__(self) -> Staging:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(dir=self.out_dir, prefix=STAGING_PREFIX))
        except OSError as err:
            if is_disk_full(err):
                raise disk_full_error(err, self.out_dir, what="the staging directory in") from err
            raise OutputError(f"{self.where}output directory {self.out_dir} is not writable: "
                              f"{err.strerror or err}",
                              hint="set output.dir in the recipe to a directory you can write") from err
        return self

    def path(self, name: str) -> Path:
        return self.dir / name

    def publish(self, names: Sequence[str], marker: dict | None = None) -> dict[str, Path]:
        """Publish the staged files `names` into the output directory as one set (module docstring);
        returns {name: public path}. The caller holds the output directory's lock.

        Args:
            names: file names in the staging directory, published under the same names.
            marker: the output directory's owner marker (recipe path and name), written with the set.

        Raises:
            OutputError: a public name is taken by a directory or a special file (nothing is
                changed then), or the disk filled up (nothing is switched then).
        """
        self._check_destinations(names)
        runs = self.out_dir / RUNS_DIR
        try:
            version = self._make_version(runs, names)
            self._adopt_plain_files(runs, names)
            for name in names:
                if DATA_NAME.match(name):
                    self._place_weights(name)
                else:
                    self._link(name)
            if marker is not None:
                atomic_write_bytes(self.out_dir / MARKER, (json.dumps(marker, indent=1) + "\n").encode())
            old = published_names(self.out_dir)
            pause("publish-switch")  # tests: SIGKILL here must leave the old set, intact
            _switch(runs, version.name)
            pause("publish-cleanup")  # tests: SIGKILL here must leave the new set, intact
            for name in sorted(set(old) - set(names)):
                self._unlink_ours(name)
            remove_stray_weights(self.out_dir, names)
            remove_stale_versions(self.out_dir)
            shutil.rmtree(self.out_dir / FAILED_DIR, ignore_errors=True)
        except OSError as err:
            if is_disk_full(err):
                raise disk_full_error(err, self.out_dir, what="the published set in") from err
            raise OutputError(f"{self.where}cannot publish into {self.out_dir}: {err.strerror or err}") from err
        self.published = {name: self.out_dir / name for name in names}
        return self.published

    def _check_destinations(self, names):
        """Every destination is checked before anything moves: a blocked one fails the run unchanged."""
        for name in names:
            dst = self.out_dir / name
            if _is_our_link(dst, name) or not os.path.lexists(dst) or os.path.islink(dst):
                continue  # a foreign symbolic link is replaced, never written through
            kind = special_kind(dst)
            if kind == "a directory":
                raise OutputError(f"{self.where}cannot publish {name}: {dst} is a directory",
                                  hint="remove it or choose another output.dir")
            if kind is not None:
                raise OutputError(f"{self.where}cannot publish {name}: {dst} is {kind}; special files are "
                                  "never replaced", hint="remove it or choose another output.dir")

    def _make_version(self, runs, names):
        runs.mkdir(exist_ok=True)
        version = _new_dir(runs, time.strftime("%Y%m%dT%H%M%S"))
        for name in names:
            src = self.dir / name
            with open(src, "rb") as f:
                os.fsync(f.fileno())
            if not DATA_NAME.match(name):  # weights go to output.dir itself (_place_weights)
                os.rename(src, version / name)
        atomic_write_bytes(version / SET_FILE, (json.dumps({"files": list(names)}, indent=1) + "\n").encode())
        fsync_dir(version)
        fsync_dir(runs)
        return version

    def _adopt_plain_files(self, runs, names):
        """An output directory of an earlier trt-pipeline holds plain files. Before the first switch
        they become a version of their own (hard links, else copies), each public name then a link
        to identical content, so a kill during this or the switch still shows one whole set."""
        if os.path.lexists(runs / CURRENT):
            return
        plain = sorted({n for n in list(names) + legacy_artifact_names(self.out_dir)
                        if special_kind(self.out_dir / n) is None and not os.path.islink(self.out_dir / n)
                        and not DATA_NAME.match(n)})
        if not plain:
            return
        legacy = _new_dir(runs, "legacy")
        for name in plain:
            try:
                os.link(self.out_dir / name, legacy / name)
            except OSError:
                shutil.copy2(self.out_dir / name, legacy / name)
        atomic_write_bytes(legacy / SET_FILE, (json.dumps({"files": plain}, indent=1) + "\n").encode())
        fsync_dir(legacy)
        _switch(runs, legacy.name)
        for name in plain:
            self._link(name)

    def _link(self, name):
        dst = self.out_dir / name
        if _is_our_link(dst, name):
            return
        tmp = self.out_dir / f".{name}.link-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(_target(name), tmp)
        os.replace(tmp, dst)  # replaces a plain file or a foreign link, never writes through one

    def _place_weights(self, name):
        """Content-named weights: moved from staging into output.dir as a plain regular file (one
        link: onnx refuses symbolic and hard links for external data). The same name holds the same
        bytes, so replacing one the old set also uses changes nothing it reads."""
        os.replace(self.dir / name, self.out_dir / name)

    def _unlink_ours(self, name):
        dst = self.out_dir / name
        if _is_our_link(dst, name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)

    def __exit__(self, *exc: object) -> bool:
        if self.dir and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        return False


def _new_dir(parent, prefix):
    """A new directory with the umask's permissions (mkdtemp's 0700 would hide the published files)."""
    while True:
        path = Path(parent) / f"{prefix}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _target(name):
    return f"{RUNS_DIR}/{CURRENT}/{name}"


def _is_our_link(path, name):
    try:
        return os.readlink(path) == _target(name)
    except OSError:
        return False


def _switch(runs, version_name):
    """Point `.runs/current` at `version_name` with one rename(2)."""
    tmp = runs / f".{CURRENT}-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(version_name, tmp)
    os.replace(tmp, runs / CURRENT)
    fsync_dir(runs)


def current_version(out_dir: str | Path) -> Path | None:
    """The directory of the published set (`.runs/current`, resolved), or None."""
    link = Path(out_dir) / RUNS_DIR / CURRENT
    try:
        target = os.readlink(link)
    except OSError:
        return None
    version = Path(out_dir) / RUNS_DIR / target
    return version if version.is_dir() and "/" not in target else None


def published_names(out_dir: str | Path) -> list[str]:
    """Names in the published set (its `.published.json`), [] when none."""
    version = current_version(out_dir)
    if version is None:
        return []
    try:
        if special_kind(version / SET_FILE) is not None:
            return []
        files = json.loads((version / SET_FILE).read_text())["files"]
        return [f for f in files if isinstance(f, str) and "/" not in f and f not in ("", ".", "..")]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def remove_stray_weights(out_dir: str | Path, keep: Sequence[str]) -> None:
    """Remove content-named weights files (`*.onnx.<16 hex>.data`, regular files this module
    published) from output.dir that the published set `keep` does not name."""
    for p in Path(out_dir).glob("*.data"):
        if DATA_NAME.match(p.name) and p.name not in keep and p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()


def name_data_by_content(model_path: str | Path) -> str | None:
    """Rename a staged model's external weights `<model>.data` to `<model>.<sha256[:16]>.data` and
    point the model's `location` entries at the new name (the graph is rewritten, weights are not
    read). Deterministic: the same weights give the same name and model bytes.

    Args:
        model_path: the staged .onnx file.

    Returns:
        The new weights file name, or None when the model keeps its weights inside.
    """
    model_path = Path(model_path)
    data = model_path.with_name(model_path.name + ".data")
    if not data.is_file():
        return None
    import onnx

    from trtpipe.cache.files import all_tensors
    new = f"{model_path.name}.{sha256_file(data)[:16]}.data"
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in all_tensors(model):
        for kv in tensor.external_data:
            if kv.key == "location" and kv.value == data.name:
                kv.value = new
    tmp = model_path.with_name(f".{model_path.name}.tmp")
    onnx.save_model(model, str(tmp))
    os.replace(tmp, model_path)
    os.rename(data, model_path.with_name(new))
    return new


def remove_stale_versions(out_dir: str | Path) -> None:
    """Remove `.runs/*` except the current version: older sets, and what killed publishes left.
    The caller holds the output directory's lock."""
    runs = Path(out_dir) / RUNS_DIR
    if not runs.is_dir() or runs.is_symlink():
        return
    keep = current_version(out_dir)
    for entry in runs.iterdir():
        if entry.name == CURRENT or (keep is not None and entry.name == keep.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
