"""Content-addressed cache of stage outputs, so a re-run redoes only what an edit changed.

Every stage output is stored under a key that hashes everything the output depends on:

* source (conversion): the SavedModel's files (or the ONNX file and its external data), the
  converter options, the tensorflow/tf2onnx/onnx versions and this tool's converter code;
* each pass: the input model's sha256, the pass name, its parameters (and the content of files
  they name), the pass's code version (hash of its module, its package's private helpers and the
  pass runner), what earlier passes recorded for later stages (input contract, output map, NMS
  post-processing) and the onnx/onnx-graphsurgeon versions;
* precision: the input model's sha256, the precision settings, the target compute capabilities
  and, for reduced precision, the calibration/overflow-check data and input contract;
* validation: the source and final model sha256s, the post-processing model's, the data spec
  (and the content of data files), tolerances, precision, and the plan's sha256 when validation
  runs after the build (where a GPU can run it);
* build: the final ONNX sha256, the build settings, the backend and its version, the compute
  capabilities (tensorrt: the local GPU) and plugin library contents.

An entry is a directory `entries/<stage>/<k[:2]>/<k>/` with the files and a `manifest.json`
(sizes, sha256 of every file, the stage's metadata, and a checksum of the manifest itself). It is
written in `tmp/` and renamed into place only when complete, so a crash or SIGKILL never leaves a
partial entry; a failed stage never writes one. Entries are verified when their content is read:
a corrupt one is discarded with a warning and rebuilt. Leftover temporary directories of dead
runs are removed by the next run (their owner lock is gone, see lock.py).

Location: --cache-dir, else $TRTPIPE_CACHE_DIR, else $XDG_CACHE_HOME/trt-pipeline (default
~/.cache/trt-pipeline). TensorRT timing caches live in `timing/`, one per backend and device.

Test-only hook: TRTPIPE_TEST_PAUSE_AT=<stage label> (source, passes, passes[N], precision,
validate, build, publish) makes a run print `TRTPIPE_TEST_PAUSED <label>` on stderr and sleep
when that stage's output is complete but not yet committed, so tests can SIGKILL it at a known
point. Never set it outside tests.
"""

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from .errors import OutputError
from .lock import OWNER_FILE, FileLock, is_abandoned, own_directory

ENV = "TRTPIPE_CACHE_DIR"
PAUSE_ENV = "TRTPIPE_TEST_PAUSE_AT"
FORMAT = 1
MANIFEST = "manifest.json"
MODEL = "model.onnx"
# Models at least this big are stored with their weights in MODEL + ".data" (protobuf cannot
# serialize 2 GiB); a module constant so tests can exercise the external-data path cheaply.
EXTERNAL_DATA_BYTES = 2**31 - 1
STAGES = ("source", "pass", "precision", "validate", "build")
_TRTPIPE = Path(__file__).resolve().parent


class CorruptEntry(Exception):
    """A cache entry whose files do not match its manifest (already discarded when raised)."""


# ------------------------------------------------------------------------------------ location

def default_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trt-pipeline"


def resolve_dir(flag=None):
    """(path, how it was chosen): --cache-dir, $TRTPIPE_CACHE_DIR, or the XDG default."""
    if flag:
        return Path(flag).expanduser().resolve(), "--cache-dir"
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser().resolve(), f"${ENV}"
    return default_dir(), "default (XDG cache directory)"


# ------------------------------------------------------------------------------------- hashing

def digest(obj):
    """sha256 of a JSON-able value in canonical form."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path, copy_to=None):
    """sha256 of a file, streamed; with `copy_to` also writes the bytes there (one read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f, (open(copy_to, "wb") if copy_to else contextlib.nullcontext()) as out:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            if out:
                out.write(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _file_text_hash(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def code_version(*modules):
    """Hash of trtpipe source files (by module name), so code changes invalidate entries."""
    return digest([_file_text_hash(_TRTPIPE / f"{m}.py") for m in modules])


def dist_version(*names):
    """Installed version of the first distribution found (no import: TensorFlow costs seconds)."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions(*dists):
    return {d: dist_version(d) for d in dists}


def pass_code_version(info):
    """The pass module's hash (PassInfo.version) plus, for packaged passes, the package's private
    helper modules (`_*.py`: e.g. passes/_nms_match.py) and the pass runner (transform.py)."""
    import inspect
    module = inspect.getmodule(info.func)
    parts = [info.version, code_version("transform", "registry")]
    path = getattr(module, "__file__", None)
    if path and "." in module.__name__:  # inside a package: its private helpers count too
        for helper in sorted(Path(path).parent.glob("_*.py")):
            parts.append(_file_text_hash(helper))
    return digest(parts)


class Hasher:
    """sha256 of files and directories, remembered per (path, size, mtime, inode) under the cache
    so a re-run does not re-read gigabytes of unchanged weights. A file modified within the last
    2 s is always re-read (its mtime may not have ticked yet)."""

    def __init__(self, root=None):
        self.root = Path(root) / "filehash" if root else None
        self._mem = {}

    def file(self, path):
        path = Path(path).resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        if str(path) in self._mem and self._mem[str(path)][0] == stamp:
            return self._mem[str(path)][1]
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
        if memo and not fresh:
            with contextlib.suppress(OSError):
                atomic_write(memo, json.dumps({"path": str(path), "stamp": stamp, "sha256": value}).encode())
        return value

    def tree(self, directory):
        """Hash of a directory's files (relative names + contents)."""
        directory = Path(directory)
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        return digest([[p.relative_to(directory).as_posix(), self.file(p)] for p in files])

    def path(self, path):
        return self.tree(path) if Path(path).is_dir() else self.file(path)

    def onnx_file(self, path):
        """An ONNX file plus the external data files it names."""
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data
        path = Path(path)
        own = self.file(path)
        key = ("deps", str(path.resolve()), own)
        if key not in self._mem:
            try:
                model = onnx.load(str(path), load_external_data=False)
                tensors = _all_tensors(model)
                locations = sorted({ExternalDataInfo(t).location for t in tensors if uses_external_data(t)})
            except Exception:  # unreadable: the source stage reports it; hash what is there
                locations = []
            self._mem[key] = locations
        deps = [[loc, self.file(path.parent / loc)] for loc in self._mem[key] if (path.parent / loc).is_file()]
        return digest([own, deps])


def _all_tensors(model):
    from onnx.external_data_helper import _get_all_tensors
    return list(_get_all_tensors(model))


def referenced_files(value, base, hasher):
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


# -------------------------------------------------------------------------------------- files

def atomic_write(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_dir(path):
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_model(model, path):
    """Save a ModelProto; a large one with its weights in `<name>.data` beside it. The in-memory
    model keeps its weights (onnx moves them out while saving; they are read back once)."""
    import onnx
    path = Path(path)
    if model.ByteSize() >= EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        onnx.load_external_data_for_model(model, str(path.parent))
    else:
        onnx.save_model(model, str(path))


def model_files(path):
    """[path] or [path, path.data]: the files a saved model consists of."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


def copy_model(src, dest):
    """Copy a saved model (and its external data, renamed after `dest`) without loading weights."""
    import onnx
    src, dest = Path(src), Path(dest)
    files = model_files(src)
    if len(files) == 1:
        shutil.copyfile(src, dest)
        return
    shutil.copyfile(files[1], dest.with_name(dest.name + ".data"))
    model = onnx.load(str(src), load_external_data=False)
    for t in _all_tensors(model):
        for kv in t.external_data:
            if kv.key == "location":
                kv.value = dest.name + ".data"
    onnx.save_model(model, str(dest))


# -------------------------------------------------------------------------------------- cache

class Entry:
    def __init__(self, cache, kind, key, directory, manifest):
        self.cache, self.kind, self.key, self.dir, self.manifest = cache, kind, key, Path(directory), manifest

    @property
    def meta(self):
        return self.manifest["meta"]

    def path(self, name):
        return self.dir / name

    def verify(self, names=None):
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
            elif sha256_file(path) != info["sha256"]:
                problem = f"{name} does not match its sha256"
            if problem:
                self.cache.discard(self, problem)
                raise CorruptEntry(f"cache entry {self.kind}/{self.key[:16]}: {problem}")

    def model_files(self, name=MODEL):
        return [n for n in (name, name + ".data") if n in self.manifest["files"]]

    def touch(self):
        with contextlib.suppress(OSError):
            os.utime(self.dir / MANIFEST)


class Writer:
    """Builds an entry in a private temporary directory; `commit()` renames it into place."""

    def __init__(self, cache, kind, key):
        self.cache, self.kind, self.key = cache, kind, key
        self.dir = Path(tempfile.mkdtemp(dir=cache.tmp_dir, prefix=f"{kind}-"))
        self._owner = own_directory(self.dir)
        self.meta = {}
        self.committed = False

    def save_model(self, model, name=MODEL):
        save_model(model, self.dir / name)
        return self.model_sha(name)

    def model_sha(self, name=MODEL):
        files = model_files(self.dir / name)
        return sha256_file(files[0]) if len(files) == 1 else digest([sha256_file(p) for p in files])

    def add_file(self, name, src):
        dest = self.dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)

    def commit(self, pause_label=None):
        """Write the manifest and rename the directory into place; returns the Entry. If another
        run committed the same key meanwhile, its entry is kept (same key, same content)."""
        files = {}
        for p in sorted(self.dir.rglob("*")):
            if p.is_file() and p.name not in (MANIFEST, OWNER_FILE):
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
                files[p.relative_to(self.dir).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
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
        _fsync_dir(final.parent)
        with contextlib.suppress(OSError):
            os.unlink(final / OWNER_FILE)
        self._owner.release()
        self.committed = True
        entry = self.cache.get(self.kind, self.key, verify=())
        if entry is None:
            raise OutputError(f"cache entry {self.kind}/{self.key[:16]} vanished right after it was written")
        return entry

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.committed:
            self.abort()
        return False

    def abort(self):
        self._owner.release()
        shutil.rmtree(self.dir, ignore_errors=True)


class Cache:
    def __init__(self, root, warn=None):
        self.root = Path(root)
        self.warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
        self.hasher = Hasher(self.root)
        self.replace_existing = False

    # layout ---------------------------------------------------------------------------------
    @property
    def tmp_dir(self):
        return self.root / "tmp"

    def entry_dir(self, kind, key):
        return self.root / "entries" / kind / key[:2] / key

    def open(self):
        """Create the layout and remove leftovers of dead runs; OutputError when not writable."""
        try:
            for sub in ("entries", "tmp", "locks", "timing", "filehash", "trash"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cache directory {self.root} is not writable: {err.strerror or err}",
                              hint=f"point --cache-dir or ${ENV} at a writable directory")
        self.clean_abandoned()
        return self

    def clean_abandoned(self):
        removed = 0
        for d in list(self.tmp_dir.iterdir()) + list((self.root / "trash").iterdir()):
            if d.is_dir() and (d.parent.name == "trash" or is_abandoned(d)):
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        return removed

    # locks ----------------------------------------------------------------------------------
    def recipe_lock(self, recipe_path, on_wait=None):
        name = hashlib.sha256(str(Path(recipe_path).resolve()).encode()).hexdigest()[:24]
        return FileLock(self.root / "locks" / f"recipe-{name}.lock", on_wait=on_wait)

    def use_lock(self):
        """Held shared by every run, exclusively by prune: prune never removes what a run reads."""
        return FileLock(self.root / "locks" / "cache.lock", shared=True)

    # entries --------------------------------------------------------------------------------
    def get(self, kind, key, verify=None):
        """The entry for `key`, or None. `verify`: files to check now (None: all; () none yet)."""
        d = self.entry_dir(kind, key)
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except FileNotFoundError:
            return None
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
        entry.touch()
        return entry

    def writer(self, kind, key):
        return Writer(self, kind, key)

    def discard(self, entry, reason):
        self.discard_dir(entry.dir, f"cache entry {entry.kind}/{entry.key[:16]}: {reason}")

    def discard_dir(self, d, message=None):
        if message:
            self.warn(f"{message}; discarded, it will be rebuilt")
        trash = self.root / "trash" / f"{d.name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(d, trash)  # atomic: no reader ever sees a half-deleted entry
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def entries(self):
        base = self.root / "entries"
        for kind_dir in sorted(base.iterdir()) if base.is_dir() else []:
            for d in sorted(kind_dir.glob("*/*")):
                yield kind_dir.name, d

    # timing caches ----------------------------------------------------------------------------
    def timing_cache_path(self, backend, device):
        slug = "".join(c if c.isalnum() or c in ".-" else "_" for c in f"{backend.name}-{backend.version}-{device}")
        return self.root / "timing" / f"{slug}.cache"

    # info / prune ---------------------------------------------------------------------------
    def info(self):
        stats = {}
        total, oldest, newest = 0, None, None
        for kind, d in self.entries():
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
            used = (d / MANIFEST).stat().st_mtime if (d / MANIFEST).exists() else d.stat().st_mtime
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

    def verify_all(self):
        """Check every entry in full; returns the problems found (those entries are discarded)."""
        problems, warn = [], self.warn
        self.warn = problems.append
        try:
            for kind, d in list(self.entries()):
                self.get(kind, d.name, verify=None)
        finally:
            self.warn = warn
        return problems

    def prune(self, older_than_s=None, dry_run=False):
        """Remove entries not used for `older_than_s` seconds (None: all). Waits for running
        builds (they hold the cache lock shared). Returns (entries removed, bytes freed)."""
        lock = FileLock(self.root / "locks" / "cache.lock")
        with lock:
            now, count, freed = time.time(), 0, 0
            for _, d in list(self.entries()):
                m = d / MANIFEST
                used = m.stat().st_mtime if m.exists() else d.stat().st_mtime
                if older_than_s is not None and now - used < older_than_s:
                    continue
                count += 1
                freed += sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
                if not dry_run:
                    self.discard_dir(d)
            if not dry_run:
                self.clean_abandoned()
                for p in (self.root / "filehash").glob("*.json"):
                    with contextlib.suppress(OSError):
                        if older_than_s is None or now - p.stat().st_mtime >= older_than_s:
                            p.unlink()
            return count, freed


def parse_age(text):
    """'30d', '12h', '90m', '45s', '2w' -> seconds; ValueError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    text = str(text).strip().lower()
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return float(text[:-1]) * units[text[-1]]
    if text.replace(".", "", 1).isdigit():
        return float(text) * 86400
    raise ValueError(f"cannot read age {text!r}: use a number with s, m, h, d or w (e.g. 30d)")


# ------------------------------------------------------------------------------------ test hook

def pause(label):
    """TRTPIPE_TEST_PAUSE_AT (tests only): stop at `label` so a test can SIGKILL the run there."""
    want = os.environ.get(PAUSE_ENV)
    if not want or not label:
        return
    if want == label or (want == "passes" and label.startswith("passes[")):
        print(f"TRTPIPE_TEST_PAUSED {label}", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("TRTPIPE_TEST_PAUSE_SECONDS", "120")))


# ------------------------------------------------------------------------------------ stage keys

class Keys:
    """Cache keys of one recipe's stages (see the module docstring for what each covers)."""

    def __init__(self, recipe, backend, hasher):
        self.recipe, self.backend, self.hasher = recipe, backend, hasher

    def source(self):
        src = self.recipe.data["source"]
        opts = {k: v for k, v in src.items() if k not in ("onnx", "saved_model")}
        if src.get("onnx"):
            content = self.hasher.onnx_file(src["onnx"]) if Path(src["onnx"]).is_file() else None
            tools = versions("onnx")
        else:
            path = Path(src["saved_model"])
            content = self.hasher.tree(path) if path.is_dir() else None
            tools = versions("onnx", "tf2onnx", "tensorflow", "tensorflow-cpu", "numpy")
        if content is None:
            return None  # missing source: the stage fails and reports it
        return digest({"stage": "source", "kind": "onnx" if src.get("onnx") else "saved_model",
                       "content": content, "options": opts, "versions": tools,
                       "code": code_version("source")})

    def pass_(self, index, item, input_sha, ctx_state):
        from . import registry
        info = registry.get(item["pass"])
        return digest({"stage": "pass", "input": input_sha, "pass": item["pass"], "params": item["params"],
                       "files": referenced_files(item["params"], self.recipe.dir, self.hasher),
                       "code": pass_code_version(info), "ctx": ctx_state, "context": self._pass_context(),
                       "versions": versions("onnx", "onnx-graphsurgeon", "numpy")})

    def _pass_context(self):
        build = self.recipe.data["build"]
        return {"name": self.recipe.name, "backend": self.backend.name, "backend_version": self.backend.version,
                "plugins": [[Path(p).name, self.hasher.file(p) if Path(p).is_file() else None]
                            for p in build.get("plugins") or []]}

    def precision(self, input_sha, source_sha, contract):
        prec = self.recipe.data["precision"]
        mode = prec if isinstance(prec, str) else (prec or {}).get("mode", "fp32")
        parts = {"stage": "precision", "input": input_sha, "precision": prec, "ccs": self._ccs(),
                 "versions": versions("onnx", "onnxruntime", "onnxconverter-common", "numpy"),
                 "code": code_version("precision", "quantize", "graph_types", "validate_data")}
        if mode != "fp32":  # calibration / overflow checks run the model on the validation data
            data = (self.recipe.data.get("validate") or {}).get("data")
            parts.update(source=source_sha, contract=contract, data=data,
                         files=referenced_files([prec, data], self.recipe.dir, self.hasher))
        return digest(parts)

    def validate(self, source_sha, final_sha, ctx_state, plan_sha=None):
        cfg = self.recipe.data.get("validate")
        return digest({"stage": "validate", "source": source_sha, "final": final_sha, "ctx": ctx_state,
                       "validate": cfg, "precision": self.recipe.data["precision"], "plan": plan_sha,
                       "backend": [self.backend.name, self.backend.version, self._ccs()] if plan_sha else None,
                       "files": referenced_files(cfg, self.recipe.dir, self.hasher),
                       "versions": versions("onnx", "onnxruntime", "polygraphy", "numpy", "pillow"),
                       "code": code_version("validate", "validate_data", "detections", "precision", "graph_types")})

    def build(self, final_sha):
        b = self.recipe.data["build"]
        settings = {k: b.get(k) for k in ("workspace_bytes", "optimization_level", "profiles")}
        return digest({"stage": "build", "input": final_sha, "settings": settings, "ccs": self._ccs(),
                       "backend": [self.backend.name, self.backend.version], "device": self.device(),
                       "plugins": self._pass_context()["plugins"], "code": code_version("build", "plugins")})

    def _ccs(self):
        return list(self.recipe.data["build"]["compute_capabilities"]) if self.backend.is_rtx else None

    def device(self):
        """What the plan is built for: RTX's compute capabilities, else the local GPU."""
        if self.backend.is_rtx:
            return "sm" + "+".join(c.replace(".", "") for c in self.recipe.data["build"]["compute_capabilities"])
        from .backend import _probe_cuda
        ok, info = _probe_cuda()
        return f"{info['name']}-sm{info['cc'].replace('.', '')}" if ok else "no-gpu"


def ctx_state(ctx, hasher):
    """What passes hand to later stages, in a form that keys and entries can hold."""
    return {"input_contract": ctx.input_contract, "output_map": ctx.output_map, "postprocess": ctx.postprocess,
            "artifacts": {name: hasher.file(p) if Path(p).is_file() else None
                          for name, p in sorted(ctx.artifacts.items())}}


# --------------------------------------------------------------------------------- stage status

def stage_status(recipe, cache_dir=None):
    """{stage label: "cached" | "would run"} for `recipe` (a path or a loaded Recipe), without
    converting, running or building anything. Labels: source, passes[i], precision, validate,
    build, publish (recipe_diff.stage_labels). A stage whose key depends on an earlier output
    that is not cached "would run". Disabled passes are "skipped"; publish always runs."""
    from .backend import has_runtime_gpu, resolve_backend
    from .recipe import load_recipe
    from .recipe_diff import stage_labels
    if not hasattr(recipe, "data"):
        recipe = load_recipe(recipe)
    labels = stage_labels(len(recipe.data["passes"]))
    status = {label: "would run" for label in labels}
    root, _ = resolve_dir(cache_dir)
    try:
        backend = resolve_backend(recipe.data["build"]["backend"])
    except Exception:
        return status
    if not (root / "entries").is_dir():
        return status
    cache = Cache(root)
    keys = Keys(recipe, backend, cache.hasher)
    try:
        key = keys.source()
    except OSError:
        return status
    entry = cache.get("source", key, verify=()) if key else None
    if entry is None:
        return status
    status["source"] = "cached"
    source_sha = cur = entry.meta["model_sha"]
    state = {"input_contract": entry.meta["input_contract"], "output_map": {}, "postprocess": None, "artifacts": {}}
    for i, item in enumerate(recipe.data["passes"]):
        if not item.get("enabled", True):
            status[f"passes[{i}]"] = "skipped"
            continue
        entry = cache.get("pass", keys.pass_(i, item, cur, state), verify=())
        if entry is None:
            return status
        status[f"passes[{i}]"] = "cached"
        cur, state = entry.meta["model_sha"], entry.meta["ctx"]
    entry = cache.get("precision", keys.precision(cur, source_sha, state["input_contract"]), verify=())
    if entry is None:
        return status
    status["precision"] = "cached"
    final, state = entry.meta["model_sha"], dict(state, input_contract=entry.meta["input_contract"])
    gpu_ok, _ = has_runtime_gpu(backend, recipe.data["build"]["compute_capabilities"])
    build = cache.get("build", keys.build(final), verify=())
    if build is not None:
        status["build"] = "cached"
    plan_sha = build.meta["plan_sha"] if (gpu_ok and build is not None) else None
    if not gpu_ok or plan_sha:
        if cache.get("validate", keys.validate(source_sha, final, state, plan_sha), verify=()) is not None:
            status["validate"] = "cached"
    return status
