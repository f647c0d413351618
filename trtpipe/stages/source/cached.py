"""The source stage, cached: the recipe's model as ONNX (a SavedModel, frozen graph or TFLite file
is converted once per content, converter options and tool versions), copied into the staging
directory. A cached source is not loaded into memory: its metadata says everything the report needs."""

from __future__ import annotations

import types
from pathlib import Path
from typing import TYPE_CHECKING

from trtpipe.cache.files import MODEL, copy_model
from trtpipe.recipe.resolved import SOURCE_KINDS, TF_SOURCE_KINDS
from trtpipe.stages.run_state import ModelRef

if TYPE_CHECKING:
    from trtpipe.stages.run_state import RunState


def run(state: RunState, source_path: Path) -> tuple[types.SimpleNamespace, ModelRef]:
    """Returns (source info for the report, ModelRef of the source model)."""
    recipe, ui = state.recipe, state.ui
    src = recipe.data["source"]
    ui.stage("source", _label(src))
    key = state.keys.source()
    entry = state.lookup("source", key, "source", verify=None)
    if entry is not None:
        copy_model(entry.path(MODEL), source_path)
        source = _info(entry.meta, path=next(src[k] for k in SOURCE_KINDS if src.get(k)))
        state.timings["source"] = ui.done(f"cached: {source.kind}, {source.nodes} nodes, opset {source.opset}")
        return source, ModelRef(source.sha, entry)
    from trtpipe.stages.build.isolated import BuildWorker
    from trtpipe.stages.passes.runner import initial_input_contract
    from trtpipe.stages.source.load import load_source
    # A conversion runs: start the build process now, so that importing the backend there overlaps
    # with it (a cached build simply never uses it).
    if state.will_build:
        state.build_worker = state.build_worker or BuildWorker.start(state.backend.name)
    state.quiet()
    with ui.working("loading and checking the model" if src.get("onnx") else "converting with tf2onnx"):
        loaded = load_source(src, locate=recipe.locate, log=ui.detail)
    with state.cache.writer("source", key) as w:
        sha = w.save_model(loaded.model)
        w.meta = {"model_sha": sha, "kind": loaded.kind, "opset": loaded.opset, "versions": loaded.versions,
                  "nodes": len(loaded.model.graph.node), "input_contract": initial_input_contract(loaded.model),
                  "timings": {k: round(v, 3) for k, v in loaded.timings.items()}}
        entry = w.commit("source")
    copy_model(entry.path(MODEL), source_path)
    source = _info(w.meta, path=loaded.path)
    state.timings["source"] = ui.done(f"{source.kind}: {source.nodes} nodes, opset {source.opset}")
    return source, ModelRef(sha, entry, loaded.model)


def _info(meta, path):
    return types.SimpleNamespace(kind=meta["kind"], path=path, opset=meta["opset"], versions=meta["versions"],
                                 nodes=meta["nodes"], input_contract=meta["input_contract"], sha=meta["model_sha"])


def _label(src):
    if "onnx" in src:
        return f"ONNX {src['onnx']}"
    kind = next(k for k in TF_SOURCE_KINDS if src.get(k))
    what = {"saved_model": "SavedModel", "frozen_graph": "frozen graph", "tflite": "TFLite"}[kind]
    return f"{what} {src[kind]} (tf2onnx, opset {src['opset']})"
