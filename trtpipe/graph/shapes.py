"""Shape and dtype inference for onnx-graphsurgeon graphs, with the policy passes share.

graphsurgeon does not infer shapes itself; passes that need a tensor's dtype or rank (and the
TensorRT parser, which wants every tensor typed) get them from ONNX shape inference through here.
"""

import onnx
import onnx_graphsurgeon as gs

from trtpipe.errors import PassError

PROTO_LIMIT = 2**31 - 1  # protobuf cannot serialize a message above 2 GiB; inference needs a ModelProto


def infer_shapes(graph: gs.Graph, data_prop: bool = True) -> gs.Graph:
    """A new Graph with dtypes/shapes filled in by ONNX shape inference where derivable.

    The returned Graph holds new Tensor objects: look tensors up again after calling this.
    Graphs whose ModelProto would exceed 2 GiB are returned unchanged.

    Args:
        graph: the graph to annotate (not modified).
        data_prop: propagate constant values through Shape arithmetic (ONNX's data propagation).

    Raises:
        PassError: ONNX shape inference found the graph inconsistent (first line of its message).
    """
    model = gs.export_onnx(graph, do_type_check=False)
    if model.ByteSize() >= PROTO_LIMIT:
        return graph
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
    except onnx.shape_inference.InferenceError as err:
        raise PassError(f"ONNX shape inference failed: {str(err).strip().splitlines()[0]}") from err
    return gs.import_onnx(model)


def try_infer_shapes(graph: gs.Graph) -> gs.Graph:
    """`infer_shapes` as an optimisation: the graph unchanged when inference fails.

    For callers (constant folding) that only need shapes to do better; the pass runner's
    checker still catches a graph that is really broken."""
    try:
        return infer_shapes(graph, data_prop=True)
    except PassError:
        return graph


def incomplete_tensors(graph: gs.Graph) -> "list[str]":
    """Sorted names of top-level non-constant tensors in use whose dtype or shape (rank) is unknown."""
    out, outputs = [], {t.name for t in graph.outputs}
    for name, t in graph.tensors().items():
        if not isinstance(t, gs.Variable) or not name or not (t.outputs or name in outputs):
            continue  # e.g. Dropout's unused mask output
        if t.dtype is None or t.shape is None:
            out.append(name)
    return sorted(out)
