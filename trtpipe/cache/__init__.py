"""The stage cache: every stage output is stored under a key that hashes everything it depends
on, so a re-run redoes only what an edit changed. This module is its public face; the parts:

* keys.py    - what each stage's key covers (`Keys`, `ctx_state`);
* code.py    - the code a stage depends on: the import closure of its modules, hashed;
* hashing.py - the other hashes keys are made of (file/directory contents, tool versions);
* store.py   - the on-disk content-addressed store: location, crash-safe entries with
               manifests, verification, info/prune, the tests' pause hook;
* files.py   - atomic writes, streamed sha256, models with external weights;
* lock.py    - flock-based locks: one run per recipe, prune waits for running builds;
* remote.py  - the shared remote tier (a network directory or an fsspec URL) of a build farm;
* status.py  - which stages of a recipe are cached, for `explain`;
* commands.py - `python pipeline.py cache info|prune` (checking entries is no use; prune
               everything only when asked).

stages/run.py and the stages/*/cached.py wrappers use it; `python pipeline.py cache info|prune`
manages it.
"""

from trtpipe.cache.code import code_digest, import_closure
from trtpipe.cache.files import MODEL, atomic_write, copy_model, model_files, save_model, sha256_file
from trtpipe.cache.hashing import Hasher, digest, referenced_files, versions
from trtpipe.cache.keys import Keys, ctx_state
from trtpipe.cache.status import stage_status
from trtpipe.cache.store import (
                          ENV,
                          FORMAT,
                          MANIFEST,
                          PAUSE_ENV,
                          Cache,
                          CorruptEntry,
                          Entry,
                          Writer,
                          default_dir,
                          parse_age,
                          pause,
                          resolve_dir,
)

__all__ = ["MODEL", "atomic_write", "copy_model", "model_files", "save_model", "sha256_file",
           "Hasher", "code_digest", "digest", "import_closure", "referenced_files", "versions",
           "Keys", "ctx_state", "stage_status",
           "ENV", "FORMAT", "MANIFEST", "PAUSE_ENV", "Cache", "CorruptEntry", "Entry", "Writer", "default_dir",
           "parse_age", "pause", "resolve_dir"]
