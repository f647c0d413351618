"""File primitives of the stage cache: crash-safe writes, streamed sha256, and ONNX models that
keep their weights in an external `.data` file once they are too big for one protobuf."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

MODEL = "model.onnx"
# Models at least this big are stored with their weights in MODEL + ".data" (protobuf cannot
# serialize 2 GiB); a module constant so tests can exercise the external-data path cheaply.
EXTERNAL_DATA_BYTES = 2**31 - 1


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, streamed (weights files can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write `data` through a synced temporary file renamed into place: readers never see a part."""
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


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def all_tensors(model: "onnx.ModelProto") -> list:
    """Every TensorProto of a model: initializers, sparse initializers' values, and tensor
    attributes (`t`, `tensors`), in the main graph and every subgraph (what
    onnx.external_data_helper's private _get_all_tensors walks, with public protobuf fields)."""
    out = []

    def walk(graph):
        out.extend(graph.initializer)
        out.extend(s.values for s in graph.sparse_initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    out.append(attr.t)
                out.extend(attr.tensors)
                if attr.HasField("g"):
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)
    walk(model.graph)
    return out


def save_model(model: onnx.ModelProto, path: str | Path) -> None:
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


def model_files(path: str | Path) -> list[Path]:
    """[path] or [path, path.data]: the files a saved model consists of."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


def copy_model(src: str | Path, dest: str | Path) -> None:
    """Copy a saved model (and its external data, renamed after `dest`) without loading weights."""
    import onnx
    src, dest = Path(src), Path(dest)
    files = model_files(src)
    if len(files) == 1:
        shutil.copyfile(src, dest)
        return
    shutil.copyfile(files[1], dest.with_name(dest.name + ".data"))
    model = onnx.load(str(src), load_external_data=False)
    for t in all_tensors(model):
        for kv in t.external_data:
            if kv.key == "location":
                kv.value = dest.name + ".data"
    onnx.save_model(model, str(dest))
