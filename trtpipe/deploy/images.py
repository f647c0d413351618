"""Images -> the final model's feed, exactly as the published model expects them.

Two steps, the same validation takes (stages/validate/data.py): an image becomes the *source*
model's input as the recipe's `validate.data.images` describes it (size, layout, channel order,
scale/mean/std, dtype; defaults: RGB pixel values 0-255 at the input's size, resized bilinearly
with Pillow), then the input contract's steps (what the passes recorded: casts, transposes,
normalization moved out of the graph) turn it into the final model's input.

Decoding and resizing use Pillow, as validation does, so `predict` and validation feed the same
values for the same file.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtpipe.errors import DeployError
from trtpipe.fileguard import special_kind
from trtpipe.stages.validate.data import IMAGE_EXTENSIONS, apply_contract, model_io

__all__ = ["IMAGE_EXTENSIONS", "MAX_PIXELS", "ImageSpec", "collect_images", "decode", "image_spec", "final_feed"]

# Most pixels (width x height) an image given to `predict` may have: 64 megapixels, ~200 MB as
# decoded RGB. Checked from the header before any pixel is decoded, so a small file that claims a
# huge size (a 145 KB PNG of 15000x10000) is refused instead of taking gigabytes. README "predict".
MAX_PIXELS = 64_000_000


@dataclass(frozen=True)
class ImageSpec:
    """How one image becomes the source input `source_input`: `shape` (static, batch first),
    `layout` (NHWC/NCHW), `channels` (1 or 3), `dtype` (numpy), `channel_order`, `scale`, `mean`,
    `std` (applied to 0-255 pixel values in that order)."""

    source_input: str
    shape: tuple
    layout: str
    channels: int
    dtype: np.dtype
    channel_order: str = "RGB"
    scale: float = 1.0
    mean: float | tuple = 0.0
    std: float | tuple = 1.0

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) the image is resized to."""
        return tuple(self.shape[2:4]) if self.layout == "NCHW" else tuple(self.shape[1:3])

    @property
    def batch(self) -> int:
        """Images per run of the model (the source input's batch dimension)."""
        return int(self.shape[0])


def collect_images(args: list[str]) -> list[Path]:
    """The image files named by `args` (files, or directories whose image files are taken in name
    order, not recursively).

    Raises:
        DeployError: an argument does not exist or is neither a regular file nor a directory (a FIFO,
            a device, a socket, a broken link), or a directory holds no image file.
    """
    files = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DeployError(f"{arg}: the directory holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            kind = special_kind(path)
            if kind == "missing":
                raise DeployError(f"{arg}: no such image file or directory")
            raise DeployError(f"{arg} is {kind}, not an image file or a directory of images")
    if not files:
        raise DeployError("no images given: name image files or directories of images")
    return files


def image_spec(recipe: dict, contract: dict) -> ImageSpec:
    """The ImageSpec of a published run: its resolved recipe's `validate.data.images` settings and the
    input contract (source input, its dtype and shape).

    Raises:
        DeployError: the model has no 4-D image input, several without `validate.data.images.input`
            saying which, or a dynamic image size with no `validate.data.images.size`.
    """
    cfg = ((recipe.get("validate") or {}).get("data") or {}).get("images") or {}
    sources = {}
    for entry in contract.values():
        if entry.get("source_input"):
            sources.setdefault(entry["source_input"], entry)
    name = cfg.get("input")
    if not name:
        four_d = [n for n, e in sources.items() if len(e.get("shape") or e.get("source_shape") or []) == 4]
        if len(four_d) != 1:
            raise DeployError(f"predict feeds images to one 4-D source input; this model's source inputs are "
                              f"{list(sources) or 'none'} ({len(four_d)} of them 4-D)",
                              hint="name it in the recipe: validate.data.images.input")
        name = four_d[0]
    if name not in sources:
        raise DeployError(f"validate.data.images.input '{name}' is not a source input of this model "
                          f"({', '.join(sources)})")
    entry = sources[name]
    given = list(entry.get("shape") or entry.get("source_shape") or [])
    static = lambda d: isinstance(d, int) and d > 0  # noqa: E731
    layout = cfg.get("layout") or ("NCHW" if len(given) == 4 and given[1] in (1, 3) and given[3] not in (1, 3)
                                   else "NHWC")
    spatial = (2, 3) if layout == "NCHW" else (1, 2)
    shape = [d if static(d) else None for d in given]
    if shape and shape[0] is None:
        shape[0] = 1
    if cfg.get("size"):
        for axis, value in zip(spatial, cfg["size"]):
            shape[axis] = int(value)
    if any(d is None for d in shape):
        raise DeployError(f"source input '{name}' has the dynamic shape {given}: the image size is unknown",
                          hint="set validate.data.images.size: [height, width] in the recipe")
    channels = shape[1] if layout == "NCHW" else shape[3]
    return ImageSpec(source_input=name, shape=tuple(shape), layout=layout, channels=int(channels),
                     dtype=np.dtype(entry.get("source_dtype") or "float32"),
                     channel_order=cfg.get("channel_order", "RGB"), scale=float(cfg.get("scale", 1.0)),
                     mean=_vec(cfg.get("mean", 0.0)), std=_vec(cfg.get("std", 1.0)))


def _vec(value):
    return tuple(float(v) for v in value) if isinstance(value, list) else float(value)


def decode(path: Path, spec: ImageSpec) -> tuple[np.ndarray, tuple[int, int], Any]:
    """One image, decoded once: the source input's item (no batch axis; spec.layout, spec.dtype),
    the image's original (width, height) in pixels, and the image itself as an RGB PIL image (to
    draw on).

    Raises:
        DeployError: the file is not an image Pillow can decode (corrupt, truncated, another format),
            or it has more than MAX_PIXELS pixels (checked before decoding).
    """
    import warnings

    from PIL import Image
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: MAX_PIXELS, lower, is checked here instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise DeployError(f"{path}: the image is {width}x{height} pixels ({width * height / 1e6:.0f} MP), "
                                  f"more than predict decodes ({MAX_PIXELS / 1e6:.0f} MP, images.MAX_PIXELS)",
                                  hint="resize it first (the model sees it at "
                                       f"{spec.size[1]}x{spec.size[0]} anyway)")
            im.load()
            original = im.size
            canvas = im.convert("RGB")
            model_in = canvas if spec.channels == 3 else im.convert("L")
            height, width = spec.size
            arr = np.asarray(model_in.resize((width, height), Image.BILINEAR), dtype=np.float32)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DeployError(f"{path}: cannot decode the image: {type(err).__name__}: {err}") from None
    arr = arr[..., None] if spec.channels == 1 else arr
    if spec.channels == 3 and spec.channel_order == "BGR":
        arr = arr[..., ::-1]
    arr = arr * np.float32(spec.scale)
    arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if np.issubdtype(spec.dtype, np.integer):
        info = np.iinfo(spec.dtype)
        arr = np.clip(np.rint(arr), info.min, info.max)
    arr = arr.astype(spec.dtype)
    return (arr.transpose(2, 0, 1) if spec.layout == "NCHW" else arr), original, canvas


def final_feed(batch: np.ndarray, spec: ImageSpec, contract: dict, final_path: Path) -> OrderedDict[str, np.ndarray]:
    """The final model's feed for a batch of source-input items (the contract's steps applied).

    Raises:
        DeployError: a final input is not derived from the image input, or the contract and the
            final model disagree (validate.data.apply_contract's message).
    """
    from trtpipe.errors import ValidationError
    final_inputs = model_io(final_path)[0]
    others = [n for n in final_inputs if (contract.get(n) or {}).get("source_input") != spec.source_input]
    if others:
        origin = {n: (contract.get(n) or {}).get("source_input") or (contract.get(n) or {}).get("source_tensor")
                  for n in others}
        raise DeployError(f"predict feeds images only, to source input '{spec.source_input}'; final input(s) "
                          + ", ".join(f"'{n}' (from {origin[n] or 'nothing recorded'})" for n in others)
                          + " come from elsewhere")
    try:
        return apply_contract({spec.source_input: batch}, contract, final_inputs)
    except ValidationError as err:
        raise DeployError(f"the published input contract does not fit the final model: {err.message}") from None
