"""JSON Schema validation with messages a person can act on.

jsonschema's own messages ("'x' does not match '^...$'") are for machines. Here each error gets
the recipe location, the key path, what was expected (from the schema, including our
`x-expected` annotation) and, for unknown keys, a did-you-mean from the allowed keys.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.resources
import json
import re
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from trtpipe.errors import suggest

SCHEMA_PACKAGE = "schemas"  # the top-level schemas/ folder, shipped as package data


def own_top_level_package(name: str) -> object:
    """Import trt-pipeline's top-level package `name` (`schemas` or `passes`), which lives next to
    the `trtpipe` package (in a checkout and in site-packages alike).

    Raises:
        RuntimeError: another package of that name shadows ours (say where both are).
    """
    module = importlib.import_module(name)
    ours = Path(__file__).resolve().parents[2] / name
    found = Path(getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), "")).resolve()
    if found != ours and ours not in found.parents:
        raise RuntimeError(f"the Python package '{name}' at {found} shadows trt-pipeline's own '{name}' ({ours}): "
                           f"it comes first on sys.path (often: the working directory); run from another "
                           f"directory or rename that package")
    return module


def load_schema(name: str) -> dict:
    """The JSON Schema `name` (e.g. "recipe.schema.json", "passes/nms.schema.json"), a fresh copy.

    Read with importlib.resources, so it works from a checkout, an editable and a plain install.

    Raises:
        FileNotFoundError: no such schema is shipped.
    """
    return copy.deepcopy(_load(name))


def has_schema(name: str) -> bool:
    """Whether the schema `name` is shipped."""
    return _schemas().joinpath(name).is_file()


@functools.lru_cache(maxsize=None)
def _load(name: str) -> dict:
    return json.loads(_schemas().joinpath(name).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def _schemas() -> resources.abc.Traversable:
    """trt-pipeline's own schemas package. A user's package of the same name that happens to come
    first on sys.path (a `schemas/` folder in the working directory) is refused with a clear error
    instead of being read."""
    return resources.files(own_top_level_package(SCHEMA_PACKAGE))


def key_path(path: Iterable[str | int]) -> str:
    """('passes', 2, 'params', 'scale') -> 'passes[2].params.scale'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _describe_type(value):
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "nothing (null)"}.get(type(value), type(value).__name__)


def _expected(schema):
    if "x-expected" in schema:
        return schema["x-expected"]
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    t = schema.get("type")
    if isinstance(t, list):
        return " or ".join(t)
    return t or "a valid value"


def schema_errors(instance: Any, schema: dict, prefix: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """Yield (path_tuple, message) for every violation, unknown keys pointing at the key itself."""
    validator = jsonschema.Draft202012Validator(schema)
    for err in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
        yield from _explain(err, prefix + tuple(err.absolute_path))


def _explain(err, path):
    kind, sch, value = err.validator, err.schema, err.instance
    if "propertyNames" in err.relative_schema_path and isinstance(value, str):
        path = path + (value,)  # a key not allowed here: point at the key itself, not at its mapping
    if kind == "additionalProperties" and isinstance(value, dict):
        allowed = list(sch.get("properties", {}))
        patterns = list(sch.get("patternProperties", {}))
        for key in value:
            if key in allowed or any(re.search(p, key) for p in patterns):
                continue
            if sch.get("additionalProperties") is False:
                allowed_txt = ", ".join(allowed) if allowed else "none"
                yield path + (key,), f"unknown key '{key}'{suggest(key, allowed)}; allowed keys here: {allowed_txt}"
        return
    if kind == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        desc = sch.get("properties", {}).get(missing, {}).get("description", "")
        yield path, f"missing required key '{missing}'" + (f" ({desc})" if desc else "")
        return
    if kind == "type":
        yield path, f"expected {_expected(sch)}, got {_describe_type(value)} {value!r}"
        return
    if kind == "enum":
        yield path, f"expected {_expected(sch)}, got {value!r}{suggest(value, sch['enum'])}"
        return
    if kind in ("oneOf", "anyOf") and "x-expected" in sch:
        yield path, f"expected {sch['x-expected']}"
        return
    if kind == "pattern":
        yield path, f"expected {_expected(sch)}, got {value!r}"
        return
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
                "uniqueItems", "minProperties"):
        yield path, f"{err.message}" + (f" (expected {sch['x-expected']})" if "x-expected" in sch else "")
        return
    yield path, err.message


def fill_defaults(instance: Any, schema: dict) -> Any:
    """Return a copy of `instance` with schema defaults filled in (objects and arrays of objects)."""
    if isinstance(instance, dict) and schema.get("type") == "object":
        out = dict(instance)
        for key, sub in schema.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = fill_defaults(out[key], sub)
        return out
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        return [fill_defaults(item, schema["items"]) for item in instance]
    return instance
