"""Why a source path cannot be read, said before any stage runs: path checks only (no onnx, no
TensorFlow), shared by the run's input check (stages/run_files.py), `check` and the source stage.
"""
from __future__ import annotations

import os

from trtpipe.errors import SourceError, did_you_mean
from trtpipe.fileguard import not_a_file


def missing_path_error(path: str, where: str) -> SourceError:
    """SourceError for a missing file or directory (checks.py reports it the same way)."""
    parent, base = os.path.split(path)
    if not os.path.isdir(parent):
        return SourceError(f"{where}: not found: {path} (directory {parent} does not exist)")
    return SourceError(f"{where}: not found: {path}", hint=did_you_mean(base, sorted(os.listdir(parent))))


def source_file_problem(kind: str, path: str, where: str) -> SourceError | None:
    """Why a `source.frozen_graph` / `source.tflite` path cannot be read, or None: missing (with a
    did-you-mean), a directory (a SavedModel's: named), or not a regular file (a FIFO would block
    the read). The run's input check (stages/run_files.py) and `check` report the same message.

    Args:
        kind: "frozen_graph" or "tflite".
        path: the path the recipe names (resolved).
        where: "recipe.yaml:3:17: source.<kind>", the start of the message.

    Returns:
        A SourceError, or None for a regular file (its content is checked when it is converted).
    """
    what = {"frozen_graph": "a frozen graph .pb file", "tflite": "a .tflite file"}[kind]
    if not os.path.lexists(path) or (os.path.islink(path) and not os.path.exists(path)):
        return missing_path_error(path, where)
    if os.path.isdir(path):
        saved = os.path.exists(os.path.join(path, "saved_model.pb"))
        return SourceError(f"{where}: {path} is a directory, not {what}",
                           hint="it holds a SavedModel: use `saved_model:` instead" if saved else None)
    if not_a_file(path):
        return SourceError(f"{where}: {not_a_file(path)}")
    return None
