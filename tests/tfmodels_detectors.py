"""Small look-alikes of detector exports from current TensorFlow stacks (helpers, not tests).

Each builder writes a SavedModel (serving_default) into `dest` and returns its path. The
networks are tiny (one or two convolutions, seeded random weights, a class bias that makes a few
boxes score above the threshold on uniform noise in 0..255, what validation feeds) so that tf2onnx
converts them in a few seconds; what matters is the post-processing, which copies the structure of
the real exports:

* `model_garden(dest)`: Model Garden RetinaNet-like (the committed demo of recipes/retinanet.yaml,
  built by models/make_retinanet_demo.py, whose network head and greedy NMS the others reuse).
  uint8 [1, None, None, 3] input, preprocessing in tf.map_fn returning (image, image_info) like
  `preprocess_ops.resize_and_crop_image`; `image_info`
  ([[h, w], [64, 64], [scale_y, scale_x], [0, 0]]) is a graph output and rescales the detected
  boxes to the original image. NMS `v2`-like: per-class pre-NMS TopK, then a tf.while_loop over
  classes whose body runs a greedy suppression tf.while_loop (nested ONNX Loops, no
  NonMaxSuppression op), then the top `max_detections` over all classes.
* `keras_hub(dest)`: keras-hub RetinaNetObjectDetector-like. float32 [1, 128, 128, 3] input, 4096
  anchors (more than TensorRT's TopK limit of 3840); NMS starts with an argsort (a TopK with K = N)
  of the best class score over all anchors, then a batched greedy suppression tf.while_loop.
  Outputs boxes / confidence / classes / num_detections.
* `yolo(dest)`: YOLO-style single-image NMS: float32 [1, 64, 64, 3] input, boxes [N, 4] and scores
  [N] of the one image go to tf.image.non_max_suppression (NonMaxSuppression on [N, 4] boxes);
  outputs are variable-length [K, 4] / [K] / [K].
* `map_fn_output(dest)`: c02's construct: a map_fn whose second output (image_info) is a graph output.

The NMS settings default to the module constants; `score_threshold`, `iou_threshold` and
`max_detections` options build the same network (same seed, same weights) with other settings, the
reference for `nms: split` with changed settings.
"""
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DEMO_SCRIPT = Path(__file__).resolve().parents[1] / "models" / "make_retinanet_demo.py"
SCORE_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS, NUM_CLASSES = 0.3, 0.5, 20, 3  # as the demo script's

def _demo():
    """models/make_retinanet_demo.py, loaded by path (models/ is not a package)."""
    import importlib.util
    import sys
    mod = sys.modules.get("make_retinanet_demo")
    if mod is None:
        spec = importlib.util.spec_from_file_location("make_retinanet_demo", DEMO_SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["make_retinanet_demo"] = mod
        spec.loader.exec_module(mod)
    return mod


def _tf():
    import tensorflow as tf
    return tf


class KerasHub:
    size = 128  # 64 x 64 cells, one anchor each: 4096 anchors

    def __init__(self, tf, seed=1, **settings):
        self.tf, self.head = tf, _demo().Head(tf, self.size, seed, hot=0.0006)
        self.cfg = _demo().settings(**settings)

    def __call__(self, images):
        tf = self.tf
        boxes, scores = self.head(images)
        conf, cls = tf.reduce_max(scores, -1), tf.argmax(scores, -1, output_type=tf.int32)
        order = tf.argsort(conf, axis=-1, direction="DESCENDING")  # TopK over all anchors
        conf = tf.gather(conf, order, batch_dims=1)
        boxes = tf.gather(boxes, order, batch_dims=1)
        cls = tf.gather(cls, order, batch_dims=1)
        cfg = self.cfg
        n = tf.reduce_max(tf.reduce_sum(tf.cast(conf > cfg["score_threshold"], tf.int32), -1))
        keep = tf.cast(conf > cfg["score_threshold"], tf.float32)  # [B, N]

        def body(i, keep):
            box = boxes[:, i:i + 1, :]  # [B, 1, 4]
            lo, hi = tf.maximum(box[..., :2], boxes[..., :2]), tf.minimum(box[..., 2:], boxes[..., 2:])
            inter = tf.reduce_prod(tf.maximum(hi - lo, 0.0), -1)
            area = lambda b: tf.reduce_prod(tf.maximum(b[..., 2:] - b[..., :2], 0.0), -1)  # noqa: E731
            iou = inter / (area(box) + area(boxes) - inter + 1e-8)
            later = tf.cast(tf.range(tf.shape(conf)[1]) > i, tf.float32)[None]
            suppress = tf.cast(iou > cfg["iou_threshold"], tf.float32) * later * keep[:, i:i + 1]
            return i + 1, keep * (1.0 - suppress)

        _, keep = tf.while_loop(lambda i, k: i < n, body, [tf.constant(0), keep])
        top, idx = tf.math.top_k(conf * keep, cfg["max_detections"])
        return {"boxes": tf.gather(boxes, idx, batch_dims=1), "confidence": top,
                "classes": tf.gather(cls, idx, batch_dims=1),
                "num_detections": tf.reduce_sum(tf.cast(top > 0, tf.int32), -1)}


class Yolo:
    size = 64

    def __init__(self, tf, seed=2, **settings):
        self.tf, self.head, self.cfg = tf, _demo().Head(tf, self.size, seed), _demo().settings(**settings)

    def __call__(self, images):
        tf = self.tf
        boxes, scores = self.head(images)
        b, s = boxes[0], scores[0]  # one image: [N, 4], [N, C]
        conf, cls = tf.reduce_max(s, -1), tf.argmax(s, -1, output_type=tf.int32)
        c = self.cfg
        keep = tf.image.non_max_suppression(b, conf, c["max_detections"], c["iou_threshold"], c["score_threshold"])
        return {"boxes": tf.gather(b, keep), "scores": tf.gather(conf, keep), "classes": tf.gather(cls, keep)}


class MapFnOutput:
    """c02: map_fn returning (image, image_info); image_info is a graph output, y the conv output."""
    size = 32

    def __init__(self, tf, seed=3):
        self.tf = tf
        self.w = tf.Variable(_demo().weights(np.random.default_rng(seed), 3, 3, 3, 4))

    def __call__(self, images):
        tf = self.tf

        def one(image):
            hw = tf.cast(tf.shape(image)[:2], tf.float32)
            x = tf.image.resize(tf.cast(image, tf.float32), [self.size, self.size]) / 255.0
            return x, tf.concat([hw, hw], 0)

        x, info = tf.map_fn(one, images, fn_output_signature=(
            tf.TensorSpec([self.size, self.size, 3], tf.float32), tf.TensorSpec([4], tf.float32)))
        return {"y": tf.nn.conv2d(x, self.w, 1, "SAME"), "image_info": info}


def _save(cls, dest, spec, **options):
    tf = _tf()
    model = cls(tf, **options)
    module = tf.Module()
    module.vars = [v for v in vars(model.head if hasattr(model, "head") else model).values()
                   if isinstance(v, tf.Variable)]
    module.serve = tf.function(model.__call__, input_signature=[spec])
    tf.saved_model.save(module, str(dest), signatures={"serving_default": module.serve.get_concrete_function()})
    return Path(dest)


def model_garden(dest, **options):
    """Model Garden RetinaNet-like (see the module docstring)."""
    tf = _tf()
    return _save(lambda tf_, **o: _demo().ModelGarden(tf_, **o), dest,
                 tf.TensorSpec([1, None, None, 3], tf.uint8, "inputs"), **options)


def keras_hub(dest, batch=1, **options):
    """keras-hub RetinaNetObjectDetector-like (see the module docstring); `batch` None: dynamic."""
    tf = _tf()
    return _save(KerasHub, dest, tf.TensorSpec([batch, 128, 128, 3], tf.float32, "images"), **options)


def yolo(dest, **options):
    """YOLO-style single-image NMS (see the module docstring)."""
    tf = _tf()
    return _save(Yolo, dest, tf.TensorSpec([1, 64, 64, 3], tf.float32, "images"), **options)


def map_fn_output(dest, **options):
    """c02's construct (see the module docstring)."""
    tf = _tf()
    return _save(MapFnOutput, dest, tf.TensorSpec([1, None, None, 3], tf.uint8, "images"), **options)


class _Small:
    """The other constructs of the 2026-11-30 cases, each on a one-conv network:
    `kind` "uint8" (c05: uint8 image input cast in the graph, no map_fn), "topk" (c07: a TopK with
    K = 5000 over 6144 values, not part of an NMS), "unique" (c06: tf.unique_with_counts)."""

    def __init__(self, tf, kind, seed=4):
        self.tf, self.kind = tf, kind
        rng = np.random.default_rng(seed)
        self.w = tf.Variable(_demo().weights(rng, 3, 3, 3, 6))
        self.d = tf.Variable(_demo().weights(rng, 6, 4))

    def __call__(self, images):
        tf = self.tf
        x = tf.nn.relu(tf.nn.conv2d(tf.cast(images, tf.float32) / 127.5 - 1.0, self.w, 1, "SAME"))
        if self.kind == "uint8":
            return {"probs": tf.nn.softmax(tf.reduce_mean(x, [1, 2]) @ self.d)}
        if self.kind == "topk":
            values, indices = tf.math.top_k(tf.reshape(x, [tf.shape(x)[0], -1]), 5000)
            return {"top_scores": values, "top_indices": indices}
        labels, _, counts = tf.unique_with_counts(tf.reshape(tf.argmax(x, -1, output_type=tf.int32), [-1]))
        return {"labels": labels, "counts": counts}


def small(dest, kind, **options):
    """One of _Small's constructs (c05 "uint8", c07 "topk", c06 "unique"); input `pixels`
    uint8 [1, 32, 32, 3]."""
    tf = _tf()
    return _save(lambda tf_, **o: _Small(tf_, kind, **o), dest,
                 tf.TensorSpec([1, 32, 32, 3], tf.uint8, "pixels"), **options)


class _DecodeJpeg:
    def __init__(self, tf, seed=5):
        rng = np.random.default_rng(seed)
        self.tf = tf
        self.w = tf.Variable(_demo().weights(rng, 3, 3, 3, 4))
        self.d = tf.Variable(_demo().weights(rng, 4, 3))

    def __call__(self, data):
        tf = self.tf
        images = tf.map_fn(lambda b: tf.image.resize(tf.cast(tf.io.decode_jpeg(b, channels=3), tf.float32),
                                                     [32, 32]), data, fn_output_signature=tf.float32)
        x = tf.nn.relu(tf.nn.conv2d(images / 255.0, self.w, 1, "SAME"))
        return {"probs": tf.nn.softmax(tf.reduce_mean(x, [1, 2]) @ self.d)}


def decode_jpeg(dest, **options):
    """c08's construct: a string input (JPEG bytes, [None]) decoded by tf.io.decode_jpeg inside a
    tf.map_fn, then a one-conv classifier on the decoded 32x32 images."""
    tf = _tf()
    return _save(_DecodeJpeg, dest, tf.TensorSpec([None], tf.string, "image_bytes"), **options)


BUILDERS = {"model_garden": model_garden, "keras_hub": keras_hub, "yolo": yolo, "map_fn_output": map_fn_output,
            "uint8": lambda dest, **o: small(dest, "uint8", **o), "topk": lambda dest, **o: small(dest, "topk", **o),
            "unique": lambda dest, **o: small(dest, "unique", **o)}


def onnx_model(name, dest_dir=None, **options):
    """BUILDERS[name](**options) converted by the product's source stage (tests.helpers.convert),
    cached on disk like tests.tfmodels.onnx_model (same cache directory; the key covers the name,
    options, this file, tests/tfmodels.py and the package versions), so a hit needs no TensorFlow."""
    import hashlib
    import importlib.metadata
    import json
    import tempfile

    import onnx

    from tests import tfmodels
    versions = []
    for dist in ("tensorflow", "tensorflow-cpu", "tf2onnx", "onnx"):
        try:
            versions.append(importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            versions.append(None)
    key = hashlib.sha256(json.dumps([name, sorted(options.items()), versions], default=str).encode())
    key.update(Path(__file__).read_bytes())
    key.update(Path(tfmodels.__file__).read_bytes())
    key.update(DEMO_SCRIPT.read_bytes())
    from trtpipe.cache.code import code_digest
    key.update(code_digest(["trtpipe.stages.source.load"]).encode())
    where = os.environ.get("TRTPIPE_TFMODELS_CACHE", "")
    cache = None if where.lower() in ("off", "0", "no") else (
        Path(where) if where else Path(tempfile.gettempdir()) / "trt-pipeline-tfmodels")
    path = cache / f"det-{name}-{key.hexdigest()[:16]}.onnx" if cache else None
    if path and path.exists():
        return onnx.load(str(path))
    from tests.helpers import convert
    with tempfile.TemporaryDirectory() as tmp:
        model = convert(BUILDERS[name](Path(tmp) / "saved_model", **options))
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(f".{os.getpid()}.part")
        onnx.save(model, str(part))
        os.replace(part, path)
    return model
