"""Which stages of a recipe the stage cache already holds (for `explain`), computed from cache
keys alone: nothing is converted, run or built, and TensorFlow is not imported. Looking is no
use: entries keep their last-use times (`cache prune --older-than` goes by those)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from trtpipe.cache.keys import Keys
from trtpipe.cache.store import Cache, resolve_dir

if TYPE_CHECKING:
    from trtpipe.recipe.load import Recipe


def stage_status(recipe: str | Path | Recipe, cache_dir: str | Path | None = None) -> dict[str, str]:
    """{stage label: "cached" | "would run"} for `recipe` (a path or a loaded Recipe). Labels:
    source, passes[i], precision, validate, build, publish (stage_order.stage_labels). A stage
    whose key depends on an earlier output that is not cached "would run". Disabled passes are
    "skipped"; publish always runs."""
    from trtpipe.backend import has_runtime_gpu, resolve_backend
    from trtpipe.recipe.load import load_recipe
    from trtpipe.stages.order import stage_labels
    if not hasattr(recipe, "data"):
        recipe = load_recipe(recipe)
    labels = stage_labels(len(recipe.data["passes"]))
    status = {label: "would run" for label in labels}
    root, _ = resolve_dir(cache_dir)
    try:
        backend = resolve_backend(recipe.data["build"]["backend"])
    except Exception:
        return status
    if not (root / "entries").is_dir():
        return status
    cache = Cache(root)
    keys = Keys(recipe, backend, cache.hasher)
    try:
        key = keys.source()
    except OSError:
        return status
    entry = cache.get("source", key, verify=(), touch=False) if key else None
    if entry is None:
        return status
    status["source"] = "cached"
    # each key needs the previous stage's output sha (and pass state): walk until one is missing
    source_sha = cur = entry.meta["model_sha"]
    state = {"input_contract": entry.meta["input_contract"], "output_map": {}, "postprocess": None, "artifacts": {}}
    for i, item in enumerate(recipe.data["passes"]):
        if not item.get("enabled", True):
            status[f"passes[{i}]"] = "skipped"
            continue
        entry = cache.get("pass", keys.pass_(i, item, cur, state), verify=(), touch=False)
        if entry is None:
            return status
        status[f"passes[{i}]"] = "cached"
        cur, state = entry.meta["model_sha"], entry.meta["ctx"]
    entry = cache.get("precision", keys.precision(cur, source_sha, state["input_contract"]), verify=(), touch=False)
    if entry is None:
        return status
    status["precision"] = "cached"
    final, state = entry.meta["model_sha"], dict(state, input_contract=entry.meta["input_contract"])
    gpu_ok, _ = has_runtime_gpu(backend, recipe.data["build"]["compute_capabilities"])
    build = cache.get("build", keys.build(final), verify=(), touch=False)
    if build is not None:
        status["build"] = "cached"
    # validation is keyed by the plan only where a GPU can run it (it then runs after the build)
    plan_sha = build.meta["plan_sha"] if (gpu_ok and build is not None) else None
    if not gpu_ok or plan_sha:
        if cache.get("validate", keys.validate(source_sha, final, state, plan_sha), verify=(), touch=False) is not None:
            status["validate"] = "cached"
    return status
