"""Deployment build options (stages/build/options.py) against the real TensorRT-RTX builder (ahead of
time for SM 8.9, no GPU): what it builds, what it refuses and why, and how the options reach the
cache key, explain/diff, the report and `export`. No mocks: every plan here is really built.

Engine-side checks (a refitted or stripped plan running, the inspector's layer JSON) need a GPU
that can run the plan; here they are skipped with the reason backend.has_runtime_gpu gives.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import make_conv_model, write_recipe
from trtpipe import errors
from trtpipe.backend import has_runtime_gpu
from trtpipe.deploy.export import command
from trtpipe.errors import BuildError, RecipeError
from trtpipe.stages.build.options import OptionError
from trtpipe.stages.build.plan import build_plan

CC = ["8.9"]


@pytest.fixture(scope="module")
def weights_model(tmp_path_factory):
    """x [1,3,32,32] -> Conv 64 -> Relu -> Conv 256 -> GAP -> Gemm 1000: 1.6 MB of weights, so a
    plan without them is visibly smaller."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.1, s).astype(np.float32), n)
             for n, s in (("w1", (64, 3, 3, 3)), ("w2", (256, 64, 3, 3)), ("w3", (1000, 256)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w3"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "weights", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1000])], inits)
    path = tmp_path_factory.mktemp("opts") / "weights.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return str(path)


@pytest.fixture(scope="module")
def default_plan(weights_model, rtx):
    return build_plan(weights_model, {"compute_capabilities": CC}, rtx)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("option", [{"tf32": False}, {"weight_streaming": True},
                                    {"version_compatible": True, "exclude_lean_runtime": True}])
def test_options_tensorrt_rtx_builds_ahead_of_time_change_the_plan(weights_model, rtx, default_plan, option):
    result = build_plan(weights_model, {"compute_capabilities": CC, **option}, rtx)
    assert result.deployment == option
    assert _sha(result.plan) != _sha(default_plan.plan)  # the flag reached the builder
    assert default_plan.deployment == {}


@pytest.mark.parametrize("option", [{"max_aux_streams": 0}, {"sparsity": True}, {"optimization_level": 5}])
def test_options_that_build_without_changing_this_graph(weights_model, rtx, option):
    result = build_plan(weights_model, {"compute_capabilities": CC, **option}, rtx)
    assert len(result.plan) > 1_000_000
    assert result.deployment == {k: v for k, v in option.items() if k != "optimization_level"}


def test_hardware_compatibility_level_is_refused_on_tensorrt_rtx(weights_model, rtx):
    """TensorRT-RTX's builder logs that the level is unsupported and ignores it: refused, at the key."""
    with pytest.raises(OptionError) as info:
        build_plan(weights_model, {"compute_capabilities": CC, "hardware_compatibility_level": "ampere_plus"}, rtx,
                   locate=lambda path: "r.yaml:9:3")
    msg = str(info.value)
    assert "r.yaml:9:3: build.hardware_compatibility_level: 'ampere_plus' is not supported by tensorrt_rtx" in msg
    assert "unsupported in TensorRT-RTX" in msg and "compute_capabilities" in msg
    assert info.value.exit_code == errors.EXIT_RECIPE


def test_version_compatible_needs_the_lean_runtime_tensorrt_rtx_lacks(weights_model, rtx):
    with pytest.raises(BuildError) as info:
        build_plan(weights_model, {"compute_capabilities": CC, "version_compatible": True}, rtx)
    assert "libnvinfer_lean" in str(info.value) and "exclude_lean_runtime: true" in str(info.value)
    assert info.value.exit_code == errors.EXIT_BUILD


def test_exclude_lean_runtime_alone_is_a_recipe_error(tmp_path, run_cli):
    make_conv_model(tmp_path / "tiny.onnx")
    write_recipe(tmp_path / "r.yaml", """
        name: r
        source: {onnx: tiny.onnx}
        build:
          exclude_lean_runtime: true
        """)
    code, out, err = run_cli("check", tmp_path / "r.yaml")
    assert code == errors.EXIT_RECIPE
    assert "r.yaml:4:3: build.exclude_lean_runtime: applies to version-compatible plans only" in err


@pytest.mark.parametrize("option", ["strip_weights", "refittable"])
def test_weight_stripped_and_refittable_plans(weights_model, rtx, default_plan, option):
    """Built for real. TensorRT-RTX 1.7.1 compiles refit kernels with CUDA at build time: without a
    GPU its builder fails (measured: Myelin `CHECK(status == CUDA_SUCCESS)`) and the error says which
    option and why. Where it builds (a GPU, or a later TensorRT-RTX), a stripped plan is far smaller."""
    gpu, reason = has_runtime_gpu(rtx, CC)
    try:
        result = build_plan(weights_model, {"compute_capabilities": CC, option: True}, rtx)
    except BuildError as err:
        assert not gpu, f"the build failed although a GPU is present: {err}"
        text = str(err)
        assert "CUDA_SUCCESS" in text
        assert "builds refittable and weight-stripped plans only where a CUDA device is present" in text
        assert f"build.{option}" in text and reason in text
        return
    assert result.deployment == {option: True}
    if option == "strip_weights":
        assert len(result.plan) < 0.5 * len(default_plan.plan)


def test_report_says_how_much_a_stripped_plan_leaves_out():
    """report.md's deployment section for a weight-stripped plan (the figures report.json holds)."""
    from trtpipe.stages.report import to_markdown
    rep = {"recipe": {"name": "m", "path": "m.yaml", "sha256": "0" * 64},
           "backend": {"name": "tensorrt", "version": "10.3.0", "compute_capabilities": None},
           "source": {"kind": "onnx", "nodes": 3, "opset": 17}, "precision": {"mode": "fp32"},
           "build": {"memory": None, "num_layers": 3, "reproducible": None, "warnings": [],
                     "deployment": {"strip_weights": True}},
           "passes": [], "validation": {"status": "skipped", "reason": "--no-validate"}, "timings_s": {},
           "artifacts": {}, "tools": {},
           "deploy": {"plan_bytes": 80_000, "onnx_weights_bytes": 1_600_000,
                      "engine_facts": {"status": "saved", "file": "m.layers.json", "layers": 4,
                                       "precisions": {"FP32": 3, "Int32": 1}},
                      "export": {"trtexec": "trtexec --onnx=m.onnx --stripWeights"}}}
    md = to_markdown(rep)
    assert "- build options: `strip_weights: true`" in md
    assert "weights stripped: the final ONNX model's weights (1600000 bytes, 1.53 MiB) are left out" in md
    assert "the plan is 5.0% of their size" in md
    assert ("- engine facts: `m.layers.json` (engine inspector, 4 layers); layers by output precision: "
            "FP32 3, Int32 1") in md
    assert "```bash\ntrtexec --onnx=m.onnx --stripWeights\n```" in md


def test_options_reach_cache_key_report_and_export(tmp_path, run_cli, rtx):
    """A build option is part of the build key (the plan is rebuilt, nothing else re-runs), shows in
    report.json / report.md with the export lines, and `export` gives it back."""
    make_conv_model(tmp_path / "tiny.onnx", dynamic_batch=True)
    body = """
        name: tiny
        source: {{onnx: tiny.onnx}}
        precision: fp32
        validate:
          data: {{seed: 3, iterations: 1}}
        build:
          workspace: 64MiB
          profiles:
            - name: small
              inputs: {{x: {{min: [1, 3, 8, 8], opt: [2, 3, 8, 8], max: [4, 3, 8, 8]}}}}
            - name: big
              inputs: {{x: {{min: [4, 3, 8, 8], opt: [8, 3, 8, 8], max: [16, 3, 8, 8]}}}}
        {extra}
        output:
          dir: out
        """
    recipe = write_recipe(tmp_path / "r.yaml", body.format(extra=""))
    assert run_cli(recipe, "-q")[0] == 0
    first = json.loads((tmp_path / "out" / "report.json").read_text())
    assert first["build"]["deployment"] == {}
    extra = "  tf32: false\n          max_aux_streams: 2\n          weight_streaming: true"
    write_recipe(recipe, body.format(extra=extra))
    code, out, err = run_cli(recipe, "-q")
    assert code == 0, err
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    status = rep["cache"]["summary"]
    assert status["build"] == "ran" and status["source"] == "cached" and status["validate"] == "cached"
    assert rep["build"]["deployment"] == {"max_aux_streams": 2, "weight_streaming": True, "tf32": False}
    assert rep["artifacts"]["tiny.plan"]["sha256"] != first["artifacts"]["tiny.plan"]["sha256"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "`max_aux_streams: 2`, `weight_streaming: true`, `tf32: false`" in md
    assert rep["deploy"]["export"]["trtexec"] in md and rep["deploy"]["export"]["polygraphy"] in md
    facts = rep["deploy"]["engine_facts"]
    gpu, reason = has_runtime_gpu(rtx, CC)
    if not gpu:
        assert facts == {"status": "not available", "reason": facts["reason"]} and reason in facts["reason"]
        assert f"engine facts: not available ({facts['reason']})" in md

    code, line, err = run_cli("export", tmp_path / "out", "--for", "trtexec")
    assert code == 0 and line.strip() == rep["deploy"]["export"]["trtexec"]
    argv = shlex.split(line)
    assert argv[:5] == ["trtexec", "--onnx=tiny.onnx", "--saveEngine=tiny.plan", "--skipInference", "--stronglyTyped"]
    assert "--memPoolSize=workspace:64M" in argv and "--builderOptimizationLevel=3" in argv
    assert [a for a in argv if a.split("=")[0] in ("--minShapes", "--optShapes", "--maxShapes")] == [
        "--minShapes=x:1x3x8x8", "--optShapes=x:2x3x8x8", "--maxShapes=x:4x3x8x8",
        "--minShapes=x:4x3x8x8", "--optShapes=x:8x3x8x8", "--maxShapes=x:16x3x8x8"]
    assert {"--maxAuxStreams=2", "--weightStreaming", "--noTF32"} <= set(argv)
    assert "compute capability 8.9" in err  # what does not carry over to trtexec, on stderr

    code, line, err = run_cli("export", tmp_path / "out", "--for", "polygraphy")
    argv = shlex.split(line)
    assert code == 0 and argv[:7] == ["polygraphy", "convert", "tiny.onnx", "--convert-to", "trt", "-o", "tiny.plan"]
    assert argv[argv.index("--pool-limit") + 1] == f"workspace:{64 * 2**20}"
    assert argv[argv.index("--max-aux-streams") + 1] == "2" and "--weight-streaming" in argv
    assert "--tf32" not in argv  # cleared, as the recipe says (polygraphy's default is off too)
    assert argv[argv.index("--compute-capabilities") + 1] == "8.9"
    groups = [(a, argv[i + 1]) for i, a in enumerate(argv) if a.startswith("--trt-") and a.endswith("-shapes")]
    assert groups == [("--trt-min-shapes", "x:[1,3,8,8]"), ("--trt-opt-shapes", "x:[2,3,8,8]"),
                      ("--trt-max-shapes", "x:[4,3,8,8]"), ("--trt-min-shapes", "x:[4,3,8,8]"),
                      ("--trt-opt-shapes", "x:[8,3,8,8]"), ("--trt-max-shapes", "x:[16,3,8,8]")]


def test_the_printed_polygraphy_line_builds_a_plan(tmp_path, run_cli, rtx, monkeypatch):
    """The polygraphy line is run, for real, by Polygraphy (in-process: the tensorrt_rtx module is
    the pip bindings, aliased by backend.py), from a copy of the output directory."""
    make_conv_model(tmp_path / "tiny.onnx")
    recipe = write_recipe(tmp_path / "r.yaml", """
        name: tiny
        source: {onnx: tiny.onnx}
        precision: fp32
        validate:
          data: {seed: 3, iterations: 1}
        build:
          workspace: 64MiB
          tf32: false
          max_aux_streams: 1
        output:
          dir: out
        """)
    assert run_cli(recipe, "-q")[0] == 0
    code, line, _ = run_cli("export", tmp_path / "out", "--for", "polygraphy")
    argv = shlex.split(line)
    work = tmp_path / "copy"
    work.mkdir()
    (work / "tiny.onnx").write_bytes((tmp_path / "out" / "tiny.onnx").read_bytes())
    monkeypatch.chdir(work)
    from polygraphy.tools._main import main as polygraphy_main
    monkeypatch.setattr(sys, "argv", argv)
    assert polygraphy_main() in (0, None)
    plan = (work / "tiny.plan").read_bytes()
    assert plan[:4] == b"vtrt" and len(plan) > 10_000


def test_export_command_lines_plugins_and_odd_names():
    build = {"workspace_bytes": 1000, "optimization_level": 5, "plugins": ["/opt/p/libmy_plugin.so"],
             "profiles": [{"name": "p", "inputs": {"in:0": {"min": [1, 3], "opt": [2, 3], "max": [4, 3]}}}],
             "hardware_compatibility_level": "ampere_plus", "strip_weights": True, "refittable": True,
             "version_compatible": True, "exclude_lean_runtime": True, "sparsity": True, "tf32": True,
             "max_aux_streams": None}
    argv, notes = command("trtexec", build, "m.onnx", "m.plan", "tensorrt")
    assert shlex.split(shlex.join(argv)) == argv
    assert {"--memPoolSize=workspace:1000B", "--builderOptimizationLevel=5", "--staticPlugins=libmy_plugin.so",
            "--minShapes='in:0':1x3", "--hardwareCompatibilityLevel=ampere+", "--stripWeights", "--refit",
            "--versionCompatible", "--excludeLeanRuntime", "--sparsity=enable"} <= set(argv)
    assert "--noTF32" not in argv and not any(a.startswith("--maxAuxStreams") for a in argv)
    assert any("libmy_plugin.so" in n for n in notes)
    argv, _ = command("polygraphy", build, "m.onnx", "m.plan", "tensorrt")
    assert argv[argv.index("--plugins") + 1] == "libmy_plugin.so"
    assert argv[argv.index("--hardware-compatibility-level") + 1] == "ampere_plus"
    assert {"--strip-plan", "--refittable", "--version-compatible", "--exclude-lean-runtime", "--sparse-weights",
            "--tf32"} <= set(argv)
    assert "--compute-capabilities" not in argv


def test_resolved_build_carries_every_option_with_its_default(tmp_path):
    from trtpipe.recipe.load import load_recipe
    make_conv_model(tmp_path / "tiny.onnx")
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", "name: r\nsource: {onnx: tiny.onnx}\n"))
    assert recipe.build.deployment == {"max_aux_streams": None, "version_compatible": False,
                                       "exclude_lean_runtime": False, "hardware_compatibility_level": "none",
                                       "refittable": False, "strip_weights": False, "weight_streaming": False,
                                       "sparsity": False, "tf32": True}
    with pytest.raises(RecipeError):
        load_recipe(write_recipe(tmp_path / "bad.yaml", "name: r\nsource: {onnx: tiny.onnx}\n"
                                                        "build: {hardware_compatibility_level: turing}\n"))
