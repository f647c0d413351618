"""Small TF-OD-style detection SavedModels for pass unit tests (helpers, not tests).

Each builder writes a SavedModel into `dest` and returns its path. They all come from
models/make_effdet_demo.py (one seeded architecture), each switching on one structure that real
TF Object Detection API exports have and that the passes must cope with. Sizes are small
(128x128 input, 4 classes, half width, one head layer); building + converting one still costs
TensorFlow's import (~4 s) plus 2-3 s build and 5-8 s tf2onnx, so `onnx_model()` caches the
converted ONNX on disk (keyed by variant, options, sources and package versions).

    from tests import tfmodels
    path = tfmodels.multi_output_map_fn(tmp_path / "m")        # SavedModel directory
    model = tfmodels.convert(path)                               # onnx.ModelProto, opset 17
    model = tfmodels.onnx_model("multi_output_map_fn")           # the same, cached on disk
    image = tfmodels.sample_image(200, 300)                      # uint8 [1, 200, 300, 3]

The cache lives in $TRTPIPE_TFMODELS_CACHE (default: <tmp>/trt-pipeline-tfmodels); set it to
"off" to always rebuild.
"""
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEMO_SCRIPT = Path(__file__).resolve().parents[1] / "models" / "make_effdet_demo.py"
DEMO_SAVED_MODEL = DEMO_SCRIPT.parent / "effdet_demo" / "saved_model"  # committed, 256x256
SMALL = dict(image_size=128, num_classes=4, width=0.5, head_depth=1)


def _demo_module():
    """models/ is not a package: load the script by path (cached in sys.modules)."""
    import sys
    mod = sys.modules.get("make_effdet_demo")
    if mod is None:
        spec = importlib.util.spec_from_file_location("make_effdet_demo", DEMO_SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["make_effdet_demo"] = mod
        spec.loader.exec_module(mod)
    return mod


def sample_image(height=128, width=128, seed=0):
    """uint8 [1, H, W, 3]: the image the demo calibrates on (models/demo_image.py, no TensorFlow)."""
    spec = importlib.util.spec_from_file_location("demo_image", DEMO_SCRIPT.parent / "demo_image.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.sample_image(height, width, seed)


def demo(dest, **options):
    """The demo model (combined NMS, map_fn returning only the image); `options` go to
    EffDetDemo (image_size, num_classes, width, seed, resize, ...), SMALL by default."""
    return _demo_module().build(dest, **{**SMALL, **options})


def multi_output_map_fn(dest, **options):
    """map_fn returns (true_image_shape, image), like TF-OD's resize_images_and_return_shapes:
    the ONNX Loop gets a second scan output (the shape), which clips detection_boxes after NMS,
    so it is read until the NMS is cut away."""
    return demo(dest, map_outputs="shape_image", **options)


def input_shape_consumer(dest, **options):
    """Dynamic batch (input [None, None, None, 3]) and a clip window for the raw boxes from
    tf.shape(input_tensor): one top-level Shape(input) feeds the Loop's trip count and the clip
    window, and the image becomes Loop output 2."""
    return demo(dest, batch=None, clip_to_input=True, **options)


def per_class_nms(dest, **options):
    """TF-OD multiclass NMS: a python loop over classes, one NonMaxSuppression per class,
    then TopK over the concatenated results (no CombinedNonMaxSuppression)."""
    return demo(dest, nms="per_class", **options)


def per_class_nms_loop(dest, **options):
    """Per-class NMS inside tf.map_fn over classes: NonMaxSuppression inside a Loop body."""
    return demo(dest, nms="per_class_map", **options)


def topk_before_nms(dest, k=500, **options):
    """TopK over all anchors (by best class score) between the raw outputs and the NMS."""
    return demo(dest, pre_nms_topk=k, **options)


# name -> builder, for parametrized tests
VARIANTS = {
    "demo": demo,
    "multi_output_map_fn": multi_output_map_fn,
    "input_shape_consumer": input_shape_consumer,
    "per_class_nms": per_class_nms,
    "per_class_nms_loop": per_class_nms_loop,
    "topk_before_nms": topk_before_nms,
}


def convert(saved_model_dir, opset=17):
    """SavedModel (serving_default) -> onnx.ModelProto through the product's own source stage
    (tests.helpers.convert: tf2onnx as the CLI runs it, deterministic, op-checked). Output names
    are the signature's (TF-OD names)."""
    from tests.helpers import convert as product_convert
    return product_convert(saved_model_dir, opset)


def _cache_dir():
    where = os.environ.get("TRTPIPE_TFMODELS_CACHE", "")
    if where.lower() in ("off", "0", "no"):
        return None
    return Path(where) if where else Path(tempfile.gettempdir()) / "trt-pipeline-tfmodels"


def _version(*dists):
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def onnx_model(variant="demo", opset=17, **options):
    """VARIANTS[variant](**options) converted to ONNX, cached on disk. The key covers the
    variant, options, opset, the bytes of this file and of the demo script, and the versions of
    tensorflow/tf2onnx/onnx, so a hit never needs TensorFlow imported."""
    import onnx

    versions = [_version(*names) for names in (("tensorflow", "tensorflow-cpu"), ("tf2onnx",),
                                                ("onnx",))]
    key = hashlib.sha256(json.dumps([variant, opset, sorted(options.items()), versions],
                                    default=str).encode())
    for src in (Path(__file__), DEMO_SCRIPT, DEMO_SCRIPT.parent / "demo_image.py"):
        key.update(src.read_bytes())
    from trtpipe.cache.code import code_digest  # the conversion code: the source stage's closure
    key.update(code_digest(["trtpipe.stages.source.load"]).encode())
    cache = _cache_dir()
    path = cache / f"{variant}-{key.hexdigest()[:16]}.onnx" if cache else None
    if path and path.exists():
        return onnx.load(str(path))
    with tempfile.TemporaryDirectory() as tmp:
        model = convert(VARIANTS[variant](Path(tmp) / "saved_model", **options), opset)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(f".{os.getpid()}.part")  # atomic: parallel runs never see half
        onnx.save(model, str(part))
        os.replace(part, path)
    return model
