"""Graph inputs: find one by name, rewire its readers, insert adapter nodes, and record in the
pass context how a changed input derives from the source model's (the input contract that
validation feeds data through). Shared by `set_input`, `replace_preprocessing` and `dynamic_batch`.
Also which inputs are parameters (`parameter_inputs`: they feed Reshape's `shape`, TopK's `K`, ...),
which validation must not feed random values."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
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


# -- parameter inputs ------------------------------------------------------------------------------

_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSum", "ReduceSumSquare")
# Operands whose values decide an output's shape or act as an attribute (the ONNX spec's input
# names, looked up by position in the op's schema for the model's opset). Random data there is
# meaningless and often invalid ("'step' value cannot be 0"); TensorRT takes most of them as
# build-time constants or shape tensors (whose optimization profiles hold values, not shapes).
PARAMETER_OPERANDS: dict[str, frozenset[str]] = {
    **{op: frozenset({"axes"}) for op in (*_REDUCE, "Squeeze", "Unsqueeze")},
    "Reshape": frozenset({"shape"}), "Expand": frozenset({"shape"}), "Tile": frozenset({"repeats"}),
    "Slice": frozenset({"starts", "ends", "axes", "steps"}), "Pad": frozenset({"pads", "axes"}),
    "Resize": frozenset({"roi", "scales", "sizes"}), "Upsample": frozenset({"scales"}), "TopK": frozenset({"K"}),
    "ConstantOfShape": frozenset({"input"}), "Range": frozenset({"start", "limit", "delta"}),
    "OneHot": frozenset({"depth"}), "Split": frozenset({"split"}), "SplitToSequence": frozenset({"split"}),
    "CumSum": frozenset({"axis"}), "CumProd": frozenset({"axis"}), "Trilu": frozenset({"k"}),
    "CenterCropPad": frozenset({"shape"}),
    "DFT": frozenset({"dft_length", "axis"}), "STFT": frozenset({"frame_step", "frame_length"}),
    "Col2Im": frozenset({"image_shape", "block_shape"}),
    "MelWeightMatrix": frozenset({"num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz",
                                  "upper_edge_hertz"}),
    "HannWindow": frozenset({"size"}), "HammingWindow": frozenset({"size"}), "BlackmanWindow": frozenset({"size"}),
    "AffineGrid": frozenset({"size"}), "Loop": frozenset({"M"}), "Dropout": frozenset({"ratio", "training_mode"}),
    "NonMaxSuppression": frozenset({"max_output_boxes_per_class", "iou_threshold", "score_threshold"}),
    "MaxUnpool": frozenset({"output_shape"}), "SequenceAt": frozenset({"position"}),
    "SequenceInsert": frozenset({"position"}), "SequenceErase": frozenset({"position"}),
    "Attention": frozenset({"nonpad_kv_seqlen"}),
}
_PASS_THROUGH = {"Cast", "Identity", "Concat"}  # a parameter built from an input: the input is one too


def _operand_name(node: onnx.NodeProto, index: int, opsets: dict[str, int]) -> str | None:
    """The ONNX spec's name of input `index` of `node` (for the model's opset), or None."""
    domain = "" if node.domain == "ai.onnx" else node.domain
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
    except onnx.defs.SchemaError:
        return None
    formal = schema.inputs
    if not formal:
        return None
    return formal[min(index, len(formal) - 1)].name


def parameter_inputs(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Graph inputs that feed parameter operands (PARAMETER_OPERANDS: Reshape's `shape`, Slice's
    `steps`, TopK's `K`, Pad's `pads`, a Reduce op's `axes`, ...), directly or through Cast,
    Identity or Concat, in the main graph or a subgraph.

    Args:
        model: the model (weights are not read; initializers are not inputs here).

    Returns:
        {input name: ["operand 'K' of TopK node 'topk'", ...]}, only inputs that feed one.
    """
    opsets = {("" if i.domain == "ai.onnx" else i.domain): i.version for i in model.opset_import}
    inits = {t.name for t in model.graph.initializer}
    inputs = [v.name for v in model.graph.input if v.name not in inits]
    nodes = []

    def walk(graph):
        for node in graph.node:
            nodes.append(node)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)
    walk(model.graph)
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in nodes:
        for i, name in enumerate(node.input):
            if name:
                readers.setdefault(name, []).append((node, i))
    found: dict[str, list[str]] = {}
    for name in inputs:
        seen, todo = {name}, [name]
        while todo:
            tensor = todo.pop()
            for node, i in readers.get(tensor, []):
                operand = _operand_name(node, i, opsets)
                if operand in PARAMETER_OPERANDS.get(node.op_type, ()):
                    found.setdefault(name, []).append(
                        f"operand '{operand}' of {node.op_type} node '{node.name}'" if node.name
                        else f"operand '{operand}' of {'an' if node.op_type[:1] in 'AEIOU' else 'a'} "
                             f"{node.op_type} node")
                elif node.op_type in _PASS_THROUGH:
                    todo += [o for o in node.output if o and o not in seen]
                    seen.update(node.output)
    return found
