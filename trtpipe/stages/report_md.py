"""report.md: the build report as a reviewer reads it in a pull request.

From report.json's content (`to_markdown(rep)`), complete and self-contained:

* paths relative to the recipe (`../models/effdet_demo/saved_model`; the recipe itself relative to
  the repository it is in), never one machine's absolute paths;
* what was built: tool and backend versions, the plan's inputs and outputs with their shapes, the
  optimization profiles, builder memory, reproducibility;
* the nodes kept in fp32 and why;
* the validation table, each skip or inconclusive reason written once (numbered notes), integer
  outputs as exact-match counts (a relative error means nothing there);
* pictures (report_pictures.py), linked relatively, so they show wherever the output directory
  is viewed (a CI artifact, a pull-request comment that uploads them).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from trtpipe.stages.validate.wording import BORDERLINE, EXPLAIN, RULE

# dists named on the report's `tools` line, in pipeline order (all versions are in report.json `tools`)
HEADLINE_TOOLS = ["trt-pipeline", "tensorflow-cpu", "tensorflow", "tf2onnx", "onnx", "onnx-graphsurgeon",
                  "onnxruntime", "polygraphy"]
KEEP_REASONS = {"keep_op_types": "its op type is in precision.keep_op_types (numerically sensitive)",
                "keep_nodes": "named in precision.keep_nodes"}


def to_markdown(rep: dict) -> str:
    """report.md's text for a report (report.json's content; missing sections are left out)."""
    root = _root(rep)
    lines = [f"# Build report: `{rep['recipe']['name']}`", ""] + _header(rep)
    lines += _pictures(rep, "detections", "Source and final detections, side by side")
    lines += _io(rep)
    lines += _passes(rep)
    lines += _precision(rep)
    lines += ["", "## Validation", ""] + _validation(rep.get("validation") or {})
    lines += _pictures(rep, "errors", "Error histogram per output")
    lines += _times(rep)
    lines += ["", "## Artifacts", "", "| file | bytes | sha256 |", "|---|---:|---|"]
    lines += [f"| `{n}` | {a['size']} | `{a['sha256']}` |" for n, a in (rep.get("artifacts") or {}).items()]
    lines += _deploy(rep)
    warnings = (rep.get("build") or {}).get("warnings")
    if warnings:
        lines += ["", "## Builder warnings", ""] + [f"- {w}" for w in warnings]
    tools = rep.get("tools") or {}
    if tools:
        lines += ["", "<details><summary>All tool versions</summary>", ""]
        lines += [f"- {k} {v}" for k, v in tools.items()] + ["", "</details>"]
    return _relative("\n".join(lines) + "\n", root, rep)


# ------------------------------------------------------------------------------ paths

def _root(rep):
    """The directory recipe-relative paths are shown from (the recipe's), and the repository
    holding it (the nearest parent with .git), or None when the recipe path is not absolute."""
    path = Path(rep["recipe"].get("path") or "")
    if not path.is_absolute():
        return None
    repo = next((p for p in path.parents if (p / ".git").exists()), None)
    if repo is None:  # not in a git work tree: the folder holding the recipe's folder (recipes/ + models/)
        repo = path.parent.parent if path.parent.parent != Path(path.anchor) else path.parent
    return path.parent, repo


def _relative(text, root, rep):
    """Every absolute path inside the recipe's repository, written relative to the recipe."""
    if root is None:
        return text
    recipe_dir, repo = root
    pattern = re.compile(re.escape(str(repo)) + r"(?:/[^\s`'\"),;\]|]*)?")
    return pattern.sub(lambda m: os.path.relpath(m.group(0), recipe_dir), text)


def _package_path(path):
    """A file inside an installed package as the recipe writes it (`pkg:onnx/...`), else the path
    (made relative to the recipe later, when it is inside the recipe's repository)."""
    parts = Path(path).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "pkg:" + "/".join(parts[parts.index(marker) + 1:])
    return path


def _recipe_label(rep):
    path = Path(rep["recipe"].get("path") or "")
    if not path.is_absolute():
        return str(path)
    repo = next((p for p in path.parents if (p / ".git").exists()), None)
    return str(path.relative_to(repo)) if repo else path.name


# ------------------------------------------------------------------------------ sections

def _header(rep):
    b = rep["backend"]
    build = rep.get("build") or {}
    mem = build.get("memory") or {}
    tools = rep.get("tools") or {}
    named = [f"{k} {tools[k]}" for k in HEADLINE_TOOLS if k in tools]
    bindings = [f"{k} {v}" for k, v in tools.items() if k.startswith(("tensorrt", "onnxruntime-ep"))]
    src = rep.get("source") or {}
    where = f" `{_package_path(src['path'])}`" if src.get("path") else ""
    lines = [f"- recipe: `{_recipe_label(rep)}` (sha256 `{rep['recipe']['sha256'][:16]}…`)",
             f"- backend: {b['name']} {b['version']}" + (f" ({', '.join(bindings)})" if bindings else "")
             + f", compute capabilities {', '.join(b.get('compute_capabilities') or []) or 'the build GPU'}"]
    if named:
        lines.append(f"- tools: {', '.join(named)}")
    lines += [f"- source: {src.get('kind')}{where}, {src.get('nodes')} nodes, opset {src.get('opset')}",
              f"- precision: {_precision_counts(rep.get('precision') or {'mode': 'fp32'})}",
              f"- builder memory: activations {_mib(mem.get('activation_bytes'))}, weights "
              f"{_mib(mem.get('weights_bytes'))}; {build.get('num_layers')} network layers",
              f"- plan reproducible: {build.get('reproducible') or 'unknown'}"]
    return lines


def _pictures(rep, kind, alt):
    pics = rep.get("pictures") or {}
    name = (pics.get("files") or {}).get(kind)
    if name:
        feed = (pics.get("feed") or {}).get("text")
        return ["", f"![{alt}]({name})", "", f"*{alt}: `{name}`" + (f", {feed}" if feed else "") + ".*"]
    why = pics.get("reason")
    if kind == "errors" and why and (pics.get("status") == "not made" or not why.startswith(("not a detector",
                                                                                             "no 4-D image"))):
        return ["", f"*{'Pictures' if pics.get('status') == 'not made' else 'Detections picture'}: not made ({why}).*"]
    return []


def _io(rep):
    build = rep.get("build") or {}
    rows = [("input", t) for t in build.get("inputs") or []] + [("output", t) for t in build.get("outputs") or []]
    if not rows:
        return []
    lines = ["", "## Plan inputs and outputs", "", "| tensor | | dtype | shape |", "|---|---|---|---|"]
    lines += [f"| `{t['name']}` | {kind} | {t.get('dtype')} | {_shape(t.get('shape'))} |" for kind, t in rows]
    profiles = (((rep.get("recipe") or {}).get("resolved") or {}).get("build") or {}).get("profiles") or []
    if profiles:
        lines += ["", "Optimization profiles:", "", "| profile | input | min | opt | max |", "|---|---|---|---|---|"]
        for p in profiles:
            for name, dims in (p.get("inputs") or {}).items():
                lines.append(f"| `{p['name']}` | `{name}` | {_shape(dims.get('min'))} | {_shape(dims.get('opt'))} | "
                             f"{_shape(dims.get('max'))} |")
    elif any(isinstance(d, str) or (isinstance(d, int) and d < 0) for _, t in rows for d in t.get("shape") or []):
        lines += ["", "Optimization profiles: none given (the builder's defaults)."]
    else:
        lines += ["", "Optimization profiles: none (every shape is static)."]
    return lines


def _shape(dims):
    if dims is None:
        return ""
    return "[" + ", ".join("?" if d is None or (isinstance(d, int) and d < 0) else str(d) for d in dims) + "]"


def _passes(rep):
    passes = rep.get("passes") or []
    lines = ["", "## Passes", "", "| # | pass | nodes | op changes | s |", "|---:|---|---|---|---:|"]
    lines += [f"| {p['index']} | `{p['pass']}` | {p['nodes_before']} → {p['nodes_after']} "
              f"({p['nodes_after'] - p['nodes_before']:+d}) | {_op_changes(p['ops_before'], p['ops_after'])} | "
              f"{p['duration_s']:.2f} |" for p in passes]
    warned = [(p, w) for p in passes for w in p.get("warnings") or []]
    if warned:
        lines += ["", "**Pass warnings** (what a pass could not do; validation compared every profile corner):", ""]
        lines += [f"- passes[{p['index']}] `{p['pass']}`: {w}" for p, w in warned]
    return lines


def _op_changes(before, after):
    """'-Loop 1, +Transpose 1': what a pass did, in op counts."""
    parts = []
    for op in sorted(set(before) | set(after)):
        delta = after.get(op, 0) - before.get(op, 0)
        if delta:
            parts.append(f"{'+' if delta > 0 else '-'}{op} {abs(delta)}")
    return ", ".join(parts) or "no op-count change"


def _precision_counts(prec):
    counts = lambda d: ", ".join(f"{k} {v}" for k, v in sorted((d or {}).items()))  # noqa: E731
    text = prec.get("mode", "fp32")
    if prec.get("nodes"):
        text += f" (nodes: {counts(prec['nodes'])}; initializers: {counts(prec.get('initializers'))}"
        text += f"; Q/DQ pairs {prec['qdq_pairs']})" if prec.get("qdq_pairs") else ")"
    return text


def _precision(rep):
    """The nodes kept in fp32 and why (report.json precision.kept_fp32)."""
    prec = rep.get("precision") or {}
    kept = prec.get("kept_fp32") or {}
    if not kept:
        return []
    lines = ["", "## Precision", "", f"{len(kept)} node(s) kept in fp32 in the {prec.get('mode')} graph"
             + (f"; {prec['casts_added']} Cast node(s) added at the boundaries" if prec.get("casts_added") else "")
             + ":", "", "| node | why it stays fp32 |", "|---|---|"]
    lines += [f"| `{node}` | {_cell(KEEP_REASONS.get(why, why))} |" for node, why in kept.items()]
    guard = prec.get("overflow_guard") or {}
    if guard.get("enabled") and guard.get("max_abs") is not None:
        lines += ["", f"Overflow guard: activations reach |x| {_num(guard['max_abs'])} on {guard.get('samples')} "
                      f"validation sample(s) (threshold {_num(guard.get('threshold'))})."]
    return lines


def _validation(val):
    if not val:
        return ["(no validation result)"]
    reason = val.get("reason") or ""
    if val.get("status") == "skipped":
        lines = [f"**NOT VALIDATED**{reason.removeprefix('NOT VALIDATED')}" if reason.startswith("NOT VALIDATED")
                 else f"**NOT VALIDATED**: {reason or 'validation skipped'}"]
    else:
        lines = [f"**validation {val.get('status')}**" + (f": {reason}" if reason else "")]
    # a reason several rows share is written once, as a numbered note under the table that first has it
    seen = [o.get("reason") for c in val.get("comparisons", []) for o in c.get("outputs") or [] if o.get("reason")]
    shared = {r for r in seen if seen.count(r) > 1}
    notes, said_once = {}, set()
    for comp in val.get("comparisons", []):
        why = comp.get("reason")
        said = why and reason in (why, f"{comp['name']}: {why}")  # the headline gave it already
        lines += ["", f"*{comp['name']}*: {comp['status']}" + (" (as above)" if said else f" ({why})" if why else "")]
        rows = comp.get("outputs") or []
        if not rows:
            continue
        fresh = []
        lines += ["", "| output | statistic | abs error | rel error | atol / rtol | held | status |",
                  "|---|---|---:|---:|---|---|---|"]
        for o in rows:
            status = o["status"]
            if o.get("reason") in shared:
                if o["reason"] not in notes:
                    notes[o["reason"]] = len(notes) + 1
                    fresh.append(o["reason"])
                status += f" (note {notes[o['reason']]})"
            elif o.get("reason"):
                status += f" ({o['reason']})"
            lines.append(_row(o, status))
        lines += ([""] + [f"{notes[r]}. {_cell(r)}" for r in fresh]) if fresh else []
        if "rule" not in said_once:  # the rule and what inconclusive means: once, under the first table
            said_once.add("rule")
            lines += ["", f"Rule: {RULE}."]
        if "inconclusive" not in said_once and any(o["status"] == "inconclusive" for o in rows):
            said_once.add("inconclusive")
            lines += ["", f"{EXPLAIN[0].upper()}{EXPLAIN[1:]}."]
    lines += _detections(val.get("detections"))
    for cov in ((val.get("data") or {}).get("coverage") or {}).values():
        if not cov.get("exercised", True):
            lines += ["", f"*data*: {cov['reason']}"]
    return lines


def _row(o, status):
    tol = f"{_num(o.get('atol'))} / {_num(o.get('rtol'))}" if o.get("atol") is not None else ""
    exact = o.get("exact")
    if exact:  # integer / bool outputs: compared exactly
        equal = f"{exact['equal']} of {exact['elements']} equal"
        held = "all equal" if exact["equal"] == exact["elements"] else ""
        return f"| `{o['output']}` | exact | {equal} | | {tol} | {held} | {status} |"
    maxed = o.get("statistic") not in (None, "max") and "max_abs" in o
    return (f"| `{o['output']}` | {o.get('statistic', '')} | {_num(o.get('value'))}"
            + (f" (max {_num(o.get('max_abs'))})" if maxed else "") + f" | {_num(o.get('value_rel'))}"
            + (f" (max {_num(o.get('max_rel'))})" if maxed else "") + f" | {tol} | {o.get('bound') or ''} | {status} |")


def _detections(dets):
    if not dets:
        return []
    lines = ["", f"*detections* (IoU >= {dets.get('iou_threshold')}, score atol {_num(dets.get('score_atol'))}): "
                 f"{dets.get('status')}" + (f" ({dets['reason']})" if dets.get("reason") else "")]
    if "matched" in dets:
        s = dets
        lines += ["", f"- source: {s['source_detections']} detections = {s['matched']} matched + "
                      f"{s['unmatched_source']} missing from the final model + "
                      f"{s.get('borderline_source', 0)} borderline",
                  f"- final: {s['final_detections']} detections = {s['matched']} matched + "
                  f"{s['unmatched_final']} extra + {s.get('borderline_final', 0)} borderline",
                  f"- {s.get('images', 0)} image(s), min IoU {_num(s.get('min_iou'))}, "
                  f"max score difference {_num(s.get('max_score_diff'))}, allowed unmatched "
                  f"{s.get('max_unmatched', 0)}",
                  "", f"{BORDERLINE[0].upper()}{BORDERLINE[1:]}."]
    return lines


def _times(rep):
    """Stage times and cache states: one table of stages (artifacts have their own)."""
    cache = (rep.get("cache") or {}).get("summary") or {}
    timings = rep.get("timings_s") or {}
    lines = ["", "## Stage times", "", "| stage | s | cache |", "|---|---:|---|"]
    return lines + [f"| {k} | {v:.2f} | {cache.get(k, '')} |" for k, v in timings.items()]


def _deploy(rep):
    """## Deployment: options, plan size (vs the weights left out when stripped), engine facts, and the
    command lines that build the same plan elsewhere (report.json `deploy`)."""
    dep = rep.get("deploy")
    if not dep:
        return []
    opts = ((rep.get("build") or {}).get("deployment") or {})
    lines = ["", "## Deployment", "",
             "- build options: " + (", ".join(f"`{k}: {json.dumps(v)}`" for k, v in opts.items())
                                    or "TensorRT's defaults (none of the deployment options set)")]
    size = dep.get("plan_bytes")
    if size is not None:
        text = f"- plan: {size} bytes ({_mib(size)})"
        if "onnx_weights_bytes" in dep:
            weights = dep["onnx_weights_bytes"]
            ratio = f"{100 * size / weights:.1f}%" if weights else "n/a"
            text += (f"; weights stripped: the final ONNX model's weights ({weights} bytes, {_mib(weights)}) are "
                     f"left out and refitted on the target (`python pipeline.py refit`); the plan is {ratio} "
                     "of their size")
        lines.append(text)
    facts = dep.get("engine_facts") or {}
    if facts.get("status") == "saved":
        lines.append(f"- engine facts: `{facts['file']}` (engine inspector, {facts.get('layers')} layers); "
                     "layers by output precision: "
                     + ", ".join(f"{k} {v}" for k, v in (facts.get("precisions") or {}).items()))
    else:
        lines.append(f"- engine facts: not available ({facts.get('reason') or 'not recorded'})")
    for tool, line in (dep.get("export") or {}).items():
        lines += ["", f"Build the same plan with {tool} (inside a copy of this directory):", "",
                  "```bash", line, "```"]
    return lines


def _num(x):
    return "" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))


def _mib(n):
    return "n/a" if n is None else f"{n / 2**20:.2f} MiB"


def _cell(text):
    return " ".join(str(text).split()).replace("|", "\\|")
