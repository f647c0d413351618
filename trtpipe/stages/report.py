"""Last stage: the build report (report.json, described by schemas/report.schema.json, and
report.md for pull requests) and the console summary table."""

from __future__ import annotations

import json
import platform
import types
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from trtpipe.stages.publish import atomic_write_bytes, sha256_file
from trtpipe.stages.validate.detections import BORDERLINE
from trtpipe.stages.validate.informative import EXPLAIN, RULE

if TYPE_CHECKING:
    from trtpipe.backend import Backend
    from trtpipe.recipe.load import Recipe
    from trtpipe.stages.build.plan import BuildResult
    from trtpipe.stages.run_state import RunOptions

_TOOLS = ["onnx", "onnxruntime", "tf2onnx", "tensorflow-cpu", "tensorflow", "polygraphy", "onnx-graphsurgeon",
          "tensorrt", "tensorrt-rtx-cu13-bindings", "onnxruntime-ep-nv-tensorrt-rtx-cu13", "onnxconverter-common"]


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in _TOOLS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def make_report(*, recipe: Recipe, backend: Backend, source: types.SimpleNamespace, pass_stats: list[dict],
                build: BuildResult, validation: dict, timings: dict[str, float], ops_final: dict[str, int],
                artifacts: dict[str, Path], options: RunOptions, precision: dict | None = None) -> dict[str, Any]:
    return {
        "recipe": {"path": str(recipe.path), "sha256": recipe.sha256, "name": recipe.name,
                   "resolved": recipe.data},
        "tools": tool_versions(),
        "backend": {"name": backend.name, "version": backend.version,
                    "compute_capabilities": build.compute_capabilities},
        "source": {"kind": source.kind, "path": str(source.path), "opset": source.opset,
                   "nodes": _nodes(source), "versions": source.versions},
        "passes": pass_stats,
        "final_ops": ops_final,
        "precision": precision or {"mode": "fp32"},
        "validation": validation,
        "build": {"duration_s": round(build.duration_s, 3), "memory": build.memory,
                  "num_layers": build.num_layers, "warnings": build.warnings,
                  "inputs": build.inputs, "outputs": build.outputs, "reproducible": build.reproducible},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "artifacts": {name: {"size": path.stat().st_size, "sha256": sha256_file(path)}
                      for name, path in artifacts.items()},
        "options": {"validate": options.validate},
    }


def _nodes(source):
    """Node count of the source model (a cached source stage gives the count, not the model)."""
    nodes = getattr(source, "nodes", None)
    return nodes if nodes is not None else len(source.model.graph.node)


def write(rep: dict, json_path: str | Path, md_path: str | Path) -> None:
    atomic_write_bytes(json_path, (json.dumps(rep, indent=2, default=str) + "\n").encode())
    atomic_write_bytes(md_path, to_markdown(rep).encode())


def _op_changes(before, after):
    """'-Loop 1, +Transpose 1' : what a pass did, in op counts."""
    parts = []
    for op in sorted(set(before) | set(after)):
        delta = after.get(op, 0) - before.get(op, 0)
        if delta:
            parts.append(f"{'+' if delta > 0 else '-'}{op} {abs(delta)}")
    return ", ".join(parts) or "no op-count change"


def _num(x):
    return "" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))


def _mib(n):
    return "n/a" if n is None else f"{n / 2**20:.2f} MiB"


def _precision_md(prec):
    counts = lambda d: ", ".join(f"{k} {v}" for k, v in sorted((d or {}).items()))  # noqa: E731
    text = prec.get("mode", "fp32")
    if prec.get("nodes"):
        text += f" (nodes: {counts(prec['nodes'])}; initializers: {counts(prec.get('initializers'))}"
        text += f"; Q/DQ pairs {prec['qdq_pairs']})" if prec.get("qdq_pairs") else ")"
    return text


def validation_headline(val: dict) -> str:
    """One line on what validation showed, for the summary: "validation passed", "validation
    inconclusive", "validation failed", or "NOT VALIDATED (<why>)" when it did not run."""
    if val.get("status") == "skipped":
        return f"NOT VALIDATED ({val.get('skipped_by') or val.get('reason') or 'validation skipped'})"
    return f"validation {val.get('status')}"


def _validation_md(val):
    reason = val.get("reason") or ""
    if val["status"] == "skipped":
        lines = [f"**NOT VALIDATED**{reason.removeprefix('NOT VALIDATED')}" if reason.startswith("NOT VALIDATED")
                 else f"**NOT VALIDATED**: {reason or 'validation skipped'}"]
    else:
        lines = [f"**{validation_headline(val)}**" + (f": {reason}" if reason else "")]
    for comp in val.get("comparisons", []):
        lines += ["", f"*{comp['name']}*: {comp['status']}" + (f" ({comp['reason']})" if comp.get("reason") else "")]
        rows = comp.get("outputs") or []
        if rows:
            lines += ["", "| output | statistic | abs error | rel error | atol / rtol | held | status |",
                      "|---|---|---:|---:|---|---|---|"]
            for o in rows:
                tol = f"{_num(o.get('atol'))} / {_num(o.get('rtol'))}" if o.get("atol") is not None else ""
                status = o["status"] + (f" ({o['reason']})" if o.get("reason") else "")
                maxed = o.get("statistic") not in (None, "max") and "max_abs" in o
                lines.append(f"| `{o['output']}` | {o.get('statistic', '')} | {_num(o.get('value'))}"
                             + (f" (max {_num(o.get('max_abs'))})" if maxed else "") + f" | {_num(o.get('value_rel'))}"
                             + (f" (max {_num(o.get('max_rel'))})" if maxed else "")
                             + f" | {tol} | {o.get('bound') or ''} | {status} |")
            lines += ["", f"Rule: {RULE}."]
            if any(o["status"] == "inconclusive" for o in rows):
                lines += ["", f"{EXPLAIN[0].upper()}{EXPLAIN[1:]}."]
    dets = val.get("detections")
    if dets:
        lines += ["", f"*detections* (IoU >= {dets.get('iou_threshold')}, score atol {_num(dets.get('score_atol'))}): "
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
    for cov in ((val.get("data") or {}).get("coverage") or {}).values():
        if not cov.get("exercised", True):
            lines += ["", f"*data*: {cov['reason']}"]
    return lines


def to_markdown(rep: dict) -> str:
    b, mem = rep["backend"], rep["build"]["memory"] or {}
    lines = [f"# Build report: `{rep['recipe']['name']}`", "",
             f"- recipe: `{rep['recipe']['path']}` (sha256 `{rep['recipe']['sha256'][:16]}…`)",
             f"- backend: {b['name']} {b['version']}, compute capabilities "
             f"{', '.join(b['compute_capabilities'] or []) or 'the build GPU'}",
             f"- source: {rep['source']['kind']}, {rep['source']['nodes']} nodes, opset {rep['source']['opset']}",
             f"- precision: {_precision_md(rep['precision'])}",
             f"- builder memory: activations {_mib(mem.get('activation_bytes'))}, "
             f"weights {_mib(mem.get('weights_bytes'))}; {rep['build']['num_layers']} network layers",
             f"- plan reproducible: {rep['build'].get('reproducible') or 'unknown'}",
             "", "## Passes", "", "| # | pass | nodes | op changes | s |", "|---:|---|---|---|---:|"]
    lines += [f"| {p['index']} | `{p['pass']}` | {p['nodes_before']} → {p['nodes_after']} | "
              f"{_op_changes(p['ops_before'], p['ops_after'])} | {p['duration_s']:.2f} |" for p in rep["passes"]]
    warned = [(p, w) for p in rep["passes"] for w in p.get("warnings") or []]
    if warned:
        lines += ["", "**Pass warnings** (what a pass could not do; validation compared every profile corner):", ""]
        lines += [f"- passes[{p['index']}] `{p['pass']}`: {w}" for p, w in warned]
    lines += ["", "## Validation", ""] + _validation_md(rep["validation"])
    cache = (rep.get("cache") or {}).get("summary") or {}
    lines += ["", "## Stage times", "", "| stage | s | cache |", "|---|---:|---|"]
    lines += [f"| {k} | {v:.2f} | {cache.get(k, '')} |" for k, v in rep["timings_s"].items()]
    lines += ["", "## Artifacts", "", "| file | bytes | sha256 |", "|---|---:|---|"]
    lines += [f"| `{n}` | {a['size']} | `{a['sha256']}` |" for n, a in rep["artifacts"].items()]
    if rep["build"]["warnings"]:
        lines += ["", "## Builder warnings", ""] + [f"- {w}" for w in rep["build"]["warnings"]]
    lines += ["", "<details><summary>Tool versions</summary>", ""]
    lines += [f"- {k} {v}" for k, v in rep["tools"].items()] + ["", "</details>"]
    return "\n".join(lines) + "\n"


def summary_table(rep: dict, published: dict[str, Path]) -> Table:
    table = Table(title=f"{rep['recipe']['name']}: done", header_style="bold")
    for col in ("stage", "seconds", "cache", "artifact", "bytes", "sha256"):
        table.add_column(col, justify="right" if col in ("seconds", "bytes") else "left")
    stages = list(rep["timings_s"].items())
    cache = (rep.get("cache") or {}).get("summary") or {}
    arts = [(name, rep["artifacts"][name]) for name in published if name in rep["artifacts"]]
    for i in range(max(len(stages), len(arts))):
        stage, secs = stages[i] if i < len(stages) else ("", None)
        name, art = arts[i] if i < len(arts) else ("", None)
        table.add_row(stage, f"{secs:.2f}" if secs is not None else "", cache.get(stage, ""), name,
                      str(art["size"]) if art else "", art["sha256"][:16] if art else "")
    val = rep["validation"]
    nodes = f"nodes {rep['passes'][0]['nodes_before']} -> {rep['passes'][-1]['nodes_after']}; " if rep["passes"] else ""
    states = list(cache.values())
    reused = ("all stages cached; " if states and all(s == "cached" for s in states) else
              f"{sum(s == 'cached' for s in states)} of {len(states)} stages cached; " if states else "")
    why = val.get("reason") if val.get("status") != "skipped" else None  # the headline says why it did not run
    table.caption = (f"{nodes}{reused}{validation_headline(val)}" + (f" ({why})" if why else "")
                     + f"; output in {next(iter(published.values())).parent if published else '-'}")
    return table
