"""Stage 7: the build report (report.json + report.md) and the console summary table."""

import json
import platform
import sys
from importlib import metadata

from rich.table import Table

from .publish import atomic_write_bytes, sha256_file

_TOOLS = ["onnx", "onnxruntime", "tf2onnx", "tensorflow-cpu", "polygraphy", "onnx-graphsurgeon",
          "tensorrt", "tensorrt-rtx-cu13-bindings", "onnxruntime-ep-nv-tensorrt-rtx-cu13"]


def tool_versions():
    out = {"python": platform.python_version()}
    for dist in _TOOLS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def make_report(*, recipe, backend, source, pass_stats, build, validation, timings, ops_final,
                artifacts, options):
    return {
        "recipe": {"path": str(recipe.path), "sha256": recipe.sha256, "name": recipe.name,
                   "resolved": recipe.data},
        "tools": tool_versions(),
        "backend": {"name": backend.name, "version": backend.version,
                    "compute_capabilities": build.compute_capabilities},
        "source": {"kind": source.kind, "path": str(source.path), "opset": source.opset,
                   "nodes": len(source.model.graph.node)},
        "passes": pass_stats,
        "final_ops": ops_final,
        "validation": validation,
        "build": {"duration_s": round(build.duration_s, 3), "memory": build.memory,
                  "num_layers": build.num_layers, "warnings": build.warnings},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "artifacts": {name: {"size": path.stat().st_size, "sha256": sha256_file(path)}
                      for name, path in artifacts.items()},
        "options": {"validate": options.validate},
    }


def write(rep, json_path, md_path):
    atomic_write_bytes(json_path, (json.dumps(rep, indent=2, default=str) + "\n").encode())
    atomic_write_bytes(md_path, to_markdown(rep).encode())


def to_markdown(rep):
    lines = [f"# Build report: {rep['recipe']['name']}", "",
             f"- recipe: `{rep['recipe']['path']}` (sha256 `{rep['recipe']['sha256'][:16]}`)",
             f"- backend: {rep['backend']['name']} {rep['backend']['version']}, "
             f"compute capabilities {', '.join(rep['backend']['compute_capabilities'] or []) or 'n/a'}",
             f"- source: {rep['source']['kind']} ({rep['source']['nodes']} nodes, opset {rep['source']['opset']})",
             "", "## Stages", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in rep["timings_s"].items()]
    lines += ["", "## Passes", "", "| # | pass | nodes before | nodes after | seconds |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {p['index']} | {p['pass']} | {p['nodes_before']} | {p['nodes_after']} | {p['duration_s']:.2f} |"
              for p in rep["passes"]]
    val = rep["validation"]
    lines += ["", "## Validation", "", f"status: **{val['status']}**" + (f" ({val['reason']})" if val.get("reason") else "")]
    lines += ["", "## Artifacts", "", "| file | bytes | sha256 |", "|---|---:|---|"]
    lines += [f"| {n} | {a['size']} | `{a['sha256']}` |" for n, a in rep["artifacts"].items()]
    lines += ["", "## Tools", ""] + [f"- {k} {v}" for k, v in rep["tools"].items()]
    return "\n".join(lines) + "\n"


def summary_table(rep, published):
    table = Table(title=f"{rep['recipe']['name']}: done", header_style="bold")
    for col in ("stage", "seconds", "artifact", "bytes", "sha256"):
        table.add_column(col, justify="right" if col in ("seconds", "bytes") else "left")
    stages = list(rep["timings_s"].items())
    arts = [(name, rep["artifacts"][name]) for name in published if name in rep["artifacts"]]
    for i in range(max(len(stages), len(arts))):
        stage, secs = stages[i] if i < len(stages) else ("", None)
        name, art = arts[i] if i < len(arts) else ("", None)
        table.add_row(stage, f"{secs:.2f}" if secs is not None else "", name,
                      str(art["size"]) if art else "", art["sha256"][:16] if art else "")
    val = rep["validation"]
    nodes = f"nodes {rep['passes'][0]['nodes_before']} -> {rep['passes'][-1]['nodes_after']}; " if rep["passes"] else ""
    table.caption = (f"{nodes}validation {val['status']}" + (f" ({val['reason']})" if val.get("reason") else "")
                     + f"; output in {next(iter(published.values())).parent if published else '-'}")
    return table
