"""Build a small EfficientDet-shaped, TF-Object-Detection-API-style SavedModel.

The weights are random but seeded, so re-running gives the same model. The graph reproduces what
makes real TF-OD EfficientDet exports hard for TensorRT after tf2onnx:

  * `input_tensor` is uint8 [1, None, None, 3];
  * preprocessing (cast, bilinear resize, /255, ImageNet mean/std) runs inside tf.map_fn, which
    tf2onnx turns into an ONNX Loop; the resize is TF-OD's v1 resize (no half-pixel centers);
  * an EfficientNet-lite-like backbone, a 3-level FPN (P3-P5) and shared box/class heads;
  * boxes decoded against constant anchors (Faster R-CNN box coder, scales 10,10,5,5) to
    normalized [ymin, xmin, ymax, xmax], sigmoid class scores;
  * outputs named like TF-OD's: raw_detection_boxes/raw_detection_scores plus
    detection_boxes/scores/classes and num_detections from NMS.

`build(out_dir, **options)` is also used by tests/tfmodels.py to make variants.

    python models/make_effdet_demo.py [--out DIR]
"""
import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # models/ is not a package
from demo_image import sample_image  # noqa: E402  (TF-free, shared with tests/tfmodels.py)

DEFAULT_OUT = Path(__file__).resolve().parent / "effdet_demo" / "saved_model"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
BOX_SCALES = (10.0, 10.0, 5.0, 5.0)  # TF-OD faster_rcnn_box_coder scale factors
LEVELS = (3, 4, 5)
ANCHOR_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
ASPECTS = (1.0, 2.0, 0.5)  # width / height, as TF-OD's grid anchor generator
NUM_ANCHORS = len(ANCHOR_SCALES) * len(ASPECTS)


def make_anchors(image_size, anchor_scale=4.0):
    """[N, 4] (ycenter, xcenter, h, w), normalized; order level, y, x, anchor like TF-OD."""
    out = []
    for level in LEVELS:
        stride = 2 ** level
        n = image_size // stride
        centers = (np.arange(n, dtype=np.float64) + 0.5) * stride / image_size
        yc, xc = np.meshgrid(centers, centers, indexing="ij")
        sizes = []
        for s in ANCHOR_SCALES:
            for a in ASPECTS:
                base = anchor_scale * stride * s / image_size
                sizes.append((base / np.sqrt(a), base * np.sqrt(a)))
        hw = np.array(sizes)  # [A, 2]
        cell = np.stack([yc, xc], -1).reshape(-1, 1, 2).repeat(NUM_ANCHORS, 1)
        out.append(np.concatenate([cell, np.broadcast_to(hw, cell.shape)], -1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


class _Conv(tf.Module):
    """Conv (regular, depthwise or separable) + optional fused BN + optional swish."""

    def __init__(self, rng, name, cin, cout, k=3, stride=1, kind="conv", bn=True, act=True,
                 bias=None):
        super().__init__()
        self.scope = name  # TF name scope, so ONNX node names read like TF-OD's
        self.stride, self.kind, self.act = stride, kind, act
        he = lambda fan_in: np.sqrt(2.0 / fan_in)  # keeps activations O(1) without training
        var = lambda shape, std: tf.Variable(rng.normal(0, std, shape).astype(np.float32))
        if kind in ("depthwise", "separable"):
            self.dw = var((k, k, cin, 1), he(k * k))
        if kind == "conv":
            self.w = var((k, k, cin, cout), he(k * k * cin))
        elif kind == "separable":
            self.w = var((1, 1, cin, cout), he(cin))
        c = cin if kind == "depthwise" else cout
        self.bn = None
        if bn:  # inference-mode BN with mild, non-trivial statistics
            self.bn = [tf.Variable(v.astype(np.float32)) for v in (
                rng.uniform(0.8, 1.2, c), rng.normal(0, 0.1, c),
                rng.normal(0, 0.1, c), rng.uniform(0.8, 1.2, c))]
        self.b = None if bias is None else tf.Variable(
            (bias + rng.normal(0, 0.3, cout)).astype(np.float32))

    def __call__(self, x):
        with tf.name_scope(self.scope):
            s = [1, self.stride, self.stride, 1]
            if self.kind in ("depthwise", "separable"):
                x = tf.nn.depthwise_conv2d(x, self.dw, s, "SAME")
                s = [1, 1, 1, 1]
            if self.kind != "depthwise":
                x = tf.nn.conv2d(x, self.w, s, "SAME")
            if self.bn is not None:
                x, _, _ = tf.compat.v1.nn.fused_batch_norm(
                    x, *self.bn, epsilon=1e-3, is_training=False)
            if self.b is not None:
                x = tf.nn.bias_add(x, self.b)
            return x * tf.sigmoid(x) if self.act else x  # swish, as EfficientNet


class EffDetDemo(tf.Module):
    """Options (all but the first five exist to make the variants in tests/tfmodels.py):

    image_size: network input side (square), a multiple of 32.
    num_classes, width (channel multiplier), seed.
    head_depth: separable conv layers in each head tower before the prediction layer (fewer
        layers = fewer nodes = faster tf2onnx conversion for tests).
    resize: "v1" (TF-OD's tf.compat.v1 resize, ONNX mode asymmetric) or "v2" (half_pixel).
    batch: 1 (TF-OD exporter's [1, None, None, 3]) or None (dynamic batch: the Loop's trip
        count then comes from Shape(input_tensor)).
    map_outputs: "image" (map_fn returns the image) or "shape_image" (returns
        (true_image_shape, image), like TF-OD's resize_images_and_return_shapes; the true shape
        gives the clip window applied to the boxes after NMS, as TF-OD's postprocess does).
    clip_to_input: compute a clip window from tf.shape(input_tensor) and clip the raw boxes with
        it (a reader of the input's Shape outside the Loop).
    nms: "combined" (tf.image.combined_non_max_suppression), "per_class" (python loop over
        classes, one NMS per class, like TF-OD's multiclass_non_max_suppression) or
        "per_class_map" (tf.map_fn over classes: NMS inside an ONNX Loop).
    pre_nms_topk: if set, keep the top-K anchors by max class score before NMS.
    score_threshold, iou_threshold, max_detections: NMS settings.
    """

    def __init__(self, image_size=256, num_classes=6, width=1.0, seed=0, head_depth=2,
                 batch=1, resize="v1", map_outputs="image", clip_to_input=False,
                 nms="combined", pre_nms_topk=None, score_threshold=0.3, iou_threshold=0.5,
                 max_detections=100):
        super().__init__()
        assert image_size % 32 == 0 and resize in ("v1", "v2")
        assert map_outputs in ("image", "shape_image")
        assert nms in ("combined", "per_class", "per_class_map")
        assert batch in (1, None) and (batch == 1 or nms == "combined")
        self.size, self.num_classes, self.batch = image_size, num_classes, batch
        self.resize, self.map_outputs, self.clip_to_input = resize, map_outputs, clip_to_input
        self.nms, self.pre_nms_topk = nms, pre_nms_topk
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.max_det = max_detections
        self.anchors = make_anchors(image_size)  # baked into the graph as a constant

        rng = np.random.default_rng(seed)
        ch = lambda c: max(8, int(round(c * width / 8)) * 8)
        # (out channels, stride); every stage halves resolution, stages 2-4 give P3-P5
        stages = [(ch(24), 2), (ch(40), 2), (ch(80), 2), (ch(112), 2)]
        self.stem = _Conv(rng, "stem_conv2d", 3, ch(32), stride=2)
        self.blocks, cin = [], ch(32)
        for i, (cout, stride) in enumerate(stages):  # MBConv-lite: expand, depthwise, project
            self.blocks.append([
                _Conv(rng, f"block{i}/expand", cin, cin * 4, k=1),
                _Conv(rng, f"block{i}/depthwise", cin * 4, cin * 4, stride=stride,
                      kind="depthwise"),
                _Conv(rng, f"block{i}/project", cin * 4, cout, k=1, act=False),
            ])
            cin = cout
        f = ch(64)
        self.lateral = [_Conv(rng, f"fpn/lateral_p{level}", c, f, k=1, act=False)
                        for level, (c, _) in zip(LEVELS, stages[1:])]
        self.fpn_out = [_Conv(rng, f"fpn/out_p{level}", f, f, kind="separable") for level in LEVELS]
        # Shared heads as in EfficientDet; class bias starts at the usual -log(99) prior.
        self.box_net = [_Conv(rng, f"box_net/conv{i}", f, f, kind="separable")
                        for i in range(head_depth)]
        self.box_out = _Conv(rng, "box_net/predict", f, NUM_ANCHORS * 4, kind="separable",
                             bn=False, act=False, bias=0.0)
        self.class_net = [_Conv(rng, f"class_net/conv{i}", f, f, kind="separable")
                          for i in range(head_depth)]
        self.class_out = _Conv(rng, "class_net/predict", f, NUM_ANCHORS * num_classes,
                               kind="separable", bn=False, act=False, bias=-4.6)
        self._calibrate()

    def _calibrate(self, target_std=(1.0, 1.3), hot_fraction=0.0015):
        """Untrained weights give arbitrary output scales. On sample_image, rescale the two
        prediction layers (box deltas std 1, class logits std 1.3) and shift the class bias so
        `hot_fraction` of the scores pass 0.3: NMS then keeps tens of boxes, for any width or
        size. Factors are rounded so float noise cannot change the saved weights."""
        x, _ = self._preprocess(tf.constant(sample_image(self.size, self.size)))
        feats = self._features(x)
        heads = [(self.box_net, self.box_out, 4), (self.class_net, self.class_out,
                                                   self.num_classes)]
        for (tower, out, depth), std in zip(heads, target_std):
            bias = out.b.numpy()
            out.b.assign(np.zeros_like(bias))
            raw = self._head(feats, tower, out, depth).numpy()
            out.w.assign(out.w * float(f"{std / raw.std():.3g}"))
            out.b.assign(bias)
        logits = self._head(feats, self.class_net, self.class_out, self.num_classes).numpy()
        shift = np.log(0.3 / 0.7) - np.quantile(logits, 1 - hot_fraction)
        self.class_out.b.assign_add(np.full_like(bias, round(float(shift), 2)))

    # -- preprocessing: per image, inside tf.map_fn (-> ONNX Loop) --------------------------
    def _preprocess_one(self, image):
        x = tf.cast(image, tf.float32)
        if self.resize == "v1":  # what TF-OD's resize_image calls: half_pixel_centers=False
            x = tf.compat.v1.image.resize(x, [self.size, self.size], align_corners=False)
        else:
            x = tf.image.resize(x, [self.size, self.size])
        x = (x / 255.0 - MEAN) / STD
        if self.map_outputs == "shape_image":
            return tf.shape(x), x
        return x

    def _preprocess(self, images):
        """-> (images [B, S, S, 3] float, true_image_shapes [B, 3] or None)."""
        img_spec = tf.TensorSpec([self.size, self.size, 3], tf.float32)
        if self.map_outputs == "shape_image":
            shapes, x = tf.map_fn(self._preprocess_one, images,
                                  fn_output_signature=(tf.TensorSpec([3], tf.int32), img_spec))
            return x, shapes
        return tf.map_fn(self._preprocess_one, images, fn_output_signature=img_spec), None

    # -- network -----------------------------------------------------------------------------
    def _features(self, x):
        x = self.stem(x)
        feats = []
        for i, (expand, dw, project) in enumerate(self.blocks):
            x = project(dw(expand(x)))
            if i >= 1:  # strides 8, 16, 32
                feats.append(x)
        lat = [conv(p) for conv, p in zip(self.lateral, feats)]
        top_down = [lat[-1]]
        for p in reversed(lat[:-1]):  # nearest 2x upsampling + add, as FPN
            up = tf.image.resize(top_down[0], tf.shape(p)[1:3], method="nearest")
            top_down.insert(0, p + up)
        return [conv(p) for conv, p in zip(self.fpn_out, top_down)]

    def _head(self, feats, tower, out, depth):
        outs = []
        for p in feats:
            for conv in tower:
                p = conv(p)
            p = out(p)
            outs.append(tf.reshape(p, [tf.shape(p)[0], -1, depth]))
        return tf.concat(outs, 1)

    def _decode(self, rel):
        a = tf.constant(self.anchors, name="anchors")
        ty, tx, th, tw = tf.unstack(rel / np.array(BOX_SCALES, np.float32), axis=-1)
        yc, xc = ty * a[:, 2] + a[:, 0], tx * a[:, 3] + a[:, 1]
        h, w = tf.exp(th) * a[:, 2], tf.exp(tw) * a[:, 3]
        return tf.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], -1)

    # -- NMS -----------------------------------------------------------------------------------
    def _combined_nms(self, boxes, scores):
        return tf.image.combined_non_max_suppression(
            boxes[:, :, None, :], scores, self.max_det, self.max_det,
            self.iou_threshold, self.score_threshold, clip_boxes=False)

    def _class_nms(self, boxes, scores):
        """One class: padded indices [max_det] and valid count (NonMaxSuppressionV4)."""
        return tuple(tf.raw_ops.NonMaxSuppressionV4(
            boxes=boxes, scores=scores, max_output_size=self.max_det,
            iou_threshold=self.iou_threshold, score_threshold=self.score_threshold,
            pad_to_max_output_size=True))

    def _per_class_nms(self, boxes, scores):
        """TF-OD-style: NMS per class, then the best max_det over all classes (batch 1)."""
        b, s = boxes[0], scores[0]
        if self.nms == "per_class":  # python loop: one NonMaxSuppression node per class
            res = [tf.image.non_max_suppression_with_scores(
                b, s[:, c], self.max_det, self.iou_threshold, self.score_threshold)
                for c in range(self.num_classes)]
            idx = tf.concat([i for i, _ in res], 0)
            cls_s = tf.concat([v for _, v in res], 0)
            cls = tf.concat([tf.fill(tf.shape(i), c) for c, (i, _) in enumerate(res)], 0)
        else:  # tf.map_fn over classes: the NMS sits inside a Loop body
            idx, n = tf.map_fn(lambda sc: self._class_nms(b, sc), tf.transpose(s),
                               fn_output_signature=(tf.int32, tf.int32))
            valid = tf.range(self.max_det)[None, :] < n[:, None]  # [C, max_det]
            cls = tf.boolean_mask(tf.broadcast_to(
                tf.range(self.num_classes)[:, None], tf.shape(idx)), valid)
            idx = tf.boolean_mask(idx, valid)
            cls_s = tf.gather_nd(s, tf.stack([idx, cls], 1))
        k = tf.minimum(self.max_det, tf.size(cls_s))
        top_s, order = tf.math.top_k(cls_s, k)
        pad = self.max_det - k
        out_b = tf.pad(tf.gather(b, tf.gather(idx, order)), [[0, pad], [0, 0]])
        out_s = tf.pad(top_s, [[0, pad]])
        out_c = tf.pad(tf.cast(tf.gather(cls, order), tf.float32), [[0, pad]])
        return out_b[None], out_s[None], out_c[None], k[None]

    # -- signature (wrapped in tf.function by build(), with the batch option) ---------------
    def __call__(self, input_tensor):
        x, true_shapes = self._preprocess(input_tensor)
        with tf.name_scope("EfficientDet-Demo/model"):
            feats = self._features(x)
            rel = self._head(feats, self.box_net, self.box_out, 4)
            logits = self._head(feats, self.class_net, self.class_out, self.num_classes)
        boxes = self._decode(rel)
        if self.clip_to_input:  # window = fraction of the network input the image covers
            hw = tf.cast(tf.shape(input_tensor)[1:3], tf.float32)
            hi = tf.minimum(hw / self.size, 1.0)
            boxes = tf.clip_by_value(boxes, 0.0, tf.tile(hi, [2]))
        scores = tf.sigmoid(logits)
        nb, ns = boxes, scores
        if self.pre_nms_topk:  # TopK over all anchors by best class score
            _, keep = tf.math.top_k(tf.reduce_max(scores, -1), self.pre_nms_topk)
            nb, ns = tf.gather(boxes, keep, batch_dims=1), tf.gather(scores, keep, batch_dims=1)
        if self.nms == "combined":
            db, ds, dc, n = self._combined_nms(nb, ns)
        else:
            db, ds, dc, n = self._per_class_nms(nb, ns)
        if true_shapes is not None:  # TF-OD clips the NMS boxes to the true image window
            hi = tf.cast(true_shapes[:, None, :2], tf.float32) / self.size  # [B, 1, 2]
            db = tf.clip_by_value(db, 0.0, tf.tile(hi, [1, 1, 2]))
        return {
            "raw_detection_boxes": tf.identity(boxes),
            "raw_detection_scores": tf.identity(scores),
            "detection_boxes": db,
            "detection_scores": ds,
            "detection_classes": dc + 1.0,  # TF-OD label_id_offset: classes start at 1
            "num_detections": tf.cast(n, tf.float32),
        }


def build(out_dir=DEFAULT_OUT, **options):
    """Write the SavedModel to out_dir (replacing it) and return out_dir as a Path."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model = EffDetDemo(**options)
    spec = tf.TensorSpec([model.batch, None, None, 3], tf.uint8, "input_tensor")
    model.serve = tf.function(model.__call__, input_signature=[spec])
    tf.saved_model.save(model, str(out_dir),
                        signatures={"serving_default": model.serve.get_concrete_function()})
    _pin_fingerprint_uuid(out_dir)
    return out_dir


def _pin_fingerprint_uuid(out_dir):
    """fingerprint.pb holds a random uuid; derive it from the checksum so re-runs are
    byte-identical (no git churn). The rest is deterministic when built in a fresh process."""
    from tensorflow.core.protobuf import fingerprint_pb2
    path = out_dir / "fingerprint.pb"
    if path.exists():
        fp = fingerprint_pb2.FingerprintDef.FromString(path.read_bytes())
        fp.uuid = str(fp.saved_model_checksum)
        path.write_bytes(fp.SerializeToString(deterministic=True))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="SavedModel directory to write")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--num-classes", type=int, default=6)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = build(args.out, image_size=args.image_size, num_classes=args.num_classes,
                width=args.width, seed=args.seed)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
