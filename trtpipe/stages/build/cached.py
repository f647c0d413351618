"""The build stage, cached: the final ONNX model -> a serialized plan (build.py), keyed by the
model, build settings, backend and target device. Unless the recipe names a timing cache, one
per backend + device is kept in the cache directory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from trtpipe.stages.build.result import BuildResult

if TYPE_CHECKING:
    from trtpipe.stages.run_state import ModelRef, RunState


def run(state: RunState, final: ModelRef, final_path: Path, plan_path: Path) -> tuple[BuildResult, str]:
    """Returns (BuildResult, the plan's sha256); the plan is copied to `plan_path`."""
    recipe, ui, backend = state.recipe, state.ui, state.backend
    ui.stage("build", f"{backend.name} {backend.version}")
    key = state.keys.build(final.sha)
    entry = state.lookup("build", key, "build", verify=["plan"])
    if entry is not None:
        shutil.copyfile(entry.path("plan"), plan_path)
        summary = dict(entry.meta["summary"])
        size = summary.pop("plan_bytes")
        result = BuildResult(plan=b"", **summary)
        state.timings["build"] = ui.done(f"cached: plan {size / 2**20:.2f} MiB")
        return result, entry.meta["plan_sha"]
    from trtpipe.stages.build.isolated import build_in_child  # past the cache hit: it imports onnx
    build_cfg = dict(recipe.data["build"])
    implicit = not build_cfg.get("timing_cache") and not backend.is_rtx  # RTX: no timing cache (plan.py)
    if implicit:
        build_cfg["timing_cache"] = str(state.cache.timing_cache_path(backend, state.keys.device()))
    with ui.working(f"parsing and building with {backend.name}"):
        # parser/builder crashes become BuildErrors; the plan is streamed to plan_path, not held in memory
        result = build_in_child(state, final_path, build_cfg, plan_file=plan_path)
    if implicit:  # the recipe did not ask for a timing cache: no notes about it in the report
        result.warnings = [w for w in result.warnings if "timing cache" not in w]
        result.timing_cache = None
    with state.cache.writer("build", key) as w:
        if result.plan_file:
            w.add_file("plan", result.plan_file)
        else:
            (w.dir / "plan").write_bytes(result.plan)
        sha = state.cache.hasher.file(w.dir / "plan")  # remembered: commit does not read it again
        w.meta = {"summary": result.summary(), "plan_sha": sha}
        entry = w.commit("build")
    if not result.plan_file:
        shutil.copyfile(entry.path("plan"), plan_path)
    state.timings["build"] = ui.done(f"plan {result.summary()['plan_bytes'] / 2**20:.2f} MiB")
    return result, sha
