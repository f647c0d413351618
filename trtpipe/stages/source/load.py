"""Source stage: the recipe's `source` section -> onnx.ModelProto.

An ONNX file is loaded with its external data; a TF SavedModel is converted in-process by tf2onnx
(trtpipe/tf_convert.py; TensorFlow is imported only then: it costs seconds). Either way the graph
is then checked for op types its opset does not define (tf2onnx leaves TF ops it cannot convert
in place and carries on), by onnx.checker and strict shape inference (trtpipe/graph/check.py), and
against what the installed onnx / ONNX Runtime read (IR version, opsets) and what a TensorRT network
can take (tensor inputs and outputs; support.py), so later stages get an ONNX graph they can run,
not a half-converted one.
"""
from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from trtpipe.cache import files as cache_files
from trtpipe.cache.files import external_bytes, inline_small
from trtpipe.errors import SourceError, did_you_mean
from trtpipe.fileguard import disk_full_error, is_disk_full, not_a_file
from trtpipe.graph.check import all_graphs, check_model, opset_version, relaxed_for_checker
from trtpipe.recipe.resolved import SOURCE_KINDS
from trtpipe.stages.source.paths import missing_path_error, source_file_problem
from trtpipe.stages.source.support import check_io_types, check_tf2onnx_opset, check_versions, tf2onnx_max_opset

# relaxed_for_checker: transform.py and precision.py import it from here
__all__ = ["IOSpec", "SourceResult", "load_source", "relaxed_for_checker", "did_you_mean", "missing_path_error",
           "source_file_problem"]

_ONNX_HINT = ("re-export the model with ops its opset defines (or a higher opset if the op exists there); "
              "a TensorRT plugin op needs a name ending in _TRT or a custom domain")


class IOSpec(NamedTuple):
    name: str
    dtype: str          # numpy name ("float32"); TensorProto name when numpy has none
    shape: list | None  # per dim: int, dim_param string, or None (unknown); None when rank unknown


@dataclass
class SourceResult:
    model: onnx.ModelProto          # weights in external data stay there (absolute locations, cache.files)
    kind: str                       # "onnx" | "saved_model" | "frozen_graph" | "tflite"
    path: str
    duration_s: float
    versions: dict                  # onnx, and tensorflow + tf2onnx when a SavedModel was converted
    inputs: list                    # [IOSpec]
    outputs: list                   # [IOSpec]
    opset: int                      # ai.onnx opset of the model
    timings: dict = field(default_factory=dict)    # import_tf / convert / check seconds
    keepalive: Any = None   # what must outlive `model` (the extracted --large_model zip directory)


def load_source(source_cfg: dict, *, locate: Callable[[tuple], str] | None = None,
                log: Callable[[str], Any] | None = None) -> SourceResult:
    """Load (or convert) the recipe's source model and check it (stage 2).

    Args:
        source_cfg: the recipe's resolved `source` section: exactly one of `onnx` (an .onnx file;
            external data files next to it), `saved_model` (a TF SavedModel directory, converted
            in-process with tf2onnx as its CLI does, using `tag`, `signature`, `opset` (default
            17), `large_model` and `tf2onnx` options), `frozen_graph` (a TF1 .pb GraphDef with
            `inputs`/`outputs` tensor names, converted the same way) or `tflite` (a .tflite file).
        locate: recipe key path -> "file:line:col", so messages point at the recipe line.
        log: optional sink for progress and detail lines.

    Returns:
        SourceResult: `model` (onnx.ModelProto; an ONNX file's external weights stay on disk as
        references with absolute locations, trtpipe.cache.files.read_tensor reads them), `kind` ("onnx",
        "saved_model", "frozen_graph" or "tflite"), `path`, `duration_s` (seconds), `versions`
        (onnx; tensorflow and tf2onnx for a converted model), `inputs` / `outputs` (IOSpec: name,
        numpy dtype name, dims as int, symbol or None; the weights IR < 4 models also list as
        inputs are left out), `opset` (ai.onnx) and `timings` (import_tf / convert / check, seconds).

    Raises:
        SourceError: not exactly one of `onnx:` / `saved_model:` / `frozen_graph:` / `tflite:`; the
            path is missing (with a did-you-mean), of the wrong kind, not a valid ONNX model,
            SavedModel, GraphDef or TFLite model, or its external
            data is missing or unreadable; an unknown tag set, signature or tensor name;
            TensorFlow/tf2onnx missing or an untested tf2onnx version; `opset` above what the
            installed tf2onnx converts to; tf2onnx failed; an IR version or opset newer than the
            installed onnx or ONNX Runtime read (stages/source/support.py); graph inputs/outputs
            that are not tensors (sequences, optionals, maps); op types its opsets do not define
            (TF ops tf2onnx left unconverted included); onnx.checker or strict shape inference
            rejected it.
    """
    t0 = time.perf_counter()
    timings, versions = {}, {"onnx": onnx.__version__}
    given = [k for k in SOURCE_KINDS if source_cfg.get(k)]
    if len(given) != 1:
        has = f" (has {', '.join(given)})" if given else ""
        raise SourceError(f"{_loc(locate)}: needs exactly one of " + ", ".join(f"`{k}:`" for k in SOURCE_KINDS) + has)
    if source_cfg.get("onnx"):
        kind, path = "onnx", source_cfg["onnx"]
        read_from, keep = path, None
        if os.path.isfile(path) and not not_a_file(path) and _is_zip(path):  # tf2onnx --large_model output
            read_from, keep = _large_model_zip(path, _loc(locate, "onnx"))
        model = _load_onnx_file(read_from, _loc(locate, "onnx"), keep_external=True)
        _check(model, read_from, _loc(locate, "onnx"), "the model", _ONNX_HINT, {}, log, timings)
    elif source_cfg.get("saved_model"):
        kind, path = "saved_model", source_cfg["saved_model"]
        model = _convert_saved_model(source_cfg, locate, log, timings, versions)
    else:
        kind = given[0]
        path = source_cfg[kind]
        model = _convert_tf_file(kind, source_cfg, locate, log, timings, versions)
    # IR < 4 models (the onnx model-zoo "light" graphs) also list every weight as a graph input.
    weights = {t.name for t in model.graph.initializer}
    result = SourceResult(model, kind, path, time.perf_counter() - t0, versions,
                          [_iospec(v) for v in model.graph.input if v.name not in weights],
                          [_iospec(v) for v in model.graph.output], opset_version(model), timings)
    if kind == "onnx":
        result.keepalive = keep  # an extracted --large_model zip: the model's weights live there
    return result


def _is_zip(path):
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


# ----------------------------------------------------------------------------------- small helpers

def _loc(locate, *keys):
    """'recipe.yaml:4:9: source.onnx': where in the recipe the user can fix it."""
    pos = locate(("source", *keys)) if locate else None
    return f"{pos}: {'.'.join(('source', *keys))}" if pos else ".".join(("source", *keys))


def _iospec(value_info):
    tt = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type"):
        return IOSpec(value_info.name, value_info.type.WhichOneof("value") or "unknown", None)
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
    except (KeyError, TypeError, ValueError):
        dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower()
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return IOSpec(value_info.name, dtype, shape if tt.HasField("shape") else None)


def _check(model, path, where, what, hint, unconverted, log, timings):
    """What the installed tools can read (IR version, opsets, tensor I/O), then the op check,
    onnx.checker and strict shape inference (graph/check.py)."""
    t = time.perf_counter()
    check_versions(model, where, what)
    check_io_types(model, where, what)
    check_model(model, path, where, what, hint, unconverted, log)
    timings["check"] = time.perf_counter() - t


# ------------------------------------------------------------------------------------- ONNX files

def _tensors(model):
    for g in all_graphs(model.graph):
        yield from g.initializer
        for attr in (a for node in g.node for a in node.attribute):
            yield from ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)


def _load_onnx_file(path, where, keep_external=False):
    if not os.path.exists(path):
        raise missing_path_error(path, where)
    if os.path.isdir(path):
        saved = os.path.exists(os.path.join(path, "saved_model.pb"))
        raise SourceError(f"{where}: {path} is a directory, not an .onnx file",
                          hint="it holds a SavedModel: use `saved_model:` instead" if saved else None)
    if not_a_file(path):  # a FIFO would block the read, /dev/zero never end it
        raise SourceError(f"{where}: {not_a_file(path)}")
    try:
        model = onnx.load(path, load_external_data=False)   # external data below, with a clearer message
    except Exception as err:    # protobuf DecodeError and friends
        raise SourceError(f"{where}: {path}: not a valid ONNX model: {err}") from err
    if not model.ir_version or not model.HasField("graph"):     # an empty file decodes "fine"
        raise SourceError(f"{where}: {path}: not a valid ONNX model: no ir_version or graph "
                          "(empty file, or some other protobuf)")
    base = os.path.dirname(path)
    locations = {}
    for t in _tensors(model):
        if uses_external_data(t):
            try:
                locations[t.name] = ExternalDataInfo(t).location
            except ValueError as err:   # onnx checks offset/length: negative, or not a number
                raise SourceError(f"{where}: {path}: tensor {t.name!r} has invalid external data "
                                  f"({', '.join(f'{e.key}={e.value!r}' for e in t.external_data)}): {err}") from err
    special = sorted({not_a_file(os.path.join(base, loc), "external data file") for loc in locations.values()} - {None})
    if special:
        raise SourceError(f"{where}: " + "; ".join(special))
    missing = {name: loc for name, loc in locations.items() if not os.path.isfile(os.path.join(base, loc))}
    if missing:
        files, example = ", ".join(sorted(set(missing.values()))), next(iter(missing))
        raise SourceError(f"{where}: external data file(s) missing: {files} (looked in {base}; "
                          f"needed by {len(missing)} tensor(s), e.g. {example!r})",
                          hint="keep the weights file next to the .onnx, under the name the model records")
    if keep_external and locations and external_bytes(model) >= cache_files.KEEP_EXTERNAL_BYTES:
        _resolve_external(model, path, base, where)  # big: the weights stay on disk (cache/files.py)
        return model
    try:
        onnx.load_external_data_for_model(model, base)
    except Exception as err:    # truncated file, bad offset, location outside the model's directory
        files = ", ".join(sorted(set(locations.values())))
        raise SourceError(f"{where}: could not load external data ({files}) from {base}: {err}") from err
    return model


def _resolve_external(model, path, base, where):
    """Keep external weights on disk (a model over 2 GiB is never read into memory): check each
    reference as onnx's loader would (a file inside the model's directory; offset and length
    within it) and make its location absolute, as trtpipe.cache.files.load_model does."""
    root = os.path.realpath(base or ".")
    sizes = {}
    for t in _tensors(model):
        if not uses_external_data(t):
            continue
        info = ExternalDataInfo(t)
        full = os.path.realpath(os.path.join(root, info.location))
        if os.path.isabs(info.location) or os.path.commonpath([root, full]) != root:
            raise SourceError(f"{where}: {path}: tensor {t.name!r}: external data location {info.location!r} "
                              f"is outside the model's directory {root}")
        if full not in sizes:
            sizes[full] = os.path.getsize(full)
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type != 8 else 0
        need = info.length if info.length else itemsize * _volume(t.dims)
        if info.offset + need > sizes[full]:
            raise SourceError(f"{where}: could not load external data ({info.location}) from {base}: tensor "
                              f"{t.name!r} needs bytes {info.offset}..{info.offset + need}, the file has {sizes[full]}")
        for kv in t.external_data:
            if kv.key == "location":
                kv.value = full
    inline_small(model)  # the graph checks keep small tensors: they must not be absolute references


def _volume(dims):
    n = 1
    for d in dims:
        n *= d
    return n


def _large_model_zip(path, where):
    """tf2onnx --large_model output: a zip of `__MODEL_PROTO.onnx` and one file per external
    tensor. Extracted (streamed) into a temporary directory that the returned object keeps alive;
    returns (the .onnx path inside it, the TemporaryDirectory)."""
    import shutil
    import zipfile
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise SourceError(f"{where}: {path}: not a valid ONNX model or tf2onnx --large_model zip: {err}") from err
    with archive:
        names = archive.namelist()
        if "__MODEL_PROTO.onnx" not in names:
            raise SourceError(f"{where}: {path} is a zip file without __MODEL_PROTO.onnx: not tf2onnx --large_model "
                              f"output (it holds {', '.join(names[:5]) or 'nothing'})")
        bad = [n for n in names if n.endswith("/") or "/" in n.strip("/") or n in (".", "..") or "\\" in n]
        if bad:
            raise SourceError(f"{where}: {path}: zip member {bad[0]!r} is not a plain file name (tf2onnx writes "
                              "flat archives)")
        tmp = tempfile.TemporaryDirectory(prefix="trtpipe-large-model-")
        try:
            for name in names:
                with archive.open(name) as src, open(os.path.join(tmp.name, name), "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 24)
        except (zipfile.BadZipFile, EOFError, OSError) as err:  # a bad CRC, a truncated member, a full disk
            tmp.cleanup()
            if isinstance(err, OSError) and is_disk_full(err):
                raise disk_full_error(err, tmp.name, what=f"{name} extracted from {path}") from err
            raise SourceError(f"{where}: {path}: cannot extract {name}: {err}") from err
    return os.path.join(tmp.name, "__MODEL_PROTO.onnx"), tmp


# ------------------------------------------------------------------------------------- SavedModels

def _convert_saved_model(cfg, locate, log, timings, versions):
    path, where = cfg["saved_model"], _loc(locate, "saved_model")
    if not os.path.exists(path):
        raise missing_path_error(path, where)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise SourceError(f"{where}: {path} is not a SavedModel directory (no saved_model.pb)",
                          hint="for an .onnx file use `onnx:`" if os.path.isfile(path) else None)
    from trtpipe.stages.source.tf_convert import convert_saved_model  # here: tf_convert imports did_you_mean from us
    hint = _unconverted_hint(cfg, locate)
    with tempfile.TemporaryDirectory(prefix="trtpipe-source-") as tmp:
        starts = []
        model, onnx_path, unconverted = convert_saved_model(
            path, cfg, functools.partial(_loc, locate), log, timings, versions, large_dir=tmp, start_points=starts)
        if onnx_path:       # large_model: read it back like an ONNX file with external data
            model = _load_onnx_file(onnx_path, where)
        if starts:  # string decoding (DecodeJpeg, ...): no opset has it; convert from after it instead
            from trtpipe.stages.source.tf_convert import STRING_OPS
            hint = (f"no ONNX opset defines {', '.join(sorted(set(unconverted) & STRING_OPS))}"
                    f" (and TensorRT takes no strings): start the conversion after the decoding with "
                    f"`source.inputs: [{starts[0]!r}]` (TF tensors inside the graph are accepted; the caller then "
                    f"feeds decoded images)")
        _check(model, onnx_path, _loc(locate, "opset"), "tf2onnx's output", hint, unconverted, log, timings)
    return model


def _unconverted_hint(cfg, locate):
    """What to do about TF ops tf2onnx left unconverted; refuses an opset tf2onnx cannot convert to
    before TensorFlow is imported (seconds)."""
    opset = cfg.get("opset", 17)
    check_tf2onnx_opset(opset, _loc(locate, "opset"))
    top = (tf2onnx_max_opset() or ("", 18))[1]
    return (f"try a higher `source.opset` (now {opset}, up to {top} with the installed tf2onnx), or replace these "
            "TF ops in the model" if opset < top else "replace these TF ops in the model")


# ------------------------------------------------------------------------ frozen graphs and TFLite

def _convert_tf_file(kind, cfg, locate, log, timings, versions):
    """A TF1 frozen graph (.pb) or a TFLite file: checked as a file, converted by tf2onnx's own
    loader (tf_convert.convert_tf_file), then checked like a converted SavedModel."""
    path, where = cfg[kind], _loc(locate, kind)
    problem = source_file_problem(kind, path, where)
    if problem:
        raise problem
    from trtpipe.stages.source.tf_convert import convert_tf_file
    hint = _unconverted_hint(cfg, locate)
    with tempfile.TemporaryDirectory(prefix="trtpipe-source-") as tmp:
        model, onnx_path, unconverted = convert_tf_file(
            kind, path, cfg, functools.partial(_loc, locate), log, timings, versions, large_dir=tmp)
        if onnx_path:       # large_model: read it back like an ONNX file with external data
            model = _load_onnx_file(onnx_path, where)
        _check(model, onnx_path, _loc(locate, "opset"), "tf2onnx's output", hint, unconverted, log, timings)
    return model
