"""Every use of tf2onnx internals, in one place, behind a version guard.

* `convert_graph_def`: tf2onnx's private `convert._convert_common`, which its CLI
  (`python -m tf2onnx.convert --saved-model`) calls. The public `from_graph_def` re-freezes the
  graph, drops `initialized_tables` (hash tables then stay unconverted) and forces
  `continue_on_error`, so it converts some SavedModels differently from the CLI.
* `numpy_compat`: tf2onnx 1.17's large-model path calls `np.product`, gone in numpy 2; for the
  duration of a conversion `tf2onnx.graph.np` is a numpy that still has it, then restored.

Both are verified against the tf2onnx versions in TESTED_VERSIONS (tests/stages/test_source.py
runs them); another version is refused with a clear message instead of failing obscurely.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator

from trtpipe.errors import SourceError

TESTED_VERSIONS = ("1.17.",)  # tf2onnx releases whose _convert_common signature this module matches


def check_version(version: str) -> None:
    """Refuse a tf2onnx release this module was not verified with.

    Raises:
        SourceError: `version` does not start with one of TESTED_VERSIONS.
    """
    if not version.startswith(TESTED_VERSIONS):
        raise SourceError(f"tf2onnx {version} is installed; trt-pipeline's SavedModel conversion is verified with "
                          f"tf2onnx {', '.join(v + 'x' for v in TESTED_VERSIONS)} (it calls tf2onnx internals)",
                          hint="pip install 'tf2onnx==1.17.0' (the version setup.cfg pins)")


def convert_graph_def(graph_def: object, **options: object) -> tuple:
    """tf2onnx's CLI conversion of a frozen GraphDef -> (onnx.ModelProto, external tensor storage
    or None). `options` are `_convert_common`'s keyword arguments (name, opset, input_names,
    output_names, tensors_to_rename, initialized_tables, large_model, shape_override, ...).

    Raises:
        SourceError: an untested tf2onnx version (see check_version).
        Whatever tf2onnx raises during conversion (the caller words it for the recipe).
    """
    import tf2onnx
    from tf2onnx import convert
    check_version(tf2onnx.__version__)
    return convert._convert_common(graph_def, **options)


@contextlib.contextmanager
def numpy_compat() -> Iterator[None]:
    """Give `tf2onnx.graph` (only it) a numpy with `product` while the block runs; restored after."""
    import numpy
    import tf2onnx.graph
    original = tf2onnx.graph.np
    if not hasattr(original, "product"):
        shim = types.ModuleType("numpy")
        shim.__getattr__, shim.product = functools.partial(getattr, numpy), numpy.prod
        tf2onnx.graph.np = shim
    try:
        yield
    finally:
        tf2onnx.graph.np = original
