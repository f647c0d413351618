"""Find the guilty pass: which pass first made the model compute something else than the source?

Validation compares only the source model with the final one. When that fails, this module runs
ONNX Runtime on the model as each pass left it (the passes stage commits every pass's output to
the stage cache, so nothing is recomputed), on the same data as validation, each fed through the
input contract *as it stood after that pass* and its outputs paired with the source's through that
pass's output map. The same tolerances as validation apply (`validate.atol/rtol/statistic/
outputs/skip/output_map`, defaults by precision). The source model runs once; a pass that left the
model and its context unchanged is not run again. The first pass whose comparison fails is the
culprit, reported with the nodes it added, removed or changed.

When it runs (`validate.bisect`, docs/recipe.md):

* `auto` (default): after a failed validation, when the graph is small enough to make it cheap:
  at most MAX_PASSES enabled passes and every model of the chain (source, each pass's output,
  weights included) at most MAX_MODEL_BYTES. It stops at the first diverging pass.
* `always`: after every validation, whatever the size; a passing run records the per-pass
  comparison in report.json (`validation.bisect`).
* `never`: not at all.

`python pipeline.py bisect RECIPE` runs it on demand over every pass (source and passes through
the stage cache).

What it does not cover: the precision stage (fp16/bf16/int8/fp8 error is compared only by
validation), profile corners and the engine. When every pass agrees with the source but
validation failed, the divergence comes after the passes.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtpipe.errors import ValidationError
from trtpipe.recipe.precision import normalize
from trtpipe.recipe.resolved import resolve_validate
from trtpipe.stages.validate.data import apply_contract, cut_inputs, make_source_feeds, model_io
from trtpipe.stages.validate.outputs import (
    SOURCE,
    accuracy,
    exact_for_integers,
    first_shapes,
    fmt,
    inner_tensors,
    match_detections,
    order,
    pair_outputs,
    run_ort,
    run_postprocess,
    shapes_differ,
    tolerance,
    worst_errors,
)
from trtpipe.stages.validate.pass_diff import describe_changes, node_changes
from trtpipe.stages.validate.table import print_bisect as print_bisect  # re-exported: callers print from here

if TYPE_CHECKING:
    from trtpipe.recipe.load import Recipe
    from trtpipe.stages.run_state import ModelRef

MODES = ("auto", "always", "never")
MAX_MODEL_BYTES = 64 * 2**20   # `auto`: every model of the chain at most this big (weights included)
MAX_PASSES = 20                # `auto`: at most this many enabled passes


@dataclasses.dataclass
class PassModel:
    """The model one pass left, with what validation needs to feed and read it.

    index/name/where: the pass's position in `passes`, its name and recipe location
    ("recipe.yaml:12:5"); path: its ONNX file (in the pass's cache entry); sha: the model's sha256;
    ctx: the context the pass left (`input_contract`, `output_map`, `postprocess`);
    artifacts: {file name: path} of the artifacts passes up to this one wrote (the post-processing
    model of `nms: split`); verify: checks the model's files before they are read (the cache
    entry's manifest)."""

    index: int
    name: str
    where: str
    path: Path
    sha: str
    ctx: dict
    artifacts: dict = dataclasses.field(default_factory=dict)
    verify: Callable[[], Any] | None = None

    @property
    def label(self) -> str:
        return f"passes[{self.index}]"


def pass_models(recipe: Recipe, recorded: Sequence[tuple[str, ModelRef, dict]]) -> list[PassModel]:
    """The per-pass models a run recorded (RunState.pass_models) as PassModels.

    Args:
        recipe: the run's recipe (pass names and their YAML locations).
        recorded: (label "passes[i]", ModelRef of the pass's output, context state it left), in order.

    Returns:
        One PassModel per recorded pass, in run order.
    """
    from trtpipe.cache.files import MODEL
    out, artifacts = [], {}
    for label, ref, ctx in recorded:
        index = int(label[len("passes["):-1])
        entry = ref.entry
        for name in entry.meta.get("artifact_files") or []:
            artifacts[name] = entry.path(f"artifacts/{name}")
        out.append(PassModel(index=index, name=recipe.data["passes"][index]["pass"],
                             where=recipe.locate(("passes", index)), path=entry.path(MODEL), sha=ref.sha,
                             ctx=ctx, artifacts=dict(artifacts),
                             verify=lambda e=entry: e.verify(e.model_files())))
    return out


def model_bytes(path: str | Path) -> int:
    """Size of a saved model: the .onnx file and its external-data file (`<name>.data`) if any."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def should_bisect(mode: str, source_path: str | Path, steps: Sequence[PassModel]) -> tuple[bool, str]:
    """Whether a failed validation is bisected automatically, and why (or why not).

    Args:
        mode: `validate.bisect`: "auto", "always" or "never".
        source_path: the source model file.
        steps: the per-pass models (pass_models).

    Returns:
        (run it?, reason): `auto` runs when there is at least one pass, at most MAX_PASSES of them,
        and no model of the chain is bigger than MAX_MODEL_BYTES.
    """
    if mode == "never":
        return False, "validate.bisect is never"
    if not steps:
        return False, "the recipe has no passes"
    if mode == "always":
        return True, "validate.bisect is always"
    if len(steps) > MAX_PASSES:
        return False, (f"{len(steps)} passes > {MAX_PASSES} (set validate.bisect: always, or run "
                       f"`python pipeline.py bisect RECIPE`)")
    biggest = max(model_bytes(p) for p in [source_path, *(s.path for s in steps)])
    if biggest > MAX_MODEL_BYTES:
        return False, (f"a model of {biggest / 2**20:.0f} MiB > {MAX_MODEL_BYTES // 2**20} MiB (set validate.bisect: "
                       f"always, or run `python pipeline.py bisect RECIPE`)")
    return True, f"{len(steps)} pass(es), models <= {MAX_MODEL_BYTES // 2**20} MiB"


def bisect_passes(source_path: str | Path, steps: Sequence[PassModel], validate_cfg: dict | None, *,
                  precision: str | dict | None, source_sha: str | None = None,
                  data_contract: dict[str, dict] | None = None, base_dir: str | Path | None = None,
                  locate: Callable[[tuple], str] | None = None, log: Callable[[str], Any] | None = None,
                  stop_at_first: bool = False) -> dict[str, Any]:
    """Compare the model after each pass with the source model; name the first that diverges.

    Args:
        source_path: the converted source model (.onnx).
        steps: the model after each pass, in run order (pass_models).
        validate_cfg: the recipe's `validate` section (data, tolerances, skip, output_map, detections).
        precision: the recipe's precision (mode or mapping): picks default tolerances, as validation does.
        source_sha: the source model's sha256 (None: the first pass is always run).
        data_contract: the input contract validation generated its data with (the final one);
            None: the last pass's.
        base_dir: base directory of relative data paths (the recipe's directory).
        locate: recipe key path -> "file:line:col", for data errors.
        log: optional sink for detail lines.
        stop_at_first: stop at the first diverging pass (later ones are reported "not run").

    Returns:
        A JSON-able dict: `status` ("diverged", "agreed" or "inconclusive": some pass could not be
        run or compared, none diverged), `first` (the first diverging pass: {label, pass, where,
        index, outputs, message, nodes}, or None), `passes` ([{label, pass, where, status ("passed",
        "failed", "skipped", "error", "not run"), reason, worst, outputs, detections, reused}]),
        `tolerances`, `data`, `seconds`, and `summary` (one line saying what was found).

    Raises:
        ValidationError: the validation data cannot be made or ONNX Runtime cannot run the source model.
    """
    start = time.perf_counter()
    log = log or (lambda msg: None)
    mode = normalize(precision)["mode"]
    cfg = resolve_validate(validate_cfg, mode)
    tolerances = {"precision": mode, "atol": cfg["atol"], "rtol": cfg["rtol"], "statistic": cfg["statistic"],
                  "quantile": cfg["quantile"]}
    src_in, src_out = model_io(source_path)
    contract = data_contract if data_contract is not None else (steps[-1].ctx.get("input_contract") if steps
                                                                 else None)
    feeds, data = make_source_feeds(cfg["data"], src_in, contract or {}, base_dir=base_dir, locate=locate)

    # One source run exposes everything any pass needs: its outputs, tensors inside it that feed a
    # cut graph (set_outputs), and inner tensors a pass's outputs correspond to.
    source_tensors = inner_tensors(source_path)
    extra = []
    for step in steps:
        omap = _output_map(step, steps, cfg)
        extra += cut_inputs(step.ctx.get("input_contract"))
        try:
            _, outs = model_io(step.path)
        except Exception:  # unreadable: reported when the step runs
            continue
        extra += [omap.get(f, f) for f in outs if omap.get(f, f) not in src_out and omap.get(f, f) in source_tensors]
    extra = [t for t in dict.fromkeys(extra) if t not in src_out]
    src_run = run_ort(source_path, SOURCE, feeds, list(src_out) + extra if extra else None)
    ref_iters = list(src_run.values())[0]
    comparable = set(src_out) | set(extra)
    log(f"bisect: {data['kind']} data, {len(feeds)} iteration(s), {len(steps)} pass(es)")

    rows, first = [], None
    prev_sha, prev_ctx = source_sha, None
    for k, step in enumerate(steps):
        row = {"label": step.label, "pass": step.name, "where": step.where, "status": None, "reason": None,
               "worst": None, "outputs": [], "reused": False}
        rows.append(row)
        state = _ctx_key(step.ctx)
        if first is not None and stop_at_first:
            row.update(status="not run", reason=f"stopped at the first diverging pass ({first['label']})")
            prev_sha, prev_ctx = step.sha, state
            continue
        if k and step.sha == prev_sha and state == prev_ctx:
            before = rows[-2]
            row.update({key: copy.deepcopy(before[key]) for key in ("status", "reason", "worst", "outputs")
                        if key in before}, reused=True)
            if before.get("detections"):
                row["detections"] = before["detections"]
            row["reason"] = f"model and context unchanged since {before['label']} (not run again)"
        else:
            _run_step(row, step, steps, feeds, src_run, ref_iters, src_out, comparable, cfg, tolerances)
        log(f"bisect: {step.label} {step.name}: {row['status']}" + (f" ({row['reason']})" if row["reason"] else ""))
        if row["status"] == "failed" and first is None:
            before_path = steps[k - 1].path if k else source_path
            nodes = node_changes(before_path, step.path)
            first = {"label": step.label, "pass": step.name, "where": step.where, "index": step.index,
                     "outputs": [o for o in row["outputs"] if o["status"] == "failed"],
                     "detections": row.get("detections") if (row.get("detections") or {}).get("status") == "failed"
                     else None, "nodes": nodes}
            first["message"] = _culprit_message(first)
        prev_sha, prev_ctx = step.sha, state

    if first:
        status, summary = "diverged", f"first diverging pass: {first['message']}"
    elif any(r["status"] in ("error", "skipped") for r in rows):
        bad = [r for r in rows if r["status"] in ("error", "skipped")]
        status = "inconclusive"
        summary = ("no pass diverges where compared, but " + "; ".join(
            f"{r['label']} {r['pass']} was {'not comparable' if r['status'] == 'skipped' else 'not runnable'}: "
            f"{r['reason']}" for r in bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""))
    else:
        status = "agreed"
        summary = (f"every pass agrees with the source model ({len(rows)} pass(es), atol {cfg['atol']:g}, "
                   f"rtol {cfg['rtol']:g}, statistic {cfg['statistic']})" if rows else "the recipe has no passes")
    return {"status": status, "summary": summary, "first": first, "passes": rows, "tolerances": tolerances,
            "data": data, "seconds": round(time.perf_counter() - start, 3)}


def _ctx_key(ctx):
    return [ctx.get(k) for k in ("input_contract", "output_map", "postprocess")]


def _output_map(step, steps, cfg):
    """{output name: source name} for one pass's model: what the passes up to it recorded, and the
    recipe's validate.output_map only for the last one (its keys name the FINAL model's outputs; an
    earlier model may have an output of the same name that is something else)."""
    recorded = dict(step.ctx.get("output_map") or {})
    return {**recorded, **cfg["output_map"]} if step is steps[-1] else recorded


def _run_step(row, step, steps, feeds, src_run, ref_iters, src_out, comparable, cfg, tolerances):
    """Run one pass's model on the data and compare it with the source run; fills `row`."""
    try:
        if step.verify:
            step.verify()
        fin_in, fin_out = model_io(step.path)
        contract = step.ctx.get("input_contract") or {}
        inner = cut_inputs(contract)
        step_feeds = [apply_contract({**f, **{t: it[t] for t in inner}}, contract, fin_in)
                      for f, it in zip(feeds, ref_iters)]
        run = run_ort(step.path, step.label, step_feeds)
    except ValidationError as err:
        row.update(status="error", reason=err.message)
        return
    omap = _output_map(step, steps, cfg)
    postprocess = step.ctx.get("postprocess")
    pairs, entries = pair_outputs(cfg, fin_out, comparable, omap, postprocess,
                                  feeds_postprocess="feeds the post-processing model (see detections)",
                                  unmatched=lambda s: f"the source model has no output or tensor '{s}'")
    row["outputs"].extend(entries)
    if pairs:
        _compare(row["outputs"], pairs, run, src_run, cfg, tolerances)
    if postprocess:
        row["detections"] = _detections(postprocess, step, run, ref_iters, cfg)
    failed = [e for e in row["outputs"] if e["status"] == "failed"]
    dets = row.get("detections")
    compared = [e for e in row["outputs"] if e["status"] == "passed"]
    worst = max(failed or compared, key=lambda e: _badness(e), default=None)
    row["worst"] = _worst_text(worst) if worst else None
    if failed or (dets and dets["status"] == "failed"):
        row["status"] = "failed"
        row["reason"] = "; ".join([f"output '{e['output']}': {e['reason']}" for e in failed]
                                  + ([f"detections: {dets['reason']}"] if dets and dets["status"] == "failed" else []))
    elif compared or (dets and dets["status"] == "passed"):
        row["status"] = "passed"
    else:
        row["status"] = "skipped"
        row["reason"] = (dets or {}).get("reason") or "no output of this model corresponds to a source output"


def _compare(entries, pairs, run, src_run, cfg, tolerances):
    """Polygraphy's SimpleCompareFunc with validation's per-output tolerances; updates `entries`.
    Unlike validation's comparison (outputs.compare_outputs), NaN counts only on this model's side."""
    tols = exact_for_integers({f: tolerance(cfg, tolerances, f, s) for f, s in pairs.items()}, pairs, src_run, cfg)
    iterations = accuracy(run, src_run, pairs, tols)
    cand = list(run.values())[0]
    for entry in entries:
        f = entry["output"]
        if f not in pairs:
            continue
        tol = tols[f]
        results = [it.get(f) for it in iterations]
        entry.update(statistic=tol["statistic"], atol=tol["atol"], rtol=tol["rtol"])
        if shapes_differ(results):
            shapes = first_shapes(run, src_run, f, pairs[f])
            entry.update(status="failed", reason=f"shape {shapes[0]} differs from the source's {shapes[1]}")
            continue
        stat = tol["statistic"]
        entry.update(worst_errors(results, stat))
        nan = cfg["check_nan"] and any(np.isnan(np.asarray(it[f], dtype=np.float64)).any() for it in cand
                                       if np.issubdtype(np.asarray(it[f]).dtype, np.number))
        if nan:
            entry.update(status="failed", reason="NaN values (validate.check_nan)")
        elif all(bool(r) for r in results):
            entry.update(status="passed")
        else:
            entry.update(status="failed", reason=f"{stat} abs error {fmt(entry['value'])} > atol {tol['atol']:g} and "
                                                 f"{stat} rel error {fmt(entry['value_rel'])} > rtol {tol['rtol']:g}")


def _detections(postprocess, step, run, ref_iters, cfg):
    """After `nms: split`: this model + the post-processing model vs the source's NMS outputs (IoU)."""
    path = step.artifacts.get(postprocess["file"])
    if path is None or not Path(path).is_file():
        return {"status": "skipped", "reason": f"post-processing model {postprocess['file']} not found"}
    try:
        cand = run_postprocess(path, postprocess, run)
    except ValidationError as err:
        return {"status": "skipped", "reason": err.message}
    if any(s not in ref_iters[0].keys() for s in postprocess["outputs"].values()):
        return {"status": "skipped", "reason": "the source model lacks the post-processing model's outputs"}
    return match_detections(ref_iters, cand, postprocess, cfg)


def _culprit_message(first):
    where = f" ({first['where']})" if first["where"] else ""
    bad = [f"output '{o['output']}' {o['reason']}" for o in first["outputs"]]
    if first.get("detections"):
        bad.append(f"detections: {first['detections']['reason']}")
    return (f"{first['label']} {first['pass']}{where}: {'; '.join(bad) or 'outputs differ'}; "
            f"nodes changed: {describe_changes(first['nodes'])}")


def _badness(entry):
    if entry["status"] != "failed":
        value = entry.get("value")
        return (0, value / entry["atol"] if isinstance(value, float) and entry.get("atol") else 0.0)
    value = entry.get("value")
    return (1, order(value) if isinstance(value, (int, float)) else float("inf"))


def _worst_text(entry):
    if entry.get("value") is None:
        return f"{entry['output']}: {entry.get('reason') or entry['status']}"
    return (f"{entry['output']}: {entry['statistic']} abs {fmt(entry['value'])} / rel {fmt(entry['value_rel'])} "
            f"(atol {entry['atol']:g}, rtol {entry['rtol']:g})")

