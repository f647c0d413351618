"""Validation over every shape a plan accepts: each optimization profile's min, opt and max.

A plan runs at every shape between a profile's min and max, so comparing the models only at the
export shape lets a graph that is right at batch 1 and wrong at batch 4 pass (a `tf.map_fn` Loop
whose trip count stayed baked in, `dynamic_batch` notes "could not rewrite"). For each distinct
corner of each profile (`build.profiles`, shapes of the final model's inputs), seeded random data
in the recipe's ranges is generated for the source inputs at the matching shape; the source model
runs on it (in slices of its own batch, outputs concatenated along axis 0, when the source was
exported with a fixed batch the corner exceeds) and the final model on the same data through the
input contract.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np

PROFILE_KEYS = ("min", "opt", "max")


@dataclasses.dataclass
class Corner:
    """One shape to validate at.

    label: e.g. "profile b1to4 max"; final_shapes: {final input: shape}; source_shapes: {source
    input: shape of ONE source run}; slices: how many source runs (each `source_shapes`) make the
    corner's batch (1: the source runs the corner shape as is); problem: why this corner cannot be
    compared (then nothing else is set)."""

    label: str
    final_shapes: dict = dataclasses.field(default_factory=dict)
    source_shapes: dict = dataclasses.field(default_factory=dict)
    slices: int = 1
    problem: str | None = None


def profile_corners(profiles: list[dict] | None, contract: dict[str, dict],
                    source_inputs: dict[str, tuple], final_inputs: dict[str, tuple],
                    compared: dict[str, list[int]] | None = None) -> list[Corner]:
    """The distinct profile corners to validate at, in profile order (min, opt, max).

    Args:
        profiles: `build.profiles` ([{name, inputs: {final input: {min, opt, max}}}]).
        contract: the input contract ({final input: {source_input, steps, ...}}).
        source_inputs / final_inputs: {name: (numpy dtype, dims)} of each model (dims: int or None).
        compared: {final input: shape} the main comparison already ran at (that corner is skipped).

    Returns:
        Corners; one whose shapes cannot be derived (a reshape in the contract, an input cut from
        inside the source, a non-batch dimension the fixed-shape source cannot take) carries a
        `problem` instead.
    """
    corners, seen = [], set()
    if compared:
        seen.add(tuple(sorted((k, tuple(v)) for k, v in compared.items())))
    for profile in profiles or []:
        for key in PROFILE_KEYS:
            final_shapes = {name: list(dims[key]) for name, dims in profile["inputs"].items()}
            for name, (_, dims) in final_inputs.items():
                if name not in final_shapes and all(isinstance(d, int) and d > 0 for d in dims):
                    final_shapes[name] = list(dims)
            ident = tuple(sorted((k, tuple(v)) for k, v in final_shapes.items()))
            if ident in seen:
                continue
            seen.add(ident)
            corners.append(_corner(f"profile {profile['name']} {key}", final_shapes, contract, source_inputs,
                                   final_inputs))
    return corners


def _corner(label, final_shapes, contract, source_inputs, final_inputs):
    wanted = {}
    for final, shape in final_shapes.items():
        entry = contract.get(final)
        if final not in final_inputs:
            return Corner(label, problem=f"'{final}' is not an input of the final model {list(final_inputs)}")
        if entry is None or not entry.get("source_input"):
            origin = "a tensor inside the source model" if entry else "no source input"
            return Corner(label, problem=f"final input '{final}' is derived from {origin}; its data at "
                                         f"{shape} cannot be generated")
        rank = len(final_inputs[final][1]) if final in final_inputs else None
        if rank is not None and len(shape) != rank:
            return Corner(label, problem=f"the profile gives final input '{final}' rank {len(shape)} {shape}, "
                                         f"but it has rank {rank}")
        source_shape = source_layout(shape, entry.get("steps") or [])
        if source_shape is None:
            return Corner(label, problem=f"the input contract of '{final}' reshapes its data; the source "
                                         f"shape for {shape} is unknown")
        wanted[entry["source_input"]] = source_shape
    missing = [n for n, (_, dims) in source_inputs.items()
               if n not in wanted and not all(isinstance(d, int) and d > 0 for d in dims)]
    if missing:
        return Corner(label, problem=f"source input(s) {missing} have dynamic shapes no profile gives")
    for name, (_, dims) in source_inputs.items():
        wanted.setdefault(name, list(dims))
    slices = {}
    per_run = {}
    for name, shape in wanted.items():
        dims = source_inputs[name][1]
        fixed = [d if isinstance(d, int) and d > 0 else None for d in dims]
        if len(fixed) != len(shape):
            return Corner(label, problem=f"source input '{name}' has rank {len(fixed)}, the profile gives {shape}")
        rest_ok = all(f is None or f == s for f, s in zip(fixed[1:], shape[1:]))
        if not rest_ok:
            return Corner(label, problem=f"the source model takes '{name}' as {dims}, which cannot be run at "
                                         f"{shape}: only the batch (first) dimension can be split into runs")
        if fixed and fixed[0] is not None and fixed[0] != shape[0]:
            if shape[0] % fixed[0]:
                return Corner(label, problem=f"batch {shape[0]} of '{name}' is not a multiple of the source "
                                             f"model's fixed batch {fixed[0]}")
            slices[name] = shape[0] // fixed[0]
            per_run[name] = [fixed[0], *shape[1:]]
        else:
            slices[name] = 1
            per_run[name] = list(shape)
    counts = set(slices.values())
    if len(counts) > 1:
        return Corner(label, problem=f"the source inputs need different numbers of runs {slices}")
    return Corner(label, final_shapes, per_run, counts.pop() if counts else 1)


def source_layout(final_shape: list[int], steps: list[dict]) -> list[int] | None:
    """The source-side shape whose data the contract `steps` turn into `final_shape`; None when a
    step (reshape) makes that unknowable. Transpose steps are inverted; casts and elementwise
    arithmetic keep shapes."""
    shape = list(final_shape)
    for step in reversed(steps):
        op = step.get("op")
        if op == "transpose":
            perm = step["perm"]  # final = np.transpose(source, perm): final.shape[k] = source.shape[perm[k]]
            source = [0] * len(perm)
            for k, p in enumerate(perm):
                source[p] = shape[k]
            shape = source
        elif op == "reshape" or (op == "transpose" and len(step["perm"]) != len(shape)):
            return None
    return shape


def data_config(corner: Corner, data_cfg: dict, seed: int, contract: dict[str, dict] | None = None) -> dict:
    """A `validate.data` mapping that generates `corner.slices` seeded random feeds at the corner's
    per-run source shapes, keeping the recipe's declared ranges and dtypes (declared under the
    source input's name or the final input's that the contract derives from it)."""
    declared = {}
    for key, spec in (data_cfg.get("inputs") or {}).items():
        entry = (contract or {}).get(key)
        declared[entry["source_input"] if entry and entry.get("source_input") else key] = spec
    inputs = {}
    for name, shape in corner.source_shapes.items():
        spec = {k: v for k, v in (declared.get(name) or {}).items() if k in ("range", "dtype")}
        inputs[name] = {**spec, "shape": shape}
    return {"seed": seed, "iterations": corner.slices, "inputs": inputs}


def concat_feeds(feeds: list[OrderedDict]) -> OrderedDict:
    """The source feeds of one corner as one batch: each input concatenated along axis 0."""
    if len(feeds) == 1:
        return feeds[0]
    return OrderedDict((name, np.concatenate([f[name] for f in feeds], axis=0)) for name in feeds[0])


def concat_outputs(iterations: list, batch: int) -> tuple[OrderedDict, dict[str, str]]:
    """Source outputs of the per-slice runs joined along axis 0, and {output: why not} for those
    that cannot be: only an output whose first dimension is the source's batch (`batch`, the size of
    one run) is batch-major; a scalar, or an output with the batch elsewhere or reduced away, has
    no axis to join, and comparing a guess would fail (or pass) for the wrong reason."""
    if len(iterations) == 1:
        return OrderedDict(iterations[0].items()), {}
    joined, unassembled = OrderedDict(), {}
    for name in iterations[0].keys():
        parts = [np.asarray(it[name]) for it in iterations]
        if parts[0].ndim == 0 or parts[0].shape[0] != batch:
            unassembled[name] = (f"not compared at this corner: the source's output {list(parts[0].shape)} has no "
                                 f"batch axis of size {batch} first, so its {len(parts)} single-batch runs cannot "
                                 f"be joined into one batch")
            continue
        joined[name] = np.concatenate(parts, axis=0)
    return joined, unassembled
