"""Insert an Unsqueeze, Squeeze or Reshape on a named tensor and rewire its consumers.

Plugins and post-processing often want a tensor in a slightly different layout than the export
produces: TF-OD-style detectors emit boxes as [batch, num_boxes, 4] while NMS plugins
(EfficientNMS_TRT with shared boxes, BatchedNMS_TRT) read [batch, num_boxes, 1, 4]. This pass adds
the one node that bridges the gap, checks the parameters against the tensor's known shape (a
Squeeze of a dimension that is not 1, an axis out of range, a Reshape that changes the element
count are errors here, not in the builder), and points all consumers (or only the named ones)
at the new tensor. A graph output is replaced by the reshaped tensor (see `rewire_graph_output`).
"""

import numpy as np
import onnx_graphsurgeon as gs

from trtpipe import PassContext, PassError, register_pass, suggest
from trtpipe.graph.shapes import infer_shapes


def _norm_axes(axes, rank, tensor):
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise PassError(f"axis {a} is out of range for the result of rank {rank} on '{tensor}'")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise PassError(f"axes {axes} repeat an axis")
    return out


def _result_shape(op, shape, params, tensor):
    """Output shape from the input shape (None when the input shape is unknown)."""
    if shape is None:
        return None
    shape = list(shape)
    if op == "unsqueeze":
        rank = len(shape) + len(params["axes"])
        axes = _norm_axes(params["axes"], rank, tensor)
        dims = iter(shape)
        return [1 if i in axes else next(dims) for i in range(rank)]
    if op == "squeeze":
        axes = _norm_axes(params["axes"], len(shape), tensor)
        bad = [(a, shape[a]) for a in axes
               if isinstance(shape[a], int) and shape[a] >= 0 and shape[a] != 1]
        if bad:
            raise PassError(f"cannot squeeze '{tensor}' of shape {shape}: dimension(s) "
                            f"{', '.join(f'{a} (size {d})' for a, d in bad)} are not 1")
        return [d for i, d in enumerate(shape) if i not in axes]
    target = list(params["shape"])
    if target.count(-1) > 1:
        raise PassError(f"reshape shape {target} has more than one -1")
    out = [shape[i] if d == 0 and i < len(shape) else d for i, d in enumerate(target)]
    static = all(isinstance(d, int) and d >= 0 for d in shape)
    known = [d for d in out if d != -1]
    if static and all(isinstance(d, int) and d >= 0 for d in known):
        total, rest = int(np.prod(shape)), int(np.prod(known))
        if -1 in out:
            if rest == 0 or total % rest:
                raise PassError(f"cannot reshape '{tensor}' of shape {shape} to {target}")
            out[out.index(-1)] = total // rest
        elif total != rest:
            raise PassError(f"cannot reshape '{tensor}' of shape {shape} ({total} elements) to "
                            f"{target} ({rest} elements)")
    return [None if d == -1 else d for d in out]


@register_pass("reshape_helpers")
def reshape_helpers(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    op, name = params["op"], params["tensor"]
    need = {"unsqueeze": "axes", "squeeze": "axes", "reshape": "shape"}[op]
    if params.get(need) is None:
        raise PassError(f"op '{op}' needs `{need}`")
    tensors = graph.tensors()
    if name not in tensors:
        raise PassError(f"tensor '{name}' not found{suggest(name, list(tensors))}; expected one of "
                        f"the graph's {len(tensors)} tensor names")
    if tensors[name].shape is None or tensors[name].dtype is None:
        graph = infer_shapes(graph)  # to check the parameters against the real shape
        tensors = graph.tensors()
    src = tensors[name]
    new_name = params.get("output_name") or f"{name}_{op}"
    taken = [n for n in (new_name, f"{new_name}/shape", f"{new_name}/axes") if n in tensors]
    if taken:
        raise PassError(f"a tensor named '{taken[0]}' already exists; set another `output_name`")

    consumers = [c for c in src.outputs]
    if params.get("consumers") is not None:
        by_name = {c.name: c for c in consumers if c.name}
        for cname in params["consumers"]:
            if cname not in by_name:
                raise PassError(f"node '{cname}' does not read '{name}'"
                                f"{suggest(cname, list(by_name))}; its consumers are "
                                f"{sorted(by_name) or 'none (unnamed or no readers)'}")
        consumers = [by_name[c] for c in params["consumers"]]

    shape = _result_shape(op, src.shape, params, name)
    dst = gs.Variable(new_name, dtype=src.dtype, shape=shape)
    use_inputs = op == "reshape" or graph.opset >= 13  # Squeeze/Unsqueeze axes became an input in 13
    if op == "reshape":
        extra, attrs = [gs.Constant(f"{new_name}/shape", np.array(params["shape"], np.int64))], {}
    elif use_inputs:
        extra, attrs = [gs.Constant(f"{new_name}/axes", np.array(params["axes"], np.int64))], {}
    else:
        extra, attrs = [], {"axes": list(params["axes"])}
    node = gs.Node({"unsqueeze": "Unsqueeze", "squeeze": "Squeeze", "reshape": "Reshape"}[op],
                   name=params.get("node_name") or f"{new_name}/{op}", attrs=attrs,
                   inputs=[src] + extra, outputs=[dst])
    for c in consumers:
        for i, t in enumerate(c.inputs):
            if t is src:
                c.inputs[i] = dst
    graph.nodes.append(node)

    rewired_output = False
    if params.get("consumers") is None and params["rewire_graph_output"] and src in graph.outputs:
        graph.outputs = [dst if t is src else t for t in graph.outputs]
        ctx.output_map[new_name] = ctx.output_map.pop(name, name)
        rewired_output = True
    if not consumers and not rewired_output:
        raise PassError(f"'{name}' has no consumers to rewire and is not a graph output being "
                        f"replaced; the new {node.op} would be dead")
    graph.toposort()
    if rewired_output and shape is None:  # graph outputs need a shape (unknown dims are fine)
        graph = infer_shapes(graph)
    ctx.log(f"reshape_helpers: {node.op} '{name}' {list(src.shape) if src.shape else '?'} -> "
            f"'{new_name}' {shape if shape is not None else '?'}; rewired {len(consumers)} consumer(s)"
            + (" and the graph output" if rewired_output else ""))
    return graph
