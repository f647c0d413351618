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

from trtpipe.errors import SourceError, did_you_mean
from trtpipe.fileguard import not_a_file
from trtpipe.graph.check import all_graphs, check_model, opset_version, relaxed_for_checker
from trtpipe.stages.source.support import check_io_types, check_tf2onnx_opset, check_versions, tf2onnx_max_opset

# relaxed_for_checker: transform.py and precision.py import it from here
__all__ = ["IOSpec", "SourceResult", "load_source", "relaxed_for_checker", "did_you_mean"]

_ONNX_HINT = ("re-export the model with ops its opset defines (or a higher opset if the op exists there); "
              "a TensorRT plugin op needs a name ending in _TRT or a custom domain")


class IOSpec(NamedTuple):
    name: str
    dtype: str          # numpy name ("float32"); TensorProto name when numpy has none
    shape: list | None  # per dim: int, dim_param string, or None (unknown); None when rank unknown


@dataclass
class SourceResult:
    model: onnx.ModelProto          # external data loaded
    kind: str                       # "onnx" | "saved_model"
    path: str
    duration_s: float
    versions: dict                  # onnx, and tensorflow + tf2onnx when a SavedModel was converted
    inputs: list                    # [IOSpec]
    outputs: list                   # [IOSpec]
    opset: int                      # ai.onnx opset of the model
    timings: dict = field(default_factory=dict)    # import_tf / convert / check seconds


def load_source(source_cfg: dict, *, locate: Callable[[tuple], str] | None = None,
                log: Callable[[str], Any] | None = None) -> SourceResult:
    """Load (or convert) the recipe's source model and check it (stage 2).

    Args:
        source_cfg: the recipe's resolved `source` section: exactly one of `onnx` (an .onnx file;
            external data files next to it) or `saved_model` (a TF SavedModel directory, converted
            in-process with tf2onnx as its CLI does, using `tag`, `signature`, `opset` (default
            17), `large_model` and `tf2onnx` options).
        locate: recipe key path -> "file:line:col", so messages point at the recipe line.
        log: optional sink for progress and detail lines.

    Returns:
        SourceResult: `model` (onnx.ModelProto, external data loaded), `kind` ("onnx" or
        "saved_model"), `path`, `duration_s` (seconds), `versions` (onnx; tensorflow and tf2onnx
        for a SavedModel), `inputs` / `outputs` (IOSpec: name, numpy dtype name, dims as int,
        symbol or None; the weights IR < 4 models also list as inputs are left out), `opset`
        (ai.onnx) and `timings` (import_tf / convert / check, seconds).

    Raises:
        SourceError: not exactly one of `onnx:` / `saved_model:`; the path is missing (with a
            did-you-mean), of the wrong kind, not a valid ONNX model or SavedModel, or its external
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
    if bool(source_cfg.get("onnx")) == bool(source_cfg.get("saved_model")):
        raise SourceError(f"{_loc(locate)}: needs exactly one of `onnx:` or `saved_model:`")
    if source_cfg.get("onnx"):
        kind, path = "onnx", source_cfg["onnx"]
        model = _load_onnx_file(path, _loc(locate, "onnx"))
        _check(model, path, _loc(locate, "onnx"), "the model", _ONNX_HINT, {}, log, timings)
    else:
        kind, path = "saved_model", source_cfg["saved_model"]
        model = _convert_saved_model(source_cfg, locate, log, timings, versions)
    # IR < 4 models (the onnx model-zoo "light" graphs) also list every weight as a graph input.
    weights = {t.name for t in model.graph.initializer}
    return SourceResult(model, kind, path, time.perf_counter() - t0, versions,
                        [_iospec(v) for v in model.graph.input if v.name not in weights],
                        [_iospec(v) for v in model.graph.output], opset_version(model), timings)


# ----------------------------------------------------------------------------------- small helpers

def _loc(locate, *keys):
    """'recipe.yaml:4:9: source.onnx': where in the recipe the user can fix it."""
    pos = locate(("source", *keys)) if locate else None
    return f"{pos}: {'.'.join(('source', *keys))}" if pos else ".".join(("source", *keys))


def missing_path_error(path: str, where: str) -> SourceError:
    """SourceError for a missing file or directory (checks.py reports it the same way)."""
    parent, base = os.path.split(path)
    if not os.path.isdir(parent):
        return SourceError(f"{where}: not found: {path} (directory {parent} does not exist)")
    return SourceError(f"{where}: not found: {path}", hint=did_you_mean(base, sorted(os.listdir(parent))))


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


def _load_onnx_file(path, where):
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
    try:
        onnx.load_external_data_for_model(model, base)
    except Exception as err:    # truncated file, bad offset, location outside the model's directory
        raise SourceError(f"{where}: could not load external data from {base}: {err}") from err
    return model


# ------------------------------------------------------------------------------------- SavedModels

def _convert_saved_model(cfg, locate, log, timings, versions):
    path, where = cfg["saved_model"], _loc(locate, "saved_model")
    if not os.path.exists(path):
        raise missing_path_error(path, where)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise SourceError(f"{where}: {path} is not a SavedModel directory (no saved_model.pb)",
                          hint="for an .onnx file use `onnx:`" if os.path.isfile(path) else None)
    from trtpipe.stages.source.tf_convert import convert_saved_model  # here: tf_convert imports did_you_mean from us
    opset = cfg.get("opset", 17)
    check_tf2onnx_opset(opset, _loc(locate, "opset"))     # before TensorFlow is imported (seconds)
    top = (tf2onnx_max_opset() or ("", 18))[1]
    hint = (f"try a higher `source.opset` (now {opset}, up to {top} with the installed tf2onnx), or replace these "
            "TF ops in the model" if opset < top else "replace these TF ops in the model")
    with tempfile.TemporaryDirectory(prefix="trtpipe-source-") as tmp:
        model, onnx_path, unconverted = convert_saved_model(
            path, cfg, functools.partial(_loc, locate), log, timings, versions, large_dir=tmp)
        if onnx_path:       # large_model: read it back like an ONNX file with external data
            model = _load_onnx_file(onnx_path, where)
        _check(model, onnx_path, _loc(locate, "opset"), "tf2onnx's output", hint, unconverted, log, timings)
    return model
