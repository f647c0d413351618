"""Rename tensors (graph inputs and outputs included) and nodes by {old: new} mappings.

tf2onnx names tensors after TF ops (`StatefulPartitionedCall/.../BiasAdd:0`, `Identity_1:0`);
application code binding engine I/O by name wants stable names (`images`, `boxes`), and plugins
or later passes may need a node under a known name. Renaming must keep the graph valid: every
new name is checked against all tensor names (subgraphs included), so two tensors never end up
with one name (ONNX requires unique names; the parser would silently bind the wrong tensor).

Renamed graph inputs move their `ctx.input_contract` entry; renamed graph outputs their
`ctx.output_map` entry, so validation still feeds and compares the right tensors.
"""

import onnx_graphsurgeon as gs

from trtpipe import PassContext, PassError, register_pass, suggest


def _all_tensor_names(graph):
    """Tensor names of the graph and all its subgraphs (ONNX wants them unique throughout)."""
    names = set(graph.tensors())
    for sub in graph.subgraphs(recursive=True):
        names |= set(sub.tensors())
    return names


def _check_mapping(mapping, existing, kind):
    """Refuse renames whose result would repeat a name. Swaps (a->b, b->a) are fine."""
    targets = {}
    for old, new in mapping.items():
        if new in targets:
            raise PassError(f"{kind}s '{targets[new]}' and '{old}' would both be renamed to '{new}'")
        targets[new] = old
    for new, old in targets.items():
        if new != old and new in existing and new not in mapping:
            raise PassError(f"cannot rename {kind} '{old}' to '{new}': a {kind} named '{new}' "
                            f"already exists (rename it too, or pick another name)")


@register_pass("rename")
def rename(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    tmap, nmap = params["tensors"], params["nodes"]
    tensors = graph.tensors()
    for old in tmap:
        if old not in tensors:
            raise PassError(f"tensor '{old}' not found{suggest(old, list(tensors))}; expected one of "
                            f"the graph's {len(tensors)} tensor names (inputs: "
                            f"{', '.join(t.name for t in graph.inputs)}; outputs: "
                            f"{', '.join(t.name for t in graph.outputs)})")
    _check_mapping(tmap, _all_tensor_names(graph), "tensor")

    by_name = {}
    for node in graph.nodes:
        if node.name:
            by_name.setdefault(node.name, []).append(node)
    for old in nmap:
        if old not in by_name:
            raise PassError(f"node '{old}' not found{suggest(old, list(by_name))}; expected one of the "
                            f"graph's {len(by_name)} named nodes")
        if len(by_name[old]) > 1:
            raise PassError(f"{len(by_name[old])} nodes are named '{old}'; a rename would be ambiguous")
    node_names = set(by_name)
    for sub in graph.subgraphs(recursive=True):
        node_names |= {n.name for n in sub.nodes if n.name}
    _check_mapping(nmap, node_names, "node")

    inputs = {t.name for t in graph.inputs}
    outputs = {t.name for t in graph.outputs}
    targets = [(tensors[old], new) for old, new in tmap.items()]
    for t, new in targets:  # the same Tensor objects are shared by subgraphs that read them
        t.name = new
    for node, new in [(by_name[old][0], new) for old, new in nmap.items()]:
        node.name = new

    # Validation bookkeeping, keyed by the final names.
    contract = {tmap.get(k, k): v for k, v in ctx.input_contract.items()}
    ctx.input_contract.clear()
    ctx.input_contract.update(contract)
    out_map = {tmap.get(k, k): v for k, v in ctx.output_map.items()}
    for old, new in tmap.items():
        if old in outputs and old not in ctx.output_map:
            out_map[new] = old
    ctx.output_map.clear()
    ctx.output_map.update(out_map)

    io = [f"{o}->{n}" for o, n in tmap.items() if o in inputs | outputs]
    ctx.log(f"rename: {len(tmap)} tensor(s), {len(nmap)} node(s)"
            + (f"; graph inputs/outputs: {', '.join(io)}" if io else ""))
    return graph
