"""The names a source model offers a recipe, read without loading weights or importing TensorFlow.

`check` compares every tensor, input and node name a recipe writes (pass parameters, profiles,
validation settings) against these, so a misspelled name fails in a second instead of after
minutes of conversion.

* ONNX (`read_onnx`): graph inputs, outputs, every tensor and node name of the main graph, read
  from the file's protobuf wire format (trtpipe/review/protowire.py) over an mmap: initializer
  data (`raw_data`, typed arrays) and tensor-valued attributes are stepped over by their length,
  never read, and external data files are never opened. Field numbers: onnx/onnx.proto3
  (ModelProto.graph = 7; GraphProto node 1, initializer 5, input 11, output 12, value_info 13,
  sparse_initializer 15; NodeProto input 1, output 2, name 3, op_type 4; TensorProto name 8;
  SparseTensorProto values 1). Input and output types are decoded by onnx's own ValueInfoProto.
* SavedModel (`read_saved_model`): the tag sets and the signature's inputs and outputs (keys,
  TF tensor names, dtypes, shapes) from saved_model.pb. TensorFlow's `saved_model_pb2` cannot be
  imported without importing all of TensorFlow (seconds), so the few fields needed are decoded from
  the wire format (tensorflow/core/protobuf/saved_model.proto: SavedModel.meta_graphs = 2;
  meta_graph.proto: MetaGraphDef meta_info_def 1 (MetaInfoDef.tags 4), signature_def 5 (a map:
  entries key 1, value 2); SignatureDef inputs 1, outputs 2 (maps of TensorInfo); TensorInfo
  name 1, dtype 2, tensor_shape 3; tensor_shape.proto: TensorShapeProto dim 2 (size 1),
  unknown_rank 3); the graph itself (MetaGraphDef.graph_def = 2) is stepped over.
  tf2onnx names the converted graph's inputs and outputs after the signature's keys (the
  source stage passes `tensors_to_rename`), so those are exactly the converted model's; inner
  tensor names depend on TensorFlow's graph optimizations and are known only after conversion.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import re
from pathlib import Path

from trtpipe.review import protowire as wire

# tensorflow/core/framework/types.proto DataType -> numpy-style names
_TF_DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
              8: "complex64", 9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 18: "complex128",
              19: "float16", 20: "resource", 21: "variant", 22: "uint32", 23: "uint64"}

# tf2onnx names the tensors it creates `<op or purpose>__<counter>` (e.g. Resize__129, const_fold_opt__546)
TF2ONNX_GENERATED = re.compile(r"__\d+(:\d+)?$")


class ModelReadError(ValueError):
    """The model file cannot be read as what it claims to be (truncated, not a protobuf)."""


@dataclasses.dataclass
class TensorDesc:
    """A graph input or output: element type (numpy-style name, e.g. "float32", "uint8"; "?"
    when unknown) and shape (ints for static dims, strings for named dims, None for unknown
    dims; the whole shape None when even the rank is unknown)."""
    dtype: str
    shape: tuple | None


@dataclasses.dataclass
class ModelNames:
    """What a source model offers a recipe by name.

    `tensors`/`nodes` are every tensor / node name of the main graph, or None where they are
    known only after conversion (a SavedModel). `aliases` maps other spellings of an input or
    output to its name in the converted model (a SavedModel's TF tensor names, `x:0`).
    `signatures` (SavedModel): the signature keys of the chosen tag set."""
    kind: str                                   # "onnx" or "saved_model"
    path: str
    inputs: dict[str, TensorDesc]
    outputs: dict[str, TensorDesc]
    tensors: frozenset[str] | None = None
    nodes: frozenset[str] | None = None
    initializers: frozenset[str] = frozenset()
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    signatures: list[str] = dataclasses.field(default_factory=list)
    signature: str | None = None

    def canonical(self, name: str) -> str:
        """The converted model's name for `name` (a SavedModel's `x:0` -> its signature key)."""
        return self.aliases.get(name, name)


def _map(path):
    """(mmap or b"" for an empty file, file object); the caller closes both."""
    f = open(path, "rb")  # noqa: SIM115 (closed by the caller, with the map)
    size = os.fstat(f.fileno()).st_size
    return (mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""), f


def read_onnx(path: str | Path) -> ModelNames:
    """The inputs, outputs, tensor and node names of an ONNX model file, weights never read.

    Args:
        path: an .onnx file (weights inside it or in external data files: neither is read).

    Returns:
        ModelNames (kind "onnx"): `inputs` are the graph inputs that are not initializers (older
        IR versions list initializers as inputs too), in graph order; `tensors` every name a node
        reads or writes, every initializer, input and output of the main graph (not of Loop/If
        bodies); `nodes` every main-graph node name.

    Raises:
        ModelReadError: the file is not a readable ONNX protobuf (the message names the file).
        OSError: the file cannot be opened.
    """
    import onnx
    buf, f = _map(path)
    try:
        graph = None
        for number, kind, value in wire.fields(buf):
            if number == 7 and kind == wire.LENGTH:
                graph = value
        if graph is None:
            raise ModelReadError(f"{path}: not an ONNX model (no graph)")
        start, length = graph
        nodes, tensors, inits, ins, outs = set(), set(), set(), [], []
        for number, kind, value in wire.fields(buf, start, start + length):
            if kind != wire.LENGTH:
                continue
            if number == 1:
                nodes.update(_node(buf, value, tensors))
            elif number == 5:
                inits.add(_field_text(buf, value, 8))
            elif number == 15:  # SparseTensorProto: its values tensor carries the name
                values = next((v for n, k, v in wire.fields(buf, value[0], sum(value)) if n == 1 and k == wire.LENGTH),
                              None)
                if values:
                    inits.add(_field_text(buf, values, 8))
            elif number in (11, 12):
                info = onnx.ValueInfoProto.FromString(bytes(buf[value[0]:sum(value)]))
                (ins if number == 11 else outs).append((info.name, _onnx_desc(info.type)))
    except (wire.WireError, IndexError) as err:
        raise ModelReadError(f"{path}: not a readable ONNX model ({err})") from None
    except Exception as err:  # protobuf's DecodeError from ValueInfoProto
        if type(err).__name__ != "DecodeError":
            raise
        raise ModelReadError(f"{path}: not a readable ONNX model ({err})") from None
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()
        f.close()
    inits.discard("")
    inputs = {name: desc for name, desc in ins if name not in inits}
    outputs = dict(outs)
    tensors |= inits | set(inputs) | set(outputs)
    tensors.discard("")
    nodes.discard("")
    return ModelNames("onnx", str(path), inputs, outputs, frozenset(tensors), frozenset(nodes), frozenset(inits))


def external_locations(path: str | Path) -> list[str]:
    """The `location` of every tensor of an ONNX model file whose data is external, as written in
    the model (relative to its directory), read from the wire format: weights and the data files
    are never read, and onnx is not imported (a fully cached run reads no model, issue 13).

    Walks what trtpipe.cache.files.all_tensors walks: initializers, sparse initializers' values
    and tensor attributes (`t`, `tensors`), in the main graph, every subgraph (`g`, `graphs`) and
    the model's local functions' nodes. Field numbers (onnx/onnx.proto3): ModelProto.graph 7,
    functions 25; FunctionProto node 7; GraphProto node 1, initializer 5,
    sparse_initializer 15; SparseTensorProto values 1; NodeProto attribute 5; AttributeProto t 5,
    g 6, tensors 10, graphs 11; TensorProto external_data 13 (StringStringEntryProto key 1,
    value 2), data_location 14 (EXTERNAL = 1).

    Args:
        path: an .onnx file.

    Returns:
        Sorted distinct locations; [] for a file that is not a readable ONNX model (the source
        stage reports that with context).

    Raises:
        OSError: the file cannot be opened.
    """
    buf, f = _map(path)
    found: set[str] = set()
    try:
        for number, kind, value in wire.fields(buf):
            if number == 7 and kind == wire.LENGTH:
                _graph_locations(buf, value, found)
            elif number == 25 and kind == wire.LENGTH:  # a model-local function: its nodes
                for n, k, node in wire.fields(buf, value[0], sum(value)):
                    if n == 7 and k == wire.LENGTH:
                        _node_locations(buf, node, found)
    except (wire.WireError, IndexError, RecursionError):
        return []
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()
        f.close()
    return sorted(found)


def _graph_locations(buf, span, found):
    for number, kind, value in wire.fields(buf, span[0], sum(span)):
        if kind != wire.LENGTH:
            continue
        if number == 5:
            _tensor_location(buf, value, found)
        elif number == 15:
            for n, k, v in wire.fields(buf, value[0], sum(value)):
                if n == 1 and k == wire.LENGTH:
                    _tensor_location(buf, v, found)
        elif number == 1:
            _node_locations(buf, value, found)


def _node_locations(buf, span, found):
    for n, k, attr in wire.fields(buf, span[0], sum(span)):
        if n == 5 and k == wire.LENGTH:
            for an, ak, av in wire.fields(buf, attr[0], sum(attr)):
                if ak == wire.LENGTH and an in (5, 10):
                    _tensor_location(buf, av, found)
                elif ak == wire.LENGTH and an in (6, 11):
                    _graph_locations(buf, av, found)


def _tensor_location(buf, span, found):
    external, location = False, None
    for number, kind, value in wire.fields(buf, span[0], sum(span)):
        if number == 14 and kind == wire.VARINT:
            external = value == 1
        elif number == 13 and kind == wire.LENGTH:
            entry = dict((n, wire.text(buf, v)) for n, k, v in wire.fields(buf, value[0], sum(value))
                         if k == wire.LENGTH)
            if entry.get(1) == "location":
                location = entry.get(2, "")
    if external and location:
        found.add(location)


def _node(buf, span, tensors):
    """A NodeProto's name(s) (yielded) and its input/output tensor names (added to `tensors`);
    its attributes (which may hold whole tensors) are stepped over."""
    for number, kind, value in wire.fields(buf, span[0], sum(span)):
        if kind != wire.LENGTH:
            continue
        if number in (1, 2):
            tensors.add(wire.text(buf, value))
        elif number == 3:
            yield wire.text(buf, value)


def _field_text(buf, span, field):
    for number, kind, value in wire.fields(buf, span[0], sum(span)):
        if number == field and kind == wire.LENGTH:
            return wire.text(buf, value)
    return ""


def _onnx_desc(type_proto):
    import onnx
    if not type_proto.HasField("tensor_type"):
        return TensorDesc(type_proto.WhichOneof("value") or "?", None)
    tensor = type_proto.tensor_type
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "?"
    except (KeyError, TypeError, ValueError):
        known = tensor.elem_type in onnx.TensorProto.DataType.values()  # a newer onnx's type, or garbage
        dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower() if known else f"elem_type {tensor.elem_type}"
    if not tensor.HasField("shape"):
        return TensorDesc(dtype, None)
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
    return TensorDesc(dtype, dims)


def read_saved_model(path: str | Path, tags: str = "serve", signature: str = "serving_default") -> ModelNames:
    """A SavedModel signature's inputs and outputs, read from saved_model.pb without TensorFlow.

    Args:
        path: the SavedModel directory.
        tags: the tag set, comma-separated (the recipe's `source.tag`).
        signature: the signature key (the recipe's `source.signature`).

    Returns:
        ModelNames (kind "saved_model"): `inputs`/`outputs` keyed by the signature's keys (what
        tf2onnx names the converted graph's inputs and outputs), `aliases` from each TF tensor
        name (`x:0`) to its key, `signatures` the tag set's signature keys; `tensors` and `nodes`
        None (known only after conversion).

    Raises:
        ModelReadError: saved_model.pb is not a readable SavedModel, the tag set is not in it
            (the message lists those it has), or the signature is not in the tag set (listed too).
        OSError: saved_model.pb cannot be opened.
    """
    pb = Path(path) / "saved_model.pb"
    buf, f = _map(pb)
    want = ",".join(sorted(t.strip() for t in tags.split(",") if t.strip()))
    try:
        metas = {}
        for number, kind, value in wire.fields(buf):
            if number == 2 and kind == wire.LENGTH:
                meta_tags, sigs = _meta_graph(buf, value)
                metas.setdefault(",".join(sorted(meta_tags)), sigs)
    except (wire.WireError, IndexError) as err:
        raise ModelReadError(f"{pb}: not a readable SavedModel ({err})") from None
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()
        f.close()
    if want not in metas:
        raise ModelReadError(f"no MetaGraph with tag set {want!r} in {path}; available: "
                             + (", ".join(map(repr, metas)) or "(none)"))
    sigs = metas[want]
    keys = sorted(k for k in sigs if not k.startswith("_"))  # __saved_model_init_op
    if signature not in sigs:
        raise ModelReadError(f"signature {signature!r} not in {path}; available: {', '.join(keys) or '(none)'}")
    inputs, outputs, aliases = sigs[signature]
    return ModelNames("saved_model", str(path), inputs, outputs, aliases=aliases, signatures=keys,
                      signature=signature)


def _meta_graph(buf, span):
    """(tags, {signature key: (inputs, outputs, aliases)}) of one MetaGraphDef; graph_def skipped."""
    tags, sigs = [], {}
    for number, kind, value in wire.fields(buf, span[0], sum(span)):
        if kind != wire.LENGTH:
            continue
        if number == 1:  # MetaInfoDef
            tags += [wire.text(buf, v) for n, k, v in wire.fields(buf, value[0], sum(value))
                     if n == 4 and k == wire.LENGTH]
        elif number == 5:  # map<string, SignatureDef> entry
            key, sig = _map_entry(buf, value)
            if sig is not None:
                sigs[wire.text(buf, key) if key else ""] = _signature(buf, sig)
    return tags, sigs


def _map_entry(buf, span):
    key = val = None
    for number, kind, value in wire.fields(buf, span[0], sum(span)):
        if kind == wire.LENGTH:
            key, val = (value, val) if number == 1 else (key, value if number == 2 else val)
    return key, val


def _signature(buf, span):
    inputs, outputs, aliases = {}, {}, {}
    for number, kind, value in wire.fields(buf, span[0], sum(span)):
        if kind != wire.LENGTH or number not in (1, 2):
            continue
        key, info = _map_entry(buf, value)
        key = wire.text(buf, key) if key else ""
        tf_name, desc = _tensor_info(buf, info) if info else ("", TensorDesc("?", None))
        (inputs if number == 1 else outputs)[key] = desc
        if tf_name:
            aliases[tf_name] = key
    return inputs, outputs, aliases


def _tensor_info(buf, span):
    name, dtype, shape = "", "?", None
    for number, kind, value in wire.fields(buf, span[0], sum(span)):
        if number == 1 and kind == wire.LENGTH:
            name = wire.text(buf, value)
        elif number == 2 and kind == wire.VARINT:
            dtype = _TF_DTYPES.get(value, f"DataType {value}")
        elif number == 3 and kind == wire.LENGTH:
            shape = _tf_shape(buf, value)
    return name, TensorDesc(dtype, shape)


def _tf_shape(buf, span):
    dims, unknown_rank = [], False
    for number, kind, value in wire.fields(buf, span[0], sum(span)):
        if number == 2 and kind == wire.LENGTH:
            size = -1
            for n, k, v in wire.fields(buf, value[0], sum(value)):
                if n == 1 and k == wire.VARINT:
                    size = wire.signed64(v)
            dims.append(size if size >= 0 else None)
        elif number == 3 and kind == wire.VARINT and value:
            unknown_rank = True
    return None if unknown_rank else tuple(dims)


def read_source(source: dict) -> ModelNames:
    """The names of a recipe's source model (`recipe.data["source"]`, paths resolved): an ONNX
    file, or a SavedModel's signature restricted to `source.inputs`/`source.outputs` when given.

    Raises:
        ModelReadError, OSError: as read_onnx / read_saved_model.
    """
    if source.get("onnx"):
        return read_onnx(source["onnx"])
    names = read_saved_model(source["saved_model"], source.get("tag", "serve"),
                             source.get("signature", "serving_default"))
    for key, side in (("inputs", names.inputs), ("outputs", names.outputs)):
        kept = [names.canonical(n) for n in source.get(key) or []]
        if kept and all(n in side for n in kept):
            for name in [n for n in side if n not in kept]:
                del side[name]
    return names
