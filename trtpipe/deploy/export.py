"""`python pipeline.py export OUTPUT_DIR --for trtexec|polygraphy`: the command line that builds the
same plan from the published final ONNX model on another machine (the users' flow: convert on a
host, build the engine on the device, e.g. a Jetson with TensorRT 10.x).

Precision is already in the graph (fp16/bf16 casts, Q/DQ), so the network is built strongly typed
and no precision flag is given. The line carries the workspace limit, the builder optimization
level, every optimization profile (min/opt/max per input, one group per profile, in order),
plugin libraries and the deployment options (stages/build/options.py). File names are the
published ones, relative to the output directory: run the line inside a copy of it (plugin
libraries next to them). Settings that do not carry over are returned as notes: TensorRT-RTX's
compute capabilities (trtexec builds for the device it runs on), the timing cache (per device).

The flags are trtexec's (TensorRT 10.x/11.x) and `polygraphy convert`'s (0.53).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

TOOLS = ("trtexec", "polygraphy")
# deployment option -> (trtexec flag, polygraphy flag); a value of True adds the bare flag.
TRTEXEC_LEVEL = {"ampere_plus": "ampere+", "same_compute_capability": "sameComputeCapability"}
FLAGS = {
    "version_compatible": ("--versionCompatible", "--version-compatible"),
    "exclude_lean_runtime": ("--excludeLeanRuntime", "--exclude-lean-runtime"),
    "refittable": ("--refit", "--refittable"),
    "strip_weights": ("--stripWeights", "--strip-plan"),
    "weight_streaming": ("--weightStreaming", "--weight-streaming"),
    "sparsity": ("--sparsity=enable", "--sparse-weights"),
}


def command(tool: str, build: dict, onnx_name: str, plan_name: str, backend: str) -> tuple[list[str], list[str]]:
    """argv of `tool` building `plan_name` from `onnx_name` as the run did, and notes on what does not
    carry over.

    Args:
        tool: "trtexec" or "polygraphy".
        build: the run's resolved `build` section (report.json recipe.resolved.build).
        onnx_name: the published final ONNX file name.
        plan_name: the plan file name to write.
        backend: the backend the run built with ("tensorrt" or "tensorrt_rtx").

    Returns:
        (argv, notes).
    """
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}; expected one of {', '.join(TOOLS)}")
    trtexec = tool == "trtexec"
    ws = int(build.get("workspace_bytes") or 0)
    notes = []
    if trtexec:
        argv = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={plan_name}", "--skipInference", "--stronglyTyped",
                f"--memPoolSize=workspace:{_trtexec_size(ws)}",
                f"--builderOptimizationLevel={build.get('optimization_level', 3)}", "--profilingVerbosity=detailed"]
    else:
        argv = ["polygraphy", "convert", onnx_name, "--convert-to", "trt", "-o", plan_name, "--strongly-typed",
                "--pool-limit", f"workspace:{ws}", "--builder-optimization-level",
                str(build.get("optimization_level", 3)), "--profiling-verbosity", "detailed"]
    for prof in build.get("profiles") or []:
        for key, tflag, pflag in (("min", "--minShapes", "--trt-min-shapes"),
                                  ("opt", "--optShapes", "--trt-opt-shapes"),
                                  ("max", "--maxShapes", "--trt-max-shapes")):
            if trtexec:
                argv.append(f"{tflag}=" + ",".join(f"{_trtexec_name(n)}:{'x'.join(map(str, d[key]))}"
                                                    for n, d in prof["inputs"].items()))
            else:
                argv += [pflag] + [f"{n}:[{','.join(map(str, d[key]))}]" for n, d in prof["inputs"].items()]
    plugins = [Path(p).name for p in build.get("plugins") or []]
    if plugins:
        argv += [f"--staticPlugins={p}" for p in plugins] if trtexec else ["--plugins", *plugins]
    argv += _options(build, trtexec)
    ccs = build.get("compute_capabilities") or []
    if backend == "tensorrt_rtx":
        if trtexec:
            notes.append(f"the run built with TensorRT-RTX ahead of time for compute capability {', '.join(ccs)}; "
                         "trtexec builds with TensorRT for the GPU it runs on")
        else:
            argv += ["--compute-capabilities", *ccs]
            notes.append("with TensorRT-RTX, polygraphy needs POLYGRAPHY_USE_TENSORRT_RTX=1 and the tensorrt_rtx "
                         "module")
    if build.get("timing_cache"):
        notes.append("the timing cache is per device and not passed on")
    if plugins:
        notes.append(f"copy the plugin libraries ({', '.join(plugins)}) next to the ONNX model")
    return argv, notes


def _options(build, trtexec):
    out = []
    if build.get("max_aux_streams") is not None:
        out += ([f"--maxAuxStreams={build['max_aux_streams']}"] if trtexec
                else ["--max-aux-streams", str(build["max_aux_streams"])])
    level = build.get("hardware_compatibility_level") or "none"
    if level != "none":
        out += [f"--hardwareCompatibilityLevel={TRTEXEC_LEVEL[level]}"] if trtexec else \
            ["--hardware-compatibility-level", level]
    for key, (tflag, pflag) in FLAGS.items():
        if build.get(key):
            out.append(tflag if trtexec else pflag)
    tf32 = build.get("tf32", True)
    if trtexec and not tf32:
        out.append("--noTF32")    # trtexec, like TensorRT, allows TF32 by default
    if not trtexec and tf32:
        out.append("--tf32")      # polygraphy clears TF32 unless asked
    return out


def _trtexec_size(nbytes):
    """trtexec's pool size: MiB ("M") when whole, else bytes ("B")."""
    return f"{nbytes // 2**20}M" if nbytes and nbytes % 2**20 == 0 else f"{nbytes}B"


def _trtexec_name(name):
    # trtexec splits shape specs at ',' and the last ':'; names holding those are single-quoted
    return f"'{name}'" if any(c in name for c in ":,") else name


def command_line(tool: str, build: dict, onnx_name: str, plan_name: str, backend: str) -> str:
    """`command(...)`'s argv as one shell-quoted line (shlex.split gives the argv back)."""
    return shlex.join(command(tool, build, onnx_name, plan_name, backend)[0])


def export_lines(report_or_build: dict[str, Any], onnx_name: str, plan_name: str, backend: str) -> dict[str, str]:
    """{"trtexec": line, "polygraphy": line} for a resolved `build` section (what report.json keeps)."""
    return {tool: command_line(tool, report_or_build, onnx_name, plan_name, backend) for tool in TOOLS}
