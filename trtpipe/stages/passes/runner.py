"""Stage 3: run the recipe's graph-surgery passes in order.

Each pass gets an onnx-graphsurgeon Graph and returns one. After every pass the model is exported
and checked (onnx.checker + strict shape inference), so a pass that breaks the graph is named
right away instead of surfacing as an obscure parser error in the build.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from trtpipe import registry
from trtpipe.errors import PassError, PipelineError, suggest
from trtpipe.graph.check import check_rewritten
from trtpipe.recipe.schema import fill_defaults, key_path, schema_errors


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """{op_type: count} over the main graph's nodes, sorted by op type."""
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def initial_input_contract(model: onnx.ModelProto) -> dict[str, dict]:
    """Identity contract: each final input is the source input of the same name, unchanged.

    Returns {input name: {"source_input", "source_dtype" (numpy name), "source_shape" (dims,
    None or a symbol for dynamic ones), "shape" (static dims or None), "steps": []}}; passes
    that change an input (set_input, replace_preprocessing) append steps to it."""
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


def run_passes(model: onnx.ModelProto, recipe: Any, ctx: registry.PassContext,
               progress: Any = None) -> tuple[onnx.ModelProto, list[dict]]:
    """Apply the recipe's enabled passes in order; each output is exported and checked.

    Args:
        model: the input model (not modified).
        recipe: anything with `enabled_passes() -> [(index, {"pass", "params"})]` (parameters with
            schema defaults filled) and `locate(key path) -> "file:line:col"`.
        ctx: the run's PassContext; passes record their hand-offs in it.
        progress: optional UI with `step(label)`.

    Returns:
        (final model, one stats dict per pass: pass, index, params, duration_s, nodes/ops before
        and after, warnings and notes (ctx.warn / ctx.log)).

    Raises:
        PassError: a pass failed (any exception, named with its recipe line) or left a graph that
            cannot be exported or fails the checks; other PipelineErrors a pass raises, prefixed
            with the recipe line.
    """
    stats = []
    graph = import_graph(model)
    for index, item in recipe.enabled_passes():
        if progress:
            progress.step(f"passes[{index}] {item['pass']}")
        graph, model, one = apply_pass(graph, model, index, item, recipe, ctx)
        stats.append(one)
    return model, stats


def apply_pass(graph: gs.Graph, model: onnx.ModelProto, index: int, item: dict, recipe: Any,
               ctx: registry.PassContext) -> tuple[gs.Graph, onnx.ModelProto, dict]:
    """Apply one pass to `graph` (the graph form of `model`), export and check its output.

    The graph is handed on, not re-imported from the exported model: onnx-graphsurgeon's import
    costs more than most passes (issue 13), and the exported model is only a snapshot of it.

    Args:
        graph: `model` as an onnx-graphsurgeon graph (import_graph); the pass may edit it in place.
        model: the pass's input model (not modified), for the stats and the producer fields.
        index, item: the pass's position in the recipe and its item ({"pass", "params"}, defaults filled).
        recipe: anything with `locate(key path) -> "file:line:col"`.
        ctx: the run's PassContext.

    Returns:
        (the graph the pass left, that graph exported, the pass's stats dict; see run_passes).

    Raises:
        PassError, PipelineError: as run_passes.
    """
    info = registry.get(item["pass"])
    where = recipe.locate(("passes", index, "pass"))
    label = f"passes[{index}] {item['pass']}"
    before = op_histogram(model)
    start = time.perf_counter()
    warned, noted = len(ctx.warnings), len(ctx.notes)
    try:
        graph = info.func(graph, item["params"], ctx)
    except PipelineError as err:  # located at the parameter the error names (key_path), if any
        at = recipe.locate(("passes", index, *err.key_path)) if getattr(err, "key_path", None) else where
        err.message = f"{at}: {label}: {err.message}"
        raise
    except (Exception, SystemExit) as err:  # a pass bug, a graph it cannot handle, or a pass calling
        # sys.exit(): the run must not end silently; name the pass and recipe line
        raise PassError(f"{where}: {label} failed: {type(err).__name__}: {err}") from err
    out = _export(graph, model, label, where)
    check_rewritten(out, f"{where}: {label}")
    return graph, out, {
        "pass": item["pass"], "index": index, "params": item["params"],
        "duration_s": round(time.perf_counter() - start, 4),
        "nodes_before": sum(before.values()), "nodes_after": len(out.graph.node),
        "ops_before": before, "ops_after": op_histogram(out),
        "warnings": ctx.warnings[warned:],
        "notes": [n for n in ctx.notes[noted:] if n not in ctx.warnings[warned:]],  # ctx.log: e.g. what was removed
    }


def run_pass(model: onnx.ModelProto, name: str, params: dict | None = None,
             ctx: registry.PassContext | None = None) -> onnx.ModelProto:
    """Apply the registered pass `name` to `model` as a recipe run does: parameters validated
    against the pass's schema and defaults filled in, the output exported and checked.

    Args:
        model: the input model (not modified).
        name: a registered pass name.
        params: the pass's parameters as a recipe would write them (None: all defaults).
        ctx: the PassContext to use and fill (default: a fresh one).

    Returns:
        The transformed model.

    Raises:
        PassError: arguments of the wrong type, an unknown pass name, parameters that fail the
            schema, or the pass failed (also when it calls sys.exit()).
    """
    if not isinstance(model, onnx.ModelProto):
        raise PassError(f"run_pass: model must be an onnx.ModelProto (onnx.load(path)), got {type(model).__name__}")
    if ctx is not None and not isinstance(ctx, registry.PassContext):
        raise PassError(f"run_pass: ctx must be a trtpipe.PassContext, got {type(ctx).__name__}")
    if params is not None and not isinstance(params, dict):
        raise PassError(f"run_pass: params must be a mapping of parameter name -> value, got {type(params).__name__}")
    info = registry.get(name) if isinstance(name, str) else None
    if info is None:
        raise PassError(f"unknown pass {name!r}{suggest(name, registry.names())}; registered: "
                        f"{', '.join(registry.names())}")
    problems = list(schema_errors(params or {}, info.schema, ("params",)))
    if problems:
        raise PassError(f"{name}: " + "; ".join(f"{key_path(p)}: {m}" for p, m in problems))
    item = {"pass": name, "params": fill_defaults(dict(params or {}), info.schema)}
    out, _ = run_passes(model, _Single(item), ctx or registry.PassContext())
    return out


class _Single:
    """One pass, outside any recipe file."""

    def __init__(self, item: dict) -> None:
        self.item = item

    def enabled_passes(self) -> list[tuple[int, dict]]:
        return [(0, self.item)]

    def locate(self, path: tuple) -> str:
        return "<run_pass>"


class _ExternalValues(gs.ir.tensor.LazyValues):
    """LazyValues of a weight kept in external data (absolute location, cache.files.load_model):
    read from its file only if a pass asks for the values; exported as the same reference."""

    def load(self):
        from trtpipe.cache.files import read_tensor
        return read_tensor(self.tensor)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """gs.import_onnx, with weights in external data left on disk until a pass reads them."""
    graph = gs.import_onnx(model)
    for tensor in graph.tensors().values():
        lazy = getattr(tensor, "_values", None)
        if isinstance(lazy, gs.ir.tensor.LazyValues) and lazy.tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor._values = _ExternalValues(lazy.tensor)
    return graph


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
