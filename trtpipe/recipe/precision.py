"""The recipe's `precision` value, normalized: `fp16` and `{mode: fp16}` are one configuration.

A recipe may write a mode name or a mapping; every reader (the run, cache keys, validation
tolerances, `explain`, `diff`) sees the same normalized mapping: the mode plus that mode's options
with schema defaults filled, nothing else. Also the check that the build targets can run the mode.
"""

from __future__ import annotations

from collections.abc import Callable

from trtpipe.errors import RecipeError
from trtpipe.recipe.schema import fill_defaults, key_path, load_schema, schema_errors

LOW = ("fp16", "bf16")  # float modes realized by converting the data path
FLOAT_KEYS = ("keep_io_types", "keep_op_types", "keep_nodes", "overflow_guard", "overflow_threshold")
QUANT_KEYS = ("calibration", "method", "percentile", "per_channel", "exclude_op_types",
              "exclude_nodes", "quantize_depthwise", "keep_output_layers")
Locate = Callable[[tuple], str]


def precision_schema() -> dict:
    """The recipe schema's `precision` property (plain-name or object form)."""
    return load_schema("recipe.schema.json")["properties"]["precision"]


def normalize(precision_cfg: str | dict | None, locate: Locate | None = None) -> dict:
    """Recipe value (name, mapping or None for fp32) -> {"mode": ..., the mode's options with
    defaults}; options of other modes are not kept.

    Raises:
        RecipeError: the value does not fit the schema, or sets keys the mode does not use.
    """
    where = where_prefix(locate, ("precision",))
    raw = "fp32" if precision_cfg is None else precision_cfg
    schema = precision_schema()
    errors = list(schema_errors(raw, schema, ("precision",)))
    if errors:
        raise RecipeError(where + "; ".join(f"{key_path(p)}: {m}" for p, m in errors))
    raw = {"mode": raw} if isinstance(raw, str) else dict(raw)
    mode = raw["mode"]
    foreign = [k for k in raw if k in (QUANT_KEYS if mode in LOW else FLOAT_KEYS if mode != "fp32" else
                                       FLOAT_KEYS + QUANT_KEYS)]
    if foreign:
        users = "int8 and fp8" if foreign[0] in QUANT_KEYS else "fp16 and bf16"
        raise RecipeError(f"{where_prefix(locate, ('precision', foreign[0]))}precision.{foreign[0]} applies to "
                          f"{users}, not to mode {mode}")
    if mode == "int8" and raw.get("method") == "distribution":
        raise RecipeError(f"{where_prefix(locate, ('precision', 'method'))}precision.method: 'distribution' is "
                          f"ONNX Runtime's float8 calibrator; int8 takes minmax, entropy or percentile")
    cfg = fill_defaults(raw, schema["else"])
    used = {"fp32": (), "fp16": FLOAT_KEYS, "bf16": FLOAT_KEYS}.get(mode, QUANT_KEYS)
    return {k: v for k, v in cfg.items() if k == "mode" or k in used}


def check_targets(mode: str, compute_capabilities: list[str] | None, locate: Locate | None = None) -> None:
    """Refuse precisions the build targets cannot run.

    Rule (NVIDIA's CUDA compute capability tables): FP8 tensor cores need SM 8.9 (Ada) or newer,
    BF16 needs SM 8.0 (Ampere) or newer.

    Raises:
        RecipeError: a target in `compute_capabilities` ("8.6", ...) is too old for `mode`.
    """
    ccs = [str(c) for c in compute_capabilities or []]
    need = {"fp8": (8, 9), "bf16": (8, 0)}.get(mode)
    low = [c for c in ccs if need and _cc(c) < need]
    if low:
        what = {"fp8": "FP8 tensor cores (Ada 8.9, Blackwell 12.x)", "bf16": "BF16 (Ampere 8.0 or newer)"}[mode]
        raise RecipeError(
            f"{where_prefix(locate, ('precision',))}precision {mode} needs {what}, but build.compute_capabilities "
            f"includes {', '.join(low)}", hint=f"drop {', '.join(low)} from build.compute_capabilities or use "
            + ("int8 or fp16" if mode == "fp8" else "fp16") + " for those targets")


def where_prefix(locate: Locate | None, path: tuple) -> str:
    """'recipe.yaml:12:3: ' for a key path, or '' without a locator."""
    return f"{locate(path)}: " if locate else ""


def _cc(text: str) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)
