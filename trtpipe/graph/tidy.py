"""Constant folding to a fixpoint and dead-node cleanup, shared by the `fold_constants`,
`cleanup` and `sanitize` passes (passes never import each other; they share this toolkit).

Folding must not change what the graph computes. onnx-graphsurgeon's `Graph.fold_constants` (with
`fold_shapes=True`) first runs "shape tensor cast elision", which can change values: before each
graphsurgeon call `fold_to_fixpoint` prepares the graph so that only exact elisions happen
(fold_guard.py). As a cheap net for this class of fault it also runs the graph before and after
folding in ONNX Runtime on seeded random inputs when the graph is small (fold_check.py) and raises
PassError naming the pass and the output that changed.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_graphsurgeon as gs

from trtpipe.graph.fold_check import before_folding, check_outputs
from trtpipe.graph.fold_guard import ElisionGuard
from trtpipe.graph.shapes import try_infer_shapes


def fold_to_fixpoint(graph: gs.Graph, *, fold_shapes: bool, partitioning: str | None,
                     size_threshold: int | None, max_rounds: int, pass_name: str,
                     log: Callable[[str], None] | None = None) -> tuple[gs.Graph, int]:
    """Alternate shape inference and graphsurgeon's `fold_constants` until the node count stops
    changing (or `max_rounds`); returns (graph, rounds run). graphsurgeon's shape-tensor cast
    elision is only let through where it is exact (fold_guard.py), and small graphs are checked
    to compute the same outputs after folding as before.

    Args:
        graph: the graph to fold (modified; use the returned one).
        fold_shapes, partitioning, size_threshold: graphsurgeon's `Graph.fold_constants` options
            (size_threshold in bytes: larger folded constants are not materialized).
        max_rounds: upper bound on rounds (>= 1).
        pass_name: the pass folding, named in the check's error.
        log: receives one line saying whether the outputs were checked (and why not).

    Raises:
        PassError: the folded graph computes different outputs (or no longer runs in ONNX Runtime)
            on seeded random inputs; names `pass_name` and the output.
        Whatever graphsurgeon raises when ONNX Runtime cannot evaluate a constant subgraph
        (`error_ok=False`): the pass runner names the pass and recipe line.
    """
    reference = before_folding(graph)
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        before = len(graph.nodes)
        graph = try_infer_shapes(graph)
        # graphsurgeon re-imports Loop bodies without an IR version and then exports them with the
        # newest one, which ONNX Runtime rejects when it folds inside the body.
        for sub in graph.subgraphs(recursive=True):
            sub.ir_version = graph.ir_version
        guard = ElisionGuard(graph) if fold_shapes else None
        graph.fold_constants(fold_shapes=fold_shapes, partitioning=partitioning,
                             size_threshold=size_threshold, error_ok=False)
        if guard is not None:
            guard.restore()
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        if len(graph.nodes) == before:
            break
    status = check_outputs(reference, graph, pass_name)
    if log is not None:
        log(f"{pass_name}: {status}")
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
