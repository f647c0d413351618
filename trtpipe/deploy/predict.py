"""`python pipeline.py predict OUTPUT_DIR IMAGE_OR_DIR...`: run what a run published on images.

Each image is prepared as the final model expects it (deploy/images.py: the recipe's image settings
and the input contract), run through the engine where a GPU can run the plan, else through the
final ONNX model on ONNX Runtime (a banner says why), then through the post-processing model
(`nms: split`). Per image it writes `<stem>.json` (detections as [x1, y1, x2, y2] pixels of the
original image, scores, classes and labels; or the top-k classes) and `<stem>.png` (the image with
them drawn) into the prediction directory (default OUTPUT_DIR/predictions). Each image is decoded
once (at most images.MAX_PIXELS pixels); files are written to a staging directory and moved into
place only when every image succeeded; no input, published artifact or file the run read is ever
overwritten (deploy/outputs.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from trtpipe.deploy import drawing, outputs, results
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
            neither a detector's nor a classifier's, or an image has more than images.MAX_PIXELS pixels.
        OutputError: the prediction directory cannot be written, or an output file would replace an
            input image, a published artifact, the recipe or a file the run read.
    """
    pub = load_published(out_dir)
    files = collect_images(images)
    spec = image_spec(pub.recipe, pub.contract)
    target = Path(dest) if dest else pub.dir / "predictions"
    option = "--out DIR"
    prot = outputs.protected(pub, files)
    outputs.guard(target, prot, option)
    names = _output_names(files, target)
    for stem in names:
        for suffix in (".json", ".png"):
            outputs.guard(target / f"{stem}{suffix}", prot, option)
    choice = choose_runtime(pub, runtime)
    labels = results.load_labels(pub.labels)
    post = ort_session(pub.postprocess) if pub.postprocess else None
    created = outputs.make_dir(target, option)
    # Every file goes to a staging directory first and moves into place only when every image was
    # decoded and run: a corrupt image leaves nothing behind. Images are decoded once, a batch at a
    # time (the decoded picture is drawn on), so memory holds one batch of pictures.
    try:
        staging = Path(tempfile.mkdtemp(dir=target, prefix=".predict-"))
    except OSError as err:
        if created:
            _rmdir(target)
        raise OutputError(f"{target}: cannot write: {err.strerror or err}",
                          hint=f"choose a writable directory with {option}") from None
    written = []
    try:
        if ui is not None and choice.banner:
            ui.out.print(f"[bold yellow]{choice.banner}[/]")
        with final_model(pub, choice) as model:
            kind = roles = scores_out = None
            for start in range(0, len(files), spec.batch):
                chunk = [decode(path, spec) for path in files[start:start + spec.batch]]
                batch = np.stack([a for a, _, _ in chunk] + [chunk[-1][0]] * (spec.batch - len(chunk)))
                arrays = model.run(final_feed(batch, spec, pub.contract, pub.final))
                if post is not None:
                    arrays = run_postprocess(post, pub.postprocess_info, arrays)
                if kind is None:
                    kind, roles, scores_out = _kind(pub, arrays)
                for index, (_, original, picture) in enumerate(chunk):
                    path, stem = files[start + index], names[start + index]
                    res = {"image": str(path), "image_size": list(original), "runtime": choice.label,
                           "engine_not_run": choice.banner, "model": describe(pub), "kind": kind}
                    if kind == "detection":
                        res["box_format"] = "[x1, y1, x2, y2] in pixels of the original image"
                        res["detections"] = results.detections(
                            arrays, roles, index,
                            box_format=(pub.recipe.get("output") or {}).get("boxes", "yxyx_normalized"),
                            original=original, input_size=spec.size, labels=labels, min_score=min_score)
                        drawing.draw_detections(picture, res["detections"], staging / f"{stem}.png")
                    else:
                        res["top_k"], res["scores_are"] = results.top_k(arrays[scores_out], index, top_k, labels)
                        drawing.draw_classes(picture, res["top_k"], staging / f"{stem}.png")
                    res["json"], res["png"] = str(target / f"{stem}.json"), str(target / f"{stem}.png")
                    _write_json(staging / f"{stem}.json", res)
                    written.append(res)
                del chunk
        for res in written:
            for key in ("json", "png"):
                final = Path(res[key])
                try:
                    os.replace(staging / final.name, final)
                except OSError as err:
                    raise OutputError(f"{final}: cannot write: {err.strerror or err}",
                                      hint=f"choose a writable directory with {option}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            _rmdir(target)  # only when empty: nothing was moved into it
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
    """File stems for each image's outputs: unique (a second `a.png` gives `a-2`). Whether a name may
    be written (not an input, not a published artifact) is deploy/outputs.py's guard."""
    stems, used = [], set()
    for path in files:
        stem, n = path.stem, 1
        while stem in used:
            n += 1
            stem = f"{path.stem}-{n}"
        used.add(stem)
        stems.append(stem)
    return stems


def _rmdir(path):
    try:
        path.rmdir()
    except OSError:
        pass


def _write_json(path, data):
    text = (json.dumps(data, indent=2) + "\n").encode("utf-8")
    outputs.write_atomic(path, lambda fh: fh.write(text), "--out DIR", "the prediction")


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
