"""Running models in ONNX Runtime and comparing their outputs, for validation and bisect.

Both compare a candidate run against a reference run (the source model's) with Polygraphy:
OnnxrtRunner through `Comparator.run`, `SimpleCompareFunc` + `Comparator.compare_accuracy` per
output with validation's tolerances (an output passes when its error statistic is within atol OR
within rtol relative to the reference), `Comparator.validate` for NaN/Inf. Outputs are described
by entries ({output, source_output, status, reason, ...}, JSON-able) that the comparison fills in.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.comparator import Comparator, SimpleCompareFunc

from trtpipe.errors import ValidationNotRunError, suggest
from trtpipe.stages.validate import detections as det
from trtpipe.stages.validate import informative
from trtpipe.stages.validate.data import graph_summary, quiet_polygraphy
from trtpipe.stages.validate.finite import same_nonfinite_agrees
from trtpipe.stages.validate.plugin_cut import session_loader

# Runner names: they label comparisons ("source-ort vs final-ort") and the runs' results.
SOURCE, FINAL, ENGINE, POST = "source-ort", "final-ort", "engine", "postprocess-ort"

Tolerance = dict[str, Any]  # {"atol", "rtol", "statistic", "quantile"}


# -- running ---------------------------------------------------------------------------------------

def run_ort(model_path: str | Path, name: str, feeds: Sequence[dict[str, np.ndarray]],
            outputs: Sequence[str] | None = None, optimize: bool = True, custom_ops: Sequence[str] = ()) -> Any:
    """Run a model in ONNX Runtime through Polygraphy on every feed.

    Args:
        model_path: the .onnx file.
        name: the runner's name (SOURCE, FINAL, a pass label, ...).
        feeds: one {input name: array} per iteration.
        outputs: also read these tensors inside the graph (Polygraphy marks them as outputs).
        optimize: False turns ONNX Runtime's graph optimizations off (fp8 Q/DQ would be fused
            into QLinearConv, which has no fp8 kernel).
        custom_ops: ONNX Runtime custom-op libraries to register (validate.ort_custom_ops: the
            final model's TensorRT plugin ops; plugin_cut.py).

    Returns:
        Polygraphy's RunResults: {name: [one IterationResult per feed]}.

    Raises:
        ValidationNotRunError: ONNX Runtime could not load or run the model (names it; keeps the
            cause): validation could not run, exit code 10.
    """
    model = str(model_path)
    if outputs:
        from polygraphy.backend.onnx import BytesFromOnnx, ModifyOutputs, OnnxFromPath
        model = BytesFromOnnx(ModifyOutputs(OnnxFromPath(model), outputs=outputs))
    try:
        with quiet_polygraphy():
            import onnxruntime
            level = None if optimize else onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
            session = (session_loader(model, level, custom_ops) if custom_ops
                       else SessionFromOnnx(model, graph_optimization_level=level))
            return Comparator.run([OnnxrtRunner(session, name=name)], data_loader=feeds)
    except Exception as err:  # ORT or Polygraphy: name the model, keep the cause
        raise ort_failure(name, model_path, err) from err


_ORT_NOISE = (re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : "), re.compile(r"Load model from \S+ failed:\s*"),
              re.compile(r"/onnxruntime_src/\S+:\d+ [^)]*\)\s*(const\s*)?"))


def ort_failure(name: str, model_path: str | Path, err: BaseException) -> ValidationNotRunError:
    """The error for a model ONNX Runtime could not load or run: validation could not run (exit
    code 10), not outputs that disagree. Names the runner and model, says whether ONNX Runtime
    lacks an op/type or failed on the data, and keeps its message (without its C++ source paths).

    Args:
        name: the runner (SOURCE, FINAL, a pass label).
        model_path: the model ONNX Runtime was given.
        err: what ONNX Runtime (or Polygraphy) raised.
    """
    text = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
    for rx in _ORT_NOISE:
        text = rx.sub("", text)
    try:
        import onnxruntime
        label = f"ONNX Runtime {onnxruntime.__version__}"
    except ImportError:
        label = "ONNX Runtime"
    if re.search(r"not a registered function/op|Could not find an implementation|NOT_IMPLEMENTED", str(err)):
        why = f"{label} has no implementation of an op or type in it"
    elif "while running" in str(err):
        why = f"{label} failed while running it on the validation data"
    else:
        why = f"{label} could not load it"
    return ValidationNotRunError(
        f"{name}: validation could not run: {why}: {model_path}: {text}",
        hint="nothing was compared. If the data is what the model cannot take, give values it accepts "
             "(validate.data.npz, validate.data.inputs.<name>.range or .value); if ONNX Runtime lacks the op, "
             "build without validation (--no-validate: the report then says NOT VALIDATED)")


def inner_tensors(model_path: str | Path) -> set[str]:
    """Names of the tensors a model's main graph computes (weights are not read): what `run_ort`
    can expose as extra outputs."""
    return set(graph_summary(model_path)[1])


# -- what is compared with what --------------------------------------------------------------------

def tolerance(cfg: Mapping[str, Any], defaults: Mapping[str, Any], name: str,
              source_name: str | None = None) -> Tolerance:
    """The tolerances of one output: `validate.outputs.<final or source name>`, else `defaults`."""
    per = cfg["outputs"].get(name) or cfg["outputs"].get(source_name) or {}
    return {k: per.get(k, defaults[k]) for k in ("atol", "rtol", "statistic", "quantile")}


def skip_reason(cfg: Mapping[str, Any], final_name: str, source_name: str) -> str | None:
    """Why `validate.skip` skips an output (by its final or its source name), or None."""
    return cfg["skip"].get(final_name) or cfg["skip"].get(source_name)


def pair_outputs(cfg: Mapping[str, Any], fin_out: Collection[str], comparable: Collection[str],
                 omap: Mapping[str, str], postprocess: Mapping[str, Any] | None, *, feeds_postprocess: str,
                 unmatched: Callable[[str], str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Pair each candidate output with the reference tensor it is compared against.

    Args:
        cfg: the resolved `validate` section (`skip`).
        fin_out: the candidate model's output names.
        comparable: reference tensors that can be compared (outputs, exposed inner tensors).
        omap: {candidate output: source name} (outputs not in it keep their name).
        postprocess: `ctx.postprocess` after `nms: split`, or None.
        feeds_postprocess: the reason given to an output that only feeds the post-processing model.
        unmatched: source name -> the reason given to an output nothing corresponds to.

    Returns:
        ({candidate output: reference tensor} to compare, one entry per candidate output:
        {output, source_output, status ("pending" when paired, else "skipped"), reason}).
    """
    pp_inputs = set((postprocess or {}).get("inputs", {}).values())
    pairs, entries = {}, []
    for f in fin_out:
        s = omap.get(f, f)
        entry = {"output": f, "source_output": s if s in comparable else None, "status": "skipped", "reason": None}
        why = skip_reason(cfg, f, s)
        if why:
            entry["reason"] = f"skipped by validate.skip: {why}"
        elif s in comparable:
            pairs[f] = s
            entry["status"] = "pending"
        elif f in pp_inputs:
            entry["reason"] = feeds_postprocess
        else:
            entry["reason"] = unmatched(s)
        entries.append(entry)
    return pairs, entries


def plan_outputs(cfg: Mapping[str, Any], fin_out: Collection[str], src_out: Collection[str],
                 omap: Mapping[str, str], postprocess: Mapping[str, Any] | None,
                 cut: Collection[str] = ()) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Validation's pairs final output -> source output (or `cut`: a source tensor inside the
    graph) to compare, and one entry per output of either model saying what happens to it."""
    pairs, entries = pair_outputs(
        cfg, fin_out, set(src_out) | set(cut), omap, postprocess,
        feeds_postprocess="not a source output; feeds the post-processing model (see detections)",
        unmatched=lambda s: (f"not compared: the source model has no output '{s}'{suggest(s, src_out, cutoff=0.5)}; "
                             "map it with validate.output_map if a pass renamed it"))
    for e in entries:  # a final output the source has no counterpart for: the plan computes it unverified
        if e["output"] in fin_out and e["status"] == "skipped" and e["reason"].startswith("not compared: the source"):
            e["unverified"] = True
    pp_outputs = set((postprocess or {}).get("outputs", {}).values())
    mapped = {omap.get(f, f) for f in fin_out}
    for s in src_out:
        if s not in mapped:
            after = ("the split (compared below, final-ort + postprocess-ort)" if (postprocess or {}).get("kind")
                     == "outputs" else "`nms: split` (see detections)")
            why = (f"produced by the post-processing model after {after}" if s in pp_outputs
                   else "not compared: not an output of the final model (a pass cut or renamed it; "
                        "map it with validate.output_map)")
            entries.append({"output": s, "source_output": s, "status": "skipped", "reason": why})
    return pairs, entries


# -- comparing -------------------------------------------------------------------------------------

def exact_for_integers(tols: dict[str, Tolerance], pairs: Mapping[str, str], ref_run: Any,
                       cfg: Mapping[str, Any]) -> dict[str, Tolerance]:
    """`tols` with atol = rtol = 0 for integer and bool outputs (class ids, indices, masks, counts):
    a float tolerance meant for scores would let a wrong index pass. Per-output settings still win."""
    ref_first = list(ref_run.values())[0][0]
    out = dict(tols)
    for f, s in pairs.items():
        explicit = cfg["outputs"].get(f) or cfg["outputs"].get(s) or {}
        if np.asarray(ref_first[s]).dtype.kind in "biu":
            out[f] = {**tols[f], "atol": explicit.get("atol", 0.0), "rtol": explicit.get("rtol", 0.0)}
    return out


def accuracy(cand_run: Any, ref_run: Any, pairs: Mapping[str, str],
             tols: Mapping[str, Tolerance]) -> list[dict[str, Any]]:
    """Polygraphy's SimpleCompareFunc with per-output tolerances, the second run the reference.

    Returns:
        Per iteration, {candidate output: OutputCompareResult, or False/None when the shapes differ}.
    """
    func = SimpleCompareFunc(
        check_shapes=True, atol={f: t["atol"] for f, t in tols.items()},
        rtol={f: t["rtol"] for f, t in tols.items()},
        check_error_stat={f: t["statistic"] for f, t in tols.items()},
        error_quantile={f: t["quantile"] for f, t in tols.items()},
        find_output_func=lambda out, index, iter_result: [pairs[out]] if out in pairs else None)
    # Relative errors of exact zeros, bools and empty outputs divide by zero inside Polygraphy and
    # numpy: the statistics come out inf/nan (reported as such), the RuntimeWarnings are noise.
    with quiet_polygraphy(), np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cand_run, ref_run = same_nonfinite_agrees(cand_run, ref_run, pairs)
        result = Comparator.compare_accuracy([cand_run, ref_run], compare_func=func)[0]
    return list(result.values())[0]


def shapes_differ(results: Sequence[Any]) -> bool:
    """Whether an output's per-iteration results (accuracy()) mean the shapes differ (Polygraphy
    gives False or nothing instead of statistics)."""
    return any(isinstance(r, bool) or r is None for r in results)


def first_shapes(cand_run: Any, ref_run: Any, cand_name: str, ref_name: str) -> tuple[list[int], list[int]]:
    """The shapes of one output in the first iteration of the candidate and the reference run."""
    return (list(np.shape(list(cand_run.values())[0][0][cand_name])),
            list(np.shape(list(ref_run.values())[0][0][ref_name])))


def worst_errors(results: Sequence[Any], statistic: str) -> dict[str, Any]:
    """The worst errors of one output over its iterations: max_abs, max_rel, and the chosen
    statistic's value (abs) and value_rel; NaN/Inf as strings (JSON)."""
    worst = lambda field: max((getattr(r, field) for r in results), key=order)  # noqa: E731
    return {"max_abs": _num(worst("max_absdiff")), "max_rel": _num(worst("max_reldiff")),
            "value": _num(worst(f"{statistic}_absdiff")), "value_rel": _num(worst(f"{statistic}_reldiff"))}


def compare_outputs(name: str, cand_run: Any, ref_run: Any, pairs: Mapping[str, str],
                    entries: Sequence[Mapping[str, Any]], tol_for: Callable[..., Tolerance], cfg: Mapping[str, Any],
                    check: Sequence[Any] | None = None) -> dict[str, Any]:
    """One validation comparison: element-wise with Polygraphy (the second run is the reference),
    NaN/Inf checks, informativeness of what was compared (informative.py).

    Args:
        name: the comparison's name ("source-ort vs final-ort").
        cand_run, ref_run: RunResults (run_ort) of the candidate and the reference.
        pairs, entries: what plan_outputs() returned (the entries are copied, not changed).
        tol_for: (output, source name) -> its tolerances.
        cfg: the resolved `validate` section.
        check: the runs checked for NaN/Inf (default: both).

    Returns:
        {name, status, reason, iterations, outputs: the filled entries, require_informative}.
    """
    entries = [dict(e) for e in entries]
    by_output = {e["output"]: e for e in entries if e["status"] == "pending"}
    if pairs:
        tols = exact_for_integers({f: tol_for(f, s) for f, s in pairs.items()}, pairs, ref_run, cfg)
        iterations = accuracy(cand_run, ref_run, pairs, tols)
        for f, s in pairs.items():
            by_output[f].update(_summarize(f, s, tols[f], [it.get(f) for it in iterations], cand_run, ref_run))
    _check_finite(cfg, check or [cand_run, ref_run], entries)
    # Informativeness (informative.py): judged on the reference side's values of each compared output.
    runner, ref_iterations = list(ref_run.items())[0]
    informative.mark_outputs(entries, informative.output_verdicts(
        {f: [it[s] for it in ref_iterations] for f, s in pairs.items()}, runner))
    status, reason = informative.comparison_status(entries)
    return {"name": name, "status": status, "reason": reason, "iterations": len(list(cand_run.values())[0]),
            "outputs": entries, "require_informative": bool(cfg.get("require_informative"))}


def _summarize(f, s, tol, results, cand_run, ref_run):
    """One output across iterations: worst statistics, and why it failed."""
    out = {"statistic": tol["statistic"], "atol": tol["atol"], "rtol": tol["rtol"]}
    if tol["statistic"] == "quantile":
        out["quantile"] = tol["quantile"]
    if shapes_differ(results):
        shapes = first_shapes(cand_run, ref_run, f, s)
        return {**out, "status": "failed", "reason": f"shape {shapes[0]} differs from the reference's {shapes[1]}"}
    stat = tol["statistic"]
    out.update(worst_errors(results, stat))
    exact = exact_counts(cand_run, ref_run, f, s)
    if exact is not None:  # integer/bool outputs: a relative error means nothing there, a count does
        out["exact"] = exact
    if all(bool(r) for r in results):
        return {**out, "status": "passed", "reason": None, "bound": _bound(out)}
    return {**out, "status": "failed", "bound": None,
            "reason": f"{stat} abs error {fmt(out['value'])} > atol {tol['atol']:g} and {stat} rel error "
                      f"{fmt(out['value_rel'])} > rtol {tol['rtol']:g}"
                      + (f" (max abs {fmt(out['max_abs'])}, max rel {fmt(out['max_rel'])})" if stat != "max" else "")}


def exact_counts(cand_run: Any, ref_run: Any, cand_name: str, ref_name: str) -> dict[str, int] | None:
    """For an integer or bool output (compared exactly): {"equal": elements equal, "elements":
    elements compared}, summed over every iteration; None for float outputs or differing shapes."""
    refs = [np.asarray(it[ref_name]) for it in list(ref_run.values())[0]]
    cands = [np.asarray(it[cand_name]) for it in list(cand_run.values())[0]]
    if not refs or refs[0].dtype.kind not in "biu" or any(a.shape != b.shape for a, b in zip(cands, refs)):
        return None
    return {"equal": int(sum(np.count_nonzero(a == b) for a, b in zip(cands, refs))),
            "elements": int(sum(b.size for b in refs))}


def _bound(out):
    """Which bound a passed output held (Polygraphy: abs error <= atol OR rel error <= rtol, per
    iteration): "abs", "rel", "abs+rel", or "abs/rel per iteration" when neither held for the
    worst values of all iterations but each iteration held one."""
    within = lambda value, tol: isinstance(value, (int, float)) and value <= tol  # noqa: E731
    held = [k for k, v, t in (("abs", out["value"], out["atol"]), ("rel", out["value_rel"], out["rtol"]))
            if within(v, t)]
    return "+".join(held) or "abs/rel per iteration"


def _check_finite(cfg, runs, entries):
    """NaN/Inf checks (Polygraphy's Comparator.validate) on every output of every runner."""
    if not (cfg["check_nan"] or cfg["check_inf"]):
        return
    for run in runs:
        # Polygraphy logs each output's statistics: an empty output's mean warns (numpy), as noise.
        with quiet_polygraphy(), np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if Comparator.validate(run, check_nan=cfg["check_nan"], check_inf=cfg["check_inf"]):
                continue
        runner, iterations = list(run.items())[0]
        for name in iterations[0].keys():
            values = np.concatenate([np.asarray(it[name], dtype=np.float64).ravel() for it in iterations
                                     if np.issubdtype(np.asarray(it[name]).dtype, np.number)] or [np.zeros(0)])
            bad = {"NaN": int(np.isnan(values).sum()) if cfg["check_nan"] else 0,
                   "Inf": int(np.isinf(values).sum()) if cfg["check_inf"] else 0}
            text = ", ".join(f"{n} {k} value(s)" for k, n in bad.items() if n)
            if not text:
                continue
            key = "output" if runner != SOURCE else "source_output"
            for entry in [e for e in entries if e[key] == name]:
                note = f"{text} in {runner} output '{name}' (validate.check_{'nan' if bad['NaN'] else 'inf'})"
                entry["reason"] = note + (f"; {entry['reason']}" if entry.get("reason") else "")
                entry["status"] = "failed"


# -- detections after `nms: split` -----------------------------------------------------------------

def run_postprocess(pp_path: str | Path, postprocess: Mapping[str, Any], run: Any) -> list[dict[str, np.ndarray]]:
    """Run the post-processing model of `nms: split` on a run's outputs.

    Returns:
        Per iteration, its outputs under the source's names (`postprocess["outputs"]`).

    Raises:
        ValidationNotRunError: ONNX Runtime could not run the post-processing model.
    """
    feeds = [{pp_in: it[fin] for pp_in, fin in postprocess["inputs"].items()} for it in list(run.values())[0]]
    pp_run = run_ort(pp_path, POST, feeds)
    rename = postprocess["outputs"]  # post-processing output -> source output
    return [{rename[k]: v for k, v in it.items() if k in rename} for it in list(pp_run.values())[0]]


def match_detections(ref_iterations: Sequence[Any], cand: Sequence[Mapping[str, np.ndarray]],
                     postprocess: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The post-processed detections (run_postprocess) against the source's NMS outputs, matched
    by IoU with `validate.detections` (detections.py)."""
    dcfg = dict(cfg["detections"])  # iou_threshold and score_atol resolved with the recipe
    roles = det.detection_roles(list(postprocess["outputs"].values()), dcfg)
    return det.compare_detections([dict(it.items()) for it in ref_iterations], cand, roles, dcfg)


# -- numbers ---------------------------------------------------------------------------------------

def order(x: float | None) -> float:
    """Sort key of an error: None and NaN are the worst."""
    return math.inf if x is None or math.isnan(x) else x


def _num(x):
    """JSON-safe number: NaN/Inf become strings."""
    return x if x is None or math.isfinite(x) else str(x)


def fmt(x: Any) -> str:
    """A number as messages and tables show it (4 significant digits)."""
    return f"{x:.4g}" if isinstance(x, float) else str(x)
