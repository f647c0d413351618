"""SavedModel -> onnx.ModelProto with tf2onnx, in-process (what `python -m tf2onnx.convert
--saved-model` does), for the source stage.

Importing this module is cheap: TensorFlow and tf2onnx are imported when a conversion starts
(seconds). Their INFO/WARNING chatter is hidden and their errors kept; TF ops tf2onnx leaves
unconverted are collected for the source stage's op check (trtpipe/onnx_check.py).
"""
from __future__ import annotations

import contextlib
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

# TF's C++ INFO/WARNING lines ("I0000 00:00:17.. port.cc:153] ..."): printed to fd 2 even with
# TF_CPP_MIN_LOG_LEVEL=2 before absl is set up, with a banner; cpu_feature_guard's INFO has a 2nd line.
_TF_SPAM = re.compile(r"^([IW]\d{4} \d|WARNING: All log messages before absl::Init|To enable the following "
                      r"instructions: .*rebuild TensorFlow)")


def convert_saved_model(path: str, cfg: dict, where: Callable[..., str], log: Callable[[str], Any] | None,
                        timings: dict[str, float], versions: dict[str, str], large_dir: str,
                        ) -> tuple[onnx.ModelProto, str | None, dict[str, list]]:
    """Convert the SavedModel directory `path` as the recipe's `source` section `cfg` says.

    `where(*keys)` names a `source.*` key's place in the recipe (for messages); `timings` gets
    import_tf / convert seconds, `versions` tensorflow + tf2onnx. Returns (model, onnx_path,
    unconverted): with `large_model` the model is written to `large_dir` with external data and
    `onnx_path` names it (read it back from there), else onnx_path is None. `unconverted`:
    {TF op: [count, example node]} tf2onnx left as they were."""
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
    return model, _materialize(model, storage, large_dir) if storage else None, collected.unconverted


def _say(log, msg, stderr=False):
    if log:
        log(msg)
    elif stderr:
        print(msg, file=sys.stderr)


def _import_tf():
    try:
        import tensorflow as tf
        import tf2onnx
        import tf2onnx.convert  # slow too: counted in import_tf
        import tf2onnx.tf_loader
    except ImportError as err:
        raise SourceError(f"converting a SavedModel needs tensorflow and tf2onnx: {err}",
                          hint="pip install tensorflow-cpu tf2onnx") from err
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
    large, opts, opset = cfg.get("large_model", False), cfg.get("tf2onnx") or {}, cfg.get("opset", 17)
    try:
        graph_def, ins, outs, tables, rename = tf_loader.from_saved_model(
            path, None, None, tags, [cfg.get("signature", "serving_default")], None, large,
            return_initialized_tables=True, return_tensors_to_rename=True)
    except Exception as err:
        raise SourceError(f"{where('saved_model')}: TensorFlow could not load {path}: {err}") from err

    def names(key, universe, *parent):
        return _resolve((opts if parent else cfg).get(key) or [], universe, rename, where(*parent, key))
    ins, outs = names("inputs", ins) or ins, names("outputs", outs) or outs
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
        raise SourceError(f"{where('saved_model')}: tf2onnx could not convert {path} at opset {opset}: "
                          f"{err}{context}", hint="try another `source.opset`, or change that node") from err


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
