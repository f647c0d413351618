"""Deployment options of the build: the `build` keys that become IBuilderConfig flags and attributes.

`max_aux_streams`, `version_compatible` + `exclude_lean_runtime`, `hardware_compatibility_level`,
`strip_weights` + `refittable`, `weight_streaming`, `sparsity` and `tf32` (the builder
optimization level is `build.optimization_level`, set by plan.py). Defaults are the schema's
(schemas/recipe.schema.json: build) and equal TensorRT's, so a recipe that sets none of them
configures the builder exactly as before.

Each option is refused with a message at its recipe line when the chosen backend lacks it: the
bindings have no such BuilderFlag member or IBuilderConfig attribute (checked with getattr, so a
10.x binding without `SAME_COMPUTE_CAPABILITY` fails here, not inside TensorRT), or the builder
says it does not support it (TensorRT-RTX 1.7.1 logs "setHardwareCompatibilityLevel() is
unsupported in TensorRT-RTX" and ignores the level: it targets GPUs through
build.compute_capabilities). Build failures these options cause get a hint naming the option
(`failure_hint`).

Measured with TensorRT-RTX 1.7.1, ahead of time, without a GPU (tests/deploy/test_build_options.py):
`tf32: false`, `weight_streaming` and `version_compatible` + `exclude_lean_runtime` change the
plan; `max_aux_streams` and `sparsity` build; `version_compatible` alone fails (the plan would
embed libnvinfer_lean, which TensorRT-RTX does not ship); `refittable` and `strip_weights` fail
in Myelin's compiler with `CHECK(status == CUDA_SUCCESS)`: TensorRT-RTX builds refittable plans
only where a CUDA device is present.

TensorRT objects (config, capture) are typed `Any`: they come from tensorrt or tensorrt_rtx.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trtpipe.errors import BuildError, RecipeError
from trtpipe.stages.build import plugins as plugin_mod

if TYPE_CHECKING:
    from trtpipe.backend import Backend


class OptionError(RecipeError, BuildError):
    """A deployment option the chosen backend lacks: located in the recipe, exits with the recipe
    code (3), and is a BuildError for callers of build_plan."""


@dataclass(frozen=True)
class Option:
    """One deployment option: its `build` key, the TensorRT name it sets and what it means."""

    key: str
    kind: str       # "flag" (BuilderFlag member, set when the value is true), "attribute" (IBuilderConfig)
    name: str       # BuilderFlag member or IBuilderConfig attribute
    default: Any    # the schema's default, which is also TensorRT's
    meaning: str    # for the report


OPTIONS = (
    Option("max_aux_streams", "attribute", "max_aux_streams", None,
           "auxiliary CUDA streams the engine may use to run layers in parallel"),
    Option("version_compatible", "flag", "VERSION_COMPATIBLE", False,
           "the plan runs on later TensorRT versions (lean-runtime operators only)"),
    Option("exclude_lean_runtime", "flag", "EXCLUDE_LEAN_RUNTIME", False,
           "the version-compatible plan does not embed the lean runtime (the app ships it)"),
    Option("hardware_compatibility_level", "attribute", "hardware_compatibility_level", "none",
           "GPU architectures the plan runs on besides the build GPU's"),
    Option("refittable", "flag", "REFIT", False, "weights can be replaced after the build (Refitter)"),
    Option("strip_weights", "flag", "STRIP_PLAN", False,
           "refittable weights are left out of the plan and refitted from the final ONNX on the target"),
    Option("weight_streaming", "flag", "WEIGHT_STREAMING", False,
           "weights can stay in host memory and stream to the GPU at run time"),
    Option("sparsity", "flag", "SPARSE_WEIGHTS", False, "2:4 structured-sparse weights use sparse kernels"),
    Option("tf32", "flag", "TF32", True, "float32 matrix products may use TF32 tensor cores"),
)
BY_KEY = {o.key: o for o in OPTIONS}
# build.hardware_compatibility_level -> HardwareCompatibilityLevel member.
HARDWARE_LEVELS = {"none": "NONE", "ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}
# The refit mode STRIP_PLAN uses when `refittable` is not set (TensorRT's own default for it).
REFIT_IDENTICAL = "REFIT_IDENTICAL"


def chosen(build_cfg: dict) -> dict[str, Any]:
    """The deployment options `build_cfg` (a resolved `build` section) sets to other than their
    defaults, in OPTIONS order: what the report lists and export reproduces."""
    return {o.key: build_cfg[o.key] for o in OPTIONS if o.key in build_cfg and build_cfg[o.key] != o.default}


def apply(backend: Backend, config: Any, build_cfg: dict, cap: Any, *,
          locate: Callable[[tuple], str] | None = None, log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Set the deployment options of `build_cfg` on an IBuilderConfig.

    Args:
        backend: the imported tensorrt or tensorrt_rtx.
        config: the IBuilderConfig.
        build_cfg: the resolved `build` section (schema defaults filled).
        cap: the build's log capture (stages/build/capture.py): warnings the builder logs while an
            option is set are read to find options it does not support.
        locate: recipe key path -> "file:line:col".
        log: sink for detail lines.

    Returns:
        The options set (key -> value), as `chosen(build_cfg)`.

    Raises:
        OptionError: the backend's bindings lack the flag, attribute or enum member an option needs,
            or its builder reports the option unsupported; `exclude_lean_runtime` without
            `version_compatible`.
    """
    log = log or (lambda msg: None)
    options = chosen(build_cfg)
    if options.get("exclude_lean_runtime") and not build_cfg.get("version_compatible"):
        raise OptionError(f"{_where(locate, 'exclude_lean_runtime')}build.exclude_lean_runtime: applies to "
                          "version-compatible plans only", hint="also set `version_compatible: true`, or drop it")
    trt = backend.trt
    for key, value in options.items():
        opt = BY_KEY[key]
        before = len(cap.warnings)
        if opt.kind == "flag" and opt.name != "TF32":
            _set_flag(trt, config, opt.name, key, backend, locate)
        elif key == "tf32":  # default on: only `tf32: false` reaches here
            member = _member(trt, "BuilderFlag", "TF32", key, backend, locate)
            config.clear_flag(member)
        elif key == "hardware_compatibility_level":
            level = _member(trt, "HardwareCompatibilityLevel", HARDWARE_LEVELS[value], key, backend, locate)
            _set_attribute(config, opt.name, level, key, backend, locate)
        else:
            _set_attribute(config, opt.name, int(value), key, backend, locate)
        _refuse_if_unsupported(cap.warnings[before:], key, value, backend, locate)
        log(f"build.{key}: {value}")
    if options.get("strip_weights") and not options.get("refittable"):
        _set_flag(trt, config, REFIT_IDENTICAL, "strip_weights", backend, locate)
    return options


def static_refusals(build_cfg: dict, backend_name: str, locate: Callable[[tuple], str] | None = None,
                    ) -> list[OptionError]:
    """The deployment options a build with `backend_name` refuses or fails on whatever the model:
    known from the recipe alone, so a run refuses them before converting and `check` reports them
    (both through review/check.precheck_passes), at the option's line.

    Rules (measured with TensorRT-RTX 1.7.1, tests/deploy/test_build_options.py): TensorRT-RTX
    ignores `hardware_compatibility_level` (its builder logs "setHardwareCompatibilityLevel() is
    unsupported in TensorRT-RTX"; it targets GPUs through build.compute_capabilities), and a
    `version_compatible` plan without `exclude_lean_runtime` fails to build there (the plan would
    embed libnvinfer_lean, which TensorRT-RTX does not ship). (`exclude_lean_runtime` without
    `version_compatible` is refused by the recipe loader.)

    Args:
        build_cfg: the resolved `build` section (schema defaults filled).
        backend_name: "tensorrt" or "tensorrt_rtx" (the resolved backend's name).
        locate: recipe key path -> "file:line:col".

    Returns:
        One OptionError (exit 3) per refused option, in OPTIONS order; [] when none.
    """
    options, rtx, found = chosen(build_cfg), backend_name == "tensorrt_rtx", []
    if rtx and options.get("version_compatible") and not options.get("exclude_lean_runtime"):
        found.append(OptionError(
            f"{_where(locate, 'version_compatible')}build.version_compatible: TensorRT-RTX cannot build a "
            "version-compatible plan that embeds the lean runtime (libnvinfer_lean): TensorRT-RTX does not ship it",
            hint="also set `exclude_lean_runtime: true` (the application ships the lean runtime), or remove "
                 "build.version_compatible"))
    if rtx and options.get("hardware_compatibility_level", "none") != "none":
        level = options["hardware_compatibility_level"]
        found.append(OptionError(
            f"{_where(locate, 'hardware_compatibility_level')}build.hardware_compatibility_level: {level!r} is not "
            "supported by TensorRT-RTX (its builder ignores the level: \"setHardwareCompatibilityLevel() is "
            "unsupported in TensorRT-RTX\"); TensorRT-RTX chooses the GPUs a plan runs on with "
            "build.compute_capabilities", hint="remove build.hardware_compatibility_level for this backend, "
                                              "and list the target GPUs in build.compute_capabilities"))
    return found


def failure_hint(options: dict[str, Any], errors: list[str], backend: Backend, gpu_reason: str | None) -> str | None:
    """A hint for a build that failed with deployment options set, naming the option to blame.

    Args:
        options: the options set (apply's return value).
        errors: the builder's error messages.
        backend: the backend that built.
        gpu_reason: why no CUDA device is usable here (backend.probe_cuda), None when one is.

    Returns:
        The hint, or None when the failure does not point at an option.
    """
    text = "\n".join(errors)
    refit = [k for k in ("refittable", "strip_weights") if options.get(k)]
    if refit and gpu_reason and "CUDA_SUCCESS" in text:
        return (f"{backend.label} builds refittable and weight-stripped plans only where a CUDA device is "
                f"present (its compiler failed on a CUDA call: {gpu_reason}); build on a machine with an "
                f"NVIDIA GPU, or remove build.{' and build.'.join(refit)}")
    if options.get("version_compatible") and "lean" in text:
        return ("a version-compatible plan embeds the lean runtime (libnvinfer_lean), which "
                f"{backend.label} cannot load here; set `exclude_lean_runtime: true` and ship the lean "
                "runtime with the application, or remove build.version_compatible")
    if options.get("weight_streaming") and "strongly typed" in text.lower():
        return ("weight streaming needs a strongly typed network "
                "(TensorRT 10.x: NetworkDefinitionCreationFlag.STRONGLY_TYPED)")
    return None


def _where(locate, key):
    return plugin_mod.location_prefix(locate, ("build", key))


def _member(trt, enum, name, key, backend, locate):
    member = getattr(getattr(trt, enum, None), name, None)
    if member is None:
        raise OptionError(f"{_where(locate, key)}build.{key}: {backend.label} has no {enum}.{name} "
                          f"(its Python bindings lack it), so it cannot build with this option",
                          hint=f"remove build.{key}, or build with a backend that has it (TensorRT 10.x/11.x)")
    return member


def _set_flag(trt, config, name, key, backend, locate):
    config.set_flag(_member(trt, "BuilderFlag", name, key, backend, locate))


def _set_attribute(config, name, value, key, backend, locate):
    if not hasattr(config, name):
        raise OptionError(f"{_where(locate, key)}build.{key}: {backend.label} has no IBuilderConfig.{name} "
                          "(its Python bindings lack it), so it cannot build with this option",
                          hint=f"remove build.{key}, or build with a backend that has it (TensorRT 10.x/11.x)")
    setattr(config, name, value)


def _refuse_if_unsupported(warnings, key, value, backend, locate):
    said = [w.strip() for w in warnings if "unsupported" in w.lower() or "not supported" in w.lower()]
    if said:
        extra = (" (TensorRT-RTX chooses the GPUs a plan runs on with build.compute_capabilities)"
                 if backend.is_rtx and key == "hardware_compatibility_level" else "")
        raise OptionError(f"{_where(locate, key)}build.{key}: {value!r} is not supported by {backend.label}: "
                          f"its builder says \"{said[0]}\"{extra}", hint=f"remove build.{key} for this backend")
