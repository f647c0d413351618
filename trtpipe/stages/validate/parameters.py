"""Inputs validation cannot make random data for, and the values the recipe gives instead.

* Parameter inputs (trtpipe/graph/inputs.py `parameter_inputs`): graph inputs whose values act as
  shapes or attributes (Reshape's `shape`, Slice's `steps`, TopK's `K`, Pad's `pads`, a Reduce op's
  `axes`, ...). Random values there are meaningless or invalid ("'step' value cannot be 0"), so
  validation asks for them: `validate.data.inputs.<name>.value` or `validate.data.npz`.
* Types validation cannot feed at all: bfloat16, float8, int4, float4 (numpy kind 'V', from
  ml_dtypes: ONNX Runtime's Python API takes no such arrays) and strings (Polygraphy's ONNX Runtime
  runner refuses them; TensorRT has no strings either). Validation cannot run (exit code 10).

In `build.profiles`, a parameter input that TensorRT takes as a shape tensor is given min/opt/max
VALUES, not shapes (IOptimizationProfile.set_shape_input): validation's profile corners, which are
shapes, leave such entries out, and the comparison runs at the given value.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtpipe.errors import ValidationError, ValidationNotRunError
from trtpipe.graph.inputs import parameter_inputs

Spec = tuple[np.dtype, list]  # (numpy dtype, dims; None for a dynamic dim), as data.model_io gives


def find_parameters(model_path: str | Path) -> dict[str, list[str]]:
    """Parameter inputs of an ONNX file ({input: ["operand 'K' of a TopK node", ...]}); the graph
    is read, its weights are not."""
    return parameter_inputs(onnx.load(str(model_path), load_external_data=False))


def check_feedable(source_inputs: dict[str, Spec], per_input: dict[str, dict], parameters: dict[str, list[str]],
                   from_npz: bool, loc: Callable[..., str]) -> None:
    """Refuse inputs no data can be made for (module docstring).

    Args:
        source_inputs: the source model's inputs.
        per_input: `validate.data.inputs` keyed by source input name.
        parameters: the parameter inputs (find_parameters).
        from_npz: the data comes from `validate.data.npz` (it gives every input's values).
        loc: recipe key path under `validate.data` -> "file:line:col: " prefix.

    Raises:
        ValidationNotRunError: a bfloat16/float8/int4/float4 or string input; a parameter input
            without given values. The message names the input, its type and what it feeds, and the
            hint the way out.
    """
    for name, (dtype, dims) in source_inputs.items():
        if dtype.kind == "V":
            raise ValidationNotRunError(
                f"{loc('inputs', name)}source input '{name}' is {dtype.name}: ONNX Runtime's Python API (which "
                f"validation runs both models through) takes no {dtype.name} arrays, so no data can be fed to it, "
                f"random or from validate.data.npz",
                hint="validate a variant of the model whose input is float32 (a Cast after the input), or build "
                     "without validation (--no-validate: the report then says NOT VALIDATED)")
        if dtype.kind == "O":
            raise ValidationNotRunError(
                f"{loc('inputs', name)}source input '{name}' is a string tensor: Polygraphy's ONNX Runtime runner "
                f"(which validation runs both models through) takes no string arrays, so no data can be fed to it, "
                f"random, given or from validate.data.npz; TensorRT has no string tensors either",
                hint="do the string processing outside the engine and export the model from its first numeric "
                     "tensor on, or build without validation (--no-validate: the report then says NOT VALIDATED; "
                     "the parser will refuse the string input)")
        if from_npz or "value" in per_input.get(name, {}) or 0 in dims:
            continue  # a fixed zero-size dimension: the empty tensor is the only value there is
        way_out = (f"give its values as validate.data.inputs.{name}.value (used in every iteration), or in "
                   f"validate.data.npz (an array named '{name}' beside one per other input; iterations along an "
                   f"extra leading axis)")
        if name in parameters:
            raise ValidationNotRunError(
                f"{loc('inputs', name)}source input '{name}' ({dtype.name} {dims}) is a parameter: it feeds "
                f"{', '.join(parameters[name])}, whose values act as shapes or attributes, so random values are "
                f"meaningless or invalid and validation needs the values the model will run with",
                hint=f"{way_out}; to build it, TensorRT needs such an input as a constant (initializer) or, as a "
                     f"shape tensor, its min/opt/max values in build.profiles")


def given_value(name: str, value: Any, dtype: np.dtype, dims: list, where: str) -> np.ndarray:
    """`validate.data.inputs.<name>.value` as an array of the input's type and shape (a scalar
    fills a one-element 1-D input, e.g. TopK's K of shape [1]).

    Raises:
        ValidationError: the value cannot be cast to the input's type or does not fit its shape.
    """
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValidationError(f"{where}validate.data.inputs.{name}.value: cannot be {dtype.name}: {err}") from err
    if arr.ndim == 0 and len(dims) == 1 and dims[0] in (None, 1):
        arr = arr.reshape(1)
    if arr.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims, arr.shape)):
        raise ValidationError(f"{where}validate.data.inputs.{name}.value: has shape {list(arr.shape)}, but source "
                              f"input '{name}' takes {dims} (None: any size)")
    return arr


def describe_value(arr: np.ndarray) -> Any:
    """A given value as the report shows it: the values when there are at most 64 numbers, else a count."""
    return arr.tolist() if arr.size <= 64 and arr.dtype.kind in "biuf" else f"{arr.size} given values"


def _final_names(parameters: dict[str, list[str]], contract: dict[str, dict]) -> set[str]:
    """The parameter inputs under their source and their final names."""
    return set(parameters) | {f for f, e in contract.items() if e.get("source_input") in parameters}


def shape_profiles(profiles: list[dict] | None, parameters: dict[str, list[str]],
                   contract: dict[str, dict]) -> tuple[list[dict], list[str]]:
    """`build.profiles` without the entries of parameter inputs (their min/opt/max are values for
    TensorRT, not shapes; the profile corners validation compares at are shapes).

    Returns:
        (the profiles to take corners of, one note per parameter input a profile gives values for:
        validation compares at its given value only).
    """
    names = _final_names(parameters, contract)
    kept, notes = [], []
    for prof in profiles or []:
        for name, dims in prof["inputs"].items():
            if name in names:
                notes.append(f"parameter input '{name}' is compared at its given value only; profile "
                             f"'{prof['name']}' lets the plan take values {dims['min']} to {dims['max']}")
        kept.append(dict(prof, inputs={n: d for n, d in prof["inputs"].items() if n not in names}))
    return kept, notes


def keep_values(corner_data: dict, data_cfg: dict, contract: dict[str, dict]) -> dict:
    """A profile corner's `validate.data` (corners.data_config) with the recipe's given values
    (`validate.data.inputs.<name>.value`) put back: a parameter input takes the same values at
    every corner."""
    given = {}
    for key, spec in (data_cfg.get("inputs") or {}).items():
        if "value" in spec:
            entry = contract.get(key) or {}
            given[entry.get("source_input") or key] = spec["value"]
    if not given:
        return corner_data
    inputs = {n: dict(s) for n, s in (corner_data.get("inputs") or {}).items()}
    for name, value in given.items():
        inputs[name] = {**inputs.get(name, {}), "value": value}
    return {**corner_data, "inputs": inputs}
