"""Does a comparison prove anything? Outputs that agree show the final model computes what the
source model computes only if they could have come out differently.

The rules (the *reference* side of a comparison is the source model in `source-ort vs final-ort`,
the final model in `engine vs final-ort`):

* An output is **uninformative** when, in the reference run,
  - it has no element, or holds only NaN;
  - it is identically zero (every element of every iteration);
  - it is constant: every element of every iteration holds the same value, to 6 significant digits
    (max - min <= 1e-6 * max |value|), e.g. the softmax of a random classifier, 0.001 everywhere:
    a model that ignores its input would match it;
  - it is the same in every iteration (2 or more iterations, element by element to 6 significant
    digits): it does not depend on the input, so matching it cannot show the final model does.
  A compared output that passed but is uninformative gets the status "inconclusive"; one that
  failed stays failed (a difference is a difference).
* The detections (after `nms: split`) are uninformative when the source model kept no detection
  (above `min_score`) on any image: there is nothing to match.
* An input's data does not **exercise** its declared range (`validate.data.inputs.<name>.range`
  [lo, hi]) when the values fed to that source input, over all iterations, cover less than 90% of
  it: (min(data max, hi) - max(data min, lo)) / (hi - lo) < 0.9. Inputs without a declared range
  are not checked.
* The validation as a whole is **inconclusive** when nothing failed but no comparison passed on an
  informative output (nor did the detections), or some declared input range is not exercised, or
  a final output depends on a TensorRT plugin (engine only, validate/plugin_cut.py) and no engine
  comparison checked it.
  `validate.require_informative: true` turns that into a failure (exit code 6).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trtpipe.stages.validate.wording import EXPLAIN, RULE  # noqa: F401 -- used and re-exported

REL_EPS = 1e-6     # "the same value": equal to 6 significant digits
MIN_COVERAGE = 0.9  # share of a declared input range the data must span
# What the validation table and report.md say under each comparison (Polygraphy's SimpleCompareFunc rule).


def output_verdict(arrays: Sequence[Any], runner: str = "the reference run") -> str | None:
    """Why one output's reference values (one array per iteration) prove nothing, or None when
    they are informative (see the module docstring). Non-numeric outputs are not judged (None)."""
    arrays = [np.asarray(a) for a in arrays]
    if not arrays or any(a.dtype.kind not in "biuf" for a in arrays):
        return None
    total = sum(a.size for a in arrays)
    where = f"{runner} ({len(arrays)} iteration(s))"
    if total == 0:
        return f"empty in every iteration of {where}: nothing to compare"
    values = [a.astype(np.float64, copy=False).ravel() for a in arrays]
    finite_or_inf = [v[~np.isnan(v)] for v in values]
    if not any(v.size for v in finite_or_inf):
        return f"only NaN in {where}"
    lo = min(v.min() for v in finite_or_inf if v.size)
    hi = max(v.max() for v in finite_or_inf if v.size)
    eps = REL_EPS * max(abs(lo), abs(hi)) if np.isfinite(lo) and np.isfinite(hi) else 0.0
    if (hi - lo <= eps) if eps else lo == hi:
        if hi == 0:
            return f"identically zero: all {total} values are 0 in {where}"
        return (f"constant: all {total} values are {lo:.6g} in {where}; a model that ignores its input "
                f"would match it")
    if len(arrays) >= 2 and len({a.shape for a in arrays}) == 1:
        spread = max(float(np.nanmax(np.abs(v - values[0]), initial=0.0)) for v in values[1:])
        scale = max(abs(lo), abs(hi))
        if np.isfinite(scale) and spread <= REL_EPS * scale:
            return (f"the same in all {len(arrays)} iterations of {runner}: it does not depend on the "
                    f"input")
    return None


def output_verdicts(reference: Mapping[str, Sequence[Any]], runner: str) -> dict[str, str | None]:
    """{output: output_verdict(its reference arrays)} for each output of `reference`
    ({output: [array per iteration]})."""
    return {name: output_verdict(arrays, runner) for name, arrays in reference.items()}


def mark_outputs(entries: list[dict[str, Any]], verdicts: Mapping[str, str | None]) -> None:
    """Record the verdicts in a comparison's output entries (keyed by `entry["output"]`), in place:
    `informative` (bool) on every judged entry; a passed but uninformative entry becomes
    "inconclusive" with the reason; a failed one stays failed."""
    for entry in entries:
        if entry["output"] not in verdicts or entry["status"] not in ("passed", "failed"):
            continue
        why = verdicts[entry["output"]]
        entry["informative"] = why is None
        if why is not None and entry["status"] == "passed":
            entry["status"] = "inconclusive"
            entry["reason"] = f"uninformative: {why}" + (f"; {entry['reason']}" if entry.get("reason") else "")


def comparison_status(entries: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """(status, reason) of one comparison from its output entries: "failed" when an output failed,
    "passed" when an informative output passed, "inconclusive" when outputs were compared but none
    is informative, "skipped" when nothing was compared."""
    failed = [e["output"] for e in entries if e["status"] == "failed"]
    if failed:
        return "failed", f"{len(failed)} output(s) failed: " + ", ".join(failed)
    if any(e["status"] == "passed" for e in entries):
        return "passed", None
    doubtful = [e for e in entries if e["status"] == "inconclusive"]
    if doubtful:
        return "inconclusive", ("every compared output is uninformative: "
                                + "; ".join(f"'{e['output']}' {_why(e)}" for e in doubtful))
    return "skipped", "no output could be compared (every output is skipped or has no counterpart)"


def _why(entry):
    return (entry.get("reason") or "").removeprefix("uninformative: ")


def judge_detections(summary: dict[str, Any]) -> None:
    """Detections (detections.compare_detections' summary), in place: a passed comparison in
    which the source kept no detection at all becomes "inconclusive", with the reason."""
    summary["informative"] = bool(summary.get("source_detections"))
    if not summary["informative"] and summary.get("status") == "passed":
        summary["status"] = "inconclusive"
        summary["reason"] = (f"uninformative: the source model kept no detection (score > "
                             f"{summary.get('min_score', 0.0):g}) on any of the {summary.get('images', 0)} "
                             f"image(s); nothing to match")


def input_coverage(feeds: Sequence[Mapping[str, Any]], data_cfg: Mapping[str, Any],
                   contract: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """How much of each declared input range the data fed to the source model spans.

    Args:
        feeds: the source model's feeds ({source input: array}, one per iteration).
        data_cfg: the resolved `validate.data` (its `inputs.<name>.range` are the declared ranges).
        contract: the input contract, so a key naming a final input finds its source input.

    Returns:
        {recipe key: {"input": source input, "declared": [lo, hi], "observed": [min, max],
        "coverage": share of [lo, hi] between min and max (0..1), "exercised": coverage >= 0.9,
        "reason": why not (None when exercised)}} for the inputs with a declared range.
    """
    out: dict[str, dict[str, Any]] = {}
    present = set(feeds[0]) if feeds else set()
    for key, spec in (data_cfg.get("inputs") or {}).items():
        if not isinstance(spec, Mapping) or spec.get("range") is None:
            continue
        name = key if key in present else ((contract or {}).get(key) or {}).get("source_input")
        if name not in present:
            continue
        lo, hi = (float(v) for v in spec["range"])
        arrays = [np.asarray(f[name], dtype=np.float64) for f in feeds if name in f]
        values = [a[~np.isnan(a)] for a in arrays if a.size]
        values = [v for v in values if v.size]
        if not values:
            seen, coverage = None, 0.0
        else:
            seen = [float(min(v.min() for v in values)), float(max(v.max() for v in values))]
            if hi > lo:
                coverage = max(0.0, min(seen[1], hi) - max(seen[0], lo)) / (hi - lo)
            else:  # a single declared value: exercised when fed
                coverage = 1.0 if seen[0] <= lo <= seen[1] else 0.0
        ok = coverage >= MIN_COVERAGE
        span = f"[{seen[0]:.4g}, {seen[1]:.4g}]" if seen else "no number"
        out[key] = {"input": name, "declared": [lo, hi], "observed": seen, "coverage": round(coverage, 4),
                    "exercised": ok,
                    "reason": None if ok else (
                        f"the data fed to source input '{name}' spans {span}, {coverage:.0%} of the declared range "
                        f"[{lo:g}, {hi:g}] (validate.data.inputs.{key}.range); at least {MIN_COVERAGE:.0%} needed")}
    return out


def doubts(result: Mapping[str, Any]) -> list[str]:
    """Why a validation result in which nothing failed proves nothing (empty: it proves something).

    `result` is validate_models' dict: `comparisons` with statuses as comparison_status gives them,
    `detections` after judge_detections, and `data.coverage` as input_coverage gives it."""
    comps = [c for c in result.get("comparisons", []) if c.get("status") != "skipped"]
    dets = result.get("detections")
    found = []
    passed = any(c["status"] == "passed" for c in comps) or (dets and dets["status"] == "passed")
    if (comps or dets) and not passed:
        whys = [f"{c['name']}: {c['reason']}" for c in comps if c["status"] == "inconclusive" and c.get("reason")]
        if dets and dets["status"] == "inconclusive":
            whys.append(f"detections: {_why(dets)}")
        found += whys or ["nothing compared is informative"]
    # a shape the plan accepts but no comparison could run at (corners.py): not proven there
    found += [f"{c['name']}: {c['reason']}" for c in comps if c.get("uncompared")]
    # an output the plan produces that nothing checked (no source counterpart, not skipped with a reason)
    unverified = dict.fromkeys(e["output"] for c in result.get("comparisons", []) for e in c.get("outputs") or []
                               if e.get("unverified"))
    found += [f"final output '{name}' corresponds to no source output or tensor, so nothing checked it; map it "
              f"with validate.output_map or skip it with a reason under validate.skip" for name in unverified]
    # outputs that depend on a TensorRT plugin ONNX Runtime cannot run (validate/plugin_cut.py): only the
    # engine can check them, against the source; where it did not, they are unproven
    engine_checked = {e["output"] for c in result.get("comparisons", []) for e in c.get("outputs") or []
                      if e.get("engine_checked") and e["status"] in ("passed", "failed", "inconclusive")}
    engine_only = dict.fromkeys(e["output"] for c in result.get("comparisons", []) for e in c.get("outputs") or []
                                if e.get("engine_only") and e["output"] not in engine_checked)
    found += [f"final output '{name}' is engine only (it depends on a TensorRT plugin that ONNX Runtime cannot "
              f"run) and the engine did not run here, so nothing checked it; what reaches the plugin was compared"
              for name in engine_only]
    for cov in ((result.get("data") or {}).get("coverage") or {}).values():
        if not cov.get("exercised", True):
            found.append(cov["reason"])
    return found


def partly_uninformative(result: Mapping[str, Any]) -> str | None:
    """A note for a passed result some of whose compared outputs are uninformative, else None."""
    names = []
    for comp in result.get("comparisons", []):
        names += [e["output"] for e in comp.get("outputs") or [] if e.get("informative") is False
                  and e["output"] not in names]
    return (f"uninformative output(s), not counted as evidence: {', '.join(repr(n) for n in names)}"
            if names else None)


def required(result: Mapping[str, Any]) -> bool:
    """Whether `validate.require_informative` was set for this result (recorded by each comparison)."""
    return any(c.get("require_informative") for c in result.get("comparisons", []))
