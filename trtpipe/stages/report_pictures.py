"""Pictures for report.md: what a reviewer would rather look at than read.

* `<name>.detections.png` (detectors): the validation image, once with the source model's
  detections and once with the final model's (after the post-processing model, `nms: split`),
  side by side: ONNX Runtime runs both, on validation's first feed (its image, or its seeded
  random data shown as an image), exactly as validation fed them (the input contract).
* `<name>.errors.png` (every model): per compared output, a histogram of the element-wise
  absolute error |final - source| on that feed, on a log scale, with the output's atol marked;
  integer and bool outputs show how many elements are equal instead.

Drawn with Pillow (trtpipe/deploy/drawing.py draws the boxes), no plotting library. The pictures
depend on exactly what validation's result depends on, so they are kept in the stage cache under
a key made of the validation key and this module's code (report_pictures_cached.py): a no-op
re-run copies them back. They
never fail a run: when one cannot be made (ONNX Runtime cannot run a model, no image input), the
report says why instead.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtpipe.errors import PipelineError
from trtpipe.fileguard import default_file_mode

if TYPE_CHECKING:
    pass

MAX_PANELS = 8             # error histograms drawn (the first outputs compared)
MAX_BOXES = 25             # detections drawn per side (the best ones)
BG, FG = (255, 255, 255), (30, 30, 30)
BAR, LIMIT, EXACT = (70, 110, 180), (200, 40, 40), (60, 150, 80)


def make_pictures(*, recipe: Any, source_path: Path, final_path: Path, contract: dict | None,
                  output_map: dict | None, postprocess: dict | None, out_dir: Path, name: str) -> dict[str, Any]:
    """Run source and final model on validation's first feed and draw the pictures into `out_dir`.

    Args:
        recipe: the loaded Recipe (validate settings, output.boxes, the recipe directory).
        source_path, final_path: the converted source model and the final model (.onnx).
        contract, output_map, postprocess: what the passes recorded (PassContext).
        out_dir: where `<name>.detections.png` and `<name>.errors.png` are written.
        name: the recipe name.

    Returns:
        As `run`. ONNX Runtime or data problems are not raised: they are the "not made" reason.
    """
    try:
        feed, image_input, src, fin, final_named, desc = _outputs(recipe, source_path, final_path, contract or {},
                                                                  output_map or {}, postprocess, out_dir)
    except (PipelineError, ValueError, KeyError, OSError) as err:
        return {"status": "not made", "reason": f"{type(err).__name__}: {err}", "files": {}}
    files = {}
    errors_file = f"{name}.errors.png"
    if draw_errors(src, final_named, recipe, Path(out_dir) / errors_file):
        files["errors"] = errors_file
    reason = None
    if image_input is not None:
        det_file = f"{name}.detections.png"
        reason = draw_detection_pair(recipe, feed[image_input], desc, src, final_named, postprocess,
                                     Path(out_dir) / det_file)
        if reason is None:
            files["detections"] = det_file
    else:
        reason = "no 4-D image input to draw detections on"
    if not files:
        return {"status": "not made", "reason": reason or "nothing to draw", "files": {}}
    return {"status": "made", "reason": None if "detections" in files else reason, "files": files,
            "feed": desc}


def _outputs(recipe, source_path, final_path, contract, output_map, postprocess, out_dir):
    """(source feed, image input or None, source outputs, final outputs, final outputs under their
    source names (after post-processing), feed description) for validation's first feed."""
    from trtpipe.stages.validate.compare import resolve_config
    from trtpipe.stages.validate.data import apply_contract, cut_inputs, make_source_feeds, model_io
    from trtpipe.stages.validate.outputs import run_ort
    from trtpipe.stages.validate.parameters import find_parameters
    cfg = resolve_config(recipe.data.get("validate"), recipe.precision.mode)
    src_in, src_out = model_io(source_path)
    fin_in, fin_out = model_io(final_path)
    feeds, data = make_source_feeds(cfg["data"], src_in, contract, base_dir=recipe.dir, locate=recipe.locate,
                                    parameters=find_parameters(source_path))
    feed = feeds[0]
    inner = cut_inputs(contract)
    omap = {**output_map, **cfg["output_map"]}
    wanted = [omap.get(f, f) for f in fin_out if omap.get(f, f) not in src_out]
    extra = list(dict.fromkeys(inner + wanted))
    src = _first(run_ort(source_path, "source-ort", [feed], list(src_out) + extra if extra else None))
    final_feed = apply_contract({**feed, **{t: src[t] for t in inner}}, contract, fin_in)
    with tempfile.TemporaryDirectory(prefix=".pictures-", dir=out_dir) as tmp:
        fin = _first(run_ort(_ort_model(recipe, final_path, tmp), "final-ort", [final_feed]))
    named = _Named((omap.get(f, f), v) for f, v in fin.items())  # under the source's names
    if postprocess and postprocess.get("file"):
        from trtpipe.deploy.runtime import ort_session, run_postprocess
        pp_path = Path(out_dir) / Path(postprocess["file"]).name
        pp = run_postprocess(ort_session(pp_path), postprocess, fin)
        mapping = postprocess.get("outputs") or {}
        named.update((mapping.get(n, n), v) for n, v in pp.items())
        named.detection_names = [mapping.get(n, n) for n in pp]  # what validation matches detections on
    image_input = _image_input(src_in, cfg["data"])
    kind = data.get("kind")
    desc = ("validation image " + Path(data["inputs"][image_input]["images"][0]).name
            if kind == "images" and image_input and data["inputs"].get(image_input, {}).get("images")
            else f"validation feed 1 ({kind} data" + (f", seed {data.get('seed')})" if kind == "random" else ")"))
    return feed, image_input, src, fin, named, {"text": desc, "range": (data["inputs"].get(image_input) or {})
                                                  .get("range") if image_input else None}


class _Named(OrderedDict):
    """The final side's outputs under the source's names; `detection_names`: the post-processing
    model's outputs (after `nms: split`), where detections are looked for, else None (all)."""
    detection_names = None


def _first(run):
    return OrderedDict((k, np.asarray(v)) for k, v in list(run.values())[0][0].items())


def _ort_model(recipe, final_path, tmp):
    """What ONNX Runtime runs for the final model: itself, or (fp16/bf16) its fp32 emulation, as
    validation does (stages/validate/cached.py)."""
    if recipe.precision.mode not in ("fp16", "bf16"):
        return final_path
    from trtpipe.cache.files import load_model, save_model
    from trtpipe.stages.precision.mixed import emulate_in_fp32
    twin = Path(tmp) / "emulated.onnx"
    # external weights stay on disk, converted one tensor at a time (a model over 2 GiB works)
    save_model(emulate_in_fp32(load_model(final_path)), twin)
    return twin


def _image_input(src_in, data_cfg):
    """The source input holding images: validate.data.images' input, else the only 4-D input whose
    channel axis (1 or 3) has 1 or 3 channels."""
    images = data_cfg.get("images") or {}
    if images.get("input") in src_in:
        return images["input"]
    four = [n for n, (_, dims) in src_in.items() if len(dims) == 4 and (dims[1] in (1, 3) or dims[3] in (1, 3))]
    return four[0] if len(four) == 1 else None


# ------------------------------------------------------------------------------ detections

def draw_detection_pair(recipe: Any, batch: np.ndarray, desc: dict, src: dict, final_named: dict,
                        postprocess: dict | None, out_path: Path) -> str | None:
    """Draw source and final detections side by side on the first image of `batch`; returns None
    when drawn, else why not (not a detector)."""
    from trtpipe.deploy.drawing import draw_detections
    from trtpipe.deploy.results import detections
    from trtpipe.errors import DeployError, ValidationError
    from trtpipe.stages.validate.detections import detection_roles
    cfg = ((recipe.data.get("validate") or {}).get("detections")) or {}
    try:
        roles = detection_roles(getattr(final_named, "detection_names", None) or list(src), cfg)
    except ValidationError as err:
        return f"not a detector ({err.message})"
    if not roles or not all(r in final_named for r in roles.values()):
        return "not a detector: the source's outputs have no boxes and scores the final model also gives"
    image = _as_image(batch[0], desc.get("range"))
    scale = max(1, math.ceil(320 / max(image.width, image.height)))
    image = image.resize((image.width * scale, image.height * scale))
    size = (batch.shape[1], batch.shape[2]) if batch.shape[3] in (1, 3) else (batch.shape[2], batch.shape[3])
    fmt = recipe.data["output"].get("boxes") or "yxyx_normalized"
    min_score = float(cfg.get("min_score") or 0.0)
    panels = []
    with tempfile.TemporaryDirectory(prefix=".pictures-", dir=out_path.parent) as tmp:
        plain = Path(tmp) / "image.png"
        image.save(plain)
        for label, arrays in (("source model", src), ("final model" + (" + post-processing" if postprocess else ""),
                                                     final_named)):
            try:
                dets = detections(arrays, roles, 0, box_format=fmt, original=image.size, input_size=size,
                                  labels={}, min_score=min_score)
            except DeployError as err:
                return f"cannot read the detections: {err.message}"
            drawn = Path(tmp) / f"{len(panels)}.png"
            draw_detections(plain, dets[:MAX_BOXES], drawn)
            panels.append((f"{label} (ONNX Runtime): {len(dets)} detections"
                           + (f", best {MAX_BOXES} drawn" if len(dets) > MAX_BOXES else ""), drawn))
        _side_by_side(panels, f"{recipe.name}: {desc['text']}", out_path)
    return None


def _as_image(arr, value_range):
    """One image of the batch ([C,H,W] or [H,W,C]) as an RGB PIL image, values spread over 0..255
    from the data's range (validation's declared range, else the values' own)."""
    from PIL import Image
    arr = np.asarray(arr, dtype=np.float64)
    if arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    lo, hi = value_range if value_range else (float(arr.min()), float(arr.max()))
    arr = np.clip((arr - lo) / ((hi - lo) or 1.0) * 255.0, 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return Image.fromarray(arr, "RGB")


def _side_by_side(panels, title, out_path):
    from PIL import Image, ImageDraw
    images = []
    for _, path in panels:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    line = 16
    width = sum(im.width for im in images) + 10 * (len(images) + 1)
    height = max(im.height for im in images) + 3 * line + 20
    canvas = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 6), title, fill=FG)
    x = 10
    for (label, _), im in zip(panels, images):
        draw.text((x, 6 + line + 4), label, fill=FG)
        canvas.paste(im, (x, 3 * line + 10))
        x += im.width + 10
    save_png(canvas, out_path)


# ------------------------------------------------------------------------------ error histograms

def draw_errors(src: dict, final_named: dict, recipe: Any, out_path: Path) -> bool:
    """Per output both models give (same shape) and validation compares element by element, a
    histogram of |final - source| (log10 bins from 1e-9 up; exact zeros counted apart) with atol
    marked; integer/bool outputs: equal elements. The post-processing model's detections (`nms:
    split`, matched by IoU) are left out. Returns whether anything was drawn."""
    from trtpipe.stages.validate.compare import resolve_config
    cfg = resolve_config(recipe.data.get("validate"), recipe.precision.mode)
    # the post-processing model's detections are matched by IoU, not element by element: an
    # element-wise error there (boxes in another order) says nothing; the detections picture shows them
    matched = set(getattr(final_named, "detection_names", None) or ())
    pairs = [(n, np.asarray(src[n]), np.asarray(final_named[n])) for n in src
             if n in final_named and n not in matched and np.shape(src[n]) == np.shape(final_named[n])
             and np.size(src[n]) and np.asarray(src[n]).dtype.kind in "biuf"
             and np.asarray(final_named[n]).dtype.kind in "biuf"]
    if not pairs:
        return False
    panels = [_panel(n, a, b, (cfg["outputs"].get(n) or {}).get("atol", cfg["atol"])) for n, a, b in pairs[:MAX_PANELS]]
    from PIL import Image, ImageDraw
    width, gap = max(p.width for p in panels), 8
    title = 28
    canvas = Image.new("RGB", (width, title + sum(p.height + gap for p in panels)), BG)
    ImageDraw.Draw(canvas).text((10, 8), f"{recipe.name}: |final - source| per output element, validation feed 1"
                                + (f" (first {MAX_PANELS} outputs)" if len(pairs) > MAX_PANELS else "")
                                + ("; detections: matched by IoU, see the detections picture" if matched else ""),
                                fill=FG)
    y = title
    for p in panels:
        canvas.paste(p, (0, y))
        y += p.height + gap
    save_png(canvas, out_path)
    return True


def _panel(name, ref, cand, atol):
    from PIL import Image, ImageDraw
    w, h, left, bottom = 640, 150, 60, 22
    im = Image.new("RGB", (w, h), BG)
    draw = ImageDraw.Draw(im)
    if ref.dtype.kind in "biu" or cand.dtype.kind in "biu":
        equal = int(np.count_nonzero(ref == cand))
        draw.text((10, 6), f"{name}: integer output, compared exactly", fill=FG)
        frac = equal / ref.size
        draw.rectangle([left, 40, left + int((w - left - 20) * frac), 70], fill=EXACT if equal == ref.size else LIMIT)
        draw.rectangle([left, 40, w - 20, 70], outline=FG)
        draw.text((left, 80), f"{equal} of {ref.size} elements equal ({100 * frac:.2f}%)", fill=FG)
        return im
    err = np.abs(cand.astype(np.float64) - ref.astype(np.float64)).ravel()
    finite = err[np.isfinite(err)]
    zeros = int(np.count_nonzero(finite == 0))
    edges = np.arange(-9, 2.01, 0.5)                      # 1e-9 .. 1e2, half decades
    logs = np.log10(np.clip(finite[finite > 0], 10.0 ** edges[0], 10.0 ** edges[-1]))
    counts, _ = np.histogram(logs, bins=edges)
    top = max(int(counts.max(initial=0)), zeros, 1)
    worst = float(finite.max(initial=0.0))
    draw.text((10, 4), f"{name}: max abs error {worst:.3g}, atol {atol:g}; {err.size} elements"
              + (f", {zeros} exactly equal" if zeros else "") + (f", {err.size - finite.size} NaN/Inf"
                                                              if finite.size < err.size else ""), fill=FG)
    plot_w, plot_h, y0 = w - left - 20, h - bottom - 24, h - bottom
    bar_w = plot_w / (len(counts) + 2)  # the first slot (and a gap) holds the exact zeros
    zero_h = plot_h * (math.log10(1 + zeros) / math.log10(1 + top))
    if zeros:
        draw.rectangle([left + 1, y0 - zero_h, left + bar_w - 1, y0], fill=EXACT)
    draw.text((left + 2, y0 + 5), "0", fill=FG)
    left += 2 * bar_w
    plot_w -= 2 * bar_w
    for i, c in enumerate(counts):
        x = left + i * bar_w
        height = plot_h * (math.log10(1 + c) / math.log10(1 + top))
        if c:
            draw.rectangle([x + 1, y0 - height, x + bar_w - 1, y0], fill=BAR)
    draw.line([left - 2 * bar_w, y0, left + plot_w, y0], fill=FG)
    for decade in range(-9, 3, 2):
        x = left + (decade - edges[0]) / (edges[-1] - edges[0]) * plot_w
        draw.line([x, y0, x, y0 + 3], fill=FG)
        draw.text((x - 10, y0 + 5), f"1e{decade}", fill=FG)
    if atol > 0:
        x = left + (math.log10(atol) - edges[0]) / (edges[-1] - edges[0]) * plot_w
        if left <= x <= left + plot_w:
            draw.line([x, y0 - plot_h, x, y0], fill=LIMIT, width=2)
            draw.text((x + 3, y0 - plot_h), "atol", fill=LIMIT)
    draw.text((4, y0 - plot_h), f"{top}", fill=FG)
    draw.text((4, y0 - 12), "0", fill=FG)
    draw.text((4, y0 - plot_h // 2), "count", fill=FG)  # bar heights: log(1 + count)
    return im


# ------------------------------------------------------------------------------ files

def save_png(image: Any, path: Path) -> None:
    """Write `image` as a PNG in full or not at all, readable like the other published files
    (0666 less the umask: tempfile's 0600 would hide it from other users)."""
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG")
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
