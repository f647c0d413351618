"""Writing the plan file: streamed while the builder serializes it (big models), or built as bytes
and written (small ones); a write that fails is an OutputError, never a truncated plan kept."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from trtpipe.errors import OutputError
from trtpipe.fileguard import disk_full_error, is_disk_full

# Below this many bytes of weights the plan is built as bytes and written whole: the stream API
# cost 45 ms more on a 100 MB-weight ResNet-50 (bench/cold_overhead.py, TensorRT-RTX 1.7.1), and a
# plan this small is no burden in memory. Above, it streams (issue 13, P3: models over 2 GiB).
STREAM_FROM_BYTES = 512 << 20


def weight_bytes(model_path: str | Path) -> int:
    """The model file and the external data files it names, in bytes (their sizes; nothing is
    read but the graph's wire format). A missing data file counts 0 (the parser reports it)."""
    from trtpipe.review.model_names import external_locations
    base = os.path.dirname(os.path.abspath(model_path))
    total = os.path.getsize(model_path)
    for location in external_locations(model_path):
        with contextlib.suppress(OSError):
            total += os.path.getsize(os.path.join(base, location))
    return total


def build_to_file(trt: Any, builder: Any, network: Any, config: Any, plan_file: str | Path,
                  weights: int = STREAM_FROM_BYTES) -> bool:
    """The plan into `plan_file`. For models with `weights` bytes >= STREAM_FROM_BYTES through
    build_serialized_network_to_stream: the plan goes to disk as the builder writes it (a plan as
    big as its weights is never a second copy in memory); smaller ones are built as bytes and
    written. True when built (else the builder's errors say why).

    Raises:
        OutputError: the plan file cannot be written (disk full, quota, file size limit: with
            the bytes needed; TensorRT swallows a stream writer's error, so it is kept and
            raised here).
    """
    # TensorRT 10.x before the stream API: bytes, whatever the size
    stream = hasattr(builder, "build_serialized_network_to_stream") and hasattr(trt, "IStreamWriter")
    if weights < STREAM_FROM_BYTES or not stream:
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            return False
        try:
            with open(plan_file, "wb") as f:
                f.write(memoryview(serialized))
        except OSError as err:
            written = os.path.getsize(plan_file) if os.path.isfile(plan_file) else None
            with contextlib.suppress(OSError):
                os.unlink(plan_file)
            if is_disk_full(err):
                raise disk_full_error(err, plan_file, what="the plan", written=written) from err
            raise OutputError(f"cannot write the plan to {plan_file}: {err.strerror or err}") from err
        return True

    class _Writer(trt.IStreamWriter):
        def __init__(self, f):
            trt.IStreamWriter.__init__(self)
            self.f, self.error = f, None

        def write(self, data):
            # TensorRT catches what this raises and prints it, then may still report success with
            # a truncated plan: keep the first OSError (disk full, file size limit) and raise it
            # after the build, where the caller turns it into an output error.
            if self.error is not None:
                return 0
            view = memoryview(data)
            try:
                self.f.write(view)
            except OSError as err:
                self.error = err
                return 0
            return len(view)

    writer = None
    try:
        with open(plan_file, "wb") as f:
            writer = _Writer(f)
            ok = builder.build_serialized_network_to_stream(network, config, writer)
    except OSError as err:  # the final flush or close can fail the same way
        if writer is not None and writer.error is None:
            writer.error = err
    if writer is not None and writer.error is not None:
        written = os.path.getsize(plan_file) if os.path.isfile(plan_file) else None
        with contextlib.suppress(OSError):
            os.unlink(plan_file)
        err = writer.error
        if is_disk_full(err):
            raise disk_full_error(err, plan_file, what="the plan", written=written)
        raise OutputError(f"cannot write the plan to {plan_file}: {err.strerror or err}") from err
    if not ok:
        with contextlib.suppress(OSError):
            os.unlink(plan_file)
    return bool(ok)
