"""Graph inputs: find one by name, rewire its readers, insert adapter nodes, and record in the
pass context how a changed input derives from the source model's (the input contract that
validation feeds data through). Shared by `set_input`, `replace_preprocessing` and `dynamic_batch`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from trtpipe.errors import PassError, suggest

if TYPE_CHECKING:
    from trtpipe.registry import PassContext

# new-layout data = source-layout data transposed by PERMS[layout]; the inverse goes back.
PERMS = {"NHWC->NCHW": [0, 3, 1, 2], "NCHW->NHWC": [0, 2, 3, 1]}
SHAPE_ONLY_OPS = {"Shape", "Size"}  # ops that read only a tensor's shape, never its values


def find_input(graph: gs.Graph, name: "str | None", who: str, key: str = "name") -> gs.Variable:
    """The graph input called `name`, or the only one when `name` is None (did-you-mean otherwise)."""
    names = [t.name for t in graph.inputs]
    if name is None:
        if len(graph.inputs) != 1:
            raise PassError(f"{who}: the graph has {len(names)} inputs ({', '.join(names) or 'none'}); "
                            f"say which one with `{key}`")
        return graph.inputs[0]
    for t in graph.inputs:
        if t.name == name:
            return t
    raise PassError(f"{who}: no graph input named '{name}'{suggest(name, names)}; "
                    f"graph inputs: {', '.join(names) or 'none'}")


def replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make `node` read `new` wherever it read `old`."""
    for i, t in enumerate(node.inputs):
        if t is old:
            node.inputs[i] = new  # graphsurgeon keeps both tensors' consumer lists in sync


def add_node(graph: gs.Graph, added: "list[gs.Node]", op: str, src: gs.Tensor, name: str, attrs: dict,
             dtype: np.dtype) -> gs.Variable:
    """Append `op(src)` named `name` to `graph` (and to `added`); returns its output `<name>:0`."""
    out = gs.Variable(name + ":0", dtype=dtype)
    node = gs.Node(op, name=name, attrs=attrs, inputs=[src], outputs=[out])
    graph.nodes.append(node)
    added.append(node)
    return out


def record_change(ctx: PassContext, old_name: str, old_dtype: np.dtype, old_shape: "list | None", inp: gs.Variable,
                  new_dtype: np.dtype, perm: "list[int] | None") -> None:
    """Move the input's contract entry to its final name; add cast/transpose steps and shape."""
    contract = ctx.input_contract
    entry = contract.pop(old_name, None) or {
        "source_input": old_name, "source_dtype": old_dtype.name,
        "source_shape": [d if isinstance(d, int) else None for d in (old_shape or [])],
        "shape": None, "steps": []}
    entry = dict(entry, steps=list(entry.get("steps") or []))
    if new_dtype != old_dtype:
        entry["steps"].append({"op": "cast", "to": new_dtype.name})
    if perm:
        entry["steps"].append({"op": "transpose", "perm": list(perm)})
    if inp.shape is not None:
        shape = list(inp.shape)
        if perm:  # the contract's shape is the source data's, i.e. before the transpose step
            shape = [shape[perm.index(i)] for i in range(len(shape))]
        # dynamic dims stay symbolic (str); validation picks a value for them
        entry["shape"] = [d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else None)
                          for d in shape]
    contract[inp.name] = entry
