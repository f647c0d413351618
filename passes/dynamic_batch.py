"""Make the batch dimension symbolic, including the constants that bake the export's batch.

A model exported at batch 1 (TF-OD SavedModels, tf.functions with a static signature) has the
batch written into more than the input shape: tf2onnx emits Reshape nodes with constant shapes
like [1, -1, 4], and constant folding turns Shape-derived Expand/Tile/ConstantOfShape shapes into
constants holding the old batch. Renaming the input dim alone gives an engine whose optimization
profile accepts batch 4 but whose Reshapes still produce batch 1 (a build or run-time error).

This pass sets dim 0 of the inputs to a symbol (default "batch"), then, guided by ONNX shape
inference, rewrites what carries the old batch B in dim 0 of a batch-dependent computation.
Reshape with a constant shape [B, ...] gets 0 (copy) when its input's dim 0 is the batch, else
-1; a computed shape Concat(Constant[B, ...], ...) likewise. Expand, Tile and ConstantOfShape
with a constant [B, ...] shape whose result meets batch tensors (in a Concat, or element-wise
when B > 1) get the shape Concat(batch, rest). Constants [1, ...] concatenated (axis != 0) with
batch tensors are broadcast to the batch with an Expand.

What it cannot rewrite is reported (a Reshape that moves the batch, constants holding B > 1
rows, a tf.map_fn Loop over the batch, outputs that lose the batch); `strict: true` makes that
an error.

After `nms: split` the post-processing model gets the same dynamic batch (its inputs are the
engine's outputs): rewritten the same way, or, when something there cannot be rewritten, a recipe
error naming both passes (put dynamic_batch first: the graph is then batch-generic where it is cut).
"""

import numpy as np
import onnx_graphsurgeon as gs

from trtpipe import PassContext, PassError, RecipeError, register_pass, suggest
from trtpipe.graph.names import unique_name
from trtpipe.graph.shapes import infer_shapes

ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal",
               "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "PRelu"}


def _reads(node):
    """Names a node reads, including outer-scope tensors used inside its subgraphs (Loop, If)."""
    names = {t.name for t in node.inputs}
    for attr in node.attrs.values():
        if isinstance(attr, gs.Graph):
            for sub in [attr, *attr.subgraphs(recursive=True)]:
                names |= {t.name for n in sub.nodes for t in n.inputs}
    return names


class _Rewriter:
    def __init__(self, graph, inputs, batch, sym, state):
        self.graph, self.batch, self.sym = graph, batch, sym
        self.state = state  # names of the Reshape shape constants we made -> original values
        self.inputs = [t for t in graph.inputs if t.name in inputs]
        self.names = set(graph.tensors())
        self.reach = set(inputs)  # names of tensors computed from the batch inputs
        for node in graph.nodes:  # graph is toposorted
            if _reads(node) & self.reach:
                self.reach |= {t.name for t in node.outputs}
        self.batch_1d = None
        self.done, self.todo, self.changed = [], [], False

    def has_batch(self, t):
        return t.shape is not None and len(t.shape) > 0 and t.shape[0] == self.sym

    def unique(self, base):
        return unique_name(base, self.names)

    def const(self, base, values):
        return gs.Constant(self.unique(f"{base}/dynamic_batch"), np.asarray(values, np.int64))

    def batch_shape(self, node, rest):
        """Concat([batch], rest): a shape input that follows the run-time batch."""
        if self.batch_1d is None:  # Shape(input)[0:1], built once
            src = self.inputs[0]
            shape = gs.Variable(self.unique(f"{src.name}/dynamic_batch_shape"), np.int64,
                                [len(src.shape)])
            self.batch_1d = gs.Variable(self.unique(f"{src.name}/dynamic_batch_dim"), np.int64, [1])
            self.graph.nodes += [
                gs.Node("Shape", f"{shape.name}/Shape", inputs=[src], outputs=[shape]),
                gs.Node("Gather", f"{self.batch_1d.name}/Gather", {"axis": 0},
                        [shape, self.const(src.name, [0])], [self.batch_1d])]
        out = gs.Variable(self.unique(f"{node.name or node.op}/dynamic_batch_shape"), np.int64)
        self.graph.nodes.append(gs.Node("Concat", f"{out.name}/Concat", {"axis": 0},
                                        [self.batch_1d, self.const(out.name, rest)], [out]))
        return out

    def meets_batch(self, t, rank):
        """t is combined with a batch tensor where a baked batch would break (or change) results."""
        for c in t.outputs:
            others = [u for u in c.inputs if u is not t and self.has_batch(u) and len(u.shape) == rank]
            if others and (c.op == "Concat" and c.attrs.get("axis", 0) % rank != 0
                           or c.op in ELEMENTWISE and self.batch > 1):
                return True
        return False

    def reshape(self, node):
        data, shp = node.inputs[0], node.inputs[1]
        if data.name not in self.reach:
            return
        zero_ok = not node.attrs.get("allowzero", 0)
        where = f"Reshape '{node.name}'"
        if isinstance(shp, gs.Constant):
            vals = [int(v) for v in np.asarray(shp.values).reshape(-1)]
            if shp.name in self.state:  # ours: check last round's guess against the new shapes
                orig = self.state[shp.name]
                if orig is None:
                    self.todo.append(f"{where}: constant shape {vals}, batch position unknown")
                elif vals[0] == 0 and data.shape is not None and isinstance(data.shape[0], int):
                    # dim 0 of the data is static, so not the batch: let -1 absorb it, or give up
                    fixed = -1 not in orig[1:]
                    node.inputs[1] = self.const(node.name or "Reshape",
                                                [-1] + orig[1:] if fixed else orig)
                    self.state[node.inputs[1].name] = orig if fixed else None
                    self.changed = True
                return
            if not vals or vals[0] != self.batch:
                if vals and vals[0] > 0 and -1 not in vals and self.has_batch(data):
                    self.todo.append(f"{where}: constant shape {vals} puts the batch elsewhere")
                return
            # Guess 0 (copy the data's dim 0); shape inference tells next round if it was right.
            new0 = 0 if zero_ok else (-1 if -1 not in vals[1:] else None)
            if new0 is None:
                self.todo.append(f"{where}: constant shape {vals} with allowzero=1 and another -1")
                return
            node.inputs[1] = self.const(node.name or "Reshape", [new0] + vals[1:])
            self.state[node.inputs[1].name] = vals
            self.changed = True
        elif shp.name in self.reach:  # computed from the inputs' shapes: dynamic, unless
            prod = shp.inputs[0] if shp.inputs else None  # a Concat starts with a constant B
            head = prod.inputs[0] if prod is not None and prod.op == "Concat" else None
            if isinstance(head, gs.Constant) and head.values.size and \
                    int(head.values.reshape(-1)[0]) == self.batch and self.has_batch(data) and zero_ok:
                vals = [0] + [int(v) for v in head.values.reshape(-1)[1:]]
                prod.inputs[0] = self.const(prod.name or "Concat", vals)
                self.changed = True
                self.done.append(f"{where}: computed shape's leading constant {self.batch} -> 0")
        else:
            self.todo.append(f"{where}: shape computed from constants; fold constants first")

    def shaped(self, node):
        """Expand / Tile / ConstantOfShape whose constant shape (or repeats) starts with B."""
        pos = 0 if node.op == "ConstantOfShape" else 1
        shp, out = node.inputs[pos], node.outputs[0]
        if not isinstance(shp, gs.Constant):
            return
        vals = [int(v) for v in np.asarray(shp.values).reshape(-1)]
        data = node.inputs[0]
        if not vals or vals[0] != self.batch:
            return
        if self.has_batch(data):  # Expand [B>1, ...] of a batch tensor: broadcast from 1 instead
            if node.op == "Expand" and self.batch > 1 and len(vals) == len(data.shape):
                node.inputs[pos] = self.const(node.name or "Expand", [1] + vals[1:])
                self.changed = True
                self.done.append(f"Expand '{node.name}': {vals} -> {[1] + vals[1:]}")
            return
        if not self.meets_batch(out, len(vals)):
            return
        if node.op == "Tile" and data.shape is not None and data.shape[0] != 1:
            self.todo.append(f"Tile '{node.name}': repeats {vals} on data of dim 0 {data.shape[0]}")
            return
        node.inputs[pos] = self.batch_shape(node, vals[1:])
        self.changed = True
        self.done.append(f"{node.op} '{node.name}': {vals} -> [batch] + {vals[1:]}")

    def concat(self, node):
        if not any(self.has_batch(t) for t in node.inputs):
            return
        for i, c in enumerate(node.inputs):
            if not isinstance(c, gs.Constant) or not c.shape or c.shape[0] != self.batch:
                continue
            rank = len(c.shape)
            if node.attrs.get("axis", 0) % rank == 0:
                continue
            if self.batch != 1:
                self.todo.append(f"Concat '{node.name}': constant '{c.name}' holds {self.batch} rows")
                continue
            out = gs.Variable(self.unique(f"{c.name}/dynamic_batch_expanded"), c.dtype)
            self.graph.nodes.append(gs.Node("Expand", f"{out.name}/Expand", inputs=[
                c, self.batch_shape(node, list(c.shape[1:]))], outputs=[out]))
            node.inputs[i] = out
            self.changed = True
            self.done.append(f"Concat '{node.name}': constant '{c.name}' {list(c.shape)} "
                             f"broadcast to the batch")

    def loop(self, node):
        """tf.map_fn over a static batch: tf2onnx bakes B into the trip count and the body's
        conditions. Too pattern-specific to rewrite; the preprocessing passes remove it."""
        m = node.inputs[0] if node.inputs else None
        if isinstance(m, gs.Constant) and m.values.size == 1 and \
                int(m.values.reshape(-1)[0]) == self.batch and _reads(node) & self.reach:
            self.todo.append(f"Loop '{node.name}': iterates a constant {self.batch} time(s) over batch "
                             f"tensors (a tf.map_fn over the batch); replace or cut it first")

    def run(self):
        for node in list(self.graph.nodes):
            if node.op == "Reshape":
                self.reshape(node)
            elif node.op in ("Expand", "Tile", "ConstantOfShape"):
                self.shaped(node)
            elif node.op == "Concat":
                self.concat(node)
            elif node.op == "Loop":
                self.loop(node)
        return self


def _reinfer(graph):
    """Forget inferred shapes (they hold the old batch) and infer them again from the inputs."""
    inputs, outputs = {id(t) for t in graph.inputs}, {id(t) for t in graph.outputs}
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and id(t) not in inputs:
            # outputs keep their rank (a graph output needs a shape, even of unknown dims)
            t.shape = [None] * len(t.shape) if id(t) in outputs and t.shape is not None else None
    graph.toposort()
    return infer_shapes(graph)


@register_pass("dynamic_batch")
def dynamic_batch(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    sym, by_name = params["dim_name"], {t.name: t for t in graph.inputs}
    names = params.get("inputs") or list(by_name)
    for n in names:
        if n not in by_name:
            raise PassError(f"'{n}' is not a graph input{suggest(n, list(by_name))}; inputs: "
                            f"{', '.join(by_name)}")
    static = {n: by_name[n].shape[0] for n in names if by_name[n].shape
              and isinstance(by_name[n].shape[0], int) and by_name[n].shape[0] > 0}
    if not static:
        raise PassError(f"no input among {names} has a static batch dimension; shapes: "
                        f"{ {n: by_name[n].shape for n in names} }")
    batch = params.get("batch") or next(iter(static.values()))
    if any(b != batch for b in static.values()):
        raise PassError(f"inputs disagree on the batch size: {static}; set `batch` or `inputs`")
    for n in static:
        by_name[n].shape = [sym] + list(by_name[n].shape[1:])

    graph = _reinfer(graph)
    done, state, todo = [], {}, []
    for _ in range(params["max_rounds"]):  # until shape inference confirms every guess
        rw = _Rewriter(graph, set(static), batch, sym, state).run()
        graph = _reinfer(graph)
        done += rw.done
        if not rw.changed:
            break
    else:
        todo.append(f"still changing after {params['max_rounds']} rounds (raise `max_rounds`)")
    graph.cleanup().toposort()
    final = _Rewriter(graph, set(static), batch, sym, state)  # for the checks, not run
    todo += rw.todo + [f"output '{t.name}' has shape {t.shape}: the batch is not its dim 0"
                       for t in graph.outputs if t.name in final.reach and t.shape
                       and isinstance(t.shape[0], int)]
    for node in graph.nodes:
        orig = state.get(node.inputs[1].name) if node.op == "Reshape" else None
        if orig:
            new = [int(v) for v in node.inputs[1].values]
            # e.g. after a Loop (tf.map_fn) shape inference cannot tell dim 0 is the batch
            guess = "" if new[0] != 0 or final.has_batch(node.inputs[0]) else \
                " (assumed: shape inference does not know dim 0 of its input)"
            done.append(f"Reshape '{node.name}': {orig} -> {new}{guess}")

    skipped = [n for n in names if n not in static]
    ctx.log(f"dynamic_batch: inputs {sorted(static)} dim 0 {batch} -> '{sym}'"
            + (f" (left alone, no static dim 0: {skipped})" if skipped else "")
            + (f"; rewrote {len(done)}: " + "; ".join(done) if done else "; rewrote nothing"))
    for item in todo:
        ctx.warn(f"dynamic_batch: could not rewrite: {item}; the plan may be wrong at batch sizes other "
                 f"than {batch} (validation compares every profile corner)")
    if todo and params["strict"]:
        raise PassError("dynamic_batch left the old batch baked in: " + "; ".join(todo))
    if ctx.postprocess:
        _postprocess(graph, ctx, batch, sym, params)
    return graph


def _rewrite(graph, inputs, batch, sym, max_rounds):
    """Set dim 0 of `inputs` to `sym` and rewrite until shape inference agrees; (graph, done, todo)."""
    by_name = {t.name: t for t in graph.inputs}
    for n in inputs:
        by_name[n].shape = [sym] + list(by_name[n].shape[1:])
    graph = _reinfer(graph)
    done, state, todo = [], {}, []
    for _ in range(max_rounds):  # until shape inference confirms every guess
        rw = _Rewriter(graph, set(inputs), batch, sym, state).run()
        graph = _reinfer(graph)
        done += rw.done
        if not rw.changed:
            break
    else:
        todo.append(f"still changing after {max_rounds} rounds (raise `max_rounds`)")
    graph.cleanup().toposort()
    final = _Rewriter(graph, set(inputs), batch, sym, state)
    todo += rw.todo + [f"output '{t.name}' has shape {t.shape}: the batch is not its dim 0"
                       for t in graph.outputs if t.name in final.reach and t.shape
                       and isinstance(t.shape[0], int)]
    return graph, done, todo


def _postprocess(graph, ctx, batch, sym, params):
    """`nms: split` ran first: give its post-processing model the engine's dynamic batch too (its inputs
    are engine outputs), or refuse the order when that model keeps the old batch baked in."""
    import onnx

    info = ctx.postprocess
    path = ctx.artifacts.get(info["file"]) or (ctx.stage_dir / info["file"])
    post = gs.import_onnx(onnx.load(str(path)))
    engine = {t.name: t for t in graph.outputs}
    batched = [pp for pp, out in info["inputs"].items() if out in engine and engine[out].shape
               and engine[out].shape[0] == sym]
    by_name = {t.name: t for t in post.inputs}
    batched = [n for n in batched if by_name[n].shape and by_name[n].shape[0] == batch]
    if not batched:
        return
    post, done, todo = _rewrite(post, batched, batch, sym, params["max_rounds"])
    post = infer_shapes(post)  # outputs must keep a typed shape
    if todo:
        raise RecipeError(
            f"dynamic_batch runs after `nms` (mode: split), whose post-processing model {info['file']} cannot be "
            f"made batch-generic: " + "; ".join(todo),
            hint="put dynamic_batch before `nms` in the recipe's passes, so that the graph is batch-generic where "
                 "it is cut (what cannot be rewritten is then a warning on the whole graph, and validation "
                 "compares every profile corner); or keep the batch static")
    model = gs.export_onnx(post)
    try:
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise PassError(f"the post-processing model {info['file']} with a dynamic batch is invalid: "
                        f"{str(err).splitlines()[0]}") from err
    onnx.save(model, str(path))
    ctx.log(f"dynamic_batch: post-processing model {info['file']}: inputs {batched} dim 0 {batch} -> '{sym}'"
            + (f"; rewrote {len(done)}: " + "; ".join(done) if done else ""))
