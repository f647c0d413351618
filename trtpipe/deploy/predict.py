"""`python pipeline.py predict OUTPUT_DIR IMAGE_OR_DIR...`: run what a run published on images.

Each image is prepared as the final model expects it (deploy/images.py: the recipe's image settings
and the input contract), run through the engine where a GPU can run the plan, else through the
final ONNX model on ONNX Runtime (a banner says why), then through the post-processing model
(`nms: split`). Per image it writes `<stem>.json` (detections as [x1, y1, x2, y2] pixels of the
original image, scores, classes and labels; or the top-k classes) and `<stem>.png` (the image with
them drawn) into the prediction directory (default OUTPUT_DIR/predictions). Every image is decoded
before anything is written, each file is written atomically, and no input is ever overwritten.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from trtpipe.deploy import drawing, results
from trtpipe.deploy.images import collect_images, decode, final_feed, image_spec
from trtpipe.deploy.published import describe, load_published
from trtpipe.deploy.runtime import choose_runtime, final_model, ort_session, run_postprocess
from trtpipe.errors import DeployError, OutputError


def predict(out_dir: str | Path, images: list[str], *, runtime: str = "auto", dest: str | Path | None = None,
            top_k: int = 5, min_score: float = 0.0, ui: Any = None) -> list[dict[str, Any]]:
    """Run the published model on images and write per image a JSON of results and a PNG.

    Args:
        out_dir: the run's output directory.
        images: image files and/or directories of images (png, jpg, jpeg, bmp, gif; not recursive).
        runtime: "auto" (engine where a GPU can run the plan, else ONNX Runtime), "engine",
            "onnxruntime".
        dest: where the JSON and PNG files go (default OUTPUT_DIR/predictions; created).
        top_k: classes kept per image for a classifier.
        min_score: detections scoring at or below this are left out (JSON and PNG).
        ui: trtpipe.console.UI for the banner and the summary (None: silent).

    Returns:
        One result per image (what its JSON holds): {"image", "image_size": [width, height],
        "runtime", "engine_not_run" (the banner or None), "kind" ("detection" | "classification"),
        "detections" or "top_k", "json", "png"}.

    Raises:
        DeployError: the output directory is not a complete published run (or from an older
            trt-pipeline without the input contract), an image is missing, unreadable or corrupt, a
            directory holds no images, `--runtime engine` cannot run here, the model's outputs are
            neither a detector's nor a classifier's, or an output file would overwrite an input.
        OutputError: the prediction directory cannot be written.
    """
    pub = load_published(out_dir)
    files = collect_images(images)
    spec = image_spec(pub.recipe, pub.contract)
    items = [decode(path, spec) for path in files]  # every image readable before anything is written
    target = Path(dest) if dest else pub.dir / "predictions"
    names = _output_names(files, target)
    choice = choose_runtime(pub, runtime)
    if ui is not None and choice.banner:
        ui.out.print(f"[bold yellow]{choice.banner}[/]")
    labels = results.load_labels(pub.labels)
    post = ort_session(pub.postprocess) if pub.postprocess else None
    outputs = []
    with final_model(pub, choice) as model:
        for start in range(0, len(items), spec.batch):
            chunk = items[start:start + spec.batch]
            batch = np.stack([a for a, _ in chunk] + [chunk[-1][0]] * (spec.batch - len(chunk)))
            arrays = model.run(final_feed(batch, spec, pub.contract, pub.final))
            if post is not None:
                arrays = run_postprocess(post, pub.postprocess_info, arrays)
            outputs += [(arrays, i) for i in range(len(chunk))]
    kind, roles, scores_out = _kind(pub, outputs[0][0])
    _make_dir(target)
    written = []
    for path, (_, original), (arrays, index), stem in zip(files, items, outputs, names):
        res = {"image": str(path), "image_size": list(original), "runtime": choice.label,
               "engine_not_run": choice.banner, "model": describe(pub), "kind": kind}
        png = target / f"{stem}.png"
        if kind == "detection":
            res["box_format"] = "[x1, y1, x2, y2] in pixels of the original image"
            res["detections"] = results.detections(
                arrays, roles, index, box_format=(pub.recipe.get("output") or {}).get("boxes", "yxyx_normalized"),
                original=original, input_size=spec.size, labels=labels, min_score=min_score)
            drawing.draw_detections(path, res["detections"], png)
        else:
            res["top_k"], res["scores_are"] = results.top_k(arrays[scores_out], index, top_k, labels)
            drawing.draw_classes(path, res["top_k"], png)
        res["json"], res["png"] = str(target / f"{stem}.json"), str(png)
        _write_json(target / f"{stem}.json", res)
        written.append(res)
    if ui is not None:
        _summary(ui, written, choice)
    return written


def _kind(pub, arrays):
    roles = results.detector_roles(pub, list(arrays))
    if roles is not None:
        return "detection", roles, None
    scores = results.classifier_output(arrays)
    if scores is not None:
        return "classification", None, scores
    shapes = {n: list(np.shape(a)) for n, a in arrays.items()}
    raise DeployError(f"the model's outputs {shapes} are neither a detector's (boxes and scores, named in "
                      "validate.detections or found by name) nor a classifier's (one [batch, classes] output)",
                      hint="name the detection outputs in the recipe: validate.detections.boxes / scores / classes")


def _output_names(files, target):
    """File stems for each image's outputs: unique, and never the path of an input."""
    inputs = {p.resolve() for p in files}
    stems, used = [], set()
    for path in files:
        stem, n = path.stem, 1
        while stem in used:
            n += 1
            stem = f"{path.stem}-{n}"
        used.add(stem)
        for suffix in (".json", ".png"):
            if (target / f"{stem}{suffix}").resolve() in inputs:
                raise DeployError(f"{target / (stem + suffix)} would overwrite the input image {path}",
                                  hint="write predictions elsewhere: --out DIR")
        stems.append(stem)
    return stems


def _make_dir(target):
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{target}: cannot create the prediction directory: {err.strerror or err}",
                          hint="choose a writable one with --out DIR") from None


def _write_json(path, data):
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"{path}: cannot write: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise OutputError(f"{path}: cannot write: {err.strerror or err}") from None
        raise


def _summary(ui, written, choice):
    from rich.table import Table
    table = Table(title=f"predictions ({choice.label})", header_style="bold")
    for col in ("image", "result", "written"):
        table.add_column(col)
    for res in written:
        if res["kind"] == "detection":
            dets = res["detections"]
            best = (f"; best {dets[0]['label'] or dets[0]['class']} {dets[0]['score']:.2f}" if dets else "")
            what = f"{len(dets)} detection(s){best}"
        else:
            top = res["top_k"][0]
            what = f"top-1 {top['label'] or 'class ' + str(top['class'])} ({top['score']:.3f})"
        table.add_row(Path(res["image"]).name, what, Path(res["png"]).name + ", " + Path(res["json"]).name)
    ui.table(table)
    ui.out.print(f"written to {Path(written[0]['png']).parent}" if written else "nothing written")
