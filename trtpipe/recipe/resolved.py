"""One resolved recipe: every value a run, the cache keys, validation and the review commands read,
computed once from what the recipe wrote.

`resolve_values(data, locate)` runs inside `load_recipe`, after the schema check and schema
defaults: precision normalized (`fp16` is `{mode: fp16, keep_io_types: true, ...}`), validation
tolerances that follow from the precision filled in, sizes parsed to bytes and checked > 0.
The typed views (`Precision`, `Tolerances`, `BuildSettings`) are what stage code reads.

Defaults come from schemas/recipe.schema.json alone; the per-precision tolerance defaults below
are documented there (validate.atol, validate.rtol, validate.detections.iou_threshold).
"""

from __future__ import annotations

import copy
import dataclasses
import decimal
import math
import re
from collections.abc import Callable

from trtpipe.errors import RecipeError
from trtpipe.recipe.precision import normalize
from trtpipe.recipe.schema import fill_defaults, key_path, load_schema

# (atol, rtol) per precision (schema: validate.atol / validate.rtol). fp16 keeps ~3 significant
# digits (10-bit mantissa), bf16 ~2 (7-bit); int8/fp8 errors are those of the quantization step.
DEFAULT_TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2),
                      "int8": (1e-1, 1e-1), "fp8": (2e-1, 2e-1)}
# IoU a detection must keep to count as the same one (schema: validate.detections.iou_threshold).
DEFAULT_IOU = {"fp32": 0.9, "fp16": 0.9, "bf16": 0.9, "int8": 0.75, "fp8": 0.75}
# Decimal and binary (IEC 80000-13) byte units accepted for sizes (schema: build.workspace).
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
# The model-source keys (schema: source; exactly one per recipe) and those tf2onnx converts from.
SOURCE_KINDS = ("onnx", "saved_model", "frozen_graph", "tflite")
TF_SOURCE_KINDS = ("saved_model", "frozen_graph", "tflite")
# The deployment options under `build` (schema: build; applied by stages/build/options.py).
DEPLOYMENT_KEYS = ("max_aux_streams", "version_compatible", "exclude_lean_runtime", "hardware_compatibility_level",
                   "refittable", "strip_weights", "weight_streaming", "sparsity", "tf32")
# IBuilderConfig.set_memory_pool_limit takes a size_t, but the builder overflows inside on the way:
# TensorRT-RTX 1.7.1 fails an internal assertion (blockChooser.cpp, exit 7) with 2**63 - 1 and
# 9999999TiB and builds with 2**62 (measured). 4 EiB is still a million times any device's memory.
MAX_WORKSPACE = 2**62
Locate = Callable[[tuple], str]


def parse_size(value: int | str) -> int | None:
    """'2GiB' -> 2147483648 (bytes); ints pass through; None when unparseable. Exact (decimal
    arithmetic, no float rounding); a fraction of a byte is rounded down."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in UNITS:
        return None
    return int(decimal.Decimal(m.group(1)) * UNITS[m.group(2).upper()])


def resolve_values(data: dict, locate: Locate) -> None:
    """Normalize a schema-valid, default-filled recipe `data` in place (see the module docstring).

    Raises:
        RecipeError: precision options of another mode, a size that is not > 0 bytes (or over
            MAX_WORKSPACE, 4 EiB), or a NaN or infinite number under `validate` or `precision` (tolerances,
            thresholds and ranges are finite; JSON Schema cannot refuse NaN, which compares false
            with every bound).
    """
    check_finite(data.get("validate"), ("validate",), locate)
    check_finite(data.get("precision"), ("precision",), locate)  # overflow_threshold, percentile, ranges
    check_finite(data.get("build"), ("build",), locate)  # timeout
    _check_ranges(data, locate)
    data["precision"] = normalize(data.get("precision"), locate)
    data["validate"] = resolve_validate(data.get("validate"), data["precision"]["mode"])
    build = data["build"]
    build["workspace_bytes"] = parse_size(build["workspace"])
    if not build["workspace_bytes"] or build["workspace_bytes"] <= 0:
        raise RecipeError(f"{locate(('build', 'workspace'))}: build.workspace: {build['workspace']!r} is "
                          f"{build['workspace_bytes']} bytes; the builder's workspace pool needs at least 1 byte",
                          hint="e.g. `workspace: 1GiB`")
    if build["workspace_bytes"] > MAX_WORKSPACE:
        raise RecipeError(f"{locate(('build', 'workspace'))}: build.workspace: {build['workspace']!r} is "
                          f"{build['workspace_bytes']} bytes, more than the builder can be given "
                          f"({MAX_WORKSPACE} bytes, 4 EiB; larger limits overflow inside the builder)",
                          hint="e.g. `workspace: 4GiB`")
    if build.get("exclude_lean_runtime") and not build.get("version_compatible"):
        raise RecipeError(f"{locate(('build', 'exclude_lean_runtime'))}: build.exclude_lean_runtime: applies to "
                          "version-compatible plans only (it leaves the lean runtime out of one)",
                          hint="also set `version_compatible: true`, or remove exclude_lean_runtime")


# What a finite number under `validate` must also be, by key (the schema's bounds, said in the error).
_FINITE_WHAT = {"atol": "a tolerance is a finite number >= 0", "rtol": "a tolerance is a finite number >= 0",
                "score_atol": "a tolerance is a finite number >= 0",
                "quantile": "a quantile is a finite number in (0, 1]",
                "iou_threshold": "an IoU threshold is a finite number in (0, 1]",
                "min_score": "a score is a finite number in [0, 1]"}


def check_finite(value: object, path: tuple, locate: Locate) -> None:
    """Refuse NaN and +-inf anywhere in `value` (a recipe section at key path `path`): every error
    with `file:line:col: key.path:`, all of them in one RecipeError.

    Raises:
        RecipeError: a number in `value` is NaN or infinite.
    """
    bad = [f"{locate(p)}: {key_path(p)}: {msg}" for p, msg in non_finite(value, tuple(path))]
    if bad:
        file = locate(tuple(path)).rsplit(":", 2)[0]
        raise RecipeError(bad[0] if len(bad) == 1 else f"{file}: {len(bad)} recipe errors:\n  " + "\n  ".join(bad),
                          hint="write finite numbers (e.g. `atol: 1e-3`); YAML's .nan and .inf are not allowed here")


def non_finite(value: object, path: tuple = ()) -> list[tuple[tuple, str]]:
    """(key path, message) for every NaN or +-inf number in `value` (found at key path `path`),
    the message saying what the key takes (e.g. "a tolerance is a finite number >= 0")."""
    if isinstance(value, dict):
        return [e for k, item in value.items() for e in non_finite(item, path + (k,))]
    if isinstance(value, list):
        return [e for i, item in enumerate(value) for e in non_finite(item, path + (i,))]
    if isinstance(value, float) and not math.isfinite(value):
        key = next((k for k in reversed(path) if isinstance(k, str)), "")
        return [(path, f"{value} is not a finite number; {_FINITE_WHAT.get(key, 'it must be a finite number')}")]
    return []


def _check_ranges(data: dict, locate: Locate) -> None:
    """A data range [lo, hi] (validate.data / precision.calibration inputs) needs lo <= hi."""
    places = [("validate", "data")]
    if isinstance(data.get("precision"), dict):
        places.append(("precision", "calibration"))
    for place in places:
        section = data
        for key in place:
            section = section.get(key) if isinstance(section, dict) else None
        inputs = section.get("inputs") if isinstance(section, dict) else None
        for name, spec in (inputs or {}).items():
            rng = spec.get("range") if isinstance(spec, dict) else None
            if isinstance(rng, list) and len(rng) == 2 and rng[0] > rng[1]:
                path = (*place, "inputs", name, "range")
                raise RecipeError(f"{locate(path)}: {key_path(path)}: [{rng[0]}, {rng[1]}] is empty: the low end "
                                  f"comes first", hint=f"write [{rng[1]}, {rng[0]}]")


def resolve_validate(validate_cfg: dict | None, mode: str) -> dict:
    """`validate` with schema defaults, and atol/rtol (and detections' iou_threshold and score_atol)
    following from the precision `mode` when the recipe does not set them."""
    cfg = fill_defaults(copy.deepcopy(validate_cfg or {}), load_schema("recipe.schema.json")["properties"]["validate"])
    atol, rtol = DEFAULT_TOLERANCES.get(mode, DEFAULT_TOLERANCES["fp32"])
    if cfg.get("atol") is None:
        cfg["atol"] = atol
    if cfg.get("rtol") is None:
        cfg["rtol"] = rtol
    dets = cfg["detections"]
    dets.setdefault("iou_threshold", DEFAULT_IOU.get(mode, 0.9))
    dets.setdefault("score_atol", cfg["atol"])
    return cfg


def resolve_build(build_cfg: dict | None) -> dict:
    """`build` with schema defaults and `workspace_bytes`, for callers outside a recipe (tests,
    scripts) that pass a partial mapping; a recipe's `data["build"]` is already resolved."""
    cfg = fill_defaults({k: v for k, v in (build_cfg or {}).items() if v is not None},
                        load_schema("recipe.schema.json")["properties"]["build"])
    if cfg.get("workspace_bytes") is None:
        cfg["workspace_bytes"] = parse_size(cfg["workspace"])
    cfg.setdefault("timing_cache", None)  # the schema's default is "no file", which fill_defaults leaves out
    return cfg


@dataclasses.dataclass(frozen=True)
class Precision:
    """The normalized `precision`: `mode` (fp32, fp16, bf16, int8, fp8) and that mode's options."""

    mode: str
    options: dict

    @classmethod
    def of(cls, data: dict) -> Precision:
        """From a resolved recipe's data."""
        p = data["precision"]
        return cls(p["mode"], {k: v for k, v in p.items() if k != "mode"})


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """What "outputs agree" means for this recipe: |a - b| <= atol + rtol * |b| by `statistic`
    (max, or the `quantile` of the element errors); detections match at IoU >= `iou_threshold`."""

    precision: str
    atol: float
    rtol: float
    statistic: str
    quantile: float
    iou_threshold: float
    score_atol: float

    @classmethod
    def of(cls, data: dict) -> Tolerances:
        """From a resolved recipe's data."""
        v = data["validate"]
        return cls(data["precision"]["mode"], v["atol"], v["rtol"], v["statistic"], v["quantile"],
                   v["detections"]["iou_threshold"], v["detections"]["score_atol"])


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """The resolved `build`: backend name (or auto), workspace in bytes (> 0), builder optimization
    level, profiles, compute capabilities ("8.9", ...), absolute plugin and timing-cache paths, and
    the deployment options (stages/build/options.py: max_aux_streams, version_compatible,
    exclude_lean_runtime, hardware_compatibility_level, refittable, strip_weights,
    weight_streaming, sparsity, tf32; every one, defaults included)."""

    backend: str
    workspace_bytes: int
    optimization_level: int
    profiles: list
    compute_capabilities: list
    plugins: list
    timing_cache: str | None
    deployment: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, data: dict) -> BuildSettings:
        """From a resolved recipe's data."""
        b = data["build"]
        return cls(b["backend"], b["workspace_bytes"], b["optimization_level"], b["profiles"],
                   b["compute_capabilities"], b["plugins"], b.get("timing_cache"),
                   {k: b[k] for k in DEPLOYMENT_KEYS if k in b})
