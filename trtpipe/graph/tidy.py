"""Constant folding to a fixpoint and dead-node cleanup, shared by the `fold_constants`,
`cleanup` and `sanitize` passes (passes never import each other; they share this toolkit)."""

import onnx_graphsurgeon as gs

from trtpipe.graph.shapes import try_infer_shapes


def fold_to_fixpoint(graph: gs.Graph, *, fold_shapes: bool, partitioning: "str | None",
                     size_threshold: "int | None", max_rounds: int) -> "tuple[gs.Graph, int]":
    """Alternate shape inference and graphsurgeon's `fold_constants` until the node count stops
    changing (or `max_rounds`); returns (graph, rounds run).

    Args:
        fold_shapes, partitioning, size_threshold: graphsurgeon's `Graph.fold_constants` options
            (size_threshold in bytes: larger folded constants are not materialized).
        max_rounds: upper bound on rounds (>= 1).

    Raises:
        Whatever graphsurgeon raises when ONNX Runtime cannot evaluate a constant subgraph
        (`error_ok=False`): the pass runner names the pass and recipe line.
    """
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        before = len(graph.nodes)
        graph = try_infer_shapes(graph)
        # graphsurgeon re-imports Loop bodies without an IR version and then exports them with the
        # newest one, which ONNX Runtime rejects when it folds inside the body.
        for sub in graph.subgraphs(recursive=True):
            sub.ir_version = graph.ir_version
        graph.fold_constants(fold_shapes=fold_shapes, partitioning=partitioning,
                             size_threshold=size_threshold, error_ok=False)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        if len(graph.nodes) == before:
            break
    return graph, rounds


def remove_dead(graph: gs.Graph, *, remove_unused_inputs: bool, remove_unused_node_outputs: bool,
                toposort: bool) -> gs.Graph:
    """graphsurgeon's `cleanup` (+ `toposort`); unused graph inputs are removed from the main graph
    only, because a Loop body's inputs are positional and must all stay. Modifies `graph`."""
    graph.cleanup(remove_unused_node_outputs=remove_unused_node_outputs)
    if remove_unused_inputs:
        graph.cleanup(remove_unused_graph_inputs=True, recurse_subgraphs=False)
    if toposort:
        graph.toposort()
    return graph
