"""What TensorRT's logger says during one build: errors, warnings, memory figures.

TensorRT keeps the first logger a process registers and warns about later ones, so there is one
Recorder per TensorRT module, routed to a fresh `Capture` for each build (`capture()`). Build errors
(errors.py) read `Capture.error_list()`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

_MEMORY_RE = {
    "activation_bytes": re.compile(r"Total Activation Memory:\s*(\d+)"),
    "weights_bytes": re.compile(r"Total Weights Memory:\s*(\d+)"),
}
# Messages that are noise here: RTX follows every API error with a CUDA probe that fails on a
# CPU-only machine, and warns when a second builder brings its own logger.
_NOISE = ("catchCudaError", "logger passed into createInferBuilder differs")
_LOGGERS: dict[str, Any] = {}  # TensorRT module name -> its Recorder


class Capture:
    """What the builder said during one build: errors, warnings, memory figures ({"activation_bytes",
    "weights_bytes"} when it printed them). `logger` is the TensorRT logger to hand the builder."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.memory: dict[str, int] = {}

    def reset(self) -> None:
        """Forget the errors so far (before the step whose errors are read: parsing, building)."""
        self.errors = []

    def add(self, severity: Any, msg: str) -> None:
        """Record one message of the logger (severity: TensorRT's ILogger.Severity)."""
        level = int(severity)
        if level <= 1:
            self.errors.append(msg)
        elif level == 2:
            self.warnings.append(msg)
        elif "Total" in msg:
            for key, rx in _MEMORY_RE.items():
                m = rx.search(msg)
                if m:
                    self.memory[key] = int(m.group(1))

    def error_list(self) -> list[str]:
        """The errors, without the noise (_NOISE) unless there is nothing else."""
        real = [e for e in self.errors if not any(n in e for n in _NOISE)]
        return real or list(self.errors)

    def warning_list(self) -> list[str]:
        """The warnings without the noise, each once."""
        out = []
        for w in self.warnings:
            if not any(n in w for n in _NOISE) and w not in out:
                out.append(w)
        return out


@contextlib.contextmanager
def capture(trt: Any) -> Iterator[Capture]:
    """Route the process-wide logger into a fresh Capture. TensorRT keeps the first logger a
    process registers and warns about later ones, so there is exactly one per module."""
    logger = _LOGGERS.get(trt.__name__)
    if logger is None:
        logger = _LOGGERS[trt.__name__] = _make_logger(trt)
    logger.sink = cap = Capture(logger)
    try:
        yield cap
    finally:
        logger.sink = None


def _make_logger(trt):
    class Recorder(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.sink = None

        def log(self, severity, msg):
            if self.sink is not None:
                self.sink.add(severity, msg)

    return Recorder()
