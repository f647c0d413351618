"""Build a small Model Garden RetinaNet-style detector SavedModel (recipes/retinanet.yaml).

The weights are random but seeded, so re-running gives the same model. What it copies from a
TF Model Garden RetinaNet export (official/vision, `detection_generator` with `nms_version: v2`),
which a TensorRT build must get around:

  * `inputs` uint8 [1, None, None, 3]; preprocessing in tf.map_fn (an ONNX Loop) resizing each image
    to 64x64 and returning `image_info` [[h, w], [64, 64], [scale_y, scale_x], [0, 0]] like
    `preprocess_ops.resize_and_crop_image`; image_info is a graph output too;
  * a one-conv network, one anchor per cell of a 32x32 grid (1024 anchors), 3 classes, boxes decoded to
    [y1, x1, y2, x2] pixels of the network input, sigmoid scores;
  * NMS without any NMS op: per-class pre-NMS TopK (50), then a tf.while_loop over the classes whose
    body runs a greedy-suppression tf.while_loop (nested ONNX Loops), then the top `max_detections`
    over all classes; boxes are rescaled to the original image with image_info.

Outputs: detection_boxes [1, 20, 4], detection_scores [1, 20], detection_classes [1, 20],
num_detections [1], image_info [1, 4, 2]. The class bias is set so that a few boxes pass the score
threshold on uniform pixels 0..255 (what validation feeds).

`build(out_dir, **options)` is also used by tests/tfmodels_detectors.py (the look-alikes of other
exports share `Head`, `iou` and `greedy_nms`).

    python models/make_retinanet_demo.py [--out DIR]
"""
import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "retinanet_demo" / "saved_model"

SCORE_THRESHOLD = 0.3
IOU_THRESHOLD = 0.5
MAX_DETECTIONS = 20
NUM_CLASSES = 3


def weights(rng, *shape, std=None):
    fan_in = int(np.prod(shape[:-1]))
    return rng.normal(0, std or np.sqrt(2.0 / fan_in), shape).astype(np.float32)


class Head:
    """conv(stride 2) -> relu -> 1x1 box deltas [B, N, 4] and class logits [B, N, C]; anchors one
    per cell, boxes decoded to [y1, x1, y2, x2] in pixels of the network input (`size`)."""

    def __init__(self, tf, size, seed, stride=2, hot=0.004):
        rng = np.random.default_rng(seed)
        self.tf, self.size, self.stride = tf, size, stride
        self.w1 = tf.Variable(weights(rng, 3, 3, 3, 8))
        self.wb = tf.Variable(weights(rng, 1, 1, 8, 4, std=0.2))
        self.wc = tf.Variable(weights(rng, 1, 1, 8, NUM_CLASSES, std=0.5))
        self.bc = tf.Variable(np.zeros(NUM_CLASSES, np.float32))
        n = size // stride
        c = (np.arange(n) + 0.5) * stride
        yc, xc = np.meshgrid(c, c, indexing="ij")
        self.anchors = np.stack([yc, xc], -1).reshape(-1, 2).astype(np.float32)  # [N, 2] centers
        noise = rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)  # what validation feeds
        logits = self.logits(tf.constant(noise))
        self.bc.assign(np.full(NUM_CLASSES, np.log(SCORE_THRESHOLD / (1 - SCORE_THRESHOLD))
                               - np.quantile(logits.numpy(), 1 - hot), np.float32).round(2))

    def features(self, x):
        tf = self.tf
        return tf.nn.relu(tf.nn.conv2d(x / 64.0 - 2.0, self.w1, self.stride, "SAME"))

    def logits(self, x):
        tf = self.tf
        f = self.features(x)
        return tf.reshape(tf.nn.conv2d(f, self.wc, 1, "SAME") + self.bc, [tf.shape(x)[0], -1, NUM_CLASSES])

    def __call__(self, x):
        """x float [B, size, size, 3] (0..255) -> (boxes [B, N, 4], scores [B, N, C])."""
        tf = self.tf
        f = self.features(x)
        d = tf.reshape(tf.nn.conv2d(f, self.wb, 1, "SAME"), [tf.shape(x)[0], -1, 4])
        s = tf.sigmoid(tf.reshape(tf.nn.conv2d(f, self.wc, 1, "SAME") + self.bc, [tf.shape(x)[0], -1, NUM_CLASSES]))
        a = tf.constant(self.anchors)
        center = a + d[..., :2] * self.stride
        half = tf.exp(tf.clip_by_value(d[..., 2:], -2.0, 2.0)) * self.stride * 1.5
        return tf.concat([center - half, center + half], -1), s


def iou(tf, box, boxes):
    """IoU of one box [4] with boxes [M, 4] (corners)."""
    lo = tf.maximum(box[:2], boxes[:, :2])
    hi = tf.minimum(box[2:], boxes[:, 2:])
    inter = tf.reduce_prod(tf.maximum(hi - lo, 0.0), -1)
    area = lambda b: tf.reduce_prod(tf.maximum(b[..., 2:] - b[..., :2], 0.0), -1)  # noqa: E731
    return inter / (area(box) + area(boxes) - inter + 1e-8)


def greedy_nms(tf, boxes, scores, max_out, cfg):
    """Greedy NMS in a tf.while_loop over candidates sorted by score: boxes [M, 4], scores [M]
    (sorted, descending). Returns (indices [max_out], scores [max_out]) padded with 0."""
    m = tf.shape(scores)[0]
    keep = tf.cast(scores > cfg["score_threshold"], tf.float32)

    def body(i, keep):
        overlap = iou(tf, boxes[i], boxes)
        later = tf.cast(tf.range(m) > i, tf.float32)
        suppress = tf.cast(overlap > cfg["iou_threshold"], tf.float32) * later * keep[i]
        return i + 1, keep * (1.0 - suppress)

    _, keep = tf.while_loop(lambda i, k: i < m, body, [tf.constant(0), keep])
    kept = scores * keep
    k = tf.minimum(max_out, m)
    values, idx = tf.math.top_k(kept, k)
    pad = max_out - k
    return tf.pad(idx, [[0, pad]]), tf.pad(values, [[0, pad]])


def settings(**given):
    """The NMS settings: module defaults, overridden by the given non-None values."""
    return {"score_threshold": SCORE_THRESHOLD, "iou_threshold": IOU_THRESHOLD, "max_detections": MAX_DETECTIONS,
            **{k: v for k, v in given.items() if v is not None}}


class ModelGarden:
    size = 64

    def __init__(self, tf, seed=0, **given):
        self.tf, self.head, self.cfg = tf, Head(tf, self.size, seed), settings(**given)

    def _one(self, image):
        tf = self.tf
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        x = tf.image.resize(tf.cast(image, tf.float32), [self.size, self.size])
        scale = self.size / hw
        info = tf.stack([hw, tf.constant([self.size, self.size], tf.float32), scale, tf.zeros([2])])
        return x, info

    def __call__(self, images):
        tf = self.tf
        x, image_info = tf.map_fn(self._one, images, fn_output_signature=(
            tf.TensorSpec([self.size, self.size, 3], tf.float32), tf.TensorSpec([4, 2], tf.float32)))
        boxes, scores = self.head(x)
        b, s = boxes[0], scores[0]
        top_s, top_i = tf.math.top_k(tf.transpose(s), 50)  # [C, 50] pre-NMS per class
        k = self.cfg["max_detections"]

        def per_class(c, out_i, out_s):
            idx, val = greedy_nms(tf, tf.gather(b, top_i[c]), top_s[c], MAX_DETECTIONS, self.cfg)
            out_i = tf.tensor_scatter_nd_update(out_i, [[c]], [tf.gather(top_i[c], idx)])
            return c + 1, out_i, tf.tensor_scatter_nd_update(out_s, [[c]], [val])

        zeros = tf.zeros([NUM_CLASSES, MAX_DETECTIONS])
        _, sel_i, sel_s = tf.while_loop(lambda c, *_: c < NUM_CLASSES, per_class,
                                        [tf.constant(0), tf.cast(zeros, tf.int32), zeros])
        det_s, order = tf.math.top_k(tf.reshape(sel_s, [-1]), k)
        det_b = tf.gather(b, tf.gather(tf.reshape(sel_i, [-1]), order))
        det_c = tf.cast(order // MAX_DETECTIONS, tf.float32)
        valid = tf.reduce_sum(tf.cast(det_s > 0, tf.int32))
        det_b = det_b / tf.tile(image_info[0, 2:3, :], [1, 2])  # to the original image's pixels
        return {"detection_boxes": det_b[None], "detection_scores": det_s[None],
                "detection_classes": det_c[None], "num_detections": valid[None], "image_info": image_info}


def build(out_dir=DEFAULT_OUT, **options):
    """Write the SavedModel to out_dir (replacing it) and return out_dir as a Path. `options`:
    seed, score_threshold, iou_threshold, max_detections."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model = ModelGarden(tf, **options)
    module = tf.Module()
    module.vars = [v for v in vars(model.head).values() if isinstance(v, tf.Variable)]
    spec = tf.TensorSpec([1, None, None, 3], tf.uint8, "inputs")
    module.serve = tf.function(model.__call__, input_signature=[spec])
    tf.saved_model.save(module, str(out_dir), signatures={"serving_default": module.serve.get_concrete_function()})
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_effdet_demo import _pin_fingerprint_uuid  # same deterministic fingerprint as the flagship
    _pin_fingerprint_uuid(out_dir)
    return out_dir


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="SavedModel directory to write")
    args = ap.parse_args(argv)
    out = build(args.out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
