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
    import numpy as np
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
    attributes (`t`, `tensors`), in the main graph, every subgraph and the model's local functions'
    nodes (what onnx.external_data_helper's private _get_all_tensors walks, with public protobuf
    fields; onnx.load loads external data for all of them)."""
    out = []

    def walk_nodes(nodes):
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    out.append(attr.t)
                out.extend(attr.tensors)
                if attr.HasField("g"):
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    def walk(graph):
        out.extend(graph.initializer)
        out.extend(s.values for s in graph.sparse_initializer)
        walk_nodes(graph.node)
    walk(model.graph)
    for function in model.functions:
        walk_nodes(function.node)
    return out


def is_external(tensor: "onnx.TensorProto") -> bool:
    """True when the tensor's bytes live in an external data file."""
    import onnx
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _ext(tensor):
    """(location, offset, length) of an external tensor; length None when not recorded."""
    kv = {e.key: e.value for e in tensor.external_data}
    length = kv.get("length")
    return kv.get("location", ""), int(kv.get("offset") or 0), int(length) if length not in (None, "") else None


# Models whose external data reach this many bytes keep their weights on disk through the stages
# (references); smaller ones are loaded whole, so every tool (constant folding in ONNX Runtime
# included) sees their values. A module constant so tests can take the reference path cheaply.
KEEP_EXTERNAL_BYTES = 1 << 30


def external_bytes(model: "onnx.ModelProto") -> int:
    """Total bytes of a model's tensors that live in external data files."""
    total = 0
    for t in all_tensors(model):
        if is_external(t):
            length = _ext(t)[2]
            total += length if length is not None else _elements(t) * 4
    return total


def load_model(path: str | Path) -> "onnx.ModelProto":
    """Load a saved model. With at least KEEP_EXTERNAL_BYTES in external data, its graph only:
    tensors in external data stay references, their `location` made absolute (in memory only:
    `save_model` writes relative ones, and `read_tensor` reads them), so a model over 2 GiB is a
    few kilobytes of protobuf here. Smaller ones are loaded with their weights.

    Args:
        path: the .onnx file (its external data files beside it).

    Returns:
        The ModelProto; weights that were inline stay inline.
    """
    import onnx
    path = Path(path).resolve()
    model = onnx.load(str(path), load_external_data=False)
    if external_bytes(model) < KEEP_EXTERNAL_BYTES:
        onnx.load_external_data_for_model(model, str(path.parent))
        return model
    for t in all_tensors(model):
        if is_external(t):
            for kv in t.external_data:
                if kv.key == "location" and not os.path.isabs(kv.value):
                    kv.value = str(path.parent / kv.value)
    inline_small(model)
    return model


SMALL_ELEMENTS = 4096  # external tensors this small are read into the model (graph.types.skeleton's limit)


def inline_small(model: "onnx.ModelProto", limit: int = SMALL_ELEMENTS) -> None:
    """Read external tensors of at most `limit` elements into the model (in place): the graph
    checks run on a skeleton that keeps such tensors, and onnx.checker refuses the absolute
    locations references have in memory. Large weights stay references."""
    import numpy as np
    from onnx import numpy_helper
    for t in all_tensors(model):
        if is_external(t) and int(np.prod(t.dims, dtype=np.int64)) <= limit:
            t.CopyFrom(numpy_helper.from_array(read_tensor(t), t.name))


def external_files(model: "onnx.ModelProto") -> list[Path]:
    """The absolute external data files a model loaded by `load_model` refers to (sorted)."""
    return sorted({Path(_ext(t)[0]) for t in all_tensors(model) if is_external(t)})


def read_tensor(tensor: "onnx.TensorProto") -> "np.ndarray":
    """A tensor's values as a numpy array, read from its external data file (absolute location,
    as `load_model` leaves it) when it has one: one tensor at a time, never the whole file."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    if not is_external(tensor):
        return numpy_helper.to_array(tensor)
    location, offset, length = _ext(tensor)
    if not os.path.isabs(location):
        raise ValueError(f"tensor {tensor.name!r}: external data location {location!r} is not resolved; "
                         "load the model with trtpipe.cache.files.load_model")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    count = int(np.prod(tensor.dims, dtype=np.int64))
    arr = np.fromfile(location, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
    if arr.size != count or (length is not None and length < count * dtype.itemsize):
        raise ValueError(f"tensor {tensor.name!r}: {location} holds fewer bytes than its shape needs")
    return arr.reshape(tuple(tensor.dims)).astype(dtype, copy=False)


def external_tensor(name: str, data_type: int, dims: list[int], location: str | Path, offset: int,
                    length: int) -> "onnx.TensorProto":
    """A TensorProto whose bytes are `length` bytes at `offset` of the file `location` (absolute)."""
    import onnx
    t = onnx.TensorProto(name=name, data_type=data_type, dims=list(dims))
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", str(location)), ("offset", str(offset)), ("length", str(length))):
        t.external_data.add(key=k, value=v)
    return t


_ALIGN = 4096       # offsets in written data files: page-aligned (ONNX Runtime can map them)
_INLINE_MAX = 1024  # tensors below this many bytes stay in the protobuf (onnx's default threshold)


def save_model(model: onnx.ModelProto, path: str | Path, link_from: str | Path | None = None,
               final_dir: str | Path | None = None) -> dict[str, str]:
    """Save a ModelProto; with its weights in `<name>.data` beside it when it refers to external
    data (a model from `load_model`) or is too big for one protobuf. Weights are copied from
    file to file in chunks (never all in memory); when every reference points into one data file
    under `link_from` (an earlier cache entry), that file is hard-linked instead of copied. The
    in-memory model is left as it was, unless `final_dir` is given.

    Args:
        model: the model (inline weights, external references with absolute locations, or both).
        path: the .onnx file to write.
        link_from: directory whose data files may be hard-linked (immutable cache entries).
        final_dir: the directory the saved files will finally live in (a cache entry once
            committed): the in-memory model's weights then become references to the saved data
            file there (absolute, as `load_model` makes them), freeing inline weights' memory and
            letting the next save hard-link the file.

    Returns:
        {file name: sha256} of the files hashed while writing them (the model file when written
        whole, else data files; the caller need not re-read them).
    """
    path = Path(path)
    tensors = all_tensors(model)
    ext = [t for t in tensors if is_external(t)]
    if not ext:
        # serialized once (onnx.save_model's bytes: SerializeToString), hashed in memory instead
        # of asking ByteSize first and reading the file back to hash it
        from google.protobuf.message import EncodeError
        try:
            data = model.SerializeToString()
        except (EncodeError, ValueError):  # protobuf refuses messages over 2 GiB: weights go to a data file below
            data = None
        if data is not None and len(data) < EXTERNAL_DATA_BYTES:
            with open(path, "wb") as f:
                f.write(data)
            return {path.name: hashlib.sha256(data).hexdigest()}
    import onnx
    data_name = path.name + ".data"
    data_path = path.with_name(data_name)
    inline = [t for t in tensors if not is_external(t) and len(t.raw_data) >= _INLINE_MAX]
    srcs = {_ext(t)[0] for t in ext}
    hashed = {}
    undo = []  # (tensor, saved external_data, saved raw_data or None)
    try:
        # tensors load_model read into the model (inline_small: at most SMALL_ELEMENTS, a bias or a
        # BatchNorm vector) may stay there: only bigger inline weights need the data file rewritten
        big_inline = [t for t in inline if _elements(t) > SMALL_ELEMENTS]
        single = next(iter(srcs)) if len(srcs) == 1 and not big_inline else None
        if single and Path(single).resolve() == data_path.resolve():
            placed = {id(t): _ext(t)[1:] for t in ext}  # written in place (e.g. the fp16 stream)
        elif single and link_from and Path(single).resolve().is_relative_to(Path(link_from).resolve()):
            try:
                os.link(single, data_path)
            except OSError:
                shutil.copyfile(single, data_path)
            placed = {id(t): _ext(t)[1:] for t in ext}
        else:
            placed, h = {}, hashlib.sha256()
            writing = data_path.with_name(data_name + ".part")  # never truncate a file being read
            with open(writing, "wb") as out:
                pos = 0
                for t in ext + inline:
                    pad = -pos % _ALIGN
                    if pad:
                        out.write(b"\0" * pad)
                        h.update(b"\0" * pad)
                        pos += pad
                    if is_external(t):
                        location, offset, length = _ext(t)
                        length = length if length is not None else os.path.getsize(location) - offset
                        with open(location, "rb") as src:
                            src.seek(offset)
                            left = length
                            while left:
                                chunk = src.read(min(left, 1 << 24))
                                if not chunk:
                                    raise OSError(f"{location}: external data of {t.name!r} ends early")
                                out.write(chunk)
                                h.update(chunk)
                                left -= len(chunk)
                    else:
                        length = len(t.raw_data)
                        raw = t.raw_data
                        out.write(raw)
                        h.update(raw)
                        del raw
                    placed[id(t)] = (pos, length)
                    pos += length
            os.replace(writing, data_path)
            hashed[data_name] = h.hexdigest()
        for t in ext + inline:
            if id(t) not in placed:  # small, beside a linked data file: stays in the protobuf
                continue
            offset, length = placed[id(t)]
            saved_raw = None
            if not is_external(t):
                saved_raw = t.raw_data
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
            undo.append((t, [(e.key, e.value) for e in t.external_data], saved_raw))
            del t.external_data[:]
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                t.external_data.add(key=k, value=v)
        onnx.save_model(model, str(path))
    except BaseException:
        final_dir = None  # nothing was saved: the model keeps what it had
        raise
    finally:
        for t, kvs, raw in undo:
            del t.external_data[:]
            small = raw is not None and _elements(t) <= SMALL_ELEMENTS  # stays inline (inline_small)
            if final_dir is not None and not small:  # refer to the saved file where it will live
                offset, length = placed[id(t)]
                for k, v in (("location", str(Path(final_dir).resolve() / data_name)), ("offset", str(offset)),
                             ("length", str(length))):
                    t.external_data.add(key=k, value=v)
            elif raw is not None:
                t.data_location = onnx.TensorProto.DEFAULT
                t.raw_data = raw
            else:
                for k, v in kvs:
                    t.external_data.add(key=k, value=v)
    return hashed


def _elements(tensor):
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def model_files(path: str | Path) -> list[Path]:
    """[path] or [path, path.data]: the files a saved model consists of."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


def copy_model(src: str | Path, dest: str | Path) -> None:
    """Copy a saved model (and its external data, renamed after `dest`) without loading weights."""
    src, dest = Path(src), Path(dest)
    files = model_files(src)
    if len(files) == 1:
        shutil.copyfile(src, dest)
        return
    import onnx  # only to rewrite the data file's name: a model without external data needs none
    shutil.copyfile(files[1], dest.with_name(dest.name + ".data"))
    model = onnx.load(str(src), load_external_data=False)
    for t in all_tensors(model):
        for kv in t.external_data:
            if kv.key == "location":
                kv.value = dest.name + ".data"
    onnx.save_model(model, str(dest))
