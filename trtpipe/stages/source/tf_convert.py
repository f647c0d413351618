"""SavedModel, TF1 frozen graph or TFLite file -> onnx.ModelProto with tf2onnx, in-process (what
`python -m tf2onnx.convert --saved-model / --graphdef / --tflite` does), for the source stage.

Importing this module is cheap: TensorFlow and tf2onnx are imported when a conversion starts
(seconds). Their INFO/WARNING chatter is hidden and their errors kept; TF ops tf2onnx leaves
unconverted are collected for the source stage's op check (trtpipe/onnx_check.py).
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import onnx

from trtpipe.errors import SourceError, did_you_mean
from trtpipe.stages.source.tf2onnx_determinism import deterministic_tf2onnx
from trtpipe.stages.source.tf2onnx_internals import convert_graph_def, numpy_compat
from trtpipe.stages.source.tflite_guard import run_isolated

# TF's C++ INFO/WARNING lines ("I0000 00:00:17.. port.cc:153] ..."): printed to fd 2 even with
# TF_CPP_MIN_LOG_LEVEL=2 before absl is set up, with a banner; cpu_feature_guard's INFO has a 2nd line.
_TF_SPAM = re.compile(r"^([IW]\d{4} \d|WARNING: All log messages before absl::Init|To enable the following "
                      r"instructions: .*rebuild TensorFlow|INFO: Created TensorFlow Lite XNNPACK delegate)")


def convert_saved_model(path: str, cfg: dict, where: Callable[..., str], log: Callable[[str], Any] | None,
                        timings: dict[str, float], versions: dict[str, str], large_dir: str,
                        start_points: list[str] | None = None,
                        ) -> tuple[onnx.ModelProto, str | None, dict[str, list]]:
    """Convert the SavedModel directory `path` as the recipe's `source` section `cfg` says.

    `where(*keys)` names a `source.*` key's place in the recipe (for messages); `timings` gets
    import_tf / convert seconds, `versions` tensorflow + tf2onnx. Returns (model, onnx_path,
    unconverted): with `large_model` the model is written to `large_dir` with external data and
    `onnx_path` names it (read it back from there), else onnx_path is None. `unconverted`:
    {TF op: [count, example node]} tf2onnx left as they were. When some of those decode strings
    (DecodeJpeg, ...: no ONNX opset defines them), `start_points` (if given) gets the tensors where
    the decoding ends, for `source.inputs` (decoded_tensors)."""
    _say(log, f"source: converting SavedModel {path} with tf2onnx"
         + ("" if "tensorflow" in sys.modules else " (importing TensorFlow takes seconds)"))
    with _quiet_tf(log) as collected:
        t = time.perf_counter()
        tf, tf2onnx = _import_tf()
        timings["import_tf"] = time.perf_counter() - t
        versions.update(tensorflow=tf.__version__, tf2onnx=tf2onnx.__version__)
        tags = _check_signature(path, cfg, where)
        t = time.perf_counter()
        model, storage = _tf2onnx(tf, path, tags, cfg, where, collected)
        timings["convert"] = time.perf_counter() - t
        if start_points is not None and set(collected.unconverted) & STRING_OPS:
            start_points += decoded_tensors(collected.graph_def)
    check_io_used(model, cfg, where, path, "saved_model")
    return model, _materialize(model, storage, large_dir) if storage else None, collected.unconverted


def convert_tf_file(kind: str, path: str, cfg: dict, where: Callable[..., str], log: Callable[[str], Any] | None,
                    timings: dict[str, float], versions: dict[str, str], large_dir: str,
                    ) -> tuple[onnx.ModelProto, str | None, dict[str, list]]:
    """Convert a TF1 frozen graph or a TFLite file as the recipe's `source` section `cfg` says, with
    tf2onnx's own loaders (`tf_loader.from_graphdef`, as `python -m tf2onnx.convert --graphdef`;
    its TFLite reader, as `--tflite`) and the same conversion, determinism and unconverted-op
    collection as convert_saved_model.

    Args:
        kind: "frozen_graph" (a .pb GraphDef; `cfg["inputs"]`/`cfg["outputs"]` name its TF tensors,
            "x:0") or "tflite" (a .tflite flatbuffer; `inputs`/`outputs` optional, TFLite tensor names).
        path: the file.
        cfg, where, log, timings, versions, large_dir: as for convert_saved_model.

    Returns:
        (model, onnx_path, unconverted), as convert_saved_model.

    Raises:
        SourceError: the file is not a GraphDef / TFLite model; a name is not a tensor of the graph
            (with a did-you-mean); tf2onnx failed.
    """
    what = {"frozen_graph": "frozen graph", "tflite": "TFLite model"}[kind]
    _say(log, f"source: converting {what} {path} with tf2onnx"
         + ("" if "tensorflow" in sys.modules else " (importing TensorFlow takes seconds)"))
    if kind == "tflite":    # TFLite's native reader trusts the file: a corrupt one crashes it (tflite_guard)
        model, onnx_path, unconverted, timings_here, versions_here = run_isolated(
            _convert_tf_file_here, path, (kind, path, cfg, where, large_dir), where("tflite"), log)
    else:
        model, onnx_path, unconverted, timings_here, versions_here = _convert_tf_file_here(
            kind, path, cfg, where, large_dir, log=log)
    timings.update(timings_here)
    versions.update(versions_here)
    check_io_used(model, cfg, where, path, kind)
    return model, onnx_path, unconverted


def check_io_used(model: onnx.ModelProto, cfg: dict, where: Callable[..., str], path: str, kind: str) -> None:
    """Refuse a converted model with a graph input nothing reads, or an output that depends on no
    input and that `source.outputs` does not name (a constant nobody asked for): the signs of
    `source.inputs` and `source.outputs` swapped or pointing at the wrong tensors, which would
    otherwise build a pass-through plan that "passes" validation.

    Args:
        model: tf2onnx's output (ONNX names are the TF tensor names, "x:0").
        cfg: the recipe's `source` section.
        where: `where(*keys)` names a `source.*` key's place in the recipe.
        path: the source file, for messages.
        kind: the `source` key ("saved_model", "frozen_graph", "tflite").

    Raises:
        SourceError: (exit 4) naming the dead inputs / input-less outputs, suggesting the swap.
    """
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    inputs = [v.name for v in graph.input if v.name not in weights]
    read = {name for g in _graphs(graph) for node in g.node for name in node.input}
    outputs = [v.name for v in graph.output]
    dead = [n for n in inputs if n not in read and n not in outputs]
    reached = set(inputs)   # what depends on an input: ONNX nodes are in topological order
    for node in graph.node:
        used = list(node.input) + [i for g in _graphs_of(node) for sub in _graphs(g) for n in sub.node for i in n.input]
        if any(i in reached for i in used if i):
            reached.update(node.output)
    asked = set(cfg.get("outputs") or [])
    constant = [n for n in outputs if n not in reached and n not in asked]
    if not dead and not constant:
        return
    swap = (" (are `source.inputs` and `source.outputs` swapped? inputs name the tensors fed to the model, "
            "outputs the tensors it computes)")
    parts = ([f"graph input(s) {', '.join(map(repr, dead))} feed nothing" + (
              f" (at {where('inputs')})" if cfg.get("inputs") else "")] if dead else []) + \
            ([f"output(s) {', '.join(map(repr, constant))} depend on no input" + (
              f" (at {where('outputs')})" if cfg.get("outputs") else "")] if constant else [])
    key = "inputs" if dead and cfg.get("inputs") else "outputs" if cfg.get("outputs") else kind
    raise SourceError(f"{where(key)}"
                      f": the model converted from {path} is not a function of its inputs: "
                      f"{'; '.join(parts)}{swap}",
                      hint=(f"try `inputs: {list(cfg.get('outputs') or [])}` and `outputs: "
                            f"{list(cfg.get('inputs') or [])}`") if cfg.get("inputs") and cfg.get("outputs")
                      else "name the model's real input and output tensors in `source.inputs` / `source.outputs`")


def _graphs(graph):
    yield graph
    for node in graph.node:
        for g in _graphs_of(node):
            yield from _graphs(g)


def _graphs_of(node):
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _convert_tf_file_here(kind, path, cfg, where, large_dir, log=None):
    """convert_tf_file's work in this process (for a TFLite file: tflite_guard's child); returns
    (model, onnx_path, unconverted, timings, versions)."""
    timings, versions = {}, {}
    with _quiet_tf(log) as collected:
        t = time.perf_counter()
        tf, tf2onnx = _import_tf()
        timings["import_tf"] = time.perf_counter() - t
        versions.update(tensorflow=tf.__version__, tf2onnx=tf2onnx.__version__)
        t = time.perf_counter()
        model, storage = (_frozen_graph if kind == "frozen_graph" else _tflite)(tf, path, cfg, where, collected)
        timings["convert"] = time.perf_counter() - t
    return (model, _materialize(model, storage, large_dir) if storage else None, collected.unconverted,
            timings, versions)


def _frozen_graph(tf, path, cfg, where, collected):
    """What `python -m tf2onnx.convert --graphdef PATH --inputs .. --outputs ..` does, in-process."""
    from tf2onnx import tf_loader
    graph_def = tf.compat.v1.GraphDef()
    try:
        with open(path, "rb") as f:
            graph_def.ParseFromString(f.read())
    except Exception as err:    # protobuf DecodeError
        raise SourceError(f"{where('frozen_graph')}: {path}: not a valid TensorFlow GraphDef: {err}") from err
    if not graph_def.node:      # an empty file, or another protobuf (a SavedModel's saved_model.pb) decodes "fine"
        saved = os.path.basename(path) == "saved_model.pb"
        raise SourceError(f"{where('frozen_graph')}: {path}: not a frozen TensorFlow GraphDef (no nodes)",
                          hint=f"it is a SavedModel: use `saved_model: {os.path.dirname(path)}`" if saved else None)
    try:
        with tf.Graph().as_default() as probe:
            tf.graph_util.import_graph_def(graph_def, name="")
    except Exception as err:
        raise SourceError(f"{where('frozen_graph')}: TensorFlow could not import the GraphDef {path}: {err}") from err
    placeholders = [f"{op.name}:0" for op in probe.get_operations() if op.type == "Placeholder"]
    tensors = [t.name for op in probe.get_operations() for t in op.outputs]
    for key, universe in (("inputs", placeholders or tensors), ("outputs", tensors)):
        for name in cfg[key]:
            try:
                probe.get_tensor_by_name(name)
            except (KeyError, ValueError):
                listing = f"; its placeholders: {', '.join(placeholders) or '(none)'}" if key == "inputs" else ""
                raise SourceError(f"{where(key)}: {name!r} is not a tensor of {path} (TF tensor names are "
                                  f"\"node:index\"){listing}", hint=did_you_mean(name, universe)
                                  or did_you_mean(name, tensors)) from None
    try:
        graph_def, ins, outs = tf_loader.from_graphdef(path, list(cfg["inputs"]), list(cfg["outputs"]))
    except Exception as err:
        raise SourceError(f"{where('frozen_graph')}: TensorFlow could not load {path}: {err}") from err
    collected.graph_def = graph_def
    return _convert(tf, graph_def, "frozen_graph", path, cfg, where, collected, ins, outs,
                    _names(cfg, where, tensors), tensors_to_rename={}, initialized_tables={})


def _tflite(tf, path, cfg, where, collected):
    """What `python -m tf2onnx.convert --tflite PATH [--inputs ..] [--outputs ..]` does, in-process."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] != b"TFL3":    # the TFLite flatbuffer's file identifier (tensorflow/lite/schema/schema.fbs)
        raise SourceError(f"{where('tflite')}: {path}: not a TFLite model (no TFL3 file identifier)")
    try:
        interpreter = tf.lite.Interpreter(model_path=path)
        details = interpreter.get_tensor_details()
    except Exception as err:
        raise SourceError(f"{where('tflite')}: TensorFlow Lite could not read {path}: {err}") from err
    tensors = [d["name"] for d in details]
    own = {"inputs": [d["name"] for d in interpreter.get_input_details()],
           "outputs": [d["name"] for d in interpreter.get_output_details()]}
    for key in ("inputs", "outputs"):
        for name in cfg.get(key) or []:
            if name not in tensors:
                raise SourceError(f"{where(key)}: {name!r} is not a tensor of {path}; its {key}: "
                                  f"{', '.join(own[key]) or '(none)'}",
                                  hint=did_you_mean(name, own[key]) or did_you_mean(name, tensors))
    ins, outs = list(cfg.get("inputs") or []) or None, list(cfg.get("outputs") or []) or None
    return _convert(tf, None, "tflite", path, cfg, where, collected, ins or own["inputs"], outs or own["outputs"],
                    _names(cfg, where, tensors), tflite_path=path, tensors_to_rename=None, initialized_tables=None)


def _names(cfg, where, universe):
    """The tf2onnx option lists (shape_override, inputs_as_nchw, ...) for a single-graph source: TF
    tensor names, checked against the graph's."""
    def names(key, known, *parent):
        for name in (cfg.get("tf2onnx") or {}).get(key) or []:
            if name not in known and name not in universe:
                raise SourceError(f"{where(*parent, key)}: {name!r} is not an input or output tensor; "
                                  f"available: {', '.join(known)}", hint=did_you_mean(name, known))
        return list((cfg.get("tf2onnx") or {}).get(key) or [])
    return names


def _say(log, msg, stderr=False):
    if log:
        log(msg)
    elif stderr:
        print(msg, file=sys.stderr)


def _import_tf():
    fresh = "tensorflow" not in sys.modules
    try:
        import tensorflow as tf
        import tf2onnx
        import tf2onnx.convert  # slow too: counted in import_tf
        import tf2onnx.tf_loader
    except ImportError as err:
        raise SourceError(f"converting a SavedModel needs tensorflow and tf2onnx: {err}",
                          hint="pip install tensorflow-cpu tf2onnx") from err
    # TensorFlow's import leaves some million objects that live as long as the process. Frozen,
    # the garbage collector's full collections during the conversion no longer walk them: the
    # conversion of the effdet demo took 1.1-1.25 s instead of 1.8 s (bench/cold_overhead.py).
    # Only right after the import: later, the heap also holds earlier work's garbage (a process
    # that converts many times, such as the test suite), which a freeze would keep forever.
    if fresh:
        gc.freeze()
    return tf, tf2onnx


def _check_signature(path, cfg, where):
    """Tag set and signature present? Read saved_model.pb: TF's own errors do not list them."""
    from tensorflow.core.protobuf import saved_model_pb2
    saved = saved_model_pb2.SavedModel()
    try:
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved.ParseFromString(f.read())
    except Exception as err:
        raise SourceError(f"{where('saved_model')}: {path}: not a valid SavedModel: {err}") from err
    tags = ",".join(sorted(t.strip() for t in cfg.get("tag", "serve").split(",") if t.strip()))
    metas = {",".join(sorted(m.meta_info_def.tags)): m for m in saved.meta_graphs}
    if tags not in metas:
        raise SourceError(f"{where('tag')}: no MetaGraph with tag set {tags!r} in {path}; available: "
                          + ", ".join(map(repr, metas)), hint=did_you_mean(tags, metas))
    sig = cfg.get("signature", "serving_default")
    sigs = sorted(k for k in metas[tags].signature_def if not k.startswith("_"))   # __saved_model_init_op
    if sig not in sigs:
        raise SourceError(f"{where('signature')}: signature {sig!r} not in {path}; available: "
                          f"{', '.join(sigs) or '(none)'}", hint=did_you_mean(sig, sigs))
    return tags.split(",") if tags else []


def _resolve(names, universe, rename, where):
    """Recipe names (signature keys, or TF tensor names like 'x:0') -> TF tensor names."""
    by_key = {rename.get(t, t): t for t in universe}
    for name in names:
        if name not in by_key and name not in universe:
            raise SourceError(f"{where}: {name!r} is not in the signature; available: {', '.join(by_key)}",
                              hint=did_you_mean(name, by_key))
    return [by_key.get(name, name) for name in names]


def _tf2onnx(tf, path, tags, cfg, where, collected):
    """What `python -m tf2onnx.convert --saved-model` does (tf2onnx 1.17 convert.main), in-process."""
    from tf2onnx import tf_loader
    large, opts = cfg.get("large_model", False), cfg.get("tf2onnx") or {}
    try:
        graph_def, ins, outs, tables, rename = tf_loader.from_saved_model(
            path, None, None, tags, [cfg.get("signature", "serving_default")], None, large,
            return_initialized_tables=True, return_tensors_to_rename=True)
    except Exception as err:
        raise SourceError(f"{where('saved_model')}: TensorFlow could not load {path}: {err}") from err
    collected.graph_def = graph_def

    def names(key, universe, *parent):
        return _resolve((opts if parent else cfg).get(key) or [], universe, rename, where(*parent, key))
    inner = [n for n in cfg.get("inputs") or [] if n not in ins and n not in rename.values()]
    if inner:  # conversion starts at tensors inside the graph (after string decoding, say)
        graph_def, placeholders = start_at(tf, graph_def, inner, where("inputs"), [rename.get(t, t) for t in ins])
        rename.update({p: p.split(":")[0] for p in placeholders})
        ins = [n for n in ins if n not in (cfg.get("inputs") or [])] + placeholders
        cfg = {**cfg, "inputs": [n for n in cfg["inputs"] if n not in inner] + placeholders}
    ins, outs = names("inputs", ins) or ins, names("outputs", outs) or outs
    return _convert(tf, graph_def, "saved_model", path, cfg, where, collected, ins, outs, names,
                    tensors_to_rename=rename, initialized_tables=tables)


def _convert(tf, graph_def, kind, path, cfg, where, collected, ins, outs, names, **extra):
    """tf2onnx's CLI conversion (tf2onnx_internals.convert_graph_def), made deterministic, with
    the recipe's options; its failures as a SourceError at `source.<kind>`."""
    large, opts, opset = cfg.get("large_model", False), cfg.get("tf2onnx") or {}, cfg.get("opset", 17)
    shapes = opts.get("shape_override") or {}
    shapes = {k: [d if d is not None and d >= 0 else None for d in v]     # tf2onnx: None = unknown dim
              for k, v in zip(names("shape_override", ins, "tf2onnx"), shapes.values())}
    compat = numpy_compat() if large else contextlib.nullcontext()
    try:
        with tf.device("/cpu:0"), deterministic_tf2onnx(), compat:
            # as tf2onnx's CLI converts (see tf2onnx_internals). `name` ends up in the graph's
            # doc_string: no absolute path, so the bytes do not depend on it.
            return convert_graph_def(
                graph_def, name=os.path.basename(os.path.normpath(path)), continue_on_error=False, opset=opset,
                target=opts.get("target") or None, input_names=ins, output_names=outs,
                large_model=large, custom_op_handlers={}, extra_opset=[], shape_override=shapes or None,
                inputs_as_nchw=names("inputs_as_nchw", ins, "tf2onnx"),
                outputs_as_nchw=names("outputs_as_nchw", outs, "tf2onnx"), **extra)
    except SourceError:
        raise
    except Exception as err:
        context = "".join(f"\n    {e.split(' (fct=')[0]}" for e in collected.errors[-5:])
        collected.errors.clear()        # now in the message: not replayed as well
        raise SourceError(f"{where(kind)}: tf2onnx could not convert {path} at opset {opset}: "
                          f"{err}{context}", hint="try another `source.opset`, or change that node") from err


# TF ops that read or make strings: no ONNX opset has them, and TensorRT takes no strings.
STRING_OPS = {"DecodeJpeg", "DecodePng", "DecodeImage", "DecodeBmp", "DecodeGif", "DecodeAndCropJpeg", "DecodeRaw",
              "DecodeBase64", "ParseExample", "ParseExampleV2", "ParseSingleExample", "StringSplit", "StringToNumber",
              "Substr", "ReadFile"}
_PLUMBING = {"TensorListFromTensor", "TensorListReserve", "TensorListStack", "TensorListGetItem", "TensorListSetItem",
             "While", "StatelessWhile", "Shape", "StridedSlice", "Identity", "Const", "Placeholder"}


def decoded_tensors(graph_def: Any) -> list[str]:
    """Where string decoding ends: the tensors downstream of the graph's string Placeholders that the
    first node doing numeric work reads (e.g. a tf.map_fn's stacked decoded images), as "node:index"."""
    string_dtype = 7  # DT_STRING
    by_name = {n.name: n for n in graph_def.node}
    reached = {n.name for n in graph_def.node if n.op == "Placeholder" and n.attr["dtype"].type == string_dtype}
    found = []
    for node in graph_def.node:  # frozen GraphDefs are in topological order
        inputs = [i.lstrip("^") for i in node.input]
        hit = [i for i in inputs if i.split(":")[0] in reached]
        if not hit:
            continue
        if node.op in _PLUMBING or node.op in STRING_OPS:
            reached.add(node.name)
            continue
        found += [i if ":" in i else f"{i}:0" for i in hit
                  if by_name.get(i.split(":")[0]) is not None and by_name[i.split(":")[0]].op != "Placeholder"]
    return list(dict.fromkeys(found))


def start_at(tf: Any, graph_def: Any, tensors: list[str], where: str,
             signature: list[str] = ()) -> tuple[Any, list[str]]:
    """A frozen GraphDef whose inputs are the given inner tensors: each becomes a Placeholder of its
    dtype and static shape (TF's import_graph_def input_map), named after it, and what only fed it
    (e.g. a string input decoded by DecodeJpeg in a tf.map_fn) is dropped when the conversion prunes.

    Args:
        tf: the tensorflow module.
        graph_def: the frozen GraphDef tf2onnx's loader returned.
        tensors: TF tensor names ("node:index") inside it.
        where: the recipe key's place, for messages.
        signature: the signature's input names (for the message when a name is neither).

    Returns:
        (the new GraphDef, the placeholders' tensor names, in the order of `tensors`).

    Raises:
        SourceError: a name is not a tensor of the graph (with a did-you-mean).
    """
    with tf.Graph().as_default() as probe:
        tf.graph_util.import_graph_def(graph_def, name="")
    specs = []
    for name in tensors:
        try:
            t = probe.get_tensor_by_name(name if ":" in name else f"{name}:0")
        except (KeyError, ValueError):
            known = list(signature) + [f"{op.name}:0" for op in probe.get_operations()]
            raise SourceError(f"{where}: {name!r} is not in the signature; available: {', '.join(signature)}; nor is "
                              f"it a tensor inside the graph (\"node:index\", to start the conversion there)",
                              hint=did_you_mean(name, known)) from None
        specs.append((t.name, t.dtype, t.shape))
    with tf.Graph().as_default() as graph:
        holders = [tf.compat.v1.placeholder(dtype, shape, name=_placeholder_name(name)) for name, dtype, shape in specs]
        tf.graph_util.import_graph_def(graph_def, input_map={name: h for (name, _, _), h in zip(specs, holders)},
                                       name="")
    return graph.as_graph_def(), [h.name for h in holders]


def _placeholder_name(tensor):
    """'StatefulPartitionedCall/map/TensorArrayV2Stack/TensorListStack:0' -> 'TensorListStack_input'."""
    return tensor.split(":")[0].split("/")[-1] + "_input"


def _materialize(model, storage, tmp):
    """large_model: tf2onnx keeps big tensors in `storage` (location -> bytes); write them + the model."""
    for location, data in storage.name_to_tensor_data.items():
        with open(os.path.join(tmp, location), "wb") as f:
            f.write(data)
    onnx.save(model, os.path.join(tmp, "model.onnx"))
    return os.path.join(tmp, "model.onnx")


class _Collect(logging.Handler):
    """tf2onnx's ERROR records: TF ops it left unconverted ({op: [count, node]}) and other errors."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.unconverted, self.errors, self.graph_def = {}, [], None

    def emit(self, record):
        if str(record.msg).startswith("Tensorflow op [") and len(record.args or ()) == 2:
            node, op = record.args
            self.unconverted.setdefault(op, [0, node])[0] += 1
        elif not str(record.msg).startswith("Unsupported ops"):     # a summary of the above
            self.errors.append(record.getMessage().splitlines()[0])


@contextlib.contextmanager
def _quiet_tf(log):
    """Hide TF/tf2onnx INFO and WARNING chatter; keep errors (to `log`, else stderr)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")     # read once, when TF is imported
    collected, tf_log, t2o_log = _Collect(), logging.getLogger("tensorflow"), logging.getLogger("tf2onnx")
    saved = tf_log.level, t2o_log.level, t2o_log.propagate
    tf_log.setLevel(logging.ERROR)
    t2o_log.setLevel(logging.ERROR)
    t2o_log.propagate = False           # its errors go through `collected`
    t2o_log.addHandler(collected)
    sys.stderr.flush()
    fd2 = os.dup(2)
    with tempfile.TemporaryFile() as captured, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(captured.fileno(), 2)   # TF's C++ logging writes to fd 2, not to sys.stderr
        try:
            yield collected
        finally:
            sys.stderr.flush()
            os.dup2(fd2, 2)
            os.close(fd2)
            t2o_log.removeHandler(collected)
            tf_log.setLevel(saved[0])
            t2o_log.setLevel(saved[1])
            t2o_log.propagate = saved[2]
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if line.strip() and not _TF_SPAM.match(line):
                    _say(log, line, stderr=True)
            for error in collected.errors:
                _say(log, f"tf2onnx: {error}", stderr=True)
