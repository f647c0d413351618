"""The tests' one helper module: running passes as a recipe does, ONNX Runtime, small models,
recipes, and SavedModel conversion through the product's own source stage.

    from tests.helpers import run_passes, ort_run, ops, make_conv_model, write_recipe, convert
"""

from __future__ import annotations

import os
import pathlib
import textwrap

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = pathlib.Path(__file__).resolve().parent.parent
LIGHT = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def run_passes(model: onnx.ModelProto, steps: list, ctx=None) -> tuple[onnx.ModelProto, object]:
    """Run (name, params) steps through `trtpipe.run_pass` (schema-checked parameters with
    defaults, onnx.checker + strict shape inference after each), sharing one PassContext whose
    input contract starts as the identity. Returns (model, ctx)."""
    from trtpipe import PassContext, run_pass
    from trtpipe.stages.passes.runner import initial_input_contract
    ctx = ctx or PassContext(input_contract=initial_input_contract(model))
    for name, params in steps:
        model = run_pass(model, name, params, ctx)
    return model, ctx


def ort_run(model: onnx.ModelProto | str, feeds: dict, outputs=None, optimize: bool = True) -> dict:
    """{output name: array} from ONNX Runtime on CPU; `outputs` exposes intermediate tensors
    (Polygraphy's modify_outputs); `optimize=False` turns graph optimizations off."""
    import onnxruntime as ort
    if isinstance(model, (str, pathlib.Path)):
        model = onnx.load(str(model))
    if outputs:
        from polygraphy.backend.onnx import modify_outputs
        model = modify_outputs(model, outputs=list(outputs))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # tf_half_pixel_for_nn deprecation warnings of TF exports
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})))


def ops(model: onnx.ModelProto) -> list[str]:
    """All op types, including those inside Loop/If/Scan bodies."""
    out = []

    def walk(graph):
        for node in graph.node:
            out.append(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)
    walk(model.graph)
    return out


def make_conv_model(path, batch=1, dynamic_batch=False, extra_nodes=(), extra_outputs=(), opset=17):
    """x[N,3,8,8] -> Conv(4 filters) -> Relu -> y; deterministic weights. Saved to `path`."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    n = "N" if dynamic_batch else batch
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu"), *extra_nodes]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, 4, 8, 8]), *extra_outputs], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.save(model, str(path))
    return path


# The small recipe the cache and robustness tests run: a conv model, two passes, a build.
TINY_RECIPE = """
    name: tiny
    source:
      onnx: tiny.onnx
    passes:
      - pass: fold_constants
      - pass: cleanup
    precision: fp32
    validate:
      data: {{seed: 3, iterations: 1}}
    build:
      workspace: {workspace}
    output:
      dir: out
    """


def write_recipe(path, body: str) -> pathlib.Path:
    """Write a dedented recipe text to `path`."""
    path = pathlib.Path(path)
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def convert(saved_model_dir, opset: int = 17, signature: str = "serving_default") -> onnx.ModelProto:
    """A SavedModel converted exactly as a recipe's `source: {saved_model: ...}` converts it
    (trtpipe's source stage: tf2onnx in-process, deterministic, op check)."""
    from trtpipe.stages.source.load import load_source
    src = load_source({"saved_model": str(saved_model_dir), "opset": opset, "signature": signature,
                       "tag": "serve", "large_model": False})
    return src.model


def convert_function(tf_function, dest, opset: int = 17) -> onnx.ModelProto:
    """A `tf.function` (with an input_signature) saved as a SavedModel whose serving_default is that
    function, then converted by the product's source stage like any recipe source."""
    import tensorflow as tf
    module = tf.Module()
    module.f = tf_function
    tf.saved_model.save(module, str(dest), signatures={"serving_default": tf_function})
    return convert(dest, opset)
