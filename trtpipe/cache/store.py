"""The on-disk, content-addressed store behind the stage cache.

An entry is a directory `entries/<stage>/<k[:2]>/<k>/` with the files and a `manifest.json`
(sizes, sha256 of every file, the stage's metadata, and a checksum of the manifest itself). It is
written in `tmp/` and renamed into place only when complete, so a crash or SIGKILL never leaves a
partial entry; a failed stage never writes one. Entries are verified when their content is read:
a corrupt one is discarded with a warning and rebuilt. Leftover temporary directories of dead
runs are removed by the next run (their owner lock is gone, see lock.py).

Location: --cache-dir, else $TRTPIPE_CACHE_DIR, else $XDG_CACHE_HOME/trt-pipeline (default
~/.cache/trt-pipeline). TensorRT timing caches live in `timing/`, one per backend and device.
With $TRTPIPE_REMOTE_CACHE set, `open()` adds a shared remote tier (remote.py): a local miss
is fetched from it, and every committed entry is uploaded to it.

Test-only hook: TRTPIPE_TEST_PAUSE_AT=<stage label> (source, passes, passes[N], precision,
validate, build, publish, and publish-switch / publish-cleanup inside publishing) makes a run
print `TRTPIPE_TEST_PAUSED <label>` on stderr and sleep
when that stage's output is complete but not yet committed, so tests can SIGKILL it at a known
point. Never set it outside tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtpipe.cache.files import MODEL, atomic_write, fsync_dir, model_files, save_model, sha256_file
from trtpipe.cache.hashing import Hasher, digest
from trtpipe.cache.lock import OWNER_FILE, FileLock, is_abandoned, own_directory
from trtpipe.cache.remote import from_env as remote_tier
from trtpipe.errors import OutputError
from trtpipe.fileguard import disk_full_error, is_disk_full, not_a_directory

if TYPE_CHECKING:
    import onnx

    from trtpipe.backend import Backend

ENV = "TRTPIPE_CACHE_DIR"
PAUSE_ENV = "TRTPIPE_TEST_PAUSE_AT"
FORMAT = 1
MANIFEST = "manifest.json"
MARKER = "trt-pipeline-cache.json"  # written by Cache.open(): what makes a directory a stage cache
_KEY = re.compile(r"[0-9a-f]{64}")  # entry keys are sha256 hex digests (hashing.digest)


class CorruptEntry(Exception):
    """A cache entry whose files do not match its manifest (already discarded when raised)."""


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trt-pipeline"


def resolve_dir(flag: str | Path | None = None) -> tuple[Path, str]:
    """(path, how it was chosen): --cache-dir, $TRTPIPE_CACHE_DIR, or the XDG default."""
    if flag:
        return Path(flag).expanduser().resolve(), "--cache-dir"
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser().resolve(), f"${ENV}"
    return default_dir(), "default (XDG cache directory)"


def pause(label: str | None) -> None:
    """TRTPIPE_TEST_PAUSE_AT (tests only): stop at `label` so a test can SIGKILL the run there."""
    want = os.environ.get(PAUSE_ENV)
    if not want or not label:
        return
    if want == label or (want == "passes" and label.startswith("passes[")):
        print(f"TRTPIPE_TEST_PAUSED {label}", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("TRTPIPE_TEST_PAUSE_SECONDS", "120")))


class Entry:
    def __init__(self, cache: Cache, kind: str, key: str, directory: str | Path, manifest: dict) -> None:
        self.cache, self.kind, self.key, self.dir, self.manifest = cache, kind, key, Path(directory), manifest

    @property
    def meta(self) -> dict:
        return self.manifest["meta"]

    def path(self, name: str) -> Path:
        return self.dir / name

    def verify(self, names: list[str] | tuple[str, ...] | None = None) -> None:
        """Check the named files (default: all) against the manifest; CorruptEntry if not."""
        files = self.manifest["files"]
        for name in (files if names is None else names):
            info = files.get(name)
            path = self.dir / name
            problem = None
            if info is None:
                problem = f"{name} is not in the manifest"
            elif not path.is_file():
                problem = f"{name} is missing"
            elif path.stat().st_size != info["size"]:
                problem = f"{name} has {path.stat().st_size} bytes, the manifest says {info['size']}"
            elif (self.cache.hasher.known(path) or sha256_file(path)) != info["sha256"]:
                problem = f"{name} does not match its sha256"
            if problem:
                self.cache.discard(self, problem)
                raise CorruptEntry(f"cache entry {self.kind}/{self.key[:16]}: {problem}")

    def model_files(self, name: str = MODEL) -> list[str]:
        return [n for n in (name, name + ".data") if n in self.manifest["files"]]


class Writer:
    """Builds an entry in a private temporary directory; `commit()` renames it into place."""

    def __init__(self, cache: Cache, kind: str, key: str) -> None:
        self.cache, self.kind, self.key = cache, kind, key
        self.dir = Path(tempfile.mkdtemp(dir=cache.tmp_dir, prefix=f"{kind}-"))
        self._owner = own_directory(self.dir)
        self.meta = {}
        self.committed = False

    def save_model(self, model: onnx.ModelProto, name: str = MODEL) -> str:
        """Save the model into the entry; returns its sha256 (of the model and its .data file)."""
        # weights in external data are copied file to file (or hard-linked from an earlier entry)
        # and hashed while copied: nothing loads them (files.save_model)
        hashed = save_model(model, self.dir / name, link_from=self.cache.root / "entries",
                            final_dir=self.cache.entry_dir(self.kind, self.key))
        for file_name, sha in hashed.items():
            self.cache.hasher.remember(self.dir / file_name, sha)
        files = model_files(self.dir / name)
        hasher = self.cache.hasher
        return hasher.file(files[0]) if len(files) == 1 else digest([hasher.file(p) for p in files])

    def add_file(self, name: str, src: str | Path) -> None:
        dest = self.dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)

    def commit(self, pause_label: str | None = None) -> Entry:
        """Write the manifest and rename the directory into place; returns the Entry. If another
        run committed the same key meanwhile, its entry is kept (same key, same content)."""
        files = {}
        for p in sorted(self.dir.rglob("*")):
            if p.is_file() and p.name not in (MANIFEST, OWNER_FILE):
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
                # hasher: a weights file hashed while written, or hard-linked from an entry, is not re-read
                files[p.relative_to(self.dir).as_posix()] = {"size": p.stat().st_size,
                                                             "sha256": self.cache.hasher.file(p)}
        manifest = {"format": FORMAT, "kind": self.kind, "key": self.key, "created": time.time(),
                    "files": files, "meta": self.meta}
        manifest["checksum"] = digest(manifest)
        atomic_write(self.dir / MANIFEST, json.dumps(manifest, indent=1, default=str).encode())
        final = self.cache.entry_dir(self.kind, self.key)
        final.parent.mkdir(parents=True, exist_ok=True)
        pause(pause_label or self.kind)  # tests: SIGKILL here leaves a complete but uncommitted entry
        try:
            os.rename(self.dir, final)  # atomic; fails if another run committed the same key first
        except OSError:
            if not final.exists():
                raise
            if self.cache.replace_existing:  # --force: the new result replaces the old one
                self.cache.discard_dir(final)
                os.rename(self.dir, final)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        fsync_dir(final.parent)
        with contextlib.suppress(OSError):
            os.unlink(final / OWNER_FILE)
        self._owner.release()
        self.committed = True
        entry = self.cache.get(self.kind, self.key, verify=())
        if entry is None:
            raise OutputError(f"cache entry {self.kind}/{self.key[:16]} vanished right after it was written")
        if self.cache.remote is not None:  # the shared tier (remote.py): immutable, uploaded once committed
            self.cache.remote.upload(entry)
        return entry

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        if not self.committed:
            written = _size(self.dir) if self.dir.is_dir() else None
            self.abort()
            if exc is not None and is_disk_full(exc):  # nothing half-written stays: the entry is gone
                raise disk_full_error(exc, self.cache.root, what=f"cache entry {self.kind}/{self.key[:16]} in",
                                      written=written) from exc
        return False

    def abort(self) -> None:
        self._owner.release()
        shutil.rmtree(self.dir, ignore_errors=True)


class Cache:
    def __init__(self, root: str | Path, warn: Callable[[str], Any] | None = None) -> None:
        self.root = Path(root)
        self.warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
        self.hasher = Hasher(self.root)
        self.replace_existing = False
        self.remote: Any = None  # remote.RemoteTier once open() finds $TRTPIPE_REMOTE_CACHE

    # layout ---------------------------------------------------------------------------------
    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def entry_dir(self, kind: str, key: str) -> Path:
        return self.root / "entries" / kind / key[:2] / key

    def open(self) -> Cache:
        """Create the layout and its MARKER file, and remove leftovers of dead runs; OutputError
        when not writable."""
        try:
            for sub in ("entries", "tmp", "locks", "timing", "filehash", "trash"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            if not (self.root / MARKER).is_file():
                atomic_write(self.root / MARKER, (json.dumps({"trt_pipeline_cache": True, "format": FORMAT})
                                                  + "\n").encode())
        except OSError as err:
            raise OutputError(f"cache directory {self.root} is not writable: {err.strerror or err}",
                              hint=f"point --cache-dir or ${ENV} at a writable directory") from err
        self.clean_abandoned()
        self.remote = remote_tier(self.warn, FORMAT)
        return self

    def not_a_cache(self) -> str | None:
        """Why `root` must not be inspected or pruned as a stage cache, or None: it is no
        directory, or it holds files but no MARKER (every run writes one when it opens a cache),
        so it is someone else's directory. A missing or empty directory is an empty cache."""
        why = not_a_directory(self.root, "cache directory")
        if why:
            return why
        try:
            if not self.root.is_dir() or (self.root / MARKER).is_file() or not any(self.root.iterdir()):
                return None
        except OSError as err:
            return f"cache directory {self.root} cannot be read: {err.strerror or err}"
        return (f"{self.root} is not a trt-pipeline cache (it has no {MARKER}, which every run writes into "
                f"the cache it opens); nothing in it was touched")

    def clean_abandoned(self) -> int:
        removed = 0
        dirs = [p for p in (self.tmp_dir, self.root / "trash") if p.is_dir()]
        for d in [e for p in dirs for e in p.iterdir()]:
            if d.is_dir() and (d.parent.name == "trash" or is_abandoned(d)):
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        return removed

    # locks ----------------------------------------------------------------------------------
    def recipe_lock(self, recipe_path: str | Path, on_wait: Callable[[str | None], Any] | None = None) -> FileLock:
        name = hashlib.sha256(str(Path(recipe_path).resolve()).encode()).hexdigest()[:24]
        return FileLock(self.root / "locks" / f"recipe-{name}.lock", on_wait=on_wait)

    def use_lock(self, shared: bool = True) -> FileLock:
        """Held shared by every run, exclusively by prune: prune never removes what a run reads."""
        return FileLock(self.root / "locks" / "cache.lock", shared=shared)

    # entries --------------------------------------------------------------------------------
    def get(self, kind: str, key: str, verify: list[str] | tuple[str, ...] | None = None,
            touch: bool = True) -> Entry | None:
        """The entry for `key`, or None. `verify`: files to check now (None: all; () none yet).
        `touch`: record this read as a use (what `prune --older-than` goes by); False to inspect."""
        d = self.entry_dir(kind, key)
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except FileNotFoundError:  # a local miss: the remote tier's copy, if it has one
            return self.remote.fetch(self, kind, key) if self.remote is not None else None
        except (OSError, ValueError) as err:
            self.discard_dir(d, f"cache entry {kind}/{key[:16]}: unreadable manifest ({err})")
            return None
        checksum = manifest.pop("checksum", None)
        if manifest.get("format") != FORMAT or manifest.get("key") != key or checksum != digest(manifest):
            self.discard_dir(d, f"cache entry {kind}/{key[:16]}: manifest does not match its checksum")
            return None
        entry = Entry(self, kind, key, d, manifest)
        try:
            entry.verify(verify)
        except CorruptEntry:
            return None
        if touch:
            with contextlib.suppress(OSError):  # the manifest's mtime is the entry's last use (prune)
                os.utime(d / MANIFEST)
        return entry

    def has_local(self, kind: str, key: str | None) -> bool:
        """Whether the local store holds an entry for `key` (its manifest exists; nothing is read,
        verified or fetched from the remote tier)."""
        return key is not None and (self.entry_dir(kind, key) / MANIFEST).is_file()

    def pass_artifact_names(self, key: str) -> list[str]:
        """Artifacts a pass entry holds, read from its manifest before any file is verified."""
        try:
            manifest = json.loads((self.entry_dir("pass", key) / MANIFEST).read_text())
            return manifest["meta"]["artifact_files"]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def writer(self, kind: str, key: str) -> Writer:
        return Writer(self, kind, key)

    def discard(self, entry: Entry, reason: str) -> None:
        self.discard_dir(entry.dir, f"cache entry {entry.kind}/{entry.key[:16]}: {reason}")

    def discard_dir(self, d: Path, message: str | None = None) -> None:
        if message:
            self.warn(f"{message}; discarded, it will be rebuilt")
        trash = self.root / "trash" / f"{d.name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            trash.parent.mkdir(exist_ok=True)
            os.rename(d, trash)  # atomic: no reader ever sees a half-deleted entry
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def entries(self) -> Iterator[tuple[str, Path]]:
        """(kind, directory) of every entry in the cache's own layout: entries/<kind>/<key[:2]>/<key>,
        a real directory with a manifest, key a sha256 hex digest. Anything else is never touched."""
        base = self.root / "entries"
        for kind_dir in sorted(base.iterdir()) if base.is_dir() and not base.is_symlink() else []:
            if kind_dir.is_symlink() or not kind_dir.is_dir():
                continue
            for d in sorted(kind_dir.glob("*/*")):
                if (_KEY.fullmatch(d.name) and d.parent.name == d.name[:2] and not d.is_symlink()
                        and not d.parent.is_symlink() and d.is_dir() and (d / MANIFEST).is_file()):
                    yield kind_dir.name, d

    # timing caches ----------------------------------------------------------------------------
    def timing_cache_path(self, backend: Backend, device: str) -> Path:
        slug = "".join(c if c.isalnum() or c in ".-" else "_" for c in f"{backend.name}-{backend.version}-{device}")
        return self.root / "timing" / f"{slug}.cache"

    # info / prune ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        stats = {}
        total, oldest, newest = 0, None, None
        for kind, d in self.entries():
            size, used = _size(d), _last_used(d)
            s = stats.setdefault(kind, {"entries": 0, "bytes": 0})
            s["entries"] += 1
            s["bytes"] += size
            total += size
            oldest = used if oldest is None else min(oldest, used)
            newest = used if newest is None else max(newest, used)
        timing = sorted(p.name for p in (self.root / "timing").glob("*.cache"))
        tmp = [d.name for d in self.tmp_dir.iterdir()] if self.tmp_dir.is_dir() else []
        return {"dir": str(self.root), "stages": stats, "bytes": total, "oldest_use": oldest,
                "newest_use": newest, "timing_caches": timing, "temporary": tmp}

    def verify_all(self) -> list[str]:
        """Check every entry in full; returns the problems found (those entries are discarded).
        Checking is no use: entries keep their last-use times (`prune --older-than` is unaffected)."""
        problems, warn = [], self.warn
        self.warn = problems.append
        try:
            for kind, d in list(self.entries()):
                self.get(kind, d.name, verify=None, touch=False)
        finally:
            self.warn = warn
        return problems

    def prune(self, older_than_s: float | None = None, dry_run: bool = False) -> tuple[int, int]:
        """Remove entries not used for `older_than_s` seconds (None: all). Waits for running
        builds (they hold the cache lock shared). Returns (entries removed, bytes freed)."""
        with self.use_lock(shared=False):
            now, count, freed = time.time(), 0, 0
            for _, d in list(self.entries()):
                if older_than_s is not None and now - _last_used(d) < older_than_s:
                    continue
                count += 1
                freed += _size(d)
                if not dry_run:
                    self.discard_dir(d)
            if not dry_run:
                self.clean_abandoned()
                for p in (self.root / "filehash").glob("*.json"):
                    with contextlib.suppress(OSError):
                        if older_than_s is None or now - p.stat().st_mtime >= older_than_s:
                            p.unlink()
            return count, freed


def _size(d):
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def _last_used(d):
    """An entry's manifest is touched whenever the entry is read (Cache.get)."""
    m = d / MANIFEST
    return m.stat().st_mtime if m.exists() else d.stat().st_mtime


def parse_age(text: str | float) -> float:
    """'30d', '12h', '90m', '45s', '2w' -> seconds; ValueError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    text = str(text).strip().lower()
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return float(text[:-1]) * units[text[-1]]
    if text.replace(".", "", 1).isdigit():
        return float(text) * 86400
    raise ValueError(f"cannot read age {text!r}: use a number with s, m, h, d or w (e.g. 30d)")
