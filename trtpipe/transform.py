"""Stage 3: run the recipe's graph-surgery passes in order.

Each pass gets an onnx-graphsurgeon Graph and returns one. After every pass the model is exported
and checked (onnx.checker + strict shape inference), so a pass that breaks the graph is named
right away instead of surfacing as an obscure parser error in the build.
"""

import collections
import time

import onnx
import onnx_graphsurgeon as gs

from . import registry
from .errors import PassError, PipelineError


def op_histogram(model):
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def check_model(model, what):
    """onnx.checker + strict shape inference; raises PassError naming `what` on failure.

    Runs on a skeleton (large weights replaced by typed inputs): the checks need types and
    shapes, not bytes, so this is faster and also works for models over 2 GB."""
    from .graph_types import skeleton
    from .source import relaxed_for_checker  # plugin ops and shapeless I/O, as in the source stage
    light = skeleton(model)
    try:
        with relaxed_for_checker(light):
            onnx.checker.check_model(light)
        onnx.shape_inference.infer_shapes(light, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise PassError(f"{what} produced an invalid ONNX graph: {_first_line(err)}")


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def initial_input_contract(model):
    """Identity contract: each final input is the source input of the same name, unchanged."""
    inits = {i.name for i in model.graph.initializer}
    contract = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        contract[inp.name] = {"source_input": inp.name, "source_dtype": dtype, "source_shape": dims,
                              "shape": dims if all(isinstance(d, int) for d in dims) else None,
                              "steps": []}
    return contract


def run_passes(model, recipe, ctx, progress=None):
    """Returns (model, stats) where stats is a list of dicts per executed pass."""
    stats = []
    for index, item in recipe.enabled_passes():
        info = registry.get(item["pass"])
        where = recipe.locate(("passes", index, "pass"))
        label = f"passes[{index}] {item['pass']}"
        if progress:
            progress.step(label)
        before = op_histogram(model)
        start = time.perf_counter()
        graph = gs.import_onnx(model)
        try:
            graph = info.func(graph, item["params"], ctx)
        except PipelineError as err:
            err.message = f"{where}: {label}: {err.message}"
            raise
        except Exception as err:  # a pass bug or a graph it cannot handle: name the pass and recipe line
            raise PassError(f"{where}: {label} failed: {type(err).__name__}: {err}") from err
        model = _export(graph, model, label, where)
        check_model(model, f"{where}: {label}")
        stats.append({
            "pass": item["pass"], "index": index, "params": item["params"],
            "duration_s": round(time.perf_counter() - start, 4),
            "nodes_before": sum(before.values()), "nodes_after": len(model.graph.node),
            "ops_before": before, "ops_after": op_histogram(model),
        })
    return model, stats


def _export(graph, previous, label, where):
    try:
        model = gs.export_onnx(graph)
    except Exception as err:
        raise PassError(f"{where}: {label} left a graph that cannot be exported: {err}") from err
    # graphsurgeon drops model-level metadata it does not model; keep the producer's.
    model.producer_name = previous.producer_name or "trt-pipeline"
    model.producer_version = previous.producer_version
    # graphsurgeon drops initializers from graph inputs; that is only legal from IR version 4 on
    # (old model-zoo graphs are IR 3).
    model.ir_version = max(model.ir_version, 4)
    return model
