"""A generator of hostile inputs: malformed recipes, models, data files, paths, special files and
output collisions, each with the exit code and message fragment each command must give.

`build_corpus(root)` writes every case into `root/<case name>/` (a recipe plus whatever files it
names) and returns the `Case` list. tests/hostile/test_corpus.py runs each case through `run`,
`check` and `fmt` (tests/hostile/driver.py) and asserts: the documented exit code, the message
fragment, no traceback, within the time and memory limits, no file outside the output directory
changed, special files still special, nothing published on failure.

Exit codes are the README's: 3 recipe, 4 source, 5 pass, 6 validation, 7 build, 8 output, 10
validation could not run (e.g. a data file whose contents no input can take).
`check` exits 3 for any problem it finds (README, "Reviewing recipes"); `fmt` exits 3 when the
file is not a recipe it can rewrite.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ANY = "any"             # exit 0 or any documented code
FIFO = object()          # a named pipe: reading it blocks forever unless the tool refuses it first
RECIPE, SOURCE, PASS, VALIDATION, BUILD, OUTPUT, NOT_VALIDATED = 3, 4, 5, 6, 7, 8, 10

BASE = """\
name: hostile
source: {{onnx: {source}}}
passes:
  - pass: cleanup
precision: fp32
validate:
  data: {{iterations: 1}}
build:
  workspace: 64MiB
  timeout: 120
output:
  dir: out
"""


@dataclass
class Case:
    """One hostile input. `expect` maps a command (`run`, `check`, `fmt`) to (exit code, message
    fragment, case-insensitive); a command missing from it is not run for this case."""

    name: str
    files: dict = field(default_factory=dict)      # relative path -> bytes | str | FIFO | ("symlink", target)
    expect: dict = field(default_factory=dict)
    recipe: str = "recipe.yaml"
    extra_args: tuple = ()


def _recipe(source: str = "tiny.onnx", **replace: str) -> str:
    text = BASE.format(source=source)
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def _conv_model(batch: "int | str" = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def _one_input_model(elem_type: int, op: str = "Identity") -> bytes:
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], name="n")], "g",
                              [helper.make_tensor_value_info("x", elem_type, [2, 3])],
                              [helper.make_tensor_value_info("y", elem_type, [2, 3])])
    return _bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))


def _external_data_model(offset: str = "0", length: str = "432", location: str = "w.bin") -> bytes:
    model = _conv_model()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return _bytes(model)


def _npz(**arrays) -> bytes:
    import io
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _plain_zip() -> bytes:
    import io
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "not an array")
    return buf.getvalue()


def _recipe_cases() -> list[Case]:
    """YAML and schema: bombs, tags, structure, values (issue 12: hangs, tracebacks, exit codes)."""
    # YAML that is not a recipe document: every command refuses it. A well-formed YAML mapping that
    # breaks the schema: run and check refuse it, fmt formats it (formatting is not validation).
    all3 = lambda frag, code=RECIPE: {"run": (code, frag), "check": (RECIPE, frag), "fmt": (RECIPE, frag)}  # noqa: E731
    schema3 = lambda frag: {"run": (RECIPE, frag), "check": (RECIPE, frag), "fmt": (0, "")}  # noqa: E731
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    cases = [
        Case("billion_laughs", {"recipe.yaml": laughs + "name: x\n"}, all3("alias")),
        Case("recipe_400k_lines", {"recipe.yaml": _recipe() + "# filler\n" * 400_000}, all3("too large")),
        Case("recipe_one_huge_line", {"recipe.yaml": _recipe() + "description: " + "x" * 3_000_000 + "\n"},
             all3("too large")),
        Case("deep_nesting", {"recipe.yaml": "name: x\ndescription: " + "[" * 20_000 + "]" * 20_000 + "\n"},
             all3("nest")),
        Case("deep_nesting_maps", {"recipe.yaml": "name: x\nd: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n"},
             all3("nest")),
        Case("python_name_tag", {"recipe.yaml": _recipe() + "description: !!python/name:os.system\n"}, all3("tag")),
        Case("python_object_tag", {"recipe.yaml": _recipe() + "description: !!python/object/apply:os.system [ls]\n"},
             all3("tag")),
        Case("unknown_tag", {"recipe.yaml": _recipe() + "description: !foo bar\n"}, all3("tag")),
        Case("merge_key", {"recipe.yaml": "base: &b {workspace: 64MiB}\n" + _recipe().replace(
            "build:\n  workspace: 64MiB", "build:\n  <<: *b")},
             all3("merge")),
        Case("complex_key", {"recipe.yaml": _recipe() + "? [a, b]\n: 1\n"}, all3("key")),
        Case("duplicate_key", {"recipe.yaml": _recipe() + "name: again\n"}, all3("duplicate")),
        Case("unclosed_bracket", {"recipe.yaml": _recipe(source="[tiny.onnx")}, all3("recipe.yaml:2")),
        Case("tab_indent", {"recipe.yaml": _recipe().replace("  - pass", "\t- pass")}, all3("recipe.yaml:")),
        Case("empty_file", {"recipe.yaml": ""}, all3("empty")),
        Case("top_level_list", {"recipe.yaml": "- name: x\n"}, all3("mapping")),
        Case("top_level_scalar", {"recipe.yaml": "just text\n"}, all3("mapping")),
        Case("invalid_utf8", {"recipe.yaml": b"name: \xff\xfe\xfa\n"}, all3("utf-8")),
        Case("nul_byte", {"recipe.yaml": b"name: a\x00b\n"}, all3("recipe.yaml")),
        Case("binary_garbage", {"recipe.yaml": bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8))},
             all3("recipe.yaml")),
        Case("recipe_is_fifo", {"recipe.yaml": FIFO}, all3("fifo")),
        Case("recipe_is_dev_zero", {"recipe.yaml": ("symlink", "/dev/zero")}, all3("regular file")),
        Case("recipe_missing", {}, {"run": (RECIPE, "not found"), "check": (RECIPE, "not found"),
                                    "fmt": (RECIPE, "not found")}),
        Case("name_with_newline", {"recipe.yaml": _recipe(**{"name: hostile": 'name: "a\\nb"'})}, schema3("name")),
        Case("name_with_markup", {"recipe.yaml": _recipe(**{"name: hostile": 'name: "[bold]x[/]"'})}, schema3("name")),
        Case("path_with_markup", {"r[/]x[bold].yaml": _recipe(source="'missing[/].onnx'")},
             {"run": (SOURCE, "missing[/].onnx"), "check": (RECIPE, "missing[/].onnx")}, recipe="r[/]x[bold].yaml"),
        Case("unknown_top_key", {"recipe.yaml": _recipe().replace("precision:", "precison:")},
             schema3("did you mean 'precision'")),
        Case("passes_not_a_list", {"recipe.yaml": "name: x\nsource: {onnx: tiny.onnx}\npasses: 3\n"},
             schema3("passes")),
        Case("unknown_pass", {"recipe.yaml": _recipe().replace("pass: cleanup", "pass: cleanupp")},
             schema3("did you mean 'cleanup'")),
        Case("unknown_pass_param", {"recipe.yaml": _recipe().replace(
            "pass: cleanup", "pass: fold_constants\n    params: {size_treshold: 10}")}, schema3("size_threshold")),
        Case("pass_param_type", {"recipe.yaml": _recipe().replace(
            "pass: cleanup", "pass: fold_constants\n    params: {size_threshold: lots}")}, schema3("size_threshold")),
        Case("unknown_precision", {"recipe.yaml": _recipe().replace("precision: fp32", "precision: fp17")},
             schema3("precision")),
    ]
    workspaces = {"float_1e99": "1e99", "zero_gib": "0GiB", "half_byte": "0.5B", "huge_tib": "9999999TiB",
                  "big_int": str(2 ** 70), "negative": "-1", "bool": "true", "unit_typo": "64MiBs", "nan": ".nan"}
    for label, value in workspaces.items():
        cases.append(Case(f"workspace_{label}", {"recipe.yaml": _recipe().replace("64MiB", value)},
                          schema3("workspace")))
    numbers = {
        "quantile_nan": ("validate:\n  data: {iterations: 1}", "validate:\n  statistic: quantile\n  quantile: .nan\n"
                         "  data: {iterations: 1}", "quantile"),
        "atol_inf": ("validate:\n  data: {iterations: 1}", "validate:\n  atol: .inf\n  data: {iterations: 1}", "atol"),
        "atol_negative": ("validate:\n  data: {iterations: 1}", "validate:\n  atol: -1\n  data: {iterations: 1}",
                          "atol"),
        "timeout_inf": ("timeout: 120", "timeout: .inf", "timeout"),
        "timeout_zero": ("timeout: 120", "timeout: 0", "timeout"),
        "iterations_zero": ("iterations: 1", "iterations: 0", "iterations"),
        "iterations_huge": ("iterations: 1", "iterations: 1000000000000", "iterations"),
        "cc_sm90": ("workspace: 64MiB", "workspace: 64MiB\n  compute_capabilities: ['9.0']", "compute"),
        "cc_garbage": ("workspace: 64MiB", "workspace: 64MiB\n  compute_capabilities: ['eight']", "compute"),
        "backend_typo": ("workspace: 64MiB", "workspace: 64MiB\n  backend: tensorrt_rtxx", "did you mean"),
        "opt_level": ("workspace: 64MiB", "workspace: 64MiB\n  optimization_level: 9", "optimization_level"),
        "plan_name_with_dir": ("dir: out", "dir: out\n  plan: ../escape.plan", "output.plan"),
        "plan_name_absolute": ("dir: out", "dir: out\n  plan: /tmp/escape.plan", "output.plan"),
        "plan_name_dotdot": ("dir: out", "dir: out\n  onnx: ..", "output.onnx"),
    }
    for label, (old, new, frag) in numbers.items():
        cases.append(Case(label, {"recipe.yaml": _recipe().replace(old, new)}, schema3(frag)))
    profile = "workspace: 64MiB\n  profiles:\n    - name: p\n      inputs:\n        {body}"
    cases += [
        Case("profile_min_gt_opt", {"recipe.yaml": _recipe().replace("workspace: 64MiB", profile.format(
            body="x: {min: [4, 3, 8, 8], opt: [2, 3, 8, 8], max: [8, 3, 8, 8]}"))}, schema3("min")),
        Case("profile_10000_inputs", {"recipe.yaml": _recipe().replace("workspace: 64MiB", profile.format(
            body="\n        ".join(f"in{i}: {{min: [1], opt: [1], max: [1]}}" for i in range(10_000))))},
             all3("5000")),
    ]
    for case in cases:
        case.files.setdefault("tiny.onnx", _bytes(_conv_model()))
    return cases


def _source_cases() -> list[Case]:
    """Source models the run must refuse: special files, corrupt protobufs, bad external data."""
    src = lambda frag, check=None: {"run": (SOURCE, frag), **({"check": (RECIPE, check)} if check else {})}  # noqa: E731
    tiny = _bytes(_conv_model())
    cases = [
        Case("source_dev_zero", {"m.onnx": ("symlink", "/dev/zero")}, src("regular file", "regular file")),
        Case("source_fifo", {"m.onnx": FIFO}, src("fifo", "fifo")),
        Case("source_directory", {"m.onnx/keep": "x"}, src("directory", "directory")),
        Case("source_missing", {}, src("not found", "not found")),
        Case("source_empty", {"m.onnx": b""}, src("m.onnx")),
        Case("source_garbage", {"m.onnx": bytes(range(256)) * 8}, src("m.onnx")),
        Case("source_truncated", {"m.onnx": tiny[: len(tiny) // 2]}, src("m.onnx")),
        Case("source_is_yaml", {"m.onnx": _recipe()}, src("m.onnx")),
        Case("external_negative_offset", {"m.onnx": _external_data_model(offset="-16"), "w.bin": b"\0" * 432},
             src("offset")),
        Case("external_nonnumeric_length", {"m.onnx": _external_data_model(length="many"), "w.bin": b"\0" * 432},
             src("length")),
        Case("external_missing_file", {"m.onnx": _external_data_model()}, src("w.bin")),
        Case("external_escapes_dir", {"m.onnx": _external_data_model(location="../../../../etc/hostname")},
             src("hostname")),
        Case("external_absolute", {"m.onnx": _external_data_model(location="/etc/hostname")}, src("hostname")),
        Case("external_too_short", {"m.onnx": _external_data_model(), "w.bin": b"\0" * 100}, src("w.bin")),
        Case("external_is_fifo", {"m.onnx": _external_data_model(), "w.bin": FIFO}, src("w.bin")),
        Case("external_is_dev_zero", {"m.onnx": _external_data_model(), "w.bin": ("symlink", "/dev/zero")},
             src("w.bin")),
        Case("opset_99", {"m.onnx": _bytes(helper.make_model(_conv_model().graph, ir_version=10,
                                                             opset_imports=[helper.make_opsetid("", 99)]))},
             src("opset")),
        Case("ir_version_99", {"m.onnx": _bytes(helper.make_model(_conv_model().graph, ir_version=99,
                                                                  opset_imports=[helper.make_opsetid("", 17)]))},
             src("ir")),
        Case("source_fails_checker", {"m.onnx": _bytes(helper.make_model(helper.make_graph(
            [helper.make_node("Relu", ["nowhere"], ["y"], name="r")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
            opset_imports=[helper.make_opsetid("", 17)], ir_version=10))}, src("nowhere")),
        Case("bfloat16_input", {"m.onnx": _one_input_model(TensorProto.BFLOAT16)}, {"run": (None, "bfloat16")}),
        Case("string_input", {"m.onnx": _one_input_model(TensorProto.STRING)}, {"run": (None, "string")}),
        Case("saved_model_is_file", {"m.onnx": tiny}, src("saved_model")),
        Case("saved_model_without_pb", {"sm/variables/keep": "x"}, src("saved_model.pb")),
    ]
    for case in cases:
        if case.name.startswith("saved_model"):
            where = "m.onnx" if case.name == "saved_model_is_file" else "sm"
            case.files["recipe.yaml"] = _recipe().replace("{onnx: tiny.onnx}", f"{{saved_model: {where}}}")
        else:
            case.files["recipe.yaml"] = _recipe(source="m.onnx")
    return cases


def _data_cases() -> list[Case]:
    """Validation data, timing cache and plugin libraries: special files, corrupt contents."""
    def with_npz(content, frag, code=RECIPE, check=RECIPE):
        text = _recipe().replace("data: {iterations: 1}", "data: {npz: d.npz}")
        files = {"recipe.yaml": text, "tiny.onnx": _bytes(_conv_model())}
        if content is not None:
            files["d.npz"] = content
        return files, {"run": (code, frag), **({"check": (check, frag)} if check is not None else {})}

    good = np.zeros((1, 3, 8, 8), np.float32)
    npz = {
        "npz_fifo": (FIFO, "fifo"),
        "npz_missing": (None, "d.npz"),
        "npz_dev_zero": (("symlink", "/dev/zero"), "regular file"),
        "npz_directory": ("dir", "directory"),
    }
    cases = []
    for label, (content, frag) in npz.items():
        files, expect = with_npz(None if content in (None, "dir") else content, frag)
        if content == "dir":
            files["d.npz/keep"] = "x"
        cases.append(Case(label, files, expect))
    contents = {
        "npz_plain_zip": (_plain_zip(), "readme.txt"),
        "npz_object_array": (_npz(x=np.array([object(), 1], dtype=object)), "object"),
        "npz_empty": (_npz(), "d.npz"),
        "npz_garbage": (b"PK\x03\x04garbage", "d.npz"),
        "npz_wrong_name": (_npz(xx=good), "did you mean 'x'"),
        "npz_wrong_shape": (_npz(x=np.zeros((1, 3, 9, 9), np.float32)), "shape"),
        "npz_wrong_rank": (_npz(x=np.zeros((3, 8, 8), np.float32)), "shape"),
        "npz_nan": (_npz(x=np.full((1, 3, 8, 8), np.nan, np.float32)), "nan"),
    }
    for label, (content, frag) in contents.items():
        files, expect = with_npz(content, frag, code=NOT_VALIDATED, check=None)
        cases.append(Case(label, files, expect))

    def with_build(key: str, label: str, value: str, target, frag, code=RECIPE, check=True):
        text = _recipe().replace("workspace: 64MiB", f"workspace: 64MiB\n  {key}: {value}")
        files = {"recipe.yaml": text, "tiny.onnx": _bytes(_conv_model())}
        if target is not None:
            files[value.strip("[]")] = target
        return Case(f"{key}_{label}", files, {"run": (code, frag), **({"check": (RECIPE, frag)} if check else {})})

    for label, target, frag in (("dev_zero", ("symlink", "/dev/zero"), "regular file"), ("fifo", FIFO, "fifo"),
                                ("directory", "dir", "directory")):
        if target == "dir":
            case = with_build("timing_cache", label, "tc.cache", None, frag)
            case.files["tc.cache/keep"] = "x"
        else:
            case = with_build("timing_cache", label, "tc.cache", target, frag)
        cases.append(case)
    for label, target, frag, code in (("missing", None, "libx.so", RECIPE), ("fifo", FIFO, "fifo", RECIPE),
                                      ("garbage", b"\x7fELF garbage", "libx.so", BUILD)):
        cases.append(with_build("plugins", label, "[libx.so]", target, frag, code=code, check=code == RECIPE))
    images = "data: {images: {dir: imgs, input: x, size: [8, 8], layout: NCHW}}"
    for label, files, frag in (("images_empty_dir", {"imgs/.keep": ""}, "imgs"),
                               ("images_corrupt", {"imgs/a.png": b"\x89PNG\r\n\x1a\nbroken"}, "a.png"),
                               ("images_fifo", {"imgs/a.png": FIFO}, "fifo"),
                               ("images_dir_missing", {}, "imgs")):
        files = {**files, "recipe.yaml": _recipe().replace("data: {iterations: 1}", images),
                 "tiny.onnx": _bytes(_conv_model())}
        code = RECIPE if label in ("images_fifo", "images_dir_missing") else NOT_VALIDATED
        cases.append(Case(label, files, {"run": (code, frag)}))
    dynamic = _bytes(_conv_model("N"))
    profile = ("workspace: 64MiB\n  profiles:\n    - name: p\n      inputs:\n"
               "        x: {{min: [1, 3, 8, 8], opt: [1, 3, 8, 8], max: {max}}}")
    huge_data = _recipe().replace("data: {iterations: 1}", "data:\n    iterations: 1\n    inputs:\n"
                                  "      x: {shape: [1048576, 3, 1024, 1024]}")
    cases += [
        Case("validation_shape_24_tib", {"recipe.yaml": huge_data.replace("workspace: 64MiB", profile.format(
            max="[2, 3, 8, 8]")), "tiny.onnx": dynamic}, {"run": (NOT_VALIDATED, "GiB")}),
        Case("profile_max_24_tib", {"recipe.yaml": _recipe().replace("workspace: 64MiB", profile.format(
            max="[1048576, 3, 1024, 1024]")), "tiny.onnx": dynamic}, {"run": (None, "1048576")}),
    ]
    return cases


def _output_cases() -> list[Case]:
    """Outputs that would replace something the run reads, or land outside output.dir."""
    tiny = _bytes(_conv_model())
    into_self = lambda plan_or_onnx, name: _recipe().replace("dir: out", f"dir: .\n  {plan_or_onnx}: {name}")  # noqa: E731
    data = "data: {npz: d.npz}"
    cases = [
        Case("plan_over_recipe", {"recipe.yaml": into_self("plan", "recipe.yaml"), "tiny.onnx": tiny},
             {"run": (OUTPUT, "recipe.yaml")}),
        Case("onnx_over_source", {"recipe.yaml": into_self("onnx", "tiny.onnx"), "tiny.onnx": tiny},
             {"run": (OUTPUT, "tiny.onnx")}),
        Case("plan_over_npz", {"recipe.yaml": into_self("plan", "d.npz").replace("data: {iterations: 1}", data),
                               "tiny.onnx": tiny, "d.npz": _npz(x=np.zeros((1, 3, 8, 8), np.float32))},
             {"run": (OUTPUT, "d.npz")}),
        Case("output_dir_is_file", {"recipe.yaml": _recipe(), "tiny.onnx": tiny, "out": "a file"},
             {"run": (OUTPUT, "out")}),
        Case("output_dir_is_fifo", {"recipe.yaml": _recipe(), "tiny.onnx": tiny, "out": FIFO},
             {"run": (OUTPUT, "out")}),
        Case("plan_name_is_fifo", {"recipe.yaml": _recipe(), "tiny.onnx": tiny, "out/hostile.plan": FIFO},
             {"run": (OUTPUT, "hostile.plan")}),
        Case("other_recipes_dir", {"recipe.yaml": _recipe(), "tiny.onnx": tiny,
                                   "out/.trt-pipeline.json": '{"recipe": "/elsewhere/other.yaml", "name": "other"}'},
             {"run": (OUTPUT, "other")}),
    ]
    return cases


def build_corpus(root: Path) -> list[Case]:
    """Write every case under `root/<case name>/` and return them.

    Args:
        root: an empty directory.

    Returns:
        The cases, at least 80 (tests/hostile/test_corpus.py asserts it).
    """
    cases = _recipe_cases() + _source_cases() + _data_cases() + _output_cases()
    for case in cases:  # every case goes through all three commands; where the problem is one
        # only a run can see (model contents, data), check and fmt may pass, but still within the
        # limits, without a traceback and without writing anything but the formatted recipe
        for command in ("run", "check", "fmt"):
            case.expect.setdefault(command, (ANY, ""))
    for case in cases:
        base = root / case.name
        base.mkdir(parents=True)
        for rel, content in case.files.items():
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if content is FIFO:
                os.mkfifo(path)
            elif isinstance(content, tuple) and content[0] == "symlink":
                os.symlink(content[1], path)
            else:
                path.write_bytes(content.encode() if isinstance(content, str) else content)
    return cases
