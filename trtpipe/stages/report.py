"""Last stage: the build report (report.json, described by schemas/report.schema.json, and
report.md for pull requests, written by report_md.py, with the pictures of report_pictures.py)
and the console summary: one table of stages (time, cache), one of artifacts (bytes, sha256)."""

from __future__ import annotations

import json
import os
import platform
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from trtpipe.fileguard import default_file_mode
from trtpipe.stages.publish import sha256_file
from trtpipe.stages.report_md import to_markdown

if TYPE_CHECKING:
    from trtpipe.backend import Backend
    from trtpipe.recipe.load import Recipe
    from trtpipe.stages.build.plan import BuildResult
    from trtpipe.stages.run_state import RunOptions

__all__ = ["make_report", "summary_table", "tool_versions", "to_markdown", "validation_headline", "write"]

_TOOLS = ["trt-pipeline", "onnx", "onnxruntime", "tf2onnx", "tensorflow-cpu", "tensorflow", "polygraphy",
          "onnx-graphsurgeon", "tensorrt", "tensorrt-rtx-cu13-bindings", "onnxruntime-ep-nv-tensorrt-rtx-cu13",
          "onnxconverter-common", "numpy", "pillow"]


def tool_versions() -> dict[str, str]:
    """{distribution: version} of Python, this tool and every library a run uses that is installed."""
    from trtpipe.cache.hashing import versions  # looked up once per process, shared with the cache keys
    return {"python": platform.python_version(), **{k: v for k, v in versions(*_TOOLS).items() if v is not None}}


def make_report(*, recipe: Recipe, backend: Backend, source: types.SimpleNamespace, pass_stats: list[dict],
                build: BuildResult, validation: dict, timings: dict[str, float], ops_final: dict[str, int],
                artifacts: dict[str, Path], options: RunOptions, precision: dict | None = None,
                pictures: dict | None = None) -> dict[str, Any]:
    """The report (report.json's content; schemas/report.schema.json): recipe (path, sha256,
    resolved values), tool and backend versions, source, per-pass stats, precision, validation,
    build (seconds, builder memory in bytes, plan inputs/outputs), stage times in seconds, every
    artifact's size in bytes and sha256, and the pictures report.md links."""
    rep = {
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
                  "inputs": build.inputs, "outputs": build.outputs, "reproducible": build.reproducible,
                  "deployment": getattr(build, "deployment", None) or {}},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        # peak resident memory of the run when each stage ended, bytes (run_state.StageTimings)
        "peak_memory_bytes": dict(getattr(timings, "peak_rss", {})),
        "artifacts": {name: {"size": path.stat().st_size, "sha256": sha256_file(path)}
                      for name, path in artifacts.items()},
        "options": {"validate": options.validate},
    }
    if pictures is not None:
        rep["pictures"] = pictures
    return rep


def _nodes(source):
    """Node count of the source model (a cached source stage gives the count, not the model)."""
    nodes = getattr(source, "nodes", None)
    return nodes if nodes is not None else len(source.model.graph.node)


def write(rep: dict, json_path: str | Path, md_path: str | Path) -> None:
    """Write report.json and report.md into the run's staging directory, readable like every other
    published file (0666 less the umask). Nobody reads the staging directory, and publishing
    syncs every file it moves out of it (publish.py), so the files are not synced here."""
    for path, data in ((json_path, (json.dumps(rep, indent=2, default=str) + "\n").encode()),
                       (md_path, to_markdown(rep).encode())):
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, default_file_mode())



def validation_headline(val: dict) -> str:
    """One line on what validation showed, for the summary: "validation passed", "validation
    inconclusive", "validation failed", or "NOT VALIDATED (<why>)" when it did not run."""
    if val.get("status") == "skipped":
        return f"NOT VALIDATED ({val.get('skipped_by') or val.get('reason') or 'validation skipped'})"
    return f"validation {val.get('status')}"


def summary_table(rep: dict, published: dict[str, Path]) -> Group:
    """The console summary: the stages (seconds, cache), then the published artifacts (bytes,
    sha256 prefix), as two tables, and a caption line (nodes, cache, validation, output dir)."""
    stages = Table(title=f"{rep['recipe']['name']}: done", header_style="bold")
    for col in ("stage", "seconds", "cache"):
        stages.add_column(col, justify="right" if col == "seconds" else "left")
    cache = (rep.get("cache") or {}).get("summary") or {}
    for stage, secs in rep["timings_s"].items():
        stages.add_row(stage, f"{secs:.2f}", cache.get(stage, ""))
    artifacts = Table(title="artifacts", header_style="bold")
    for col in ("artifact", "bytes", "sha256"):
        artifacts.add_column(col, justify="right" if col == "bytes" else "left", overflow="fold")
    for name in published:
        art = rep["artifacts"].get(name)
        if art:
            artifacts.add_row(escape(name), str(art["size"]), art["sha256"][:16])
    val = rep["validation"]
    nodes = f"nodes {rep['passes'][0]['nodes_before']} -> {rep['passes'][-1]['nodes_after']}; " if rep["passes"] else ""
    states = list(cache.values())
    reused = ("all stages cached; " if states and all(s == "cached" for s in states) else
              f"{sum(s == 'cached' for s in states)} of {len(states)} stages cached; " if states else "")
    why = val.get("reason") if val.get("status") != "skipped" else None  # the headline says why it did not run
    artifacts.caption = escape(f"{nodes}{reused}{validation_headline(val)}" + (f" ({why})" if why else "")
                               + f"; output in {next(iter(published.values())).parent if published else '-'}")
    return Group(stages, artifacts)
