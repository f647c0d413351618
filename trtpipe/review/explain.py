"""`explain`: the recipe as a run resolves it, and the stage plan a run would execute.

The resolved recipe is printed in canonical key order with every value a run uses:

* `# default`  - not written in the recipe; the schema's default (pass parameters: the pass
  schema's default);
* `# derived`  - computed from what is written: paths resolved against the recipe's directory,
  `<name>` expanded, `backend: auto` resolved on this machine, tolerances that follow from the
  precision, sizes in bytes.

The stage plan lists what each stage will do and whether it is cached (see `cache_status`).
Nothing is converted or built; TensorFlow is not imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trtpipe.recipe.load import load_recipe
from trtpipe.recipe.resolved import SOURCE_KINDS
from trtpipe.recipe.schema import load_schema
from trtpipe.review.diff import show, stage_labels
from trtpipe.review.fmt import key_order, sub_schema

if TYPE_CHECKING:
    from pathlib import Path

    from trtpipe.backend import Backend
    from trtpipe.recipe.load import Recipe


def cache_status(recipe: Recipe) -> dict[str, str]:
    """Per-stage cache state ("cached", "would run", "skipped") from the stage cache, computed
    from cache keys without converting or building anything."""
    from trtpipe.cache import stage_status
    return stage_status(recipe)


def explain(path: str | Path) -> str:
    recipe = load_recipe(path)
    backend, backend_error = _backend(recipe)
    view, marks = resolved(recipe, backend, backend_error)
    lines = [f"# explain {recipe.path} (sha256 {recipe.sha256[:16]})",
             "# the recipe as a run resolves it; `# default`: not written in the recipe (schema default),",
             "# `# derived`: computed from what is written (paths, <name>, backend, tolerances, sizes)"]
    _render(view, (), marks, load_schema("recipe.schema.json"), 0, lines)
    lines += [""] + plan_lines(recipe, backend, backend_error)
    problems = _problems(recipe)
    if problems:
        lines += ["", "problems (`python pipeline.py check` reports them; a run stops at them):"]
        lines += ["  " + p.replace("\n", "\n  ") for p in problems]
    return "\n".join(lines)


def _backend(recipe):
    from trtpipe.backend import resolve_backend
    from trtpipe.errors import PipelineError
    try:
        backend = resolve_backend(recipe.data["build"]["backend"])
        backend.trt  # noqa: B018 -- imported lazily by a run; explain says now whether it can be
        return backend, None
    except PipelineError as err:
        return None, err.message


def _problems(recipe):
    from trtpipe.review.check import all_problems
    return all_problems(recipe)[0]


# ------------------------------------------------------------------------------ resolved recipe

def resolved(recipe: Recipe, backend: Backend | None, backend_error: str | None) -> tuple[dict, dict[tuple, str]]:
    """(view, marks): the data to print and {key path: `default` | `derived: ...`}."""
    import copy
    view = copy.deepcopy(recipe.data)
    raw = recipe.raw
    marks = {}

    def default_under(path):
        return any(path[:i] in recipe.defaults for i in range(1, len(path) + 1))

    def walk(value, path):
        if path and default_under(path):
            marks[path] = "default"
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, path + (k,))
        elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            for i, v in enumerate(value):
                walk(v, path + (i,))
    walk(view, ())
    for i, item in enumerate(view.get("passes") or []):  # defaults of another mode's parameters: not shown
        params = item.get("params")
        if isinstance(params, dict):
            allowed = applicable_params(_pass_schema(item), params)
            for key in [k for k in params if allowed is not None and k not in allowed
                        and ("passes", i, "params", k) in recipe.defaults]:
                del params[key]

    # source paths
    src, raw_src = view["source"], raw.get("source", {})
    for key in SOURCE_KINDS:
        if key in src and raw_src.get(key) != src[key]:
            written = str(raw_src.get(key))
            how = (f"a file inside the installed package {written[4:].partition('/')[0]}"
                   if written.startswith("pkg:") else "relative to the recipe")
            marks[("source", key)] = f"derived: `{written}`, {how}"
    # precision: the mode's full option set
    _precision(view, raw, marks)
    # validation tolerances that follow from the precision
    _validate(view, raw, marks, recipe)
    # build
    build, raw_build = view["build"], raw.get("build") or {}
    build.pop("workspace_bytes", None)
    if backend is not None:
        how = "resolves to" if build["backend"] == "auto" else "installed:"
        marks[("build", "backend")] = _join(marks.get(("build", "backend")), f"derived: {how} {backend.name} "
                                            f"{backend.version} on this machine")
    else:
        marks[("build", "backend")] = _join(marks.get(("build", "backend")), f"not importable here: {backend_error}")
    from trtpipe.recipe.resolved import parse_size
    marks[("build", "workspace")] = _join(marks.get(("build", "workspace")),
                                          f"derived: {parse_size(build['workspace'])} bytes")
    if backend is not None and not backend.is_rtx:
        marks[("build", "compute_capabilities")] = _join(marks.get(("build", "compute_capabilities")),
                                                         "ignored by tensorrt (builds for the local GPU)")
    for key in ("timing_cache", "runtime_cache"):
        if build.get(key) and raw_build.get(key) != build[key]:
            marks[("build", key)] = f"derived: `{raw_build.get(key)}`, relative to the recipe"
    if build.get("timing_cache") and backend is not None and backend.is_rtx:
        marks[("build", "timing_cache")] = _join(marks.get(("build", "timing_cache")),
                                                 "not used by tensorrt_rtx (it has no timing cache)")
    for i, plugin in enumerate(build.get("plugins", [])):
        written = (raw_build.get("plugins") or [None] * (i + 1))[i]
        if written != plugin:
            marks[("build", "plugins", i)] = f"derived: `{written}`, relative to the recipe"
    # output
    out, raw_out = view["output"], raw.get("output") or {}
    defaults = load_schema("recipe.schema.json")["properties"]["output"]["properties"]
    for key in ("dir", "plan", "onnx"):
        written = raw_out.get(key, defaults[key]["default"])
        if written != out[key]:
            what = "relative to the recipe" if key == "dir" else "<name> expanded"
            origin = "default " if key not in raw_out else ""
            marks[("output", key)] = f"derived: {origin}`{written}`, {what}"
    return view, marks


def _join(a, b):
    return f"{a}; {b}" if a else b


def _precision(view, raw, marks):
    try:
        from trtpipe.recipe.precision import normalize
        cfg = normalize(raw.get("precision"))
    except Exception:  # invalid (a run and check report it) or no precision stage: show as written
        return
    written = raw.get("precision")
    view["precision"] = cfg
    for key in cfg:
        if written is None:
            marks[("precision", key)] = "default"
        elif key != "mode" and not (isinstance(written, dict) and key in written):
            marks[("precision", key)] = "default"
    marks.pop(("precision",), None)


def _validate(view, raw, marks, recipe):
    """Tolerances the resolved recipe derived from the precision (recipe/resolved.py) are marked so."""
    v = view.get("validate")
    if not isinstance(v, dict):
        return
    mode = recipe.precision.mode
    written = raw.get("validate") if isinstance(raw.get("validate"), dict) else {}
    for key in ("atol", "rtol"):
        if key not in written:
            marks[("validate", key)] = f"derived: the default for precision {mode}"
    dets = written.get("detections") if isinstance(written.get("detections"), dict) else {}
    if "iou_threshold" not in dets:
        marks[("validate", "detections", "iou_threshold")] = f"derived: the default for precision {mode}"
    if "score_atol" not in dets:
        marks[("validate", "detections", "score_atol")] = "derived: validate.atol"


def _pass_schema(item):
    from trtpipe import registry
    info = registry.get(item.get("pass")) if isinstance(item, dict) else None
    return info.schema if info else {}


def _ordered(value, schema):
    order = key_order(schema or {})
    rank = {k: i for i, k in enumerate(order)}
    keys = list(value)
    return sorted(keys, key=lambda k: (rank.get(k, len(rank)), keys.index(k)))


def applicable_params(schema: dict, params: dict) -> set[str] | None:
    """The parameter names a pass schema allows for these `params`, from its conditionals
    (`allOf: [{if: {mode: X}, then: {propertyNames: {enum: [...]}}}]`, as nms has per mode);
    None when nothing restricts them. Used to leave other modes' defaults out of `explain`."""
    import jsonschema
    allowed = None
    for cond in schema.get("allOf") or []:
        then = cond.get("then") if isinstance(cond, dict) else None
        names = ((then or {}).get("propertyNames") or {}).get("enum")
        if names is None or "if" not in cond:
            continue
        if jsonschema.Draft202012Validator(cond["if"]).is_valid(params):
            allowed = set(names) if allowed is None else allowed & set(names)
    return allowed


def _render(value, path, marks, schema, indent, lines, first_prefix=None):
    pad = "  " * indent
    for n, key in enumerate(_ordered(value, schema)):
        sub = value[key]
        sub_path = path + (key,)
        sub_s = sub_schema(schema or {}, key) or {}
        if key == "params" and "pass" in value:
            sub_s = _pass_schema(value)
        prefix = first_prefix if (n == 0 and first_prefix is not None) else pad
        mark = marks.get(sub_path)
        comment = f"   # {mark}" if mark else ""
        if isinstance(sub, dict) and sub:
            lines.append(f"{prefix}{key}:{comment}")
            _render(sub, sub_path, marks, sub_s, indent + 1, lines)
        elif isinstance(sub, list) and any(isinstance(v, dict) for v in sub):
            lines.append(f"{prefix}{key}:{comment}")
            item_s = sub_s.get("items") if isinstance(sub_s.get("items"), dict) else {}
            for i, item in enumerate(sub):
                if isinstance(item, dict) and item:
                    _render(item, sub_path + (i,), marks, item_s, indent + 2, lines,
                            first_prefix="  " * (indent + 1) + "- ")
                else:
                    lines.append(f"{'  ' * (indent + 1)}- {show(item)}")
        else:
            lines.append(f"{prefix}{key}: {show(sub)}{comment}")


# ------------------------------------------------------------------------------ stage plan

def stage_plan(recipe: Recipe, backend: Backend | None, backend_error: str | None = None) -> list[tuple[str, str]]:
    """[(stage label, what it does)] in run order; labels as in recipe_diff.stage_labels."""
    from trtpipe import registry
    data = recipe.data
    src = data["source"]
    if "onnx" in src:
        source = f"load ONNX file {src['onnx']} (external data next to it), onnx.checker"
    elif "frozen_graph" in src:
        source = (f"convert TF1 frozen graph {src['frozen_graph']} with tf2onnx (inputs {', '.join(src['inputs'])}; "
                  f"outputs {', '.join(src['outputs'])}; opset {src['opset']}); imports TensorFlow")
    elif "tflite" in src:
        source = f"convert TFLite model {src['tflite']} with tf2onnx (opset {src['opset']}); imports TensorFlow"
    else:
        source = (f"convert SavedModel {src['saved_model']} with tf2onnx (signature {src['signature']}, "
                  f"tag {src['tag']}, opset {src['opset']}); imports TensorFlow")
    steps = [("source", source)]
    for index, item in enumerate(data["passes"]):
        info = registry.get(item["pass"])
        what = f"{item['pass']}: {info.summary}" if info else item["pass"]
        if not item.get("enabled", True):
            what += " [disabled: skipped]"
        if item.get("note"):
            what += f" (note: {item['note']})"
        steps.append((f"passes[{index}]", what))
    steps.append(("precision", _precision_text(data)))
    steps.append(("validate", _validate_text(recipe, backend)))
    steps.append(("build", _build_text(data["build"], backend, backend_error)))
    out = data["output"]
    files = [f"{recipe.name}.source.onnx", out["onnx"], out["plan"]]
    if any(item["pass"] == "nms" and item["params"].get("mode") == "split" for _, item in recipe.enabled_passes()):
        files.append(f"{recipe.name}.postprocess.onnx")
    files += ["report.json", "report.md"]
    if (data.get("validate") or {}).get("enabled", True):  # report_pictures.py: drawn from validation's feed
        files.append(f"{recipe.name}.errors.png (+ {recipe.name}.detections.png for a detector)")
    steps.append(("publish", f"{out['dir']}/: {', '.join(files)} (moved in only when every stage succeeded)"))
    return steps


def _precision_text(data):
    p = data["precision"]
    try:
        from trtpipe.recipe.precision import normalize
        cfg = normalize(p)
    except Exception:
        cfg = {"mode": p} if isinstance(p, str) else dict(p)
    mode = cfg.get("mode")
    if mode == "fp32":
        return "fp32: the graph is built as it is"
    if mode in ("fp16", "bf16"):
        guard = " and overflow guard on the validation data" if mode == "fp16" and cfg.get("overflow_guard") else ""
        return (f"{mode}: mixed-precision graph; {len(cfg.get('keep_op_types', []))} op types and "
                f"{len(cfg.get('keep_nodes', []))} node patterns stay fp32{guard}")
    cal = cfg.get("calibration")
    data_text = ("the declared calibration data" if cal else "the validation data")
    return f"{mode}: Q/DQ quantization, calibrated ({cfg.get('method', 'minmax')}) on {data_text}"


def _validate_text(recipe, backend):
    v = recipe.data["validate"]
    if not v.get("enabled", True):
        return "skipped (validate.enabled: false)"
    d = v.get("data", {})
    if d.get("npz"):
        feed = f"the arrays in {d['npz']}"
    elif d.get("images"):
        feed = f"the images in {d['images']['dir']}"
    else:
        feed = f"{d.get('iterations', 1)} seeded random feed(s) (seed {d.get('seed', 1)})"
    parts = [f"ONNX Runtime, source vs final model on {feed}"]
    if any(item["pass"] == "nms" and item["params"].get("mode") == "split" for _, item in recipe.enabled_passes()):
        parts.append("detections of final + post-processing model vs the source's NMS")
    if v.get("engine", True) and backend is not None:
        from trtpipe.backend import has_runtime_gpu
        ok, why = has_runtime_gpu(backend, recipe.data["build"]["compute_capabilities"])
        parts.append(f"engine vs ONNX Runtime on {why}" if ok else f"engine comparison skipped here: {why}")
    return "; ".join(parts)


def _build_text(build, backend, backend_error):
    if backend is None:
        return f"cannot build here: {backend_error}"
    text = (f"{backend.name} {backend.version}, workspace {build['workspace']}, "
            f"optimization level {build['optimization_level']}")
    if backend.is_rtx:
        text += f", ahead of time for compute capability {', '.join(build['compute_capabilities'])}"
    else:
        text += ", for the local GPU"
    if build.get("profiles"):
        text += f", profiles {', '.join(p['name'] for p in build['profiles'])}"
    if build.get("plugins"):
        text += f", {len(build['plugins'])} plugin librar{'y' if len(build['plugins']) == 1 else 'ies'}"
    if build.get("timing_cache") and not backend.is_rtx:  # TensorRT-RTX gets none (stages/build/plan.py)
        text += f", timing cache {build['timing_cache']}"
    return text


def plan_lines(recipe: Recipe, backend: Backend | None, backend_error: str | None = None) -> list[str]:
    steps = stage_plan(recipe, backend, backend_error)
    labels = stage_labels(len(recipe.data["passes"]))
    assert [s for s, _ in steps] == labels
    status = cache_status(recipe)
    head = ("stage plan (no stage cache yet: every stage runs)" if status is None else
            "stage plan (stage cache: `cached` stages are reused, the others run)")
    lines = [head]
    width = max(len(s) for s, _ in steps)
    for i, (stage, what) in enumerate(steps):
        if status is None:
            state = "runs"
        else:
            state = status.get(stage, "runs")
        if stage == "validate" and what.startswith("skipped"):
            state = "skipped"
        if stage.startswith("passes[") and not recipe.data["passes"][i - 1].get("enabled", True):
            state = "skipped"
        lines.append(f"{i + 1:>3}. {stage:<{width}}  {state:<7}  {what}")
    return lines
