"""Cache keys of a recipe's stages: each hashes everything that stage's output depends on, so a
re-run redoes exactly what an edit changed.

* source (conversion): the SavedModel's files (the frozen graph or TFLite file; or the ONNX file and
  its external data), the converter options, the tensorflow/tf2onnx/onnx versions and this tool's
  converter code;
* each pass: the input model's sha256, the pass name, its parameters (and the content of files
  they name), the pass's code (its module and every project module it imports, and the pass
  runner's), what earlier passes recorded for later stages (input contract, output map, NMS
  post-processing) and the onnx/onnx-graphsurgeon versions;
* precision: the input model's sha256, the precision settings, the target compute capabilities
  and, for reduced precision, the calibration/overflow-check data and input contract;
* validation: the source and final model sha256s, the post-processing model's, the data spec
  (and the content of data files), tolerances, precision, and the plan's sha256 when validation
  runs after the build (where a GPU can run it);
* build: the final ONNX sha256, the build settings (workspace, optimization level, profiles and
  the deployment options: refit, weight stripping, compatibility, TF32, ...), the backend and its
  version, the compute capabilities (tensorrt: the local GPU) and plugin library contents.

"Code" is always computed, never listed: `code_digest` (cache/code.py) hashes the import closure
of each stage's modules (STAGE_CODE), so editing any module a stage imports re-runs it. Recipe
values are hashed as the resolved recipe holds them (normalized: `fp16` and `{mode: fp16}` are
one key).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtpipe.cache.code import code_digest, use_memo
from trtpipe.cache.hashing import Hasher, data_files, digest, referenced_files, versions
from trtpipe.recipe.resolved import DEPLOYMENT_KEYS, SOURCE_KINDS

if TYPE_CHECKING:
    from trtpipe.backend import Backend
    from trtpipe.recipe.load import Recipe
    from trtpipe.registry import PassContext

# The modules whose import closures compute each stage's output: the stage's work and its cached
# wrapper (which prepares inputs, e.g. validation's fp32 twin of an fp16 model).
STAGE_CODE = {
    "source": ["trtpipe.stages.source.load", "trtpipe.stages.source.cached"],
    "pass": ["trtpipe.stages.passes.runner", "trtpipe.stages.passes.cached"],
    "precision": ["trtpipe.stages.precision.mixed", "trtpipe.stages.precision.cached"],
    "validate": ["trtpipe.stages.validate.compare", "trtpipe.stages.validate.cached"],
    "build": ["trtpipe.stages.build.plan", "trtpipe.stages.build.cached"],
}


def stage_code(stage: str, extra: tuple = ()) -> str:
    """Digest of the import closure of a stage's modules (plus `extra` roots, e.g. a pass module)."""
    return code_digest(STAGE_CODE[stage] + list(extra))


class Keys:
    """Cache keys of one recipe's stages."""

    def __init__(self, recipe: Recipe, backend: Backend, hasher: Hasher) -> None:
        self.recipe, self.backend, self.hasher = recipe, backend, hasher
        if hasher.root is not None:  # code scans kept beside the file hashes (code.use_memo)
            use_memo(hasher.root.parent / "codescan.json")

    def source(self) -> str | None:
        """The source stage's key, or None when the source file or directory is missing (computed
        once per run: the run peeks at it before the stage asks)."""
        if not hasattr(self, "_source"):
            self._source = self._source_key()
        return self._source

    def _source_key(self):
        src = self.recipe.data["source"]
        kind = next(k for k in SOURCE_KINDS if src.get(k))
        opts = {k: v for k, v in src.items() if k not in SOURCE_KINDS}
        tools = versions("onnx", "tf2onnx", "tensorflow", "tensorflow-cpu", "numpy")
        if kind == "onnx":
            content = self.hasher.onnx_file(src["onnx"]) if Path(src["onnx"]).is_file() else None
            tools = versions("onnx")
        elif kind == "saved_model":
            path = Path(src["saved_model"])
            content = self.hasher.tree(path) if path.is_dir() else None
        else:  # frozen_graph / tflite: one file
            content = self.hasher.file(src[kind]) if Path(src[kind]).is_file() else None
        if content is None:
            return None  # missing source: the stage fails and reports it
        return digest({"stage": "source", "kind": kind,
                       "content": content, "options": opts, "versions": tools,
                       "code": stage_code("source")})

    def pass_(self, index: int, item: dict, input_sha: str, ctx_state: dict) -> str:
        from trtpipe import registry
        info = registry.get(item["pass"])
        return digest({"stage": "pass", "input": input_sha, "pass": item["pass"], "params": item["params"],
                       "files": referenced_files(item["params"], self.recipe.dir, self.hasher),
                       "code": stage_code("pass", (info.origin,)), "ctx": ctx_state,
                       "context": self._pass_context(),
                       "versions": versions("onnx", "onnx-graphsurgeon", "numpy")})

    def _pass_context(self):
        build = self.recipe.data["build"]
        return {"name": self.recipe.name, "backend": self.backend.name, "backend_version": self.backend.version,
                "plugins": [[Path(p).name, self.hasher.file(p) if Path(p).is_file() else None]
                            for p in build.get("plugins") or []]}

    def precision(self, input_sha: str, source_sha: str, contract: dict) -> str:
        prec = self.recipe.data["precision"]  # normalized: fp16 and {mode: fp16} are one key
        mode = prec["mode"]
        parts = {"stage": "precision", "input": input_sha, "precision": prec, "ccs": self._ccs(),
                 "versions": versions("onnx", "onnxruntime", "onnxconverter-common", "numpy"),
                 "code": stage_code("precision")}
        if mode != "fp32":  # calibration / overflow checks run the model on the validation data
            data = (self.recipe.data.get("validate") or {}).get("data")
            parts.update(source=source_sha, contract=contract, data=data,
                         files=referenced_files([prec, data], self.recipe.dir, self.hasher),
                         data_files=[data_files(d, self.recipe.dir, self.hasher)
                                     for d in (data, prec.get("calibration"))])
        return digest(parts)

    def validate(self, source_sha: str, final_sha: str, ctx_state: dict, plan_sha: str | None = None) -> str:
        cfg = self.recipe.data.get("validate")
        return digest({"stage": "validate", "source": source_sha, "final": final_sha, "ctx": ctx_state,
                       "validate": cfg, "precision": self.recipe.data["precision"], "plan": plan_sha,
                       # validation also compares at every profile corner (validate/corners.py)
                       "profiles": self.recipe.data["build"]["profiles"],
                       "backend": [self.backend.name, self.backend.version, self._ccs()] if plan_sha else None,
                       "files": referenced_files(cfg, self.recipe.dir, self.hasher),
                       "data_files": data_files((cfg or {}).get("data"), self.recipe.dir, self.hasher),
                       "versions": versions("onnx", "onnxruntime", "polygraphy", "numpy", "pillow"),
                       "code": stage_code("validate")})

    def build(self, final_sha: str) -> str:
        b = self.recipe.data["build"]
        # the deployment options change the plan too (refit, stripped weights, TF32, ...)
        settings = {k: b.get(k) for k in ("workspace_bytes", "optimization_level", "profiles", *DEPLOYMENT_KEYS)}
        return digest({"stage": "build", "input": final_sha, "settings": settings, "ccs": self._ccs(),
                       "backend": [self.backend.name, self.backend.version], "device": self.device(),
                       "plugins": self._pass_context()["plugins"], "code": stage_code("build")})

    def _ccs(self):
        return list(self.recipe.data["build"]["compute_capabilities"]) if self.backend.is_rtx else None

    def device(self) -> str:
        """What the plan is built for: RTX's compute capabilities, else the local GPU."""
        if self.backend.is_rtx:
            return "sm" + "+".join(c.replace(".", "") for c in self.recipe.data["build"]["compute_capabilities"])
        from trtpipe.backend import probe_cuda
        ok, info = probe_cuda()
        return f"{info['name']}-sm{info['cc'].replace('.', '')}" if ok else "no-gpu"


def ctx_state(ctx: PassContext, hasher: Hasher) -> dict[str, Any]:
    """What passes hand to later stages, in a form that keys and entries can hold."""
    return {"input_contract": ctx.input_contract, "output_map": ctx.output_map, "postprocess": ctx.postprocess,
            "artifacts": {name: hasher.file(p) if Path(p).is_file() else None
                          for name, p in sorted(ctx.artifacts.items())}}
