"""Source stage: the recipe's `source` section -> onnx.ModelProto.

An ONNX file is loaded with its external data; a TF SavedModel is converted in-process by tf2onnx
(TensorFlow is imported only then: it costs seconds). Either way the graph is then checked for op
types its opset does not define (tf2onnx leaves TF ops it cannot convert in place and carries on)
and by onnx.checker, so later stages get an ONNX graph, not a half-converted one.
"""
import contextlib
import copy
import difflib
import functools
import itertools
import logging
import os
import re
import sys
import tempfile
import time
import types
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from trtpipe.errors import SourceError

_PROTO_LIMIT = 2**31 - 1            # protobuf cannot serialize more; onnx.checker then needs a path
_STD = ("", "ai.onnx")
_TF_DOMAIN = "ai.onnx.converters.tensorflow"    # tf2onnx's domain for TF ops kept as they are
_ORT_DOMAINS = ("com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc")
_ONNX_HINT = ("re-export the model with ops its opset defines (or a higher opset if the op exists there); "
              "a TensorRT plugin op needs a name ending in _TRT or a custom domain")
# TF's C++ INFO/WARNING lines ("I0000 00:00:17.. port.cc:153] ..."): printed to fd 2 even with
# TF_CPP_MIN_LOG_LEVEL=2 before absl is set up, with a banner; cpu_feature_guard's INFO has a 2nd line.
_TF_SPAM = re.compile(r"^([IW]\d{4} \d|WARNING: All log messages before absl::Init|To enable the following "
                      r"instructions: .*rebuild TensorFlow)")


class IOSpec(NamedTuple):
    name: str
    dtype: str          # numpy name ("float32"); TensorProto name when numpy has none
    shape: list         # per dim: int, dim_param string, or None (unknown); None when rank unknown


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


def load_source(source_cfg, *, locate=None, log=None):
    """Load (or convert) the recipe's source model and check it; SourceError on anything user-caused."""
    t0 = time.perf_counter()
    timings, versions = {}, {"onnx": onnx.__version__}
    if bool(source_cfg.get("onnx")) == bool(source_cfg.get("saved_model")):
        raise SourceError(f"{_loc(locate)}: needs exactly one of `onnx:` or `saved_model:`")
    if source_cfg.get("onnx"):
        kind, path = "onnx", source_cfg["onnx"]
        model = _load_onnx_file(path, _loc(locate, "onnx"))
        _check_model(model, path, _loc(locate, "onnx"), "the model", _ONNX_HINT, {}, log, timings)
    else:
        kind, path = "saved_model", source_cfg["saved_model"]
        model = _convert_saved_model(source_cfg, locate, log, timings, versions)
    # IR < 4 models (the onnx model-zoo "light" graphs) also list every weight as a graph input.
    weights = {t.name for t in model.graph.initializer}
    return SourceResult(model, kind, path, time.perf_counter() - t0, versions,
                        [_iospec(v) for v in model.graph.input if v.name not in weights],
                        [_iospec(v) for v in model.graph.output], _opset(model, ""), timings)


# ----------------------------------------------------------------------------------- small helpers

def _loc(locate, *keys):
    """'recipe.yaml:4:9: source.onnx': where in the recipe the user can fix it."""
    pos = locate(("source", *keys)) if locate else None
    return f"{pos}: {'.'.join(('source', *keys))}" if pos else ".".join(("source", *keys))


def _say(log, msg, stderr=False):
    if log:
        log(msg)
    elif stderr:
        print(msg, file=sys.stderr)


def _did_you_mean(word, choices):
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return "did you mean " + " or ".join(map(repr, close)) + "?" if close else None


def _missing(path, where):
    parent, base = os.path.split(path)
    if not os.path.isdir(parent):
        return SourceError(f"{where}: not found: {path} (directory {parent} does not exist)")
    return SourceError(f"{where}: not found: {path}", hint=_did_you_mean(base, sorted(os.listdir(parent))))


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


def _opset(model, domain):
    domains = _STD if domain in _STD else (domain,)
    return next((imp.version for imp in model.opset_import if imp.domain in domains), None)


def _graphs(graph):
    """The graph and every subgraph (Loop/If/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub)


def _nodes(model):
    return (node for g in _graphs(model.graph) for node in g.node)


def _tensors(model):
    for g in _graphs(model.graph):
        yield from g.initializer
        for attr in (a for node in g.node for a in node.attribute):
            yield from ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)


# ------------------------------------------------------------------------------------- ONNX files

def _load_onnx_file(path, where):
    if not os.path.exists(path):
        raise _missing(path, where)
    if os.path.isdir(path):
        saved = os.path.exists(os.path.join(path, "saved_model.pb"))
        raise SourceError(f"{where}: {path} is a directory, not an .onnx file",
                          hint="it holds a SavedModel: use `saved_model:` instead" if saved else None)
    try:
        model = onnx.load(path, load_external_data=False)   # external data below, with a clearer message
    except Exception as err:    # protobuf DecodeError and friends
        raise SourceError(f"{where}: {path}: not a valid ONNX model: {err}") from err
    if not model.ir_version or not model.HasField("graph"):     # an empty file decodes "fine"
        raise SourceError(f"{where}: {path}: not a valid ONNX model: no ir_version or graph "
                          "(empty file, or some other protobuf)")
    base = os.path.dirname(path)
    locations = {t.name: ExternalDataInfo(t).location for t in _tensors(model) if uses_external_data(t)}
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


# ------------------------------------------------------------------------------ op and model checks

@functools.lru_cache(maxsize=1)
def _known_domains():
    return {*_STD, _TF_DOMAIN, *_ORT_DOMAINS, *(s.domain for s in onnx.defs.get_all_schemas())}


def _is_plugin(node):
    """TensorRT plugins: `*_TRT` ops (any domain: the TRT parser looks them up by name) or custom domains."""
    return node.op_type.endswith("_TRT") or node.domain not in _known_domains()


def _is_known(model, node, local_functions):
    dom = "" if node.domain == "ai.onnx" else node.domain
    if (dom, node.op_type) in local_functions or _is_plugin(node) or dom in _ORT_DOMAINS:
        return True     # ORT contrib ops: ONNX Runtime (validation) knows them; the TRT parser decides
    version = _opset(model, dom)     # None: no opset import for the domain, which onnx.checker reports
    return dom != _TF_DOMAIN and (version is None or onnx.defs.has(node.op_type, version, dom))


def _check_ops(model, where, what, hint, unconverted):
    """SourceError listing op types the model's opsets do not define (plus tf2onnx's `unconverted`)."""
    local_functions = {(f.domain, f.name) for f in model.functions}
    unknown, present = {}, set()
    for node in _nodes(model):
        present.add(node.op_type)
        if not _is_known(model, node, local_functions):
            unknown.setdefault((node.domain, node.op_type), [0, node.name])[0] += 1
    for op, seen in unconverted.items():    # tf2onnx's word, for ops still in the graph
        if op in present:
            unknown.setdefault(("", op), list(seen))
    if not unknown:
        return
    opset, lines = _opset(model, ""), []
    for (dom, op), (count, example) in sorted(unknown.items()):
        later = next((v for v in range((opset or 0) + 1, onnx.defs.onnx_opset_version() + 1)
                      if dom in _STD and onnx.defs.has(op, v)), None)
        note = f"; ONNX defines it from opset {later}" if later else ""
        lines.append(f"    {dom + '::' if dom else ''}{op}  x{count}  (e.g. node {example!r}{note})")
    raise SourceError(f"{where}: {what} has {len(unknown)} op type(s) that ONNX opset {opset} does not define:"
                      "\n" + "\n".join(lines), hint=hint)


def _check_model(model, path, where, what, hint, unconverted, log, timings):
    """Unknown ops first (onnx.checker stops at the first, less helpfully), then onnx.checker."""
    t = time.perf_counter()
    _check_ops(model, where, what, hint, unconverted)
    try:
        with relaxed_for_checker(model) as relaxed:
            if path and not relaxed:
                onnx.checker.check_model(path)      # path form: copes with external data and > 2 GB
            elif model.ByteSize() < _PROTO_LIMIT:
                onnx.checker.check_model(model)
            else:
                _say(log, "source: onnx.checker skipped: model over 2 GB that needs a relaxed check")
    except (onnx.checker.ValidationError, ValueError) as err:
        raise SourceError(f"{where}: onnx.checker rejected the model: {str(err).strip()}") from err
    timings["check"] = time.perf_counter() - t


@contextlib.contextmanager
def relaxed_for_checker(model):
    """Relax onnx.checker (in place, undone on exit; no copy of the weights) for what TensorRT and
    the ONNX IR accept and the checker does not:
    - TensorRT plugin nodes: `*_TRT` ops in the default domain, or custom domains without an opset
      import ("No Op registered for EfficientNMS_TRT"): moved to a declared plugin domain;
    - graph inputs/outputs without a `shape` (unknown rank; IR.md allows it, the checker requires
      the field: onnx/onnx#2492, #2932): given an empty one. full_check=False infers no shapes,
      so this fake rank is never used.
    The model-zoo light graphs need neither: onnx 1.23 accepts them as they are."""
    moved = [(n, n.domain) for n in _nodes(model) if _is_plugin(n) and n.domain in _STD]
    shapeless = [vi.type.tensor_type for g in _graphs(model.graph) for vi in (*g.input, *g.output)
                 if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape")]
    n_imports = len(model.opset_import)
    for node, _ in moved:
        node.domain = "trt.plugins"
    for tensor_type in shapeless:
        tensor_type.shape.SetInParent()
    for domain in {n.domain for n in _nodes(model)} - {i.domain for i in model.opset_import} - set(_STD):
        if domain not in _known_domains():
            model.opset_import.add(domain=domain, version=1)
    try:
        yield bool(moved or shapeless or len(model.opset_import) > n_imports)
    finally:
        for node, domain in moved:
            node.domain = domain
        for tensor_type in shapeless:
            tensor_type.ClearField("shape")
        del model.opset_import[n_imports:]


# ------------------------------------------------------------------------------------- SavedModels

def _convert_saved_model(cfg, locate, log, timings, versions):
    path, where = cfg["saved_model"], _loc(locate, "saved_model")
    if not os.path.exists(path):
        raise _missing(path, where)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise SourceError(f"{where}: {path} is not a SavedModel directory (no saved_model.pb)",
                          hint="for an .onnx file use `onnx:`" if os.path.isfile(path) else None)
    _say(log, f"source: converting SavedModel {path} with tf2onnx"
         + ("" if "tensorflow" in sys.modules else " (importing TensorFlow takes seconds)"))
    with _quiet_tf(log) as collected:
        t = time.perf_counter()
        tf, tf2onnx = _import_tf()
        timings["import_tf"] = time.perf_counter() - t
        versions.update(tensorflow=tf.__version__, tf2onnx=tf2onnx.__version__)
        tags = _check_signature(path, cfg, locate)
        t = time.perf_counter()
        model, storage = _tf2onnx(tf, path, tags, cfg, locate, collected)
        timings["convert"] = time.perf_counter() - t
    opset = cfg.get("opset", 17)
    hint = f"try a higher `source.opset` (now {opset}, up to 21), or replace these TF ops in the model"
    with tempfile.TemporaryDirectory(prefix="trtpipe-source-") as tmp:
        onnx_path = _materialize(model, storage, tmp) if storage else None
        if onnx_path:       # large_model: read it back like an ONNX file with external data
            model = _load_onnx_file(onnx_path, where)
        _check_model(model, onnx_path, _loc(locate, "opset"), "tf2onnx's output", hint,
                     collected.unconverted, log, timings)
    return model


def _import_tf():
    try:
        import tensorflow as tf
        import tf2onnx
        from tf2onnx import convert, tf_loader  # noqa: F401  (slow too: counted in import_tf)
    except ImportError as err:
        raise SourceError(f"converting a SavedModel needs tensorflow and tf2onnx: {err}",
                          hint="pip install tensorflow-cpu tf2onnx") from err
    return tf, tf2onnx


def _check_signature(path, cfg, locate):
    """Tag set and signature present? Read saved_model.pb: TF's own errors do not list them."""
    from tensorflow.core.protobuf import saved_model_pb2
    saved = saved_model_pb2.SavedModel()
    try:
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved.ParseFromString(f.read())
    except Exception as err:
        raise SourceError(f"{_loc(locate, 'saved_model')}: {path}: not a valid SavedModel: {err}") from err
    tags = ",".join(sorted(t.strip() for t in cfg.get("tag", "serve").split(",") if t.strip()))
    metas = {",".join(sorted(m.meta_info_def.tags)): m for m in saved.meta_graphs}
    if tags not in metas:
        raise SourceError(f"{_loc(locate, 'tag')}: no MetaGraph with tag set {tags!r} in {path}; available: "
                          + ", ".join(map(repr, metas)), hint=_did_you_mean(tags, metas))
    sig = cfg.get("signature", "serving_default")
    sigs = sorted(k for k in metas[tags].signature_def if not k.startswith("_"))   # __saved_model_init_op
    if sig not in sigs:
        raise SourceError(f"{_loc(locate, 'signature')}: signature {sig!r} not in {path}; available: "
                          f"{', '.join(sigs) or '(none)'}", hint=_did_you_mean(sig, sigs))
    return tags.split(",") if tags else []


def _resolve(names, universe, rename, where):
    """Recipe names (signature keys, or TF tensor names like 'x:0') -> TF tensor names."""
    by_key = {rename.get(t, t): t for t in universe}
    for name in names:
        if name not in by_key and name not in universe:
            raise SourceError(f"{where}: {name!r} is not in the signature; available: {', '.join(by_key)}",
                              hint=_did_you_mean(name, by_key))
    return [by_key.get(name, name) for name in names]


def _tf2onnx(tf, path, tags, cfg, locate, collected):
    """What `python -m tf2onnx.convert --saved-model` does (tf2onnx 1.17 convert.main), in-process."""
    from tf2onnx import convert, tf_loader
    large, opts, opset = cfg.get("large_model", False), cfg.get("tf2onnx") or {}, cfg.get("opset", 17)
    try:
        graph_def, ins, outs, tables, rename = tf_loader.from_saved_model(
            path, None, None, tags, [cfg.get("signature", "serving_default")], None, large,
            return_initialized_tables=True, return_tensors_to_rename=True)
    except Exception as err:
        raise SourceError(f"{_loc(locate, 'saved_model')}: TensorFlow could not load {path}: {err}") from err

    def names(key, universe, *parent):
        return _resolve((opts if parent else cfg).get(key) or [], universe, rename, _loc(locate, *parent, key))
    ins, outs = names("inputs", ins) or ins, names("outputs", outs) or outs
    shapes = opts.get("shape_override") or {}
    shapes = {k: [d if d is not None and d >= 0 else None for d in v]     # tf2onnx: None = unknown dim
              for k, v in zip(names("shape_override", ins, "tf2onnx"), shapes.values())}
    if large:
        _numpy_compat()
    try:
        with tf.device("/cpu:0"), _deterministic_tf2onnx():
            # _convert_common, as the CLI, not the public from_graph_def: that one re-freezes the graph,
            # drops initialized_tables (hash tables then stay unconverted) and forces continue_on_error.
            # `name` ends up in the graph's doc_string: no absolute path, so the bytes do not depend on it.
            return convert._convert_common(
                graph_def, name=os.path.basename(os.path.normpath(path)), continue_on_error=False, opset=opset,
                target=opts.get("target") or None,
                input_names=ins, output_names=outs, tensors_to_rename=rename, initialized_tables=tables,
                large_model=large, custom_op_handlers={}, extra_opset=[], shape_override=shapes or None,
                inputs_as_nchw=names("inputs_as_nchw", ins, "tf2onnx"),
                outputs_as_nchw=names("outputs_as_nchw", outs, "tf2onnx"))
    except SourceError:
        raise
    except Exception as err:
        context = "".join(f"\n    {e.split(' (fct=')[0]}" for e in collected.errors[-5:])
        collected.errors.clear()        # now in the message: not replayed as well
        raise SourceError(f"{_loc(locate, 'saved_model')}: tf2onnx could not convert {path} at opset {opset}: "
                          f"{err}{context}", hint="try another `source.opset`, or change that node") from err


class _OrderedSet(dict):
    """A set that iterates in insertion order: a dict underneath, so membership, len and
    iteration stay at C speed; pop() takes the newest element (a set's pop is arbitrary)."""
    __slots__ = ()
    __hash__ = None

    def __init__(self, items=()):
        if items:
            dict.update(self, zip(items, itertools.repeat(None)))

    def add(self, x):
        self[x] = None

    def discard(self, x):
        dict.pop(self, x, None)

    def remove(self, x):
        del self[x]

    def pop(self):
        if not self:
            raise KeyError("pop from an empty set")
        return self.popitem()[0]    # LIFO: O(1); popping the oldest would rescan the dict each time

    def update(self, *others):
        for other in others:
            dict.update(self, zip(other, itertools.repeat(None)))

    def union(self, *others):
        out = _OrderedSet(self)
        out.update(*others)
        return out

    def intersection(self, *others):
        out = _OrderedSet(self)
        for other in others:
            other = other if isinstance(other, (dict, set, frozenset)) else frozenset(other)
            out = _OrderedSet(x for x in out if x in other)
        return out

    def difference(self, *others):
        out = _OrderedSet(self)
        for other in others:
            for x in other:
                out.discard(x)
        return out

    def issubset(self, other):
        return all(x in other for x in self)

    def issuperset(self, other):
        return all(x in self for x in other)

    def isdisjoint(self, other):
        return not any(x in self for x in other)

    def copy(self):
        return _OrderedSet(self)

    __or__, __and__, __sub__, __le__, __ge__ = union, intersection, difference, issubset, issuperset

    def __ior__(self, other):
        self.update(other)
        return self

    def __iand__(self, other):
        keep = [x for x in self if x in other]
        self.clear()
        self.update(keep)
        return self

    def __isub__(self, other):
        for x in other:
            self.discard(x)
        return self

    def __eq__(self, other):
        if isinstance(other, (set, frozenset, _OrderedSet)):
            return len(self) == len(other) and all(x in other for x in self)
        return NotImplemented

    def __ne__(self, other):
        same = self.__eq__(other)
        return same if same is NotImplemented else not same

    def __repr__(self):
        return "{" + ", ".join(map(repr, self)) + "}" if self else "set()"

    def __reduce__(self):
        return _OrderedSet, (list(self),)

    def __deepcopy__(self, memo):  # tf2onnx's optimizer deep-copies the graph before every optimizer
        if all(type(x) is str for x in self):
            out = _OrderedSet(self)     # strings are immutable: deepcopy would return them as they are
        else:
            out = memo[id(self)] = _OrderedSet()
            out.update(copy.deepcopy(x, memo) for x in self)
        memo[id(self)] = out
        return out


@contextlib.contextmanager
def _deterministic_tf2onnx():
    """Make tf2onnx's output a function of its input (same SavedModel -> same ONNX bytes).

    tf2onnx iterates Python sets while it rewrites and optimizes: sets of Node objects, ordered
    by memory address (TransposeOptimizer's `set(node.inputs)`, the node sets behind
    Graph.extract_sub_graph_nodes / delete_unused_nodes), and sets of tensor names, ordered by the
    per-process string hash (Graph._output_to_consumers). That order decides which of several
    equal constants MergeDuplicatedNodes keeps and which `const_fold_opt__N` name a folded weight
    gets, so two processes gave different graphs (onnx/tensorflow-onnx#1789, #2006). During the
    conversion every tf2onnx module's `set` is an insertion-ordered set, so the same input and
    sequence of operations give the same order whatever the addresses or PYTHONHASHSEED. Its
    generated-name counter (`make_name`, a module global) restarts, so an earlier conversion in
    the same process does not shift the names either."""
    from tf2onnx import utils
    mods = [m for n, m in list(sys.modules.items())
            if m is not None and (n == "tf2onnx" or n.startswith("tf2onnx."))]
    own = {m.__name__: m.__dict__["set"] for m in mods if "set" in m.__dict__}
    for mod in mods:
        mod.set = _OrderedSet
    utils.INTERNAL_NAME = 1
    try:
        yield
    finally:
        for mod in mods:
            if mod.__name__ in own:
                mod.set = own[mod.__name__]
            else:
                mod.__dict__.pop("set", None)


def _numpy_compat():
    """tf2onnx 1.17 calls np.product (gone in numpy 2) for large_model: give tf2onnx.graph, and only
    it, a numpy that still has it."""
    import numpy
    import tf2onnx.graph
    if not hasattr(tf2onnx.graph.np, "product"):
        shim = types.ModuleType("numpy")
        shim.__getattr__, shim.product = functools.partial(getattr, numpy), numpy.prod
        tf2onnx.graph.np = shim


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
        self.unconverted, self.errors = {}, []

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

