"""Results drawn onto the original image with Pillow: a box per detection (a color per class, the
best detection drawn last so it stays on top) with its label and score, or the top classes
written in the corner for a classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Distinct, saturated colors (RGB), one per class id modulo their number.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40)]
LINE_WIDTH = 2  # pixels


def class_color(cls: int | None) -> tuple[int, int, int]:
    """The box color of a class id (the first color for detections without a class)."""
    return PALETTE[(cls or 0) % len(PALETTE)]


def _text(det: dict[str, Any]) -> str:
    name = det.get("label") or (f"class {det['class']}" if det.get("class") is not None else "object")
    return f"{name} {det['score']:.2f}"


def draw_detections(image: Path | Any, dets: list[dict[str, Any]], out_path: Path) -> None:
    """Write the image with `dets` (results.detections: boxes in its pixels) drawn, as a PNG at
    `out_path` (written in full or not at all: a temporary file renamed).

    Args:
        image: the image file, or the already decoded image (a PIL image; not changed).
        dets: the detections.
        out_path: the PNG to write.

    Raises:
        OutputError: `out_path` cannot be written (deploy/outputs.py).
    """
    from PIL import ImageDraw
    canvas = _canvas(image)
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    for det in sorted(dets, key=lambda d: d["score"]):  # best last: on top
        x1, y1, x2, y2 = det["box"]
        # whole pixels, clipped to the image: the outline is at round(coordinate), LINE_WIDTH pixels inward
        x1, x2 = sorted(int(round(max(0.0, min(width - 1.0, v)))) for v in (x1, x2))
        y1, y2 = sorted(int(round(max(0.0, min(height - 1.0, v)))) for v in (y1, y2))
        color = class_color(det.get("class"))
        draw.rectangle([x1, y1, x2, y2], outline=color, width=LINE_WIDTH)
        text = _text(det)
        left, top, right, bottom = draw.textbbox((0, 0), text)
        tw, th = right - left, bottom - top
        ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1 + LINE_WIDTH  # above the box, else inside its top
        draw.rectangle([x1, ty, x1 + tw + 2, ty + th + 2], fill=color)
        draw.text((x1 + 1 - left, ty + 1 - top), text, fill=(0, 0, 0))
    _save(canvas, out_path)


def draw_classes(image: Path | Any, top: list[dict[str, Any]], out_path: Path) -> None:
    """Write the image (a file, or a decoded PIL image) with its top classes ("label score" per line)
    in the top-left corner, as a PNG at `out_path`.

    Raises:
        OutputError: `out_path` cannot be written (deploy/outputs.py).
    """
    from PIL import ImageDraw
    canvas = _canvas(image)
    draw = ImageDraw.Draw(canvas)
    y = 2
    for entry in top:
        text = f"{entry.get('label') or 'class ' + str(entry['class'])} {entry['score']:.3f}"
        left, top_, right, bottom = draw.textbbox((0, 0), text)
        draw.rectangle([2, y, 4 + right - left, y + 2 + bottom - top_], fill=(0, 0, 0))
        draw.text((3 - left, y + 1 - top_), text, fill=(255, 255, 255))
        y += bottom - top_ + 4
    _save(canvas, out_path)


def _canvas(image: Path | Any) -> Any:
    """An RGB copy of `image` (a PIL image, or a file Pillow opens) to draw on."""
    from PIL import Image
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image.copy()
    with Image.open(image) as im:
        return im.convert("RGB")


def _save(canvas: Any, out_path: Path) -> None:
    from trtpipe.deploy.outputs import write_atomic
    write_atomic(out_path, lambda fh: canvas.save(fh, format="PNG"), "--out DIR", "the picture")
