"""The report's `deploy` section, made at the end of a run: what predict needs from the passes (input
contract, output map, post-processing wiring), the labels file published next to the plan, the
engine's facts and the command lines that build the same plan elsewhere (deploy/export.py).

Engine facts come from TensorRT's engine inspector (`IEngineInspector`, layer information as JSON,
saved as `<name>.layers.json`) with a per-layer precision summary; the inspector needs a
deserialized engine, so only where a GPU can run the plan. Everywhere else the section says it was
not available and why.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from trtpipe.backend import has_runtime_gpu
from trtpipe.deploy.export import export_lines
from trtpipe.errors import RecipeError

# Data types the inspector writes in a layer's "Format/Datatype" (e.g. "Row major linear FP16 format").
_DTYPES = ("FP32", "FP16", "BF16", "FP8", "FP4", "INT8", "INT4", "Int32", "Int64", "Bool", "UInt8")


def deploy_section(*, recipe: Any, backend: Any, ctx: Any, staging: Any, plan_path: Path,
                   final_path: Path, build_result: Any) -> tuple[dict[str, Any], list[str]]:
    """report.json's `deploy` section and the names of the files it adds to the published set.

    Args:
        recipe: the loaded Recipe (resolved data, locate).
        backend: the Backend that built the plan.
        ctx: the PassContext the passes filled (input_contract, output_map, postprocess).
        staging: the run's Staging (files added here are published with the run).
        plan_path: the staged plan.
        final_path: the staged final ONNX model.
        build_result: the BuildResult (deployment options set, compute capabilities).

    Returns:
        ({"input_contract", "output_map", "postprocess", "labels" (published file name or None),
        "engine_facts" ({"status": "saved", "file", "layers", "precisions"} or {"status":
        "not available", "reason"}), "plan_bytes", "onnx_weights_bytes" (with strip_weights),
        "export": {"trtexec", "polygraphy"}}, [added file names]).

    Raises:
        RecipeError: output.labels names a file that does not exist (at its recipe line).
    """
    out = recipe.data["output"]
    added = []
    labels = None
    if out.get("labels"):
        src = Path(out["labels"])
        if not src.is_file():
            raise RecipeError(f"{recipe.locate(('output', 'labels'))}: output.labels: {src} does not exist",
                              hint="give a text file with one class name per line, or a JSON list")
        labels = "labels" + (src.suffix.lower() if src.suffix.lower() == ".json" else ".txt")
        shutil.copyfile(src, staging.path(labels))
        added.append(labels)
    facts = engine_facts(backend, plan_path, build_result.compute_capabilities,
                         staging.path(f"{recipe.name}.layers.json"), build_result.deployment or {}, final_path)
    if facts.get("file"):
        added.append(facts["file"])
    section = {"input_contract": ctx.input_contract, "output_map": ctx.output_map, "postprocess": ctx.postprocess,
               "labels": labels, "engine_facts": facts, "plan_bytes": plan_path.stat().st_size,
               "export": export_lines(recipe.data["build"], out["onnx"], out["plan"], backend.name)}
    if (build_result.deployment or {}).get("strip_weights"):
        section["onnx_weights_bytes"] = onnx_weights_bytes(final_path)
    return section, added


def onnx_weights_bytes(path: Path) -> int:
    """Bytes of the initializers (weights) of an ONNX model, inline or in external data."""
    import onnx  # here: a fully cached run makes the deploy section without loading onnx
    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in init.external_data}.get("length", 0))
        else:
            total += len(init.raw_data) or onnx.numpy_helper.to_array(init).nbytes
    return total


def engine_facts(backend: Any, plan_path: Path, ccs: list | None, dest: Path, deployment: dict,
                 final_path: Path) -> dict[str, Any]:
    """The engine inspector's layer information saved to `dest`, with a per-layer precision summary,
    where a GPU can run the plan; else {"status": "not available", "reason"}.

    Returns:
        {"status": "saved", "file": dest.name, "layers": count, "precisions": {dtype: layers}} or
        {"status": "not available", "reason": why}.
    """
    ok, info = has_runtime_gpu(backend, ccs)
    if not ok:
        return {"status": "not available",
                "reason": f"the engine inspector needs a deserialized engine, which needs a GPU that can run the "
                          f"plan: {info}"}
    from trtpipe.deploy.runtime import deserialize, refit_engine
    trt = backend.trt
    plan = plan_path.read_bytes()
    engine = refit_engine(backend, plan, final_path) if deployment.get("strip_weights") else deserialize(backend, plan)
    if engine is None:
        return {"status": "not available", "reason": f"{backend.label} could not deserialize the plan on {info}"}
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    dest.write_text(text)
    return {"status": "saved", "file": dest.name, **precision_summary(text)}


def precision_summary(text: str) -> dict[str, Any]:
    """{"layers": count, "precisions": {dtype: layers whose outputs are of it}} from the inspector's
    JSON (ProfilingVerbosity.DETAILED: each layer's Outputs carry "Format/Datatype")."""
    try:
        layers = json.loads(text).get("Layers") or []
    except (ValueError, AttributeError):
        return {"layers": None, "precisions": {}}
    counts = Counter()
    for layer in layers:
        if not isinstance(layer, dict):
            counts["unknown"] += 1
            continue
        kinds = set()
        for out in layer.get("Outputs") or []:
            fmt = str(out.get("Format/Datatype", "")) if isinstance(out, dict) else ""
            kinds |= {d for d in _DTYPES if re.search(rf"\b{d}\b", fmt)}
        counts["+".join(sorted(kinds)) or "unknown"] += 1
    return {"layers": len(layers), "precisions": dict(sorted(counts.items()))}
