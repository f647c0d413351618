"""Build a small second-stage-detector-style SavedModel whose region crop is tf.image.crop_and_resize.

The weights are random but seeded, so re-running gives the same model. tf2onnx turns
crop_and_resize into a Loop of per-box Resize nodes (tf_crop_and_resize), which crashes the
TensorRT-RTX 1.7.1 parser; recipes/roialign.yaml replaces that Loop with a ROIAlign_TRT plugin node.

  * `images` float32 [1, 32, 32, 3] -> 3x3 conv (8 channels) + ReLU -> `features`;
  * `boxes` [8, 4], normalized [y1, x1, y2, x2] with y1 <= y2 and x1 <= x2, predicted from the
    pooled features (sigmoid), so every box lies inside the image;
  * `roi_features` = crop_and_resize(features, boxes, box_indices = 0, crop_size 7x7), [8, 7, 7, 8];
  * `roi_scores` [8, 4] = the crops' mean over their 7x7 pixels times a [8, 4] matrix;
  * `image_features` [1, 8] = the features' mean: an output that does not depend on the crop.

`build(out_dir, **options)` is also used by the tests to make variants in a temporary directory.

    python models/make_crop_demo.py [--out DIR]
"""
import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "crop_demo" / "saved_model"


class CropDemo(tf.Module):
    def __init__(self, image_size=32, channels=8, num_boxes=8, crop_size=7, num_classes=4, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.image_size, self.num_boxes, self.crop_size = image_size, num_boxes, crop_size
        self.conv = tf.constant(rng.normal(0.0, 0.4, (3, 3, 3, channels)).astype(np.float32))
        self.conv_bias = tf.constant(rng.normal(0.1, 0.05, channels).astype(np.float32))
        self.box_weights = tf.constant(rng.normal(0.0, 2.0, (channels, num_boxes * 4)).astype(np.float32))
        self.box_bias = tf.constant(rng.normal(0.0, 1.0, num_boxes * 4).astype(np.float32))
        self.head = tf.constant(rng.normal(0.0, 1.0, (channels, num_classes)).astype(np.float32))

    def __call__(self, images):
        features = tf.nn.relu(tf.nn.conv2d(images, self.conv, 1, "SAME") + self.conv_bias, name="features")
        pooled = tf.reduce_mean(features, axis=[1, 2])                                  # [1, C]
        raw = tf.sigmoid(tf.matmul(pooled, self.box_weights) + self.box_bias)            # [1, R*4]
        raw = tf.reshape(raw, [self.num_boxes, 2, 2])                                     # two corners
        boxes = tf.reshape(tf.concat([tf.reduce_min(raw, 1), tf.reduce_max(raw, 1)], 1), [self.num_boxes, 4],
                           name="boxes")                                                  # y1, x1, y2, x2
        box_indices = tf.zeros([self.num_boxes], tf.int32)
        crops = tf.image.crop_and_resize(features, boxes, box_indices, [self.crop_size, self.crop_size],
                                         name="crop_and_resize")                          # [R, 7, 7, C]
        scores = tf.matmul(tf.reduce_mean(crops, axis=[1, 2]), self.head)                # [R, K]
        return {"roi_features": crops, "roi_scores": scores, "boxes": boxes, "image_features": pooled}


def build(out_dir=DEFAULT_OUT, **options):
    """Write the SavedModel to out_dir (replacing it) and return out_dir as a Path."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model = CropDemo(**options)
    spec = tf.TensorSpec([1, model.image_size, model.image_size, 3], tf.float32, "images")
    model.serve = tf.function(model.__call__, input_signature=[spec])
    tf.saved_model.save(model, str(out_dir), signatures={"serving_default": model.serve.get_concrete_function()})
    _pin_fingerprint_uuid(out_dir)
    return out_dir


def _pin_fingerprint_uuid(out_dir):
    """fingerprint.pb holds a random uuid; derive it from the checksum so re-runs are byte-identical."""
    from tensorflow.core.protobuf import fingerprint_pb2
    path = out_dir / "fingerprint.pb"
    if path.exists():
        fp = fingerprint_pb2.FingerprintDef.FromString(path.read_bytes())
        fp.uuid = str(fp.saved_model_checksum)
        path.write_bytes(fp.SerializeToString(deterministic=True))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="SavedModel directory to write")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = build(args.out, seed=args.seed)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e3:.1f} kB)")


if __name__ == "__main__":
    sys.exit(main())
