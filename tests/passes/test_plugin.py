"""The `plugin` pass and the creator checks (trtpipe/graph/plugin_nodes.py, stages/build/plugin_fields.py)
against TensorRT-RTX's real plugin registry (ROIAlign_TRT version 2), on small onnx.helper graphs and
on the tf2onnx export of tf.image.crop_and_resize (models/make_crop_demo.py, built into tmp_path).

The crop_and_resize test replaces the plugin node by ONNX Runtime's RoiAlign, which ROIAlign_TRT
documents it follows, to check that the recipe's box mapping reproduces crop_and_resize."""

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import REPO, ort_run, run_passes
from trtpipe import registry
from trtpipe.errors import BuildError, PassError, RecipeError
from trtpipe.graph.plugin_nodes import PluginCreatorSpec, PluginFieldSpec, attribute_values, check_attrs

F32 = TensorProto.FLOAT
ROI_ATTRS = {"output_height": 2, "output_width": 2, "sampling_ratio": 1, "mode": 1,
             "coordinate_transformation_mode": 1, "spatial_scale": 1}


def roi_model(outputs=("crops", "scores", "pooled")):
    """x [1,4,8,8] -> Relu 'feat' -> RoiAlign 'crop/roi' (rois input, batch indices constant int64)
    -> 'crops' [3,4,2,2] -> ReduceMean 'crop/mean' -> 'scores' [3,4,1,1]; and 'pooled' [1,4,1,1]."""
    nodes = [helper.make_node("Relu", ["x"], ["feat"], name="relu"),
             helper.make_node("RoiAlign", ["feat", "rois", "bidx"], ["crops"], name="crop/roi", output_height=2,
                              output_width=2, sampling_ratio=1, coordinate_transformation_mode="half_pixel"),
             helper.make_node("ReduceMean", ["crops"], ["scores"], name="crop/mean", axes=[2, 3]),
             helper.make_node("ReduceMean", ["feat"], ["pooled"], name="pool", axes=[2, 3])]
    graph = helper.make_graph(
        nodes, "roi", [helper.make_tensor_value_info("x", F32, [1, 4, 8, 8]),
                       helper.make_tensor_value_info("rois", F32, [3, 4])],
        [helper.make_tensor_value_info(n, F32, s) for n, s in
         (("crops", [3, 4, 2, 2]), ("scores", [3, 4, 1, 1]), ("pooled", [1, 4, 1, 1])) if n in outputs],
        [numpy_helper.from_array(np.zeros(3, np.int64), "bidx")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


ROI_PARAMS = {"op": "ROIAlign_TRT", "version": "2", "nodes": ["crop/roi"],
              "inputs": ["feat", "rois", {"tensor": "bidx", "steps": [{"op": "cast", "to": "int32"}]}],
              "attrs": ROI_ATTRS}


def plugin_nodes(model):
    return [n for n in model.graph.node if n.op_type == "ROIAlign_TRT"]


def attrs_of(node):
    return {a.name: (onnx.helper.get_attribute_value(a), a.type) for a in node.attribute}


# -- the pass on small graphs ---------------------------------------------------------------------

def test_nodes_selection_writes_one_typed_plugin_node():
    model, ctx = run_passes(roi_model(), [("plugin", ROI_PARAMS)])
    assert [n.op_type for n in model.graph.node if n.name.startswith("crop/")] == ["ReduceMean"]
    (node,) = plugin_nodes(model)
    assert node.domain == "trt.plugins" and node.name == "plugin/ROIAlign_TRT"
    attrs = attrs_of(node)
    assert attrs.pop("plugin_version") == (b"2", onnx.AttributeProto.STRING)
    assert attrs.pop("spatial_scale") == (1.0, onnx.AttributeProto.FLOAT)  # 1 in the recipe, FLOAT32 field
    assert attrs == {k: (v, onnx.AttributeProto.INT) for k, v in ROI_ATTRS.items() if k != "spatial_scale"}
    cast = next(n for n in model.graph.node if n.op_type == "Cast")
    assert list(node.input) == ["feat", "rois", cast.output[0]] and list(node.output) == ["crops"]
    out = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert out["crops"] == F32  # the plugin's output keeps the type shape inference gave the tensor
    assert any("replaced 1 node(s) (RoiAlign x1)" in n and "removed: crop/roi" in n for n in ctx.notes)


def test_scope_selection_and_default_inputs_outputs():
    params = {"op": "ROIAlign_TRT", "version": 2, "scope": "crop/", "attrs": ROI_ATTRS,
              "outputs": [{"name": "scores", "dtype": "float32", "shape": [3, 4, 1, 1]}]}
    model, _ = run_passes(roi_model(("scores", "pooled")), [("plugin", params)])
    (node,) = plugin_nodes(model)
    # the selection's reads from outside, in order of first use; constants left out
    assert list(node.input) == ["feat", "rois"] and list(node.output) == ["scores"]
    assert sorted(n.op_type for n in model.graph.node) == ["ROIAlign_TRT", "ReduceMean", "Relu"]


def test_scope_selection_must_list_outputs_used_outside():
    with pytest.raises(PassError, match=r"'crops', computed by the nodes being replaced, is also used outside"):
        run_passes(roi_model(), [("plugin", {"op": "ROIAlign_TRT", "version": 2, "scope": "crop/",
                                             "outputs": ["scores"], "attrs": ROI_ATTRS})])


def test_between_selects_the_nodes_between_tensors():
    params = {"op": "ROIAlign_TRT", "version": 2, "between": {"inputs": ["feat", "rois", "bidx"], "outputs": ["crops"]},
              "attrs": ROI_ATTRS}
    model, _ = run_passes(roi_model(), [("plugin", params)])
    (node,) = plugin_nodes(model)
    assert list(node.input) == ["feat", "rois", "bidx"]
    assert [n.name for n in model.graph.node if n.op_type in ("RoiAlign", "Relu")] == ["relu"]


def test_between_reaching_an_unnamed_graph_input_is_refused():
    params = {"op": "ROIAlign_TRT", "version": 2, "between": {"inputs": ["feat"], "outputs": ["crops"]},
              "attrs": ROI_ATTRS}
    with pytest.raises(PassError, match=r"reads graph input 'rois', which is not among between.inputs"):
        run_passes(roi_model(), [("plugin", params)])


def test_unknown_node_and_tensor_names_suggest():
    with pytest.raises(PassError, match=r"no node 'crop/roj' in the main graph \(did you mean 'crop/roi'\?\)"):
        run_passes(roi_model(), [("plugin", {**ROI_PARAMS, "nodes": ["crop/roj"]})])
    with pytest.raises(PassError, match=r"inputs: no tensor 'fet' .*did you mean 'feat'"):
        run_passes(roi_model(), [("plugin", {**ROI_PARAMS, "inputs": ["fet", "rois", "bidx"]})])
    with pytest.raises(PassError, match=r"inputs: 'crops' is computed by the nodes being replaced"):
        run_passes(roi_model(), [("plugin", {**ROI_PARAMS, "inputs": ["crops"]})])


def test_output_dtype_is_required_where_inference_cannot_know_it():
    params = {**ROI_PARAMS, "outputs": [{"name": "crops", "steps": [{"op": "cast", "to": "float32"}]}]}
    with pytest.raises(PassError, match=r"dtype the plugin produces for 'crops' is unknown .* outputs\[\]\.dtype"):
        run_passes(roi_model(), [("plugin", params)])


def test_exactly_one_selection_is_a_schema_rule():
    from trtpipe.recipe.schema import load_schema, schema_errors
    schema = load_schema("passes/plugin.schema.json")
    both = [m for _, m in schema_errors({"op": "X", "nodes": ["a"], "scope": "b/"}, schema)]
    none = [m for _, m in schema_errors({"op": "X"}, schema)]
    assert both == none == ["expected exactly one of `nodes`, `scope` or `between` to choose the subgraph"]


# -- attribute checks against the creator -----------------------------------------------------------

def test_pass_refuses_attributes_the_creator_does_not_take():
    bad = {**ROI_PARAMS, "attrs": {**ROI_ATTRS, "sampling_ratoi": 2}}
    with pytest.raises(RecipeError, match=r"no field 'sampling_ratoi' \(did you mean 'sampling_ratio'\?\)") as err:
        run_passes(roi_model(), [("plugin", bad)])
    assert err.value.exit_code == 3


def test_check_attrs_types_lengths_and_unset_fields():
    spec = PluginCreatorSpec("Acme_TRT", "1", "", (
        PluginFieldSpec("variance", "FLOAT32", 4), PluginFieldSpec("numLayers", "INT32", 1),
        PluginFieldSpec("name", "CHAR", 1), PluginFieldSpec("dims", "DIMS", 1),
        PluginFieldSpec("aspectRatios", "FLOAT32", 1)))
    problems, warnings = check_attrs({"variance": [0.1, 0.2], "numLayers": 2.5, "name": 3, "dims": 1,
                                      "aspectRatios": [1.0, 2.0, 0.5], "plugin_version": "1"}, spec)
    found = dict(problems)
    assert found["variance"].endswith("is FLOAT32[4]: expected 4 values, got 2")
    assert "expected an integer or a list of them, got 2.5 (float)" in found["numLayers"]
    assert "expected a string" in found["name"]
    assert "cannot fill a field of type DIMS" in found["dims"]
    assert "written from the pass's version parameter" in found["plugin_version"]
    assert "aspectRatios" not in found  # creators declare length 1 for array fields too
    assert any("field 'aspectRatios' declares length 1 but is given 3 values" in w for w in warnings)
    ok, unset = check_attrs({"variance": [0.1, 0.1, 0.2, 0.2]}, spec)
    assert not ok and "numLayers, name, dims, aspectRatios" in unset[0]


def test_attribute_values_follow_the_field_types():
    spec = PluginCreatorSpec("Acme_TRT", "1", "", (
        PluginFieldSpec("scale", "FLOAT32", 1), PluginFieldSpec("steps", "INT32", 1),
        PluginFieldSpec("half", "FLOAT16", 2), PluginFieldSpec("small", "INT8", 1)))
    out = attribute_values({"scale": 2, "steps": [1, 2], "half": [1, 2], "small": 3, "other": [1, 2.5]}, spec)
    assert out["scale"] == 2.0 and isinstance(out["scale"], float)
    assert out["steps"] == [1, 2]
    assert numpy_helper.to_array(out["half"]).dtype == np.float16
    assert numpy_helper.to_array(out["small"]).tolist() == [3]
    assert out["other"] == [1.0, 2.5]  # unknown to the creator: by Python type


def test_creator_lookup_lists_versions_and_close_names(rtx):
    ctx = registry.PassContext(backend="tensorrt_rtx")
    assert [f.name for f in ctx.plugin_creator("ROIAlign_TRT", "2").fields] == [
        "coordinate_transformation_mode", "mode", "output_height", "output_width", "sampling_ratio", "spatial_scale"]
    with pytest.raises(BuildError, match=r"'ROIAlign_TRT' version 1 is not provided .*: it has version\(s\) 2"):
        ctx.plugin_creator("ROIAlign_TRT", "1")
    with pytest.raises(BuildError) as err:
        ctx.plugin_creator("RoiAlign_TRT", "2")
    assert err.value.exit_code == 7 and "did you mean 'ROIAlign_TRT'?" in str(err.value)


def test_python_registered_creator_is_seen_by_plugins_and_the_check(rtx, run_cli):
    """A creator registered in the backend's registry (here from Python, IPluginCreatorV3One) is
    what a build.plugins library adds: its fields reach the check and `plugins`."""
    trt = rtx.trt

    class Creator(trt.IPluginCreatorV3One):
        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name, self.plugin_namespace, self.plugin_version = "TestGridAnchor_TRT", "", "1"
            self.field_names = trt.PluginFieldCollection([
                trt.PluginField("variance", np.zeros(4, np.float32), trt.PluginFieldType.FLOAT32),
                trt.PluginField("numLayers", np.zeros(1, np.int32), trt.PluginFieldType.INT32)])

        def create_plugin(self, name, fc, phase):
            return None

    creator, reg = Creator(), trt.get_plugin_registry()
    assert reg.register_creator(creator, "")
    try:
        spec = registry.PassContext(backend="tensorrt_rtx").plugin_creator("TestGridAnchor_TRT")
        assert [f.described for f in spec.fields] == ["variance FLOAT32[4]", "numLayers INT32"]
        problems, _ = check_attrs({"variance": [0.1, 0.2], "numLayer": 6}, spec)
        assert "did you mean 'numLayers'" in dict(problems)["numLayer"]
        code, out, _ = run_cli("plugins", "TestGridAnchor_TRT", "--backend", "tensorrt_rtx")
        assert code == 0 and "TestGridAnchor_TRT  version 1" in out and "variance" in out and "length 4" in out
    finally:
        reg.deregister_creator(creator)


def test_plugins_command(run_cli):
    code, out, _ = run_cli("plugins", "--backend", "tensorrt_rtx")
    assert code == 0 and "ROIAlign_TRT  version 2" in out and "spatial_scale" in out and "FLOAT32" in out
    code, _, err = run_cli("plugins", "ROIAlgn_TRT", "--backend", "tensorrt_rtx")
    assert code == 2 and "did you mean 'ROIAlign_TRT'?" in err
    code, _, err = run_cli("plugins", "--library", "/nonexistent/libplugins.so")
    assert code == 7 and "--library[0]: plugin library /nonexistent/libplugins.so does not exist" in err


# -- tf.image.crop_and_resize -> ROIAlign_TRT ----------------------------------------------------------

@pytest.fixture(scope="module")
def crop_source(tmp_path_factory):
    """The demo model's tf2onnx export (built into a temporary directory, not the committed one)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_crop_demo", REPO / "models" / "make_crop_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from tests.helpers import convert
    return convert(mod.build(tmp_path_factory.mktemp("crop") / "saved_model"))


def recipe_params():
    """The plugin pass parameters of recipes/roialign.yaml (the recipe the docs show)."""
    recipe = yaml.safe_load((REPO / "recipes" / "roialign.yaml").read_text())
    return recipe["passes"][0]["params"]


@pytest.mark.slow
def test_roialign_recipe_replaces_the_crop_and_resize_loop_exactly(crop_source):
    assert "Loop" in [n.op_type for n in crop_source.graph.node]
    model, ctx = run_passes(crop_source, [("plugin", recipe_params())])
    assert "Loop" not in [n.op_type for n in model.graph.node]
    (node,) = plugin_nodes(model)
    assert attrs_of(node)["plugin_version"][0] == b"2" and node.input[0] == "PartitionedCall/features:0"
    assert any("removed: PartitionedCall/crop_and_resize" in n for n in ctx.notes)
    # ONNX Runtime's RoiAlign in the plugin's place: the box mapping reproduces crop_and_resize
    roi = helper.make_node("RoiAlign", [node.input[0], node.input[1], "bidx64"], list(node.output),
                           output_height=7, output_width=7, sampling_ratio=1, mode="avg",
                           coordinate_transformation_mode="half_pixel", spatial_scale=1.0)
    cast = helper.make_node("Cast", [node.input[2]], ["bidx64"], to=TensorProto.INT64)
    index = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    model.graph.node.insert(index, roi)
    model.graph.node.insert(index, cast)
    rng = np.random.default_rng(3)
    for _ in range(3):
        image = rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
        want, got = ort_run(crop_source, {"images": image}), ort_run(model, {"images": image})
        assert np.abs(want["roi_features"]).max() > 0.1  # informative crops
        np.testing.assert_allclose(got["roi_features"], want["roi_features"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["roi_scores"], want["roi_scores"], rtol=1e-5, atol=1e-5)


def test_report_records_what_the_pass_removed():
    """The pass's notes (what it removed, the plugin's inputs and outputs) go into its report entry."""
    from trtpipe.recipe.schema import fill_defaults, load_schema
    from trtpipe.stages.passes.runner import run_passes as run_recipe_passes

    params = fill_defaults(ROI_PARAMS, load_schema("passes/plugin.schema.json"))

    class Recipe:
        def enabled_passes(self):
            return [(0, {"pass": "plugin", "params": params})]

        def locate(self, path):
            return "recipe.yaml:1:1"

    _, stats = run_recipe_passes(roi_model(), Recipe(), registry.PassContext())
    (entry,) = stats
    assert entry["ops_before"]["RoiAlign"] == 1 and "RoiAlign" not in entry["ops_after"]
    assert entry["ops_after"]["ROIAlign_TRT"] == 1
    assert any("removed: crop/roi" in note for note in entry["notes"])
