"""The report's pictures (report_pictures.py), cached: a no-op re-run copies them back from the
stage cache without importing numpy, Pillow or ONNX Runtime."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtpipe.fileguard import default_file_mode

if TYPE_CHECKING:
    from trtpipe.registry import PassContext
    from trtpipe.stages.run_state import RunState

KIND = "pictures"                            # stage-cache kind
DRAWING = "trtpipe.stages.report_pictures"   # the module whose code the pictures depend on


def run(state: RunState, source_path: Path, final_path: Path, ctx: PassContext, staging: Any,
        validation: dict) -> dict[str, Any]:
    """Make (or restore from the stage cache) the report's pictures into the staging directory.

    Returns:
        {"status": "made" | "not made", "reason": why not (or None), "feed": what was drawn,
        "files": {"detections": file name, "errors": file name} (those made)}.
    """
    if validation.get("status") == "skipped" or not (state.recipe.data.get("validate") or {}).get("enabled", True):
        return {"status": "not made", "reason": "validation did not run", "files": {}}
    from trtpipe.cache.code import code_digest
    from trtpipe.cache.hashing import digest, versions
    key = digest({"stage": KIND, "validate": (state.stages.get("validate") or {}).get("key"),
                  "code": code_digest([DRAWING]), "versions": versions("onnxruntime", "pillow", "numpy")})
    # entries hold the pictures by role (recipes with equal validation share them, under their own names)
    entry = state.cache.get(KIND, key, verify=None) if "validate" not in state.forced else None
    if entry is not None:
        meta = dict(entry.meta["pictures"])
        meta["files"] = {role: f"{state.recipe.name}.{role}.png" for role in meta["files"]}
        for role, name in meta["files"].items():
            _copy_public(entry.path(f"{role}.png"), staging.path(name))
        return meta
    from trtpipe.stages.report_pictures import make_pictures
    with state.ui.working("drawing the report's pictures"):
        meta = make_pictures(recipe=state.recipe, source_path=source_path, final_path=final_path,
                             contract=ctx.input_contract, output_map=ctx.output_map, postprocess=ctx.postprocess,
                             out_dir=staging.dir, name=state.recipe.name)
    if meta["status"] == "made":
        with state.cache.writer(KIND, key) as w:
            for role, name in meta["files"].items():
                w.add_file(f"{role}.png", staging.path(name))
            w.meta = {"pictures": meta}
            w.commit()
    else:
        state.ui.detail(f"report pictures not made: {meta['reason']}")
    return meta


def _copy_public(src, dst):
    shutil.copyfile(src, dst)
    os.chmod(dst, default_file_mode())

