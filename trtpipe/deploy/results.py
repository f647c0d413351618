"""Model outputs -> results a person reads: detections in original-image pixels, or top-k classes.

A model is a detector when its outputs (those of the post-processing model after `nms: split`,
else the final model's, under their source names) have the roles validation matches detections
by (stages/validate/detections.py: boxes, scores, optional classes and num_detections; named in
`validate.detections` or found by name), and a classifier when it has one output of shape [B, C]
(trailing 1s ignored, C > 1). Boxes are read as `output.boxes` says (default: [y1, x1, y2, x2]
normalized, as ONNX NonMaxSuppression and TF Object Detection write them) and returned as
[x1, y1, x2, y2] pixels of the original image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from trtpipe.errors import DeployError, ValidationError
from trtpipe.stages.validate.detections import detection_roles


def source_names(pub: Any, output_names: list[str]) -> dict[str, str]:
    """Output name -> the source output it stands for (post-processing outputs, or final outputs
    through the output map)."""
    if pub.postprocess_info:
        mapping = pub.postprocess_info.get("outputs") or {}
    else:
        mapping = pub.output_map or {}
    return {n: mapping.get(n, n) for n in output_names}


def detector_roles(pub: Any, output_names: list[str]) -> dict[str, str] | None:
    """role -> output name when the outputs are a detector's, else None.

    Raises:
        DeployError: a post-processing model's outputs cannot be assigned roles (its message).
    """
    names = source_names(pub, output_names)
    back = {src: out for out, src in names.items()}
    cfg = (pub.recipe.get("validate") or {}).get("detections") or {}
    try:
        roles = detection_roles(list(back), cfg)
    except ValidationError as err:
        if pub.postprocess_info:
            raise DeployError(f"cannot read the post-processing model's detections: {err.message}") from None
        return None
    return {role: back[src] for role, src in roles.items()}


def load_labels(path: Path | None) -> dict[int, str]:
    """Class id -> name from an `output.labels` file ({} without one): text (line N names class N,
    blank lines kept as unnamed), a JSON list, or a JSON object {"id": "name"}.

    Raises:
        DeployError: the file cannot be read or its JSON is not a list or an object of names.
    """
    if path is None:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DeployError(f"{path}: cannot read the labels file: {err}") from None
    if Path(path).suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise DeployError(f"{path}: not valid JSON: {err}") from None
        if isinstance(data, list):
            return {i: str(v) for i, v in enumerate(data)}
        if isinstance(data, dict) and all(str(k).lstrip("-").isdigit() for k in data):
            return {int(k): str(v) for k, v in data.items()}
        raise DeployError(f"{path}: expected a JSON list of names or an object {{\"id\": \"name\"}}")
    return {i: line.strip() for i, line in enumerate(text.splitlines()) if line.strip()}


def detections(arrays: dict[str, np.ndarray], roles: dict[str, str], index: int, *, box_format: str,
               original: tuple[int, int], input_size: tuple[int, int], labels: dict[int, str],
               min_score: float = 0.0) -> list[dict[str, Any]]:
    """Batch item `index`'s detections, highest score first.

    Args:
        arrays: the detector's outputs (boxes [B, K, 4], scores [B, K], classes [B, K],
            num_detections [B]).
        roles: role -> output name (detector_roles).
        index: batch item.
        box_format: output.boxes (`yxyx_normalized`, `xyxy_normalized`, `yxyx_pixels`, `xyxy_pixels`;
            pixels are the model input's).
        original: the image's (width, height) in pixels.
        input_size: the model input's (height, width) in pixels.
        labels: class id -> name.
        min_score: detections scoring at or below this are left out.

    Returns:
        [{"box": [x1, y1, x2, y2] (original-image pixels, floats), "score", "class" (int, or None
        without a classes output), "label" (name or None)}].
    """
    boxes = np.asarray(arrays[roles["boxes"]], dtype=np.float64)
    if boxes.shape[-1] != 4:
        raise DeployError(f"output '{roles['boxes']}' has shape {list(boxes.shape)}; boxes need 4 coordinates "
                          "on the last axis")
    boxes = boxes.reshape((-1,) + boxes.shape[-2:])[index]
    scores = np.asarray(arrays[roles["scores"]], dtype=np.float64).reshape(-1, boxes.shape[0])[index]
    classes = (np.asarray(arrays[roles["classes"]]).reshape(-1, boxes.shape[0])[index]
               if "classes" in roles else None)
    count = boxes.shape[0]
    if "num_detections" in roles:
        count = int(np.asarray(arrays[roles["num_detections"]]).reshape(-1)[index])
    order, units = box_format.split("_")
    if order == "yxyx":
        boxes = boxes[:, [1, 0, 3, 2]]
    width, height = original
    if units == "normalized":
        scale = np.array([width, height, width, height], np.float64)
    else:
        scale = np.array([width / input_size[1], height / input_size[0]] * 2, np.float64)
    boxes = boxes * scale
    out = []
    for i in range(min(count, boxes.shape[0])):
        if not scores[i] > min_score:
            continue
        cls = int(round(float(classes[i]))) if classes is not None else None
        out.append({"box": [round(float(v), 3) for v in boxes[i]], "score": round(float(scores[i]), 6),
                    "class": cls, "label": labels.get(cls) if cls is not None else None})
    out.sort(key=lambda d: -d["score"])
    return out


def classifier_output(outputs: dict[str, np.ndarray]) -> str | None:
    """The output holding class scores ([B, C], trailing 1s ignored, C > 1), or None."""
    hits = []
    for name, arr in outputs.items():
        shape = list(np.shape(arr))
        while len(shape) > 2 and shape[-1] == 1:
            shape.pop()
        if len(shape) == 2 and shape[1] > 1 and np.issubdtype(np.asarray(arr).dtype, np.floating):
            hits.append(name)
    return hits[0] if len(hits) == 1 else None


def top_k(scores: np.ndarray, index: int, k: int, labels: dict[int, str]) -> tuple[list[dict[str, Any]], str]:
    """Batch item `index`'s k best classes, best first, and what the scores are: "probability" when the
    output already is one (values in [0, 1] summing to 1), else "softmax of the output"."""
    row = np.asarray(scores, dtype=np.float64).reshape(np.shape(scores)[0], -1)[index]
    if np.all(row >= 0) and np.all(row <= 1) and abs(row.sum() - 1.0) < 1e-3:
        probs, what = row, "probability (the model's output)"
    else:
        e = np.exp(row - row.max())
        probs, what = e / e.sum(), "softmax of the model's output"
    best = np.argsort(-probs, kind="stable")[:k]
    return [{"class": int(c), "label": labels.get(int(c)), "score": round(float(probs[c]), 6)} for c in best], what
