"""The passes stage, cached per pass: each enabled pass is keyed by its input model, parameters,
code and the state earlier passes handed on (cache_keys.ctx_state). A cached pass restores that
state and its artifacts into the PassContext instead of running; the first pass that must run
loads its input model from the cache entry before it."""

from __future__ import annotations

import copy
import shutil
from typing import TYPE_CHECKING, Any

from trtpipe.cache.keys import ctx_state
from trtpipe.stages.run_state import ModelRef

if TYPE_CHECKING:
    from trtpipe.registry import PassContext
    from trtpipe.stages.run_state import RunState


def run(state: RunState, cur: ModelRef, ctx: PassContext, staging: Any,
        source_nodes: int) -> tuple[ModelRef, list[dict]]:
    """Run or restore every enabled pass on `cur` (a ModelRef); returns (final ModelRef, stats).
    `staging` is the run's stages.publish.Staging (restored artifacts are copied into it)."""
    recipe, ui, cache = state.recipe, state.ui, state.cache
    ui.stage("passes")
    stats, cached = [], 0
    graph = None  # the graph form of `cur`, while the passes run in this process
    for index, item in recipe.enabled_passes():
        label = f"passes[{index}]"
        key = state.keys.pass_(index, item, cur.sha, ctx_state(ctx, cache.hasher))
        entry = state.lookup("pass", key, label,
                             verify=[f"artifacts/{n}" for n in cache.pass_artifact_names(key)])
        if entry is not None:
            ui.step(_step_line(label, item["pass"], entry.meta["stats"], "cached"))
            _restore(entry, ctx, staging, ui)
            stats.append(entry.meta["stats"])
            cur, cached, graph = ModelRef(entry.meta["model_sha"], entry), cached + 1, None
            state.pass_models.append((label, cur, copy.deepcopy(entry.meta["ctx"])))
            continue
        from trtpipe.stages.passes.runner import apply_pass, import_graph
        state.quiet()
        before = ctx_state(ctx, cache.hasher)["artifacts"]
        notes = len(ctx.notes)
        with ui.working(f"{label} {item['pass']}"):
            # the graph the previous pass left, if it ran in this process: not imported again
            graph = graph if graph is not None else import_graph(cur.load())
            graph, model, stat = apply_pass(graph, cur.load(), index, item, recipe, ctx)
        ui.step(_step_line(label, item["pass"], stat, "ran"))
        after = ctx_state(ctx, cache.hasher)
        new = sorted(n for n, sha in after["artifacts"].items() if before.get(n) != sha)
        with cache.writer("pass", key) as w:
            sha = w.save_model(model)
            for name in new:  # only what this pass wrote; earlier passes' artifacts are in their entries
                w.add_file(f"artifacts/{name}", ctx.artifacts[name])
            w.meta = {"model_sha": sha, "stats": stat, "ctx": after, "artifact_files": new,
                      "notes": ctx.notes[notes:]}
            entry = w.commit(label)
        stats.append(stat)
        cur = ModelRef(sha, entry, model)
        state.pass_models.append((label, cur, copy.deepcopy(after)))  # later passes edit ctx in place
    n_after = stats[-1]["nodes_after"] if stats else source_nodes
    note = f" ({cached} cached)" if cached and cached < len(stats) else " (cached)" if cached else ""
    state.timings["passes"] = ui.done(f"{source_nodes} -> {n_after} nodes{note}")
    return cur, stats


def _step_line(label, name, stats, status):
    """`passes[3] nms  221 -> 169 nodes (-52)  0.17s`, or `passes[3] nms (cached)  221 -> 169 nodes
    (-52)` (rich markup; the name escaped)."""
    from rich.markup import escape
    before, after = stats["nodes_before"], stats["nodes_after"]
    cached = status == "cached"
    warned = f" [yellow]{len(stats['warnings'])} warning(s)[/]" if stats.get("warnings") else ""
    return (f"{label} {escape(name)}{' [dim](cached)[/]' if cached else ''}  {before} -> {after} nodes "
            f"({after - before:+d})" + ("" if cached else f"  [dim]{stats['duration_s']:.2f}s[/]") + warned)


def _restore(entry, ctx, staging, ui):
    """Put a cached pass's effects in place: its notes, its artifacts and the context it left."""
    meta = entry.meta
    warnings = meta["stats"].get("warnings") or []
    for note in meta["notes"]:
        if note not in warnings:
            ui.detail(note)
    for warning in warnings:  # shown on every run, cached or not
        ui.warn(warning)
    ctx.warnings.extend(warnings)
    for name in meta["artifact_files"]:
        shutil.copyfile(entry.path(f"artifacts/{name}"), staging.path(name))
    saved = meta["ctx"]
    ctx.input_contract, ctx.output_map, ctx.postprocess = (
        saved["input_contract"], saved["output_map"], saved["postprocess"])
    ctx.artifacts = {name: staging.path(name) for name in saved["artifacts"]}
