"""Remove nodes by name or op type, reconnecting their consumers.

Exports carry nodes that do nothing at inference (Identity chains left by output renaming or by
cutting a graph, Dropout in old model-zoo graphs) or that a later pass replaces (a node a plugin
takes over). Deleting a node outright leaves its consumers reading a tensor nobody produces, so
this pass *bypasses* single-input/single-output nodes: the consumers read the node's input
instead. A node with several data inputs or several used outputs cannot be bypassed: it is
refused unless `bypass: false` and `replacements` says which existing tensor stands in for each
used output. Graph output names are kept (the producer's tensor takes the output's name).
Nodes are looked up in the main graph, not inside Loop/If bodies.
"""

import collections

import numpy as np
import onnx_graphsurgeon as gs

from trtpipe import PassContext, PassError, register_pass, suggest
from trtpipe.graph.shapes import infer_shapes


def _used(t, graph):
    return bool(t.outputs) or t in graph.outputs


def _label(node):
    return f"{node.op} node '{node.name}'" if node.name else f"unnamed {node.op} node"


def _dt(t):
    try:
        return np.dtype(t.dtype).name
    except TypeError:  # bfloat16/float8 come as onnx TensorProto enums
        return str(t.dtype)


def _same_dtype(a, b):
    return a.dtype is None or b.dtype is None or _dt(a) == _dt(b)


def _shape_conflict(a, b):
    """Both shapes known and provably different (rank, or a static dim)."""
    if a.shape is None or b.shape is None:
        return False
    return len(a.shape) != len(b.shape) or any(
        isinstance(x, int) and isinstance(y, int) and x >= 0 and y >= 0 and x != y
        for x, y in zip(a.shape, b.shape))


def _rewire(old, new, graph):
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def _bypass(node, graph):
    data = [t for t in node.inputs if isinstance(t, gs.Variable) and t.name]
    used = [t for t in node.outputs if _used(t, graph)]
    if not used:
        return
    if len(data) != 1 or len(used) != 1:
        raise PassError(f"cannot bypass {_label(node)}: it has {len(data)} non-constant input(s) and "
                        f"{len(used)} used output(s), expected 1 and 1; set `bypass: false` and give "
                        f"`replacements` for {[t.name for t in used]}")
    inp, out = data[0], used[0]
    if not _same_dtype(inp, out):
        raise PassError(f"cannot bypass {_label(node)}: its input '{inp.name}' is {_dt(inp)} but its "
                        f"output '{out.name}' is {_dt(out)}; consumers would get the wrong type")
    if _shape_conflict(inp, out):
        raise PassError(f"cannot bypass {_label(node)}: it turns shape {list(inp.shape)} into "
                        f"{list(out.shape)}, so it is not Identity-like; set `bypass: false` and give "
                        f"`replacements` for '{out.name}'")
    if out in graph.outputs:
        # Keep the output name stable: the input tensor takes it over.
        if inp in graph.inputs or inp in graph.outputs or not inp.inputs:
            raise PassError(f"cannot bypass {_label(node)}: it copies '{inp.name}' (a graph input or "
                            f"output) to graph output '{out.name}'; drop one of the outputs first "
                            f"(set_outputs) or keep the node")
        _rewire(out, inp, graph)
        name = out.name
        out.name = f"{name}__removed"
        inp.name = name
        graph.outputs = [inp if t is out else t for t in graph.outputs]
    else:
        _rewire(out, inp, graph)


def _descendants(node):
    seen, todo = set(), [node]
    while todo:
        for t in todo.pop().outputs:
            for c in t.outputs:
                if id(c) not in seen:
                    seen.add(id(c))
                    todo.append(c)
    return seen


def _replace(node, replacements, tensors, graph, ctx):
    for out in node.outputs:
        if not _used(out, graph):
            continue
        if out.name not in replacements:
            readers = [c.name or c.op for c in out.outputs] or "the graph outputs"
            raise PassError(f"{_label(node)} output '{out.name}' is read by {readers}; removing the "
                            f"node would break the graph: give `replacements: {{{out.name}: <tensor>}}`")
        new_name = replacements[out.name]
        if new_name not in tensors:
            raise PassError(f"replacement tensor '{new_name}' for '{out.name}' not found"
                            f"{suggest(new_name, list(tensors))}")
        new = tensors[new_name]
        below = _descendants(node)
        if any(id(p) in below for p in new.inputs) or new in node.outputs:
            raise PassError(f"replacement '{new_name}' is computed from {_label(node)} itself (a cycle)")
        if not _same_dtype(new, out):
            raise PassError(f"replacement '{new_name}' is {_dt(new)}, '{out.name}' is {_dt(out)}")
        new.dtype = new.dtype if new.dtype is not None else out.dtype  # outputs need a dtype
        _rewire(out, new, graph)
        if out in graph.outputs:
            graph.outputs = [new if t is out else t for t in graph.outputs]
            ctx.output_map[new.name] = ctx.output_map.pop(out.name, out.name)


@register_pass("remove_nodes")
def remove_nodes(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    names, ops = params["names"], params["ops"]
    by_name = {n.name: n for n in graph.nodes if n.name}
    present_ops = sorted({n.op for n in graph.nodes})
    targets = []
    for name in names:
        if name not in by_name:
            raise PassError(f"node '{name}' not found{suggest(name, list(by_name))}; expected one of "
                            f"the graph's {len(by_name)} named nodes")
        targets.append(by_name[name])
    for op in ops:
        found = [n for n in graph.nodes if n.op == op]
        if not found and not params["missing_ok"]:
            raise PassError(f"no {op} nodes in the graph{suggest(op, present_ops)}; op types present: "
                            f"{', '.join(present_ops)} (set `missing_ok: true` to allow this)")
        targets += found
    targets = list({id(n): n for n in targets}.values())

    unknown = set(params["replacements"]) - {t.name for n in targets for t in n.outputs}
    if unknown:
        raise PassError(f"`replacements` names {sorted(unknown)}, which are not outputs of the "
                        f"nodes being removed")
    tensors = graph.tensors()
    for node in targets:
        own = {k: v for k, v in params["replacements"].items() if k in {t.name for t in node.outputs}}
        if own or not params["bypass"]:  # a node with replacements is handled by them alone
            _replace(node, own, tensors, graph, ctx)
        else:
            _bypass(node, graph)
        node.inputs.clear()
        node.outputs.clear()
    removed = {id(n) for n in targets}
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    graph.cleanup().toposort()  # drops what fed only the removed nodes (e.g. Dropout ratios)
    if any(t.shape is None for t in graph.outputs):  # a tensor that took over an output's role
        graph = infer_shapes(graph)
    hist = collections.Counter(n.op for n in targets)
    ctx.log(f"remove_nodes: removed {len(targets)} node(s)"
            + (f" ({', '.join(f'{k} x{v}' for k, v in sorted(hist.items()))})" if targets else ""))
    return graph
