"""The precision stage, cached: realizes the recipe's `precision` in the graph (TensorRT 11 and
TensorRT-RTX are strongly typed: there are no builder precision flags). Reduced precisions run
the model on the validation data (calibration, fp16 overflow checks), fed through the input
contract the passes recorded."""

from __future__ import annotations

import functools
import tempfile
import types
from pathlib import Path
from typing import TYPE_CHECKING

from trtpipe.cache.files import external_files
from trtpipe.stages.run_state import ModelRef

if TYPE_CHECKING:
    from trtpipe.registry import PassContext
    from trtpipe.stages.run_state import RunState


def run(state: RunState, cur: ModelRef, source: types.SimpleNamespace, source_path: Path,
        ctx: PassContext) -> tuple[ModelRef, dict, dict[str, int]]:
    """Returns (ModelRef of the final model, precision stats, op histogram of the final model)."""
    recipe, ui, backend = state.recipe, state.ui, state.backend
    cfg = recipe.data["precision"]  # normalized by the recipe loader
    ui.stage("precision", cfg["mode"])
    key = state.keys.precision(cur.sha, source.sha, ctx.input_contract)
    entry = state.lookup("precision", key, "precision", verify=None)
    if entry is not None:
        meta = entry.meta
        ctx.input_contract = meta["input_contract"]
        state.timings["precision"] = ui.done(f"cached: {_summary(cfg, meta['stats'])}")
        if meta.get("same_as_input"):  # fp32: the model is the input's, held by the entry before
            # verified as this entry's own model would have been at lookup: a corrupt or missing
            # file raises CorruptEntry (discarded, the run starts over without it)
            cur.entry.verify(cur.entry.model_files())
            return cur, meta["stats"], meta["ops_final"]
        return ModelRef(meta["model_sha"], entry), meta["stats"], meta["ops_final"]
    # imported past the cache hit: a fully cached run loads neither onnx nor numpy (issue 13)
    from trtpipe.graph.types import LOW, np_low_dtype
    from trtpipe.stages.passes.runner import op_histogram
    from trtpipe.stages.precision.mixed import apply_precision
    if cfg["mode"] != "fp32":  # fp32 runs nothing: ONNX Runtime and Polygraphy stay unimported
        state.quiet()
    model = cur.load()
    feeds = make_feeds = None
    if cfg["mode"] != "fp32":
        make_feeds = functools.partial(_final_feeds, recipe, source_path, ctx, model)
        feeds = make_feeds(recipe.data["validate"]["data"])
    ccs = recipe.data["build"]["compute_capabilities"] if backend.name == "tensorrt_rtx" else []
    # weights converted from external data are streamed to a scratch file, then stored in the entry
    streamed = bool(external_files(model)) and cfg["mode"] != "fp32"
    scratch = None
    if streamed:
        state.cache.tmp_dir.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.TemporaryDirectory(dir=state.cache.tmp_dir, prefix="precision-scratch-")
    model, stats = apply_precision(model, recipe.data["precision"], compute_capabilities=ccs, data_feeds=feeds,
                                   locate=recipe.locate, log=ui.detail, recipe_dir=recipe.dir, make_feeds=make_feeds,
                                   scratch_dir=scratch.name if scratch else None)
    for name, dtype in (stats.get("io_types_changed") or {}).items():
        # keep_io_types: false changed a graph input's type: validation data must follow. The
        # contract's cast steps name numpy dtypes ("float16"); the stats use precision names ("fp16").
        if name in ctx.input_contract:
            ctx.input_contract[name]["steps"].append({"op": "cast", "to": np_low_dtype(LOW[dtype]).name})
    ops_final = op_histogram(model)
    unchanged = model is cur.model  # fp32: apply_precision hands the model back as it was
    with state.cache.writer("precision", key) as w:
        # an unchanged model is not stored again (for a zoo ResNet-50, 100 MB serialized, hashed
        # and written for nothing): the entry records that the stage's output is its input
        sha = cur.sha if unchanged else w.save_model(model)
        w.meta = {"model_sha": sha, "stats": stats, "input_contract": ctx.input_contract, "ops_final": ops_final,
                  "same_as_input": unchanged}
        entry = w.commit("precision")
    if scratch is not None:
        scratch.cleanup()
    state.timings["precision"] = ui.done(_summary(cfg, stats))
    if unchanged:
        return cur, stats, ops_final
    # a model streamed through the scratch file is read back from the entry when needed
    return ModelRef(sha, entry, None if streamed else model), stats, ops_final


def _summary(cfg, stats):
    kept = len(stats.get("kept_fp32") or {})
    return f"{cfg['mode']}" + (f", {kept} node(s) kept in fp32" if cfg["mode"] != "fp32" else "")


def _final_feeds(recipe, source_path, ctx, model, data_cfg):
    """Feeds for `model`'s inputs derived from source-side data through the input contract."""
    from trtpipe.stages.validate.data import apply_contract, graph_io, make_source_feeds, model_io
    src_in, _ = model_io(str(source_path))
    feeds, _ = make_source_feeds(data_cfg, src_in, ctx.input_contract, base_dir=recipe.dir, locate=recipe.locate)
    fin_in, _ = graph_io(model.graph)  # in memory: no need to serialize the model to read its inputs
    return [apply_contract(f, ctx.input_contract, fin_in) for f in feeds]
