"""What a build returns (`BuildResult`), and the rule saying whether rebuilding gives the same plan."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BuildResult:
    """What build_plan() returns: the plan bytes and what the report says about them (summary())."""

    plan: bytes
    backend: str
    backend_version: str
    compute_capabilities: list | None  # None on tensorrt (it builds for the local GPU)
    duration_s: float
    inputs: list                # [{"name", "dtype", "shape"}], -1 for dynamic dims
    outputs: list
    memory: dict | None = None  # {"activation_bytes", "weights_bytes"} when the builder printed them
    num_layers: int = 0         # network layers after parsing (before builder fusion)
    warnings: list = field(default_factory=list)
    profiles: list = field(default_factory=list)  # profile names, in TensorRT's profile order
    timing_cache: str | None = None
    # "byte-identical", or "not guaranteed by <backend>: <what differs>"; derived from the backend
    # and the input shapes when not given (a cached build passes back what it recorded).
    reproducible: str | None = None
    deployment: dict = field(default_factory=dict)  # deployment options set (stages/build/options.py)
    # the plan streamed into this file instead of `plan` (build_plan's plan_file: a plan as big as
    # its weights is never held in memory, nor sent between processes)
    plan_file: str | None = None

    def __post_init__(self):
        if self.reproducible is None:
            self.reproducible = self._reproducibility()

    def _reproducibility(self) -> str:
        """What a rebuild of the same ONNX with the same settings and backend version gives.

        Measured with tensorrt_rtx 1.7.1 (AOT, no GPU; tests/stages/test_plan_reproducible.py):
        static-shape plans are usually byte-identical across builds and processes, whatever the graph's
        size (21 MB EfficientNet-B0 fp32/fp16, a 102 MB ResNet-50, densenet121, effdet; 2-5 builds
        each, concurrent runs, optimization levels 0/5, several compute capabilities). With a
        dynamic range in an optimization profile every build differs (the same 21 MB EfficientNet-B0
        with a 1..8 batch profile: 3 builds, 3 sha256s, same size): Myelin's generated symbol numbers
        (`__mye<N>`) and the order and offsets of its shape constants change from build to build,
        also in one process, with ASLR off, on one CPU, with one malloc arena and PYTHONHASHSEED=0.
        Normalized for those, the plans are identical. No builder setting exposed by the bindings
        changes this (builder.max_threads=1, optimization levels 0-5, max_aux_streams=0, tiling
        NONE, profiling verbosity, DISABLE_TIMING_CACHE/COMPILATION_CACHE, DISTRIBUTIVE_INDEPENDENCE,
        tactic sources, timing iterations), so plan.py's `_configure` sets none. TensorRT times kernels on
        the build GPU and NVIDIA does not promise identical plans there.
        """
        label = f"{self.backend} {self.backend_version}".strip()
        if self.backend != "tensorrt_rtx":
            return f"not guaranteed by {label}: kernels are chosen by timing them on the build GPU"
        if self.profiles or any(d < 0 for t in self.inputs for d in t["shape"]):
            return (f"not guaranteed by {label}: with dynamic shapes (optimization profiles) the "
                    "Myelin-generated symbol names (__mye<N>) and the order of its shape constants "
                    "differ from build to build (nothing else was seen to differ)")
        # Static shapes were byte-identical for the graphs above, but not for every graph: the
        # fresh-user trial of this session rebuilt recipes/retinanet.yaml (static, several outputs)
        # 6 times and got 4 plans of one size whose tensor records come in another order.
        return (f"usually byte-identical with {label} for static shapes, not guaranteed: most graphs "
                "measured rebuild to the same bytes, but a multi-output detector (recipes/retinanet.yaml) "
                "gave differently ordered tensor records in 4 of 6 builds")

    def summary(self) -> dict[str, Any]:
        """Everything but the plan bytes (for the report)."""
        size = os.path.getsize(self.plan_file) if self.plan_file else len(self.plan)
        return {k: v for k, v in self.__dict__.items() if k not in ("plan", "plan_file")} | {"plan_bytes": size}
