"""TensorRT-RTX's runtime cache (`build.runtime_cache`): where a GPU runs the plan.

TensorRT-RTX builds ahead of time and compiles the last kernels just in time, on the GPU that runs
the plan. NVIDIA's TensorRT-RTX documentation ("Working with Runtime Cache", "Timing Cache
Migration") replaces TensorRT's timing cache with a runtime cache: an IRuntimeCache attached to
the IRuntimeConfig an execution context is created with, serialized to a file after use and
deserialized before the next run, so later runs skip the compilation. It is used only where the
engine runs (engine validation, `predict`, `bench` on a GPU): a TensorRT-RTX plan cannot be
deserialized without one, so nowhere else. TensorRT (not RTX) has no runtime cache; there the
engine is used as it is.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from trtpipe.fileguard import special_kind


@contextlib.contextmanager
def engine_or_context(backend: Any, engine: Any, path: str | None) -> Iterator[Any]:
    """What Polygraphy's TrtRunner should run: for TensorRT-RTX with a runtime-cache `path`, an
    execution context whose runtime config holds the cache read from `path` (when the file
    exists), written back to `path` (atomically) when the block ends; otherwise `engine` itself.

    Args:
        backend: trtpipe.backend.Backend of the plan.
        engine: a deserialized ICudaEngine, or a callable returning one (Polygraphy's loaders).
        path: the recipe's resolved build.runtime_cache, or None.

    Raises:
        OSError: the cache file exists but is not a regular file (never read: it could block), or
            cannot be written back.
    """
    if not path or not backend.is_rtx:
        yield engine
        return
    kind = special_kind(path)
    if kind not in (None, "missing"):
        raise OSError(f"runtime cache {path} is {kind}, not a regular file")
    engine = engine() if callable(engine) else engine
    config = engine.create_runtime_config()
    cache = config.create_runtime_cache()
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            blob = fh.read()
        if blob and not cache.deserialize(blob):  # another GPU / version: TensorRT-RTX starts afresh
            cache.reset()
    config.set_runtime_cache(cache)
    context = engine.create_execution_context(config)
    try:
        yield context
    finally:
        save(bytes(memoryview(config.get_runtime_cache().serialize())), path)


def save(blob: bytes, path: str) -> None:
    """Write a serialized runtime cache to `path` in full or not at all (a temporary file renamed)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".runtime-cache-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
