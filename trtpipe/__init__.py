"""trt-pipeline: declarative TensorRT / TensorRT-RTX engine builds from YAML recipes.

This package's top level is the API for pass authors; a pass is one file that imports only this
and the graph toolkit (`trtpipe.graph.*`):

    import onnx_graphsurgeon as gs
    from trtpipe import PassContext, PassError, register_pass, suggest

    @register_pass("my_pass", schema={"type": "object", "additionalProperties": False, ...})
    def my_pass(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
        ...

`run_pass(model, name, params)` applies a registered pass the way a recipe run does (schema
defaults filled, output checked). The pipeline itself: `trtpipe.stages` (in flow order), the
stage cache `trtpipe.cache`, the review commands `trtpipe.review`; see docs/architecture.md.
"""

import importlib

from trtpipe.errors import BuildError, PassError, PipelineError, RecipeError, did_you_mean, suggest
from trtpipe.registry import PassContext, register_pass

__all__ = ["BuildError", "PassContext", "PassError", "PipelineError", "RecipeError", "did_you_mean",
           "register_pass", "run_pass", "suggest"]


def __getattr__(name: str):
    # run_pass imports onnx-graphsurgeon and the runner: loaded on first use, so that
    # `import trtpipe` (every command) stays light. By name, so that the cache's import closure
    # (cache/code.py) does not count the runner as a dependency of every module in the package.
    if name == "run_pass":
        return importlib.import_module("trtpipe.stages.passes.runner").run_pass
    raise AttributeError(f"module 'trtpipe' has no attribute {name!r}")
