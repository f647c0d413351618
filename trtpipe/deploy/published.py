"""What a run published, read back for predict, bench, export and refit.

A run publishes into `output.dir` the plan, the final ONNX model (and the converted source model),
files passes added (the NMS post-processing model after `nms: split`), the labels file, and
report.json, whose `deploy` section holds what the passes recorded for later stages: the input
contract (how the source model's input becomes the final model's: dtype, layout, size,
normalization steps), the output map and the post-processing model's wiring. Files are read from
`.runs/current` when the directory has one (stages/publish.py), so all come from one run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtpipe.cache.files import sha256_file
from trtpipe.errors import DeployError, suggest

REPORT = "report.json"
# First bytes of a serialized plan, by the backend that wrote it (TensorRT: "ftrt"; TensorRT-RTX
# 1.7.1: "vtrt", measured on the plans this repository builds).
PLAN_MAGIC = {b"ftrt": "tensorrt", b"vtrt": "tensorrt_rtx"}


@dataclass
class Published:
    """One run's published output directory (see the module docstring). Paths are absolute."""

    dir: Path                      # the directory given
    files: Path                    # where its files are read from (.runs/current resolved, or `dir`)
    report: dict                   # report.json
    name: str                      # recipe name
    plan: Path
    final: Path                    # the final ONNX model the plan was built from
    source: Path | None            # the converted source model (None when not published)
    postprocess: Path | None       # post-processing model after `nms: split`, else None
    postprocess_info: dict | None  # {"file", "inputs": {pp input: final output}, "outputs", "kind"}
    contract: dict                 # input contract, keyed by final input name
    output_map: dict               # final output -> source output
    labels: Path | None            # class names file (output.labels), published next to the plan
    backend: str                   # "tensorrt" or "tensorrt_rtx"
    backend_version: str
    compute_capabilities: list | None
    recipe: dict = field(default_factory=dict)  # the resolved recipe the run used

    @property
    def build(self) -> dict:
        """The resolved recipe's `build` section."""
        return self.recipe.get("build") or {}

    @property
    def deployment(self) -> dict:
        """The deployment options the plan was built with (report.json build.deployment)."""
        return (self.report.get("build") or {}).get("deployment") or {}


def load_published(out_dir: str | Path, *, verify: bool = True) -> Published:
    """Read OUTPUT_DIR as a run of `python pipeline.py RECIPE` left it.

    Args:
        out_dir: the run's output directory (output.dir or `-o`).
        verify: check every file report.json lists against its recorded sha256.

    Returns:
        The Published directory.

    Raises:
        DeployError: the directory is missing, has no readable report.json, was written by an older
            trt-pipeline (report.json has no input contract), lacks a file its report lists, or a file
            differs from the one the run published (sha256).
    """
    out = Path(out_dir).resolve()
    if not out.is_dir():
        raise DeployError(f"{out_dir}: no such output directory" if not out.exists()
                          else f"{out_dir}: not a directory; give the output directory of a run (output.dir)")
    files = _current(out)
    report = _read_report(files / REPORT, out_dir)
    _check_report(report, files / REPORT)
    rec = (report.get("recipe") or {})
    resolved = rec.get("resolved") or {}
    deploy = report.get("deploy")
    rerun = f"python pipeline.py {rec.get('path') or 'RECIPE'}"
    if not isinstance(deploy, dict) or not isinstance(deploy.get("input_contract"), dict):
        raise DeployError(f"{out / REPORT}: no input contract (report.json has no deploy.input_contract): the "
                          "directory was written by an older trt-pipeline, so the images' preprocessing is unknown",
                          hint=f"re-run the recipe to publish it again: {rerun}")
    output = resolved.get("output") or {}
    artifacts = report.get("artifacts") or {}
    plan = _need(files, output.get("plan"), "the plan (output.plan)", artifacts, rerun)
    final = _need(files, output.get("onnx"), "the final ONNX model (output.onnx)", artifacts, rerun)
    source_name = f"{rec.get('name')}.source.onnx"
    source = files / source_name if (files / source_name).is_file() else None
    pp_info = deploy.get("postprocess") or None
    postprocess = _need(files, pp_info["file"], "the post-processing model", artifacts, rerun) if pp_info else None
    labels = _need(files, deploy["labels"], "the labels file", artifacts, rerun) if deploy.get("labels") else None
    if verify:
        for name, meta in artifacts.items():
            path = files / name
            if not path.is_file():
                raise DeployError(f"{out / name} is listed in report.json but missing: the directory was changed "
                                  "after the run", hint=f"re-run the recipe to publish a consistent set: {rerun}")
            if isinstance(meta, dict) and meta.get("sha256") and sha256_file(path) != meta["sha256"]:
                raise DeployError(f"{out / name} is not the file the run published (its sha256 differs from "
                                  f"report.json's): the directory was changed after the run",
                                  hint=f"re-run the recipe to publish a consistent set: {rerun}")
    backend = report.get("backend") or {}
    return Published(dir=out, files=files, report=report, name=str(rec.get("name") or plan.stem), plan=plan,
                     final=final, source=source, postprocess=postprocess, postprocess_info=pp_info,
                     contract=deploy["input_contract"], output_map=deploy.get("output_map") or {}, labels=labels,
                     backend=str(backend.get("name") or ""), backend_version=str(backend.get("version") or ""),
                     compute_capabilities=backend.get("compute_capabilities"), recipe=resolved)


def plan_backend(plan: str | Path) -> str | None:
    """The backend a serialized plan was written by, from its first bytes ("tensorrt",
    "tensorrt_rtx"), or None when they are neither's (not a plan, or an unknown format).

    Raises:
        DeployError: the file cannot be read.
    """
    try:
        with open(plan, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        raise DeployError(f"{plan}: cannot read the plan: {err.strerror or err}") from None
    return PLAN_MAGIC.get(head)


def _current(out):
    current = out / ".runs" / "current"
    return current.resolve() if current.is_dir() else out


def _read_report(path, out_dir):
    if not path.is_file():
        raise DeployError(f"{out_dir}: no {REPORT}: not the output directory of a run (python pipeline.py RECIPE "
                          "publishes the plan, the final ONNX model and report.json into output.dir)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DeployError(f"{path}: cannot read the report: {err}") from None
    if not isinstance(data, dict):
        raise DeployError(f"{path}: not a trt-pipeline report (a JSON object was expected)")
    return data


def _need(files, name, what, artifacts, rerun):
    if not isinstance(name, str) or not name:
        raise DeployError(f"{files / REPORT}: does not name {what}", hint=f"re-run the recipe: {rerun}")
    if not _plain_name(name):
        raise DeployError(f"{files / REPORT}: {what} is {name!r}, not a plain file name inside the output directory: "
                          "report.json was changed after the run", hint=f"re-run the recipe: {rerun}")
    path = files / name
    if not path.is_file():
        near = [p.name for p in files.iterdir()] if files.is_dir() else []
        raise DeployError(f"{path}: {what} is missing from the output directory{suggest(name, near)}",
                          hint=f"re-run the recipe to publish it again: {rerun}")
    return path


def _plain_name(name: str) -> bool:
    """A file name with no directory part, not '.', '..' or hidden: what a run publishes."""
    return name == Path(name).name and name not in (".", "..") and not name.startswith(".") and "\\" not in name


# What predict, bench and export read from report.json beyond schemas/report.schema.json (which
# leaves `recipe.resolved` and the input contract open): the types their code relies on.
_DIMS = {"type": "array", "items": {"type": "integer", "minimum": 0}}
_NAME = {"type": "string", "minLength": 1}
DEPLOY_READS = {
    "type": "object",
    "properties": {
        "recipe": {"type": "object", "properties": {"resolved": {"type": "object", "properties": {
            "output": {"type": "object", "required": ["plan", "onnx"],
                       "properties": {"plan": _NAME, "onnx": _NAME, "boxes": {"type": "string"}}},
            "build": {"type": "object", "properties": {
                "workspace_bytes": {"type": "integer", "minimum": 0},
                "optimization_level": {"type": "integer", "minimum": 0, "maximum": 5},
                "max_aux_streams": {"type": ["integer", "null"], "minimum": 0},
                "compute_capabilities": {"type": ["array", "null"], "items": {"type": "string"}},
                "plugins": {"type": ["array", "null"], "items": {"type": "string"}},
                "profiles": {"type": ["array", "null"], "items": {
                    "type": "object", "required": ["name", "inputs"],
                    "properties": {"name": {"type": "string"}, "inputs": {"type": "object", "additionalProperties": {
                        "type": "object", "required": ["min", "opt", "max"],
                        "properties": {"min": _DIMS, "opt": _DIMS, "max": _DIMS}}}}}}}},
            "validate": {"type": "object"}}}}},
        "deploy": {"type": "object", "properties": {
            "input_contract": {"type": "object", "minProperties": 1, "additionalProperties": {
                "type": "object", "properties": {
                    "source_input": {"type": ["string", "null"]}, "source_dtype": {"type": ["string", "null"]},
                    "source_shape": {"type": ["array", "null"]}, "shape": {"type": ["array", "null"]},
                    "steps": {"type": "array", "items": {"type": "object"}}}}},
            "output_map": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
            "labels": {"type": ["string", "null"]},
            "postprocess": {"type": ["object", "null"], "required": ["file", "inputs"],
                            "properties": {"file": _NAME, "inputs": {"type": "object"},
                                           "outputs": {"type": "object"}}}}},
    },
}


def _check_report(report: dict, path: Path) -> None:
    """Validate report.json against schemas/report.schema.json and DEPLOY_READS.

    Raises:
        DeployError: naming the first key path that does not fit and what was expected.
    """
    import jsonschema

    from trtpipe.recipe.schema import load_schema
    schema = load_schema("report.schema.json")
    for what, sch in (("schemas/report.schema.json", schema), ("what predict/bench/export read", DEPLOY_READS)):
        errors = sorted(jsonschema.Draft202012Validator(sch).iter_errors(report), key=lambda e: list(e.path))
        if errors:
            err = errors[0]
            key = ".".join(str(p) for p in err.absolute_path) or "(the top level)"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise DeployError(f"{path}: {key}: {err.message} ({what}){more}: report.json was changed after the run "
                              "or written by another version", hint="re-run the recipe to publish it again")
    for name in report.get("artifacts") or {}:
        if not _plain_name(name):
            raise DeployError(f"{path}: artifacts.{name}: not a plain file name inside the output directory: "
                              "report.json was changed after the run", hint="re-run the recipe to publish it again")


def describe(pub: Published) -> dict[str, Any]:
    """A short JSON-able description of the published set (for predict/bench output)."""
    return {"dir": str(pub.dir), "recipe": pub.name, "plan": pub.plan.name, "final_onnx": pub.final.name,
            "postprocess": pub.postprocess.name if pub.postprocess else None,
            "backend": f"{pub.backend} {pub.backend_version}".strip()}
