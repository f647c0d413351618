"""Stage 5: does the final model still compute what the source model computed?

Built on Polygraphy: OnnxrtRunner/TrtRunner run the models through `Comparator.run`,
`SimpleCompareFunc` + `Comparator.compare_accuracy` compare outputs, `Comparator.validate` checks
NaN/Inf, and `DataLoader` makes the seeded random data (see validate_data.py). This module decides
*what* to compare with what:

* source-ort vs final-ort, always: the source model (after conversion) and the final ONNX in ONNX
  Runtime on the same data; the final model's feed is derived through the passes' input contract.
  Outputs are paired through the output map; outputs that exist on one side only are listed as not
  compared, with the reason.
* detections, when `nms: split` moved NMS into a post-processing model: final + post-processing
  (ORT) against the source's NMS outputs, matched by IoU (detections.py).
* engine vs final-ort, where a GPU can run the plan; otherwise reported skipped with the reason.

Tolerances follow Polygraphy's rule: an output passes when the chosen error statistic is within
atol OR within rtol (relative to the source's values, the reference side).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.comparator import Comparator, SimpleCompareFunc

from trtpipe.errors import BuildError, ValidationError, suggest
from trtpipe.recipe.precision import normalize
from trtpipe.recipe.resolved import resolve_validate
from trtpipe.stages.validate import detections as det
from trtpipe.stages.validate.data import apply_contract, make_source_feeds, model_io
from trtpipe.stages.validate.data import quiet_polygraphy as _quiet

if TYPE_CHECKING:
    from rich.console import Console

    from trtpipe.backend import Backend

SOURCE, FINAL, ENGINE, POST = "source-ort", "final-ort", "engine", "postprocess-ort"


def resolve_config(validate_cfg: dict | None, mode: str = "fp32") -> dict:
    """`validate` as a resolved recipe holds it (schema defaults, tolerances for `mode`)."""
    return resolve_validate(validate_cfg, mode)


def validate_models(source_model_path: str | Path, final_model_path: str | Path, validate_cfg: dict | None, *,
                    precision: str | dict | None, input_contract: dict[str, dict] | None,
                    output_map: dict[str, str] | None, postprocess: dict | None,
                    plan_path: str | Path | None = None, backend: Backend | str | None = None,
                    locate: Callable[[tuple], str] | None = None, log: Callable[[str], Any] | None = None,
                    base_dir: str | Path | None = None, compute_capabilities: list[str] | None = None,
                    final_ort_path: str | Path | None = None, final_ort_optimize: bool = True) -> dict[str, Any]:
    """Compare source and final model (and engine, detections) on the same data (stage 5).

    Both models run in ONNX Runtime through Polygraphy on `validate.data` (seeded random, .npz or
    images), generated for the source model's inputs and fed to the final model through the input
    contract. An output passes when its error statistic is within atol OR within rtol relative to
    the source's values (Polygraphy's SimpleCompareFunc rule); NaN/Inf fail it when checked.

    Args:
        source_model_path: the converted source model (.onnx).
        final_model_path: the final model (.onnx); the post-processing model is looked up next to it.
        validate_cfg: the recipe's `validate` section (None: defaults; tolerances default by precision).
        precision: the recipe's precision (mode name or mapping): picks default tolerances.
        input_contract: {final input name: {"source_input", "source_dtype", "source_shape", "shape",
            "steps"}} recorded by the passes (docs/architecture.md); None: identity.
        output_map: {final output name: source output name} recorded by the passes.
        postprocess: `ctx.postprocess` after `nms: split` ({"file", "inputs", "outputs", "kind"}):
            detections are then compared by IoU matching.
        plan_path: the serialized plan, compared engine vs final-ort where a GPU can run it.
        backend: the Backend (or its name) to run the plan with; None: "auto".
        locate: recipe key path -> "file:line:col", so messages point at the recipe line.
        log: optional sink for detail lines.
        base_dir: base directory of relative data paths (the recipe's directory).
        compute_capabilities: the plan's TensorRT-RTX targets ("8.9", ...): the GPU must match one.
        final_ort_path: what ONNX Runtime runs instead of the final model when it cannot run it as
            it is (an fp16/bf16 model emulated in fp32).
        final_ort_optimize: False turns ONNX Runtime's graph optimizations off for the final model
            (fp8 Q/DQ would be fused into kernels ORT lacks).

    Returns:
        A JSON-able dict: `status` ("passed", "failed" or "skipped"), `reason`, `data` (what was
        fed), `tolerances`, `comparisons` ([{name, status, reason, iterations, outputs: [{output,
        source_output, status, reason, statistic, atol, rtol, max_abs, max_rel, value,
        value_rel}]}], source vs final and engine vs final), and `detections` after `nms: split`.

    Raises:
        ValidationError: a comparison failed (the dict above is its `.result`); an output name in
            `validate` that neither model has; ONNX Runtime could not run a model; the data could
            not be read or does not fit the inputs or the input contract.
        RecipeError: `precision` is not a valid precision value.
    """
    precision = normalize(precision)["mode"]
    cfg = resolve_config(validate_cfg, precision)
    log = log or (lambda msg: None)
    where = (locate(("validate",)) + ": ") if locate else ""
    if not cfg["enabled"]:
        return {"status": "skipped", "reason": "validate.enabled is false", "comparisons": []}
    tolerances = {"precision": precision, "atol": cfg["atol"], "rtol": cfg["rtol"],
                  "statistic": cfg["statistic"], "quantile": cfg["quantile"]}
    src_in, src_out = model_io(source_model_path)
    fin_in, fin_out = model_io(final_model_path)
    _check_names(cfg, src_out, fin_out, where)

    contract = input_contract or {}
    feeds, data = make_source_feeds(cfg["data"], src_in, contract, base_dir=base_dir, locate=locate)
    log(f"validate: {data['kind']} data, {len(feeds)} iteration(s)")
    # Final inputs cut from inside the source (set_outputs) are fed the source's own values.
    inner = [e["source_tensor"] for e in contract.values() if not e.get("source_input") and e.get("source_tensor")]
    src_run = _run(source_model_path, SOURCE, feeds, list(src_out) + inner if inner else None)
    inner_values = [{t: it[t] for t in inner} for it in list(src_run.values())[0]]
    final_feeds = [apply_contract({**f, **v}, contract, fin_in) for f, v in zip(feeds, inner_values)]
    # `final_ort_path`: what ONNX Runtime runs for the final model when it cannot run the model
    # itself (bf16/fp16 emulated in fp32: ORT's CPU kernels lack bf16 Conv and compute fp16 in fp32).
    fin_run = _run(final_ort_path or final_model_path, FINAL, final_feeds, optimize=final_ort_optimize)

    tol_for = lambda name, source_name=None: _tolerance(cfg, tolerances, name, source_name)  # noqa: E731
    omap = {**(output_map or {}), **cfg["output_map"]}
    pairs, entries = _plan_outputs(cfg, fin_out, src_out, omap, postprocess)
    main = _compare(f"{SOURCE} vs {FINAL}", fin_run, src_run, pairs, entries, tol_for, cfg)
    result = {"status": None, "reason": None, "data": data, "tolerances": tolerances, "comparisons": [main]}
    if postprocess:
        result["detections"] = _detections(postprocess, final_model_path, fin_run, src_run, cfg, precision, tolerances)
    elif main["status"] == "skipped" and not all(_skip_reason(cfg, f, omap.get(f, f)) for f in fin_out):
        # Nothing paired up: an unrecorded rename, not something to pass silently.
        main.update(status="failed", reason=f"no output of the final model {list(fin_out)} corresponds to an "
                                            f"output of the source model {list(src_out)}; map them with "
                                            f"validate.output_map or skip them with a reason (validate.skip)")
    result["comparisons"].append(_engine(cfg, backend, plan_path, compute_capabilities, final_feeds, fin_run,
                                         fin_out, omap, tol_for))
    return _finish(result, where, log)


def _tolerance(cfg, defaults, name, source_name=None):
    per = cfg["outputs"].get(name) or cfg["outputs"].get(source_name) or {}
    return {k: per.get(k, defaults[k]) for k in ("atol", "rtol", "statistic", "quantile")}


def _skip_reason(cfg, final_name, source_name):
    return cfg["skip"].get(final_name) or cfg["skip"].get(source_name)


def _check_names(cfg, src_out, fin_out, where):
    """Catch typos in output names the recipe mentions."""
    known = list(dict.fromkeys(list(fin_out) + list(src_out)))
    for key in ("skip", "outputs", "output_map"):
        for name in cfg[key]:
            if name not in known:
                raise ValidationError(f"{where}validate.{key}: '{name}' is not an output of the source or the "
                                      f"final model {known}{suggest(name, known, cutoff=0.5)}")
    for final, source in cfg["output_map"].items():
        if source not in src_out:
            raise ValidationError(f"{where}validate.output_map.{final}: '{source}' is not an output of the "
                                  f"source model {list(src_out)}{suggest(source, src_out, cutoff=0.5)}")


def _run(model_path, name, feeds, outputs=None, optimize=True):
    model = str(model_path)
    if outputs:  # also read inner tensors (Polygraphy marks them as outputs)
        from polygraphy.backend.onnx import BytesFromOnnx, ModifyOutputs, OnnxFromPath
        model = BytesFromOnnx(ModifyOutputs(OnnxFromPath(model), outputs=outputs))
    try:
        with _quiet():
            # fp8 Q/DQ: ORT's optimizer would fuse them into QLinearConv, which has no fp8 kernel.
            import onnxruntime
            level = None if optimize else onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
            return Comparator.run([OnnxrtRunner(SessionFromOnnx(model, graph_optimization_level=level), name=name)],
                                  data_loader=feeds)
    except Exception as err:  # ORT or Polygraphy: name the model, keep the cause
        raise ValidationError(f"{name}: ONNX Runtime could not run {model_path}: {type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else err}") from err


def _plan_outputs(cfg, fin_out, src_out, omap, postprocess):
    """Pairs final output -> source output to compare, and one entry per output saying what happens."""
    pp_inputs = set((postprocess or {}).get("inputs", {}).values())
    pp_outputs = set((postprocess or {}).get("outputs", {}).values())
    pairs, entries = {}, []
    for f in fin_out:
        s = omap.get(f, f)
        entry = {"output": f, "source_output": s if s in src_out else None, "status": "skipped", "reason": None}
        if _skip_reason(cfg, f, s):
            entry["reason"] = f"skipped by validate.skip: {_skip_reason(cfg, f, s)}"
        elif s in src_out:
            pairs[f] = s
            entry["status"] = "pending"
        elif f in pp_inputs:
            entry["reason"] = "not a source output; feeds the post-processing model (see detections)"
        else:
            entry["reason"] = (f"not compared: the source model has no output '{s}'"
                               f"{suggest(s, src_out, cutoff=0.5)}; "
                               "map it with validate.output_map if a pass renamed it")
        entries.append(entry)
    mapped = {omap.get(f, f) for f in fin_out}
    for s in src_out:
        if s not in mapped:
            why = ("produced by the post-processing model after `nms: split` (see detections)" if s in pp_outputs
                   else "not compared: not an output of the final model (a pass cut or renamed it; "
                        "map it with validate.output_map)")
            entries.append({"output": s, "source_output": s, "status": "skipped", "reason": why})
    return pairs, entries


def _compare(name, cand_run, ref_run, pairs, entries, tol_for, cfg, check=None):
    """Element-wise comparison with Polygraphy; the second run is the reference."""
    entries = [dict(e) for e in entries]
    by_output = {e["output"]: e for e in entries if e["status"] == "pending"}
    if pairs:
        tols = {f: tol_for(f, s) for f, s in pairs.items()}
        func = SimpleCompareFunc(
            check_shapes=True, atol={f: t["atol"] for f, t in tols.items()},
            rtol={f: t["rtol"] for f, t in tols.items()},
            check_error_stat={f: t["statistic"] for f, t in tols.items()},
            error_quantile={f: t["quantile"] for f, t in tols.items()},
            find_output_func=lambda out, index, iter_result: [pairs[out]] if out in pairs else None)
        with _quiet():
            accuracy = Comparator.compare_accuracy([cand_run, ref_run], compare_func=func)[0]
        iterations = list(accuracy.values())[0]
        for f, s in pairs.items():
            by_output[f].update(_summarize(f, s, tols[f], [it.get(f) for it in iterations], cand_run, ref_run))
    _check_finite(cfg, check or [cand_run, ref_run], entries)
    compared = [e for e in entries if e["status"] in ("passed", "failed")]
    failed = [e for e in entries if e["status"] == "failed"]
    if failed:
        status, reason = "failed", f"{len(failed)} output(s) failed: " + ", ".join(e["output"] for e in failed)
    elif compared:
        status, reason = "passed", None
    else:
        status, reason = "skipped", "no output could be compared (every output is skipped or has no counterpart)"
    return {"name": name, "status": status, "reason": reason, "iterations": len(list(cand_run.values())[0]),
            "outputs": entries}


def _summarize(f, s, tol, results, cand_run, ref_run):
    """One output across iterations: worst statistics, and why it failed."""
    out = {"statistic": tol["statistic"], "atol": tol["atol"], "rtol": tol["rtol"]}
    if tol["statistic"] == "quantile":
        out["quantile"] = tol["quantile"]
    if any(isinstance(r, bool) or r is None for r in results):  # Polygraphy returns False on shape mismatch
        shapes = (list(np.shape(list(cand_run.values())[0][0][f])), list(np.shape(list(ref_run.values())[0][0][s])))
        return {**out, "status": "failed", "reason": f"shape {shapes[0]} differs from the reference's {shapes[1]}"}
    worst = lambda field: max((getattr(r, field) for r in results), key=_order)  # noqa: E731
    stat = tol["statistic"]
    out.update(max_abs=_num(worst("max_absdiff")), max_rel=_num(worst("max_reldiff")),
               value=_num(worst(f"{stat}_absdiff")), value_rel=_num(worst(f"{stat}_reldiff")))
    if all(bool(r) for r in results):
        return {**out, "status": "passed", "reason": None}
    return {**out, "status": "failed",
            "reason": f"{stat} abs error {_fmt(out['value'])} > atol {tol['atol']:g} and {stat} rel error "
                      f"{_fmt(out['value_rel'])} > rtol {tol['rtol']:g}"
                      + (f" (max abs {_fmt(out['max_abs'])}, max rel {_fmt(out['max_rel'])})" if stat != "max" else "")}


def _order(x):
    return math.inf if x is None or math.isnan(x) else x


def _num(x):
    """JSON-safe number: NaN/Inf become strings."""
    return x if x is None or math.isfinite(x) else str(x)


def _fmt(x):
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _check_finite(cfg, runs, entries):
    """NaN/Inf checks (Polygraphy's Comparator.validate) on every output of every runner."""
    if not (cfg["check_nan"] or cfg["check_inf"]):
        return
    for run in runs:
        with _quiet():
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


def _detections(postprocess, final_model_path, fin_run, src_run, cfg, precision, tolerances):
    pp_path = Path(postprocess["file"])
    pp_path = pp_path if pp_path.is_absolute() else Path(final_model_path).parent / pp_path
    iterations = list(fin_run.values())[0]
    feeds = [{pp_in: it[fin] for pp_in, fin in postprocess["inputs"].items()} for it in iterations]
    pp_run = _run(pp_path, POST, feeds)
    rename = postprocess["outputs"]  # post-processing output -> source output
    cand = [{rename[k]: v for k, v in it.items() if k in rename} for it in list(pp_run.values())[0]]
    ref = list(src_run.values())[0]
    missing = [s for s in rename.values() if s not in ref[0].keys()]
    if missing:
        return {"status": "failed", "reason": f"the source model has no output(s) {missing} to compare the "
                                              f"post-processing outputs with"}
    dcfg = dict(cfg["detections"])  # iou_threshold and score_atol resolved with the recipe
    roles = det.detection_roles(list(rename.values()), dcfg)
    return det.compare_detections([dict(it.items()) for it in ref], cand, roles, dcfg)


def _engine(cfg, backend, plan_path, ccs, final_feeds, fin_run, fin_out, omap, tol_for):
    name = f"{ENGINE} vs {FINAL}"
    skipped = lambda why: {"name": name, "status": "skipped", "reason": why}  # noqa: E731
    if not cfg["engine"]:
        return skipped("validate.engine is false")
    from trtpipe.backend import has_runtime_gpu, resolve_backend
    try:
        backend = resolve_backend(backend or "auto") if backend is None or isinstance(backend, str) else backend
    except BuildError as err:
        return skipped(f"no TensorRT runtime: {err}")
    ok, why = has_runtime_gpu(backend, ccs)
    if not ok:
        return skipped(why)
    if not plan_path or not Path(plan_path).is_file():
        return skipped("no plan to run (validation ran before the build)")
    try:
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        with _quiet():
            run = Comparator.run([TrtRunner(EngineFromBytes(BytesFromPath(str(plan_path))), name=ENGINE)],
                                 data_loader=final_feeds)
    except Exception as err:
        return {"name": name, "status": "failed", "reason": f"the plan could not run on {why}: "
                                                            f"{type(err).__name__}: {err}"}
    # Same outputs on both sides; only the recipe's skips apply.
    entries = [{"output": f, "source_output": omap.get(f, f), "status": "pending", "reason": None} for f in fin_out]
    for e in entries:
        why = _skip_reason(cfg, e["output"], e["source_output"])
        if why:
            e.update(status="skipped", reason=f"skipped by validate.skip: {why}")
    pairs = {e["output"]: e["output"] for e in entries if e["status"] == "pending"}
    out = _compare(name, run, fin_run, pairs, entries, lambda f, s=None: tol_for(f, omap.get(f, f)), cfg, check=[run])
    out["device"] = why
    return out


def _finish(result, where, log):
    failed = [c for c in result["comparisons"] if c["status"] == "failed"]
    dets = result.get("detections")
    lines = []
    for comp in failed:
        bad = [e for e in comp.get("outputs", []) if e["status"] == "failed"]
        lines += ([f"{comp['name']}: output '{e['output']}': {e['reason']}" for e in bad]
                  or [f"{comp['name']}: {comp['reason']}"])
    if dets and dets["status"] == "failed":
        lines.append(f"detections (final + post-processing vs source NMS outputs): {dets['reason']}")
    ran = [c for c in result["comparisons"] if c["status"] != "skipped"] + ([dets] if dets else [])
    result["status"] = "failed" if lines else ("passed" if ran else "skipped")
    result["reason"] = "; ".join(lines) or (None if ran else "nothing could be compared")
    for comp in result["comparisons"]:
        log(f"validate: {comp['name']}: {comp['status']}" + (f" ({comp['reason']})" if comp.get("reason") else ""))
    if lines:
        err = ValidationError(f"{where}validation failed:\n  " + "\n  ".join(lines),
                              hint="if this difference is expected (e.g. lower precision), set validate.atol/rtol "
                                   "or validate.outputs.<name>.atol/rtol, or skip the output with a reason under "
                                   "validate.skip")
        err.result = result
        raise err
    return result


def print_table(result: dict, console: Console) -> None:
    """The validation result for a terminal: one rich table per comparison that ran."""
    from rich.table import Table
    style = {"passed": "green", "failed": "bold red", "skipped": "yellow"}
    badge = lambda status: f"[{style.get(status, '')}]{status}[/]"  # noqa: E731
    console.print(f"[bold]validation:[/] {badge(result['status'])}"
                  + (f" ({result['reason']})" if result["status"] == "skipped" and result.get("reason") else ""))
    for comp in result.get("comparisons", []):
        head = f"{comp['name']}: {badge(comp['status'])}"
        if not comp.get("outputs"):
            console.print(f"  {head}" + (f" ({comp['reason']})" if comp.get("reason") else ""), highlight=False)
            continue
        table = Table(title=head, title_justify="left", header_style="bold")
        table.add_column("output", overflow="fold")
        table.add_column("error abs / rel")
        table.add_column("tol abs / rel")
        table.add_column("status")
        table.add_column("note", overflow="fold", min_width=24)
        for e in comp["outputs"]:
            err = f"{e['statistic']} {_fmt(e['value'])} / {_fmt(e['value_rel'])}" if "value" in e else ""
            tol = f"{_fmt(e['atol'])} / {_fmt(e['rtol'])}" if "atol" in e else ""
            table.add_row(e["output"], err, tol, badge(e["status"]), e.get("reason") or "")
        console.print(table)
    d = result.get("detections")
    if d:
        note = d.get("reason") or (f"{d.get('matched', 0)} matched, {d.get('borderline', 0)} borderline, "
                                   f"min IoU {_fmt(d.get('min_iou'))}, max score diff {_fmt(d.get('max_score_diff'))}")
        console.print(f"  detections (IoU >= {d.get('iou_threshold')}, score atol {_fmt(d.get('score_atol'))}): "
                      f"{badge(d['status'])}: {note}", highlight=False)
