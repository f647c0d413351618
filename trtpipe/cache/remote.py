"""The stage cache's remote tier: a directory every worker can reach (a network filesystem) or an
object store URL (fsspec: file://, s3://, gs://, ...), shared by the machines of a build farm.

Entries there are immutable and content-addressed, so no lock is ever needed across machines
(flock does not work across them anyway):

* `blobs/<sha[:2]>/<sha256>`: one file's bytes, named by their sha256;
* `entries/<stage>/<key[:2]>/<key>.json`: an entry's manifest (the local manifest: every file's
  size and sha256, the stage's metadata, a checksum of the manifest itself), written last.

Upload (right after a stage commits an entry locally, `Cache.open` attaches the tier): every
blob that is not there yet, then the manifest, each put-if-absent: on a directory a private
temporary file hard-linked to its final name (`link` fails if the name exists, atomically, NFS
included); on an object store one PUT (atomic per object). A manifest therefore only ever names
blobs that are complete, and an uploader that dies leaves at most unreferenced blobs or temporary
files, never a half entry. Two machines uploading the same key race harmlessly: the key fixes
the content.

Fetch (on a local miss): the manifest, then each blob into a local `Writer` (the local store's
crash-safe temporary directory), each checked against its size and sha256, then committed locally
as if the stage had run. A remote entry that does not verify is ignored with a warning (and never
deleted: other machines may be reading it).

Nothing here removes remote entries (`cache prune` prunes the local tier): expire them with the
object store's lifecycle rules, or by age on the shared directory (an entry's manifest may go
first; blobs nothing names any more are garbage).

Configured by $TRTPIPE_REMOTE_CACHE (a path or URL; `python pipeline.py build-all --remote-cache`
sets it for its tasks). $TRTPIPE_REMOTE_CACHE_LOG, when set, names a file that gets one JSON line
per fetch and upload (build-all counts remote hits with it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtpipe.cache.files import fsync_dir, sha256_file
from trtpipe.cache.hashing import digest
from trtpipe.errors import OutputError

ENV = "TRTPIPE_REMOTE_CACHE"
LOG_ENV = "TRTPIPE_REMOTE_CACHE_LOG"
STALE_PART_S = 86400  # an upload's temporary file older than this belongs to a dead uploader


def blob_path(sha: str) -> str:
    """Where a file with this sha256 lives in the remote tier (relative)."""
    return f"blobs/{sha[:2]}/{sha}"


def manifest_path(kind: str, key: str) -> str:
    """Where an entry's manifest lives in the remote tier (relative)."""
    return f"entries/{kind}/{key[:2]}/{key}.json"


class DirStore:
    """A remote tier on a directory (a network filesystem mounted on every worker)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        try:
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"remote cache {self.root}: cannot create it: {err.strerror or err}",
                              hint=f"point ${ENV} (or build-all --remote-cache) at a writable shared directory"
                              ) from err
        now = time.time()
        for part in (self.root / "tmp").glob("*.part"):  # left by uploaders that died a while ago
            with contextlib.suppress(OSError):
                if now - part.stat().st_mtime > STALE_PART_S:
                    part.unlink()

    def read_bytes(self, rel: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, rel: str) -> bool:
        """Whether `rel` is there."""
        return (self.root / rel).exists()

    def get_file(self, rel: str, dest: Path) -> None:
        """Copy `rel` to the local file `dest` (FileNotFoundError when it is not there)."""
        shutil.copyfile(self.root / rel, dest)

    def put_file(self, src: Path, rel: str) -> bool:
        """Copy `src` to `rel` unless it exists (atomic put-if-absent); True when this call wrote it."""
        final = self.root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "tmp" / f"{uuid.uuid4().hex}.part"
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            try:
                os.link(tmp, final)  # fails if the name exists: the first complete writer wins
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: rename (last writer wins, same bytes)
                if final.exists():
                    return False
                os.replace(tmp, final)
            fsync_dir(final.parent)
            return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class FsspecStore:
    """A remote tier on an fsspec URL (file://, s3://, gs://, ...)."""

    def __init__(self, url: str) -> None:
        try:
            import fsspec
        except ImportError as err:
            raise OutputError(f"remote cache {url}: URLs need fsspec (and the scheme's package, e.g. s3fs, gcsfs)",
                              hint="pip install 'trt-pipeline[ray]' (fsspec), plus s3fs / gcsfs for s3:// / gs://"
                              ) from err
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as err:
            raise OutputError(f"remote cache {url}: {err}",
                              hint="install the fsspec implementation for this scheme (s3fs, gcsfs, ...)") from err
        self.root = root.rstrip("/")
        self.url = url
        self.local = "file" in _protocols(self.fs)

    def _full(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def read_bytes(self, rel: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        try:
            return self.fs.cat_file(self._full(rel))
        except FileNotFoundError:
            return None

    def exists(self, rel: str) -> bool:
        """Whether `rel` is there."""
        return bool(self.fs.exists(self._full(rel)))

    def get_file(self, rel: str, dest: Path) -> None:
        """Download `rel` to the local file `dest`."""
        self.fs.get_file(self._full(rel), str(dest))

    def put_file(self, src: Path, rel: str) -> bool:
        """Upload `src` to `rel` unless it exists; True when this call wrote it. On a local
        filesystem through a temporary name and a rename; on an object store one PUT."""
        final = self._full(rel)
        if self.fs.exists(final):
            return False
        if not self.local:
            self.fs.put_file(str(src), final)  # a single PUT: readers see all of it or nothing
            return True
        parent = final.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{uuid.uuid4().hex}.part"
        try:
            self.fs.put_file(str(src), tmp)
            if self.fs.exists(final):
                return False
            self.fs.mv(tmp, final)
            return True
        finally:
            with contextlib.suppress(OSError):
                if self.fs.exists(tmp):
                    self.fs.rm_file(tmp)


def _protocols(fs: Any) -> tuple:
    proto = fs.protocol
    return tuple(proto) if isinstance(proto, (list, tuple)) else (proto,)


def open_store(url: str) -> DirStore | FsspecStore:
    """A store for a path (`DirStore`) or a URL with a scheme (`FsspecStore`).

    Args:
        url: a directory path, or an fsspec URL such as file:///mnt/cache, s3://bucket/prefix.

    Returns:
        The store.

    Raises:
        OutputError: the directory cannot be created, or fsspec (or the scheme's package) is missing.
    """
    if "://" in url:
        return FsspecStore(url)
    return DirStore(Path(url).expanduser().resolve())


class RemoteTier:
    """The remote tier of one local stage cache (see the module docstring)."""

    def __init__(self, store: DirStore | FsspecStore, warn: Callable[[str], Any], manifest_format: int,
                 log_path: str | Path | None = None) -> None:
        self.store, self.warn, self.format = store, warn, manifest_format
        self.log_path = Path(log_path) if log_path else None
        self.disabled = False           # after an upload error: warned once, local cache only
        self._fetching: set[tuple[str, str]] = set()

    def fetch(self, cache: Any, kind: str, key: str) -> Any:
        """Copy a remote entry into the local cache `cache` (a trtpipe.cache.Cache).

        Args:
            cache: the local stage cache (its `writer` builds the local copy crash-safely).
            kind: the stage kind (source, pass, precision, validate, build).
            key: the entry's cache key (hex).

        Returns:
            The local Entry, or None when the remote tier has no such entry (or one that does not
            verify, or cannot be read: warned).
        """
        if self.disabled:
            return None
        where = f"remote cache {self.store.url}: entry {kind}/{key[:16]}"
        try:
            raw = self.store.read_bytes(manifest_path(kind, key))
        except Exception as err:  # any backend error (network, permissions): a miss, said once
            self._fail(f"{where}: cannot read it ({type(err).__name__}: {err})")
            return None
        if raw is None:
            return None
        try:
            manifest = json.loads(raw)
            ok = isinstance(manifest, dict)  # anyone who can write to the shared tier can write anything
            checksum = manifest.pop("checksum", None) if ok else None
            ok = (ok and manifest.get("format") == self.format and manifest.get("key") == key
                  and manifest.get("kind") == kind and checksum == digest(manifest)
                  and isinstance(manifest.get("meta"), dict))
        except (ValueError, TypeError):
            ok = False
        if not ok:
            self.warn(f"{where}: its manifest does not match its checksum; ignored (it will be rebuilt locally)")
            return None
        t0 = time.perf_counter()
        writer = cache.writer(kind, key)
        with writer:
            size = 0
            files = manifest.get("files")
            if not isinstance(files, dict) or not all(
                    _plain_relative(name) and isinstance(info, dict) and isinstance(info.get("size"), int)
                    and isinstance(info.get("sha256"), str) for name, info in files.items()):
                self.warn(f"{where}: its manifest names files outside the entry or without size/sha256; ignored")
                return None
            for name, info in sorted(files.items()):
                dest = writer.dir / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.store.get_file(blob_path(info["sha256"]), dest)
                except Exception as err:  # a missing or unreadable blob: a miss
                    self.warn(f"{where}: cannot read {name} ({type(err).__name__}: {err}); ignored")
                    return None
                if dest.stat().st_size != info["size"] or sha256_file(dest) != info["sha256"]:
                    self.warn(f"{where}: {name} does not match its sha256; ignored (it will be rebuilt locally)")
                    return None
                cache.hasher.remember(dest, info["sha256"])  # checked just now: commit does not read it again
                size += info["size"]
            writer.meta = manifest["meta"]
            self._fetching.add((kind, key))
            try:
                entry = writer.commit()
            finally:
                self._fetching.discard((kind, key))
        self._log("fetch", kind, key, size, time.perf_counter() - t0)
        return entry

    def upload(self, entry: Any) -> None:
        """Upload a locally committed entry (a trtpipe.cache.Entry): blobs first, manifest last,
        each put-if-absent. Entries just fetched from this tier are not uploaded back. An error
        is warned about once and turns the tier off for the rest of the process."""
        if self.disabled or (entry.kind, entry.key) in self._fetching:
            return
        t0 = time.perf_counter()
        rel = manifest_path(entry.kind, entry.key)
        try:
            if self.store.exists(rel):
                return
            size = 0
            for name, info in sorted(entry.manifest["files"].items()):
                self.store.put_file(entry.path(name), blob_path(info["sha256"]))
                size += info["size"]
            manifest = dict(entry.manifest)
            manifest["checksum"] = digest(manifest)
            tmp = entry.dir.parent / f".{entry.key}.remote-{os.getpid()}.json"
            try:
                tmp.write_text(json.dumps(manifest, indent=1, default=str))
                self.store.put_file(tmp, rel)
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        except Exception as err:  # network, permissions, a full disk: the run goes on with its local cache
            self._fail(f"remote cache {self.store.url}: cannot upload entry {entry.kind}/{entry.key[:16]} "
                       f"({type(err).__name__}: {err}); not using the remote tier for the rest of this run")
            return
        self._log("upload", entry.kind, entry.key, size, time.perf_counter() - t0)

    def _fail(self, message: str) -> None:
        if not self.disabled:
            self.warn(message)
        self.disabled = True

    def _log(self, op: str, kind: str, key: str, size: int, seconds: float) -> None:
        if self.log_path is None:
            return
        line = json.dumps({"op": op, "kind": kind, "key": key, "bytes": size, "seconds": round(seconds, 3)})
        with open(self.log_path, "a") as f:  # one short line per append: O_APPEND keeps lines whole
            f.write(line + "\n")


def from_env(warn: Callable[[str], Any], manifest_format: int) -> RemoteTier | None:
    """The remote tier $TRTPIPE_REMOTE_CACHE names, or None when it is unset or empty.

    Args:
        warn: where warnings go (the run's UI).
        manifest_format: the local store's manifest format; remote entries of another are ignored.

    Returns:
        The RemoteTier, or None.

    Raises:
        OutputError: the directory cannot be created, or the URL's fsspec implementation is missing.
    """
    url = os.environ.get(ENV, "").strip()
    if not url:
        return None
    return RemoteTier(open_store(url), warn, manifest_format, os.environ.get(LOG_ENV) or None)


def _plain_relative(name: object) -> bool:
    """A manifest file name that stays inside the entry: relative, no `..`, no empty parts."""
    from pathlib import PurePosixPath
    if not isinstance(name, str) or not name or "\\" in name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and all(part not in ("", ".", "..") for part in p.parts)
