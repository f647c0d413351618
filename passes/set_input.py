"""Change a graph input's name, dtype, shape or layout, keeping the rest of the graph as it was.

TF exports take `input_tensor` as uint8 with dynamic height/width ([1, None, None, 3]); TensorRT has
no uint8 inputs and wants static shapes (or a profile). This pass rewrites the graph input itself
and, so that every node reading it still sees what it expects, inserts a Transpose back to the old
layout and a Cast back to the old dtype in front of the nodes that read the input's values
(`cast_back`). Nodes that only read the input's shape (Shape, Size) are not given the Cast. A Cast back that
only feeds Casts to a type holding every old value exactly (uint8 -> float32 in a TF export's
preprocessing) is folded away: the input contract feeds old-dtype values, so the pair is the
identity, and TensorRT rejects uint8 intermediate tensors.
Later passes (replace_preprocessing) remove those helpers together with the subgraph they feed.

The change is recorded in `ctx.input_contract` (key = final name): a `cast` step for a dtype
change, a `transpose` step for a layout change, and `shape` (in the source layout).
"""

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from trtpipe import PassContext, PassError, register_pass
from trtpipe.graph.inputs import PERMS, SHAPE_ONLY_OPS, add_node, find_input, record_change, replace_input


@register_pass("set_input")
def set_input(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    inp = find_input(graph, params.get("name"), "set_input")
    old_name, old_dtype = inp.name, np.dtype(inp.dtype)
    old_shape = list(inp.shape) if inp.shape is not None else None
    new_name = params.get("rename") or old_name
    new_dtype = np.dtype(params["dtype"]) if params.get("dtype") else old_dtype
    layout = params.get("layout")
    perm = PERMS[layout] if layout else None
    if perm and old_shape is not None and len(old_shape) != 4:
        raise PassError(f"set_input: layout {layout} needs a 4-D input; '{old_name}' has shape {old_shape}")

    if new_name != old_name and new_name in graph.tensors():
        raise PassError(f"set_input: cannot rename '{old_name}' to '{new_name}': a tensor of that name exists")

    new_shape = params.get("shape")
    if new_shape is None and old_shape is not None and perm:
        new_shape = [old_shape[p] for p in perm]
    rank = 4 if perm else (len(old_shape) if old_shape is not None else None)
    if new_shape is not None and rank is not None and len(new_shape) != rank:
        raise PassError(f"set_input: shape {new_shape} has rank {len(new_shape)} but '{old_name}' "
                        f"has rank {rank} ({old_shape})")

    # Insert the adapters before renaming so their names derive from the old, familiar one.
    readers = [n for n in inp.outputs]
    value_src = shape_src = inp
    added = []
    if perm:
        back = [perm.index(i) for i in range(4)]  # inverse permutation
        shape_src = value_src = add_node(graph, added, "Transpose", value_src, f"{old_name}/set_input/transpose",
                                     {"perm": back}, new_dtype)
    if new_dtype != old_dtype and params["cast_back"]:
        value_src = add_node(graph, added, "Cast", value_src, f"{old_name}/set_input/cast",
                         {"to": helper.np_dtype_to_tensor_dtype(old_dtype)}, old_dtype)
    for node in readers:
        target = shape_src if node.op in SHAPE_ONLY_OPS else value_src
        if target is not inp:
            replace_input(node, inp, target)
    folded = _fold_cast_pairs(graph, added, value_src, old_dtype, new_dtype) if value_src is not shape_src else 0

    inp.name, inp.dtype = new_name, new_dtype
    if new_shape is not None:
        inp.shape = list(new_shape)
    if new_shape is not None and new_shape != old_shape:
        # tf2onnx recorded intermediate shapes for the old (dynamic) input; let inference redo them.
        outputs = set(map(id, graph.outputs))
        for t in graph.tensors().values():
            if isinstance(t, gs.Variable) and t.inputs and id(t) not in outputs:
                t.shape = None
    if added:
        graph.toposort()

    record_change(ctx, old_name, old_dtype, old_shape, inp, new_dtype, perm)
    ctx.log(f"set_input: '{old_name}' -> '{new_name}' {new_dtype.name} {inp.shape}"
            + (f", layout {layout}" if layout else "") + (f", {len(added)} adapter node(s)" if added else "")
            + (f"; {folded} Cast back to {old_dtype.name} folded into the Cast after it" if folded else ""))
    return graph


def _exact(values: np.dtype, into: np.dtype) -> bool:
    """Every value of integer dtype `values` is represented exactly in `into`."""
    if values.kind not in "iub":
        return False
    if into.kind in "iu":
        return np.can_cast(values, into, "safe")
    if into.kind == "f" or into.name == "bfloat16":
        digits = 8 if into.name == "bfloat16" else np.finfo(into).nmant + 1  # significand bits
        return values.itemsize * 8 - (values.kind == "i") <= digits
    return False


def _fold_cast_pairs(graph, added, cast_out, old_dtype, new_dtype):
    """Cast(input -> old dtype) followed by a Cast to a dtype holding every old value exactly is the
    identity on what the input contract feeds (old-dtype values cast to the new dtype, e.g. uint8 pixels
    as float32), so the reader Cast reads the input directly (TensorRT has no uint8 intermediate tensors:
    the parser rejects the Cast back to uint8, while the raw model builds). Returns how many were folded."""
    if not _exact(old_dtype, new_dtype) or not cast_out.inputs:
        return 0
    back = cast_out.inputs[0]
    src = back.inputs[0]
    folded = 0
    for reader in list(cast_out.outputs):
        if reader.op != "Cast" or not _exact(old_dtype, helper.tensor_dtype_to_np_dtype(reader.attrs["to"])):
            continue
        replace_input(reader, cast_out, src)
        folded += 1
    if not cast_out.outputs:  # nothing reads the Cast back any more
        graph.nodes.remove(back)
        added.remove(back)
        back.inputs.clear()
    return folded
