"""Recipe data as a run sees it, and values as a reviewer reads them (for recipe_diff).

`normalized` fills in schema defaults and each pass's parameter defaults, reads `precision: fp16`
as `{mode: fp16, ...defaults}` and expands `<name>` placeholders; `same_value` compares sizes in
bytes (`2GiB` == `2048MiB`) and paths by the file they resolve to. So writing a default
explicitly, reordering keys or reformatting is never a change.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import yaml

from trtpipe.recipe.load import resolve_path
from trtpipe.recipe.resolved import parse_size
from trtpipe.recipe.schema import fill_defaults, load_schema

if TYPE_CHECKING:
    from trtpipe.registry import PassInfo

MISSING = object()  # a key the recipe (or its defaults) does not have
_PATH_KEYS = {("source", "onnx"), ("source", "saved_model"), ("source", "frozen_graph"), ("source", "tflite"),
              ("build", "timing_cache"), ("build", "runtime_cache"),
              ("output", "dir"),
              ("validate", "data", "npz"), ("validate", "data", "images", "dir"),
              ("precision", "calibration", "npz"), ("precision", "calibration", "images", "dir")}


def pass_info(name: object) -> PassInfo | None:
    """The registered pass `name` (None when unknown or not a string)."""
    from trtpipe import registry
    return registry.get(name) if isinstance(name, str) else None


def normalized(raw: object) -> dict:
    """Recipe data as a run sees it (defaults filled); tolerant of recipes that do not validate."""
    raw = raw if isinstance(raw, dict) else {}
    data = fill_defaults(copy.deepcopy(raw), load_schema("recipe.schema.json"))
    passes = []
    for item in data.get("passes") if isinstance(data.get("passes"), list) else []:
        item = dict(item) if isinstance(item, dict) else {"pass": item}
        info = pass_info(item.get("pass"))
        params = item.get("params") if isinstance(item.get("params"), dict) else {}
        item["params"] = fill_defaults(params, info.schema) if info else params
        item.setdefault("enabled", True)
        passes.append(item)
    data["passes"] = passes
    data["precision"] = _precision(data.get("precision"))
    name = data.get("name") if isinstance(data.get("name"), str) else ""
    out = data.get("output") if isinstance(data.get("output"), dict) else {}
    for key in ("dir", "plan", "onnx"):
        if isinstance(out.get(key), str):
            out[key] = out[key].replace("<name>", name)
    src = data.get("source") if isinstance(data.get("source"), dict) else {}
    if "onnx" in src:  # SavedModel settings mean nothing for an ONNX source (the run drops them)
        for key in ("signature", "tag", "opset", "large_model"):
            src.pop(key, None)
    elif "frozen_graph" in src or "tflite" in src:  # nor signatures and tag sets for a single-graph file
        for key in ("signature", "tag"):
            src.pop(key, None)
    return data


def _precision(value):
    """`fp16` and `{mode: fp16}` are the same; options of other modes are dropped like a run does."""
    try:
        from trtpipe.recipe.precision import normalize
        return normalize(value)
    except Exception:  # invalid precision (check reports it) or no precision module: compare as written
        return {"mode": value} if isinstance(value, str) else value


def flatten(value: Any, prefix: tuple = ()) -> dict[tuple, Any]:
    """{key path tuple: leaf value}; an empty dict is a leaf."""
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(flatten(v, prefix + (k,)))
        return out
    return {prefix: value}


def lookup(data: Any, path: Iterable[str | int]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return MISSING
        data = data[key]
    return data


def show(value: Any) -> str:
    """A value as a reviewer reads it: YAML flow style (`[1, 256, 256, 3]`, `{mode: split}`)."""
    if value is MISSING:
        return "(unset)"
    if isinstance(value, str) and value and yaml.safe_load(value) == value and "\n" not in value:
        return value
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.replace("\n...", "")


def same_value(path: tuple, a: Any, b: Any, ctx: dict) -> bool:
    """Equal as a run sees them; ctx["dirs"]: (old, new) recipe directories, for relative paths."""
    if a == b:
        return True
    if path == ("build", "workspace") and parse_size(a) is not None:
        return parse_size(a) == parse_size(b)
    if path in _PATH_KEYS and isinstance(a, str) and isinstance(b, str) and ctx.get("dirs"):
        old_dir, new_dir = ctx["dirs"]
        return os.path.normpath(resolve_path(a, old_dir)) == os.path.normpath(resolve_path(b, new_dir))
    return False


def value_text(path: tuple, value: Any, raw: Any) -> str:
    """`value`, marked `(default)` when the recipe did not write it."""
    text = show(value)
    written = lookup(raw, path)
    if value is not MISSING and written is MISSING:
        text += " (default)"
    elif isinstance(written, str) and written != value and "<name>" in written:
        text += f" (written {show(written)})"
    return text
