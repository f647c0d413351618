"""The TFLite reading and conversion run in a child process, so that a corrupt file's crash is reported.

A .tflite file is a flatbuffer that TensorFlow Lite's interpreter (native code, used both by the
source stage's tensor-name check and by tf2onnx's TFLite reader) trusts: a corrupt or truncated
file can crash it (SIGSEGV) and a crash in the run's own process would end the run with no message
(exit 139), its staging directory and lock left behind. As trtpipe/stages/build/isolated.py does
for the TensorRT builder, the whole TFLite -> ONNX conversion runs in a spawned child; a signal or
a vanished child becomes a SourceError (exit 4) naming the file and the signal, and the run cleans
up as after any failed stage. TensorFlow is then imported in the child only (the parent does not
need it for a TFLite source), so the isolation costs a process start, not a second TF import.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable
from typing import Any

import onnx

from trtpipe.errors import PipelineError, SourceError

ENV_IN_PROCESS = "TRTPIPE_TFLITE_IN_PROCESS"  # "1": convert in the run's own process (debugging)


def run_isolated(target: Callable[..., tuple], path: str, args: tuple, where: str,
                 log: Callable[[str], Any] | None) -> tuple[onnx.ModelProto, str | None, dict, dict, dict]:
    """Call `target(*args, log=<collector>)` in a spawned child and return what it returned.

    Args:
        target: a module-level function (pickled by reference) returning (model, onnx_path,
            unconverted, timings, versions); `log` lines it emits are replayed to `log` here.
        path: the TFLite file (for messages).
        args: target's positional arguments (plain data; must pickle).
        where: "recipe.yaml:3:11: source.tflite", for messages.
        log: sink for the child's detail lines (None: stderr, as tf_convert does).

    Returns:
        target's return value: (model, onnx_path or None, unconverted, timings, versions).

    Raises:
        SourceError: the child died from a signal or exited without an answer (exit 4, naming the
            file and the signal); any PipelineError the conversion raised, as raised.
    """
    if os.environ.get(ENV_IN_PROCESS) == "1":
        return target(*args, log=log)
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold TensorFlow's threads
    conn, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_serve, args=(child, target, args), daemon=True, name="trtpipe-tflite")
    process.start()
    child.close()
    try:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            raise _crash(process, path, where) from None
    finally:
        conn.close()
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join(timeout=10)
    lines, payload = payload
    for line in lines:
        if log:
            log(line)
        else:
            import sys
            print(line, file=sys.stderr)
    if kind == "result":
        model_bytes, onnx_path, unconverted, timings, versions = payload
        return onnx.load_from_string(model_bytes), onnx_path, unconverted, timings, versions
    if kind == "error":
        cls, message, hint = payload
        raise cls(message, hint=hint)
    raise RuntimeError(f"the TFLite conversion process failed:\n{payload}")


def _crash(process: Any, path: str, where: str) -> SourceError:
    process.join(timeout=10)
    code = process.exitcode
    if code is not None and code < 0:
        try:
            how = f"signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"signal {-code}"
    else:
        how = f"exit code {code}" if code is not None else "no exit status"
    return SourceError(f"{where}: reading {path} crashed TensorFlow Lite / tf2onnx ({how}): the file is not a "
                       f"valid TFLite flatbuffer (corrupt or truncated?)",
                       hint="re-export the model (tf.lite.TFLiteConverter), or copy it again and compare its "
                            "checksum with the original")


def _serve(conn: Any, target: Callable[..., tuple], args: tuple) -> None:
    """The child: run the conversion once and send back the result, or the error, with the log lines."""
    lines: list[str] = []
    try:
        model, onnx_path, unconverted, timings, versions = target(*args, log=lines.append)
        # a large_model's weights are in onnx_path's directory: the proto itself is small
        reply = ("result", (lines, (model.SerializeToString(), onnx_path, unconverted, timings, versions)))
    except PipelineError as err:
        reply = ("error", (lines, (type(err), err.message, err.hint)))
    except Exception:  # a bug: the parent shows it as one (exit 1), with this traceback
        reply = ("bug", (lines, traceback.format_exc()))
    try:
        conn.send(reply)
    except (OSError, BrokenPipeError):
        pass
    finally:
        conn.close()
