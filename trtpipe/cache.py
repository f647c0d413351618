"""The stage cache: every stage output is stored under a key that hashes everything it depends
on, so a re-run redoes only what an edit changed. This module is its public face; the parts:

* cache_keys.py    - what each stage's key covers (`Keys`, `ctx_state`);
* cache_hashing.py - the hashes keys are made of (file/directory contents, code and tool versions);
* cache_store.py   - the on-disk content-addressed store: location, crash-safe entries with
                     manifests, verification, info/prune, the tests' pause hook;
* cache_files.py   - atomic writes, streamed sha256, models with external weights;
* cache_status.py  - which stages of a recipe are cached, for `explain`.

run.py and the *_stage.py modules use the store; `python pipeline.py cache info|prune` manages it.
"""

from .cache_files import MODEL, atomic_write, copy_model, model_files, save_model, sha256_file
from .cache_hashing import Hasher, code_version, digest, pass_code_version, referenced_files, versions
from .cache_keys import Keys, ctx_state
from .cache_status import stage_status
from .cache_store import (ENV, FORMAT, MANIFEST, PAUSE_ENV, Cache, CorruptEntry, Entry, Writer, default_dir,
                          parse_age, pause, resolve_dir)

__all__ = ["MODEL", "atomic_write", "copy_model", "model_files", "save_model", "sha256_file",
           "Hasher", "code_version", "digest", "pass_code_version", "referenced_files", "versions",
           "Keys", "ctx_state", "stage_status",
           "ENV", "FORMAT", "MANIFEST", "PAUSE_ENV", "Cache", "CorruptEntry", "Entry", "Writer", "default_dir",
           "parse_age", "pause", "resolve_dir"]
