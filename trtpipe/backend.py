"""One interface over `tensorrt` (10.x/11.x) and TensorRT-RTX.

Both expose the same Python API (Builder, OnnxParser, IBuilderConfig, ...); the rest of the
pipeline only ever sees `Backend.trt`. TensorRT-RTX adds ahead-of-time compute capabilities.
"""

import ctypes
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from trtpipe.errors import BuildError

NAMES = ("auto", "tensorrt", "tensorrt_rtx")

_TRT_INSTALL = "pip install 'trt-pipeline[tensorrt]' (tensorrt>=10; needs NVIDIA's package index)"
_RTX_INSTALL = ("pip install tensorrt-rtx-cu13-bindings==1.7.1.116 "
                "onnxruntime-ep-nv-tensorrt-rtx-cu13==0.5.0")
# Everything a run needs (TensorFlow, tf2onnx, ONNX Runtime, Polygraphy, TensorRT-RTX); the core
# install (`pip install trt-pipeline`, pre-commit hooks) has only what the review commands need.
INSTALL_ALL = "pip install 'trt-pipeline[all]'"
# Python modules that provide each backend, looked up without importing them.
BACKEND_MODULES = {"tensorrt": ("tensorrt",), "tensorrt_rtx": ("tensorrt_rtx_bindings", "tensorrt_rtx")}


class Backend:
    """A resolved backend: its name and version, and its Python module imported on first use.

    The version comes from the installed distribution's metadata, so resolving a backend imports
    nothing: a fully cached run (issue 13: no-op re-runs) never loads TensorRT's native libraries
    (and, for TensorRT-RTX, the ONNX Runtime they are shipped with). `trt` imports the module
    the first time a stage needs it and raises BuildError if that fails.
    """

    def __init__(self, name: str, version: str, load: Callable[[], Any]) -> None:
        self.name = name                       # "tensorrt" or "tensorrt_rtx"
        self.version = version                 # e.g. "1.7.1.116"
        self.version_tuple = _vtuple(version)  # e.g. (1, 7, 1, 116)
        self._load, self._trt = load, None

    @property
    def trt(self) -> Any:
        """The backend's Python module (`tensorrt` or TensorRT-RTX's bindings), imported now if
        it was not yet. Raises BuildError if it cannot be imported."""
        if self._trt is None:
            self._trt = self._load()
        return self._trt

    @property
    def major(self) -> int:
        return self.version_tuple[0] if self.version_tuple else 0

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def label(self) -> str:
        """Short name for messages: 'tensorrt_rtx 1.7.1'."""
        return f"{self.name} {'.'.join(map(str, self.version_tuple[:3]))}"


@lru_cache(maxsize=None)
def resolve_backend(name: str = "auto") -> Backend:
    if name not in NAMES:
        raise BuildError(f"unknown build backend {name!r}; expected one of {', '.join(NAMES)}")
    if name == "tensorrt":
        return _lazy("tensorrt", _import_tensorrt)
    if name == "tensorrt_rtx":
        return _lazy("tensorrt_rtx", _import_rtx)
    if "tensorrt" not in installed_backends():
        return _lazy("tensorrt_rtx", _import_rtx_for_auto)
    # both may be installed: auto falls back to TensorRT-RTX only if tensorrt fails to import,
    # which takes importing it
    try:
        return _load_tensorrt()
    except BuildError as trt_err:
        try:
            backend = _lazy("tensorrt_rtx", _import_rtx)
            backend.trt  # noqa: B018 -- imported now: if it fails too, both reasons are said together
            return backend
        except BuildError as rtx_err:
            raise BuildError("no TensorRT backend can be imported:\n  - " + str(trt_err)
                             + "\n  - " + str(rtx_err)) from None


def installed_backends() -> list[str]:
    """Names of the backends whose Python module is installed here, in `auto` order.

    Looked up with importlib.util.find_spec, so nothing is imported (and nothing slow or
    crashing runs); an installed backend that then fails to import is still "installed": its
    import error is a problem to report, not a reason to skip checks.
    """
    return [name for name, modules in BACKEND_MODULES.items() if any(_module_installed(m) for m in modules)]


def no_backend_reason() -> str | None:
    """Why no backend can be used here when none is installed at all, else None."""
    if installed_backends():
        return None
    return f"no TensorRT or TensorRT-RTX installed: {INSTALL_ALL}"


def _module_installed(name):
    if name in sys.modules:
        return sys.modules[name] is not None  # None: blocked (import of it fails)
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _lazy(name: str, load: Callable[[], Any]) -> Backend:
    """The backend `name`, its version read from metadata, imported when `trt` is first used;
    imported now if its metadata cannot be found (a source build without a dist-info)."""
    if name == "tensorrt_rtx":
        _point_polygraphy_at_rtx()
    version = _installed_version(name)
    if version is None:
        trt = load()
        backend = Backend(name, getattr(trt, "__version__", "0"), lambda: trt)
    else:
        backend = Backend(name, version, load)
    _check_version(backend)
    return backend


def _installed_version(name: str) -> str | None:
    """The version of the distribution whose RECORD lists the backend's module, found beside the
    module (no import, no scan of every installed distribution), or None."""
    for module in BACKEND_MODULES[name]:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.origin:
            continue
        pkg = Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)
        site_dir, own = pkg.parent, f"{pkg.name}/__init__.py" if spec.submodule_search_locations else pkg.name
        for info in sorted(site_dir.glob("tensorrt*.dist-info")):
            dist = metadata.PathDistribution(info)
            if any(str(f) == own for f in dist.files or ()):
                return dist.version
    return None


def _check_version(backend: Backend) -> None:
    if backend.name == "tensorrt" and backend.major < 10:
        raise BuildError(f"tensorrt {backend.version} is too old: trt-pipeline needs TensorRT 10 or newer "
                         f"(modern builder API); install it with: {_TRT_INSTALL}")


def _load_tensorrt():
    """tensorrt, imported now (`auto` with both backends installed: a failed import falls back)."""
    trt = _import_tensorrt()
    backend = Backend("tensorrt", trt.__version__, lambda: trt)
    _check_version(backend)
    return backend


def _import_tensorrt():
    try:
        trt = importlib.import_module("tensorrt")
        trt.__version__  # noqa: B018 -- a broken install lacks it
    except Exception as exc:  # ImportError, or OSError when libnvinfer is missing
        raise BuildError(f"backend tensorrt cannot be imported ({type(exc).__name__}: {exc}); "
                         f"install it with: {_TRT_INSTALL}") from None
    return trt


def _point_polygraphy_at_rtx():
    # Polygraphy reads this when polygraphy.config is first imported; set it before that happens
    # (at resolve time, before any stage), and patch the config if it was imported already.
    os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1"
    if "polygraphy.config" in sys.modules:
        sys.modules["polygraphy.config"].USE_TENSORRT_RTX = True


def _import_rtx():
    _point_polygraphy_at_rtx()
    trt = sys.modules.get("tensorrt_rtx")
    if trt is None:
        trt = _import_rtx_bindings()
        sys.modules["tensorrt_rtx"] = trt  # so `import tensorrt_rtx` (Polygraphy) gets the same module
    return trt


def _import_rtx_for_auto():
    """`auto` without tensorrt installed: TensorRT-RTX, failing as `auto` fails (both reasons)."""
    try:
        return _import_rtx()
    except BuildError as rtx_err:
        try:
            _import_tensorrt()
        except BuildError as trt_err:
            raise BuildError("no TensorRT backend can be imported:\n  - " + str(trt_err)
                             + "\n  - " + str(rtx_err)) from None
        raise


def _import_rtx_bindings():
    errors = []
    try:
        # Its import preloads libtensorrt_rtx.so / libtensorrt_onnxparser_rtx.so for the bindings.
        importlib.import_module("onnxruntime_ep_nv_tensorrt_rtx")
    except Exception as exc:
        errors.append(f"onnxruntime_ep_nv_tensorrt_rtx: {type(exc).__name__}: {exc}")
    for module in ("tensorrt_rtx_bindings", "tensorrt_rtx"):
        if importlib.util.find_spec(module) is None:
            continue
        try:
            return importlib.import_module(module)
        except Exception as exc:
            errors.append(f"{module}: {type(exc).__name__}: {exc}")
    detail = "; ".join(errors) or "module tensorrt_rtx_bindings not found"
    raise BuildError(f"backend tensorrt_rtx cannot be imported ({detail}); "
                     f"install it with: {_RTX_INSTALL}")


def _vtuple(version):
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def rtx_supported_ccs(backend: Backend) -> list[str]:
    """Compute capabilities this TensorRT-RTX knows, as "8.9"-style strings (from the enum)."""
    out = []
    for member in getattr(backend.trt.ComputeCapability, "__members__", {}):
        if member.startswith("SM") and member[2:].isdigit():
            out.append(f"{member[2:-1]}.{member[-1]}")
    return out


def has_runtime_gpu(backend: Backend, compute_capabilities: list[str] | None = None) -> tuple[bool, str]:
    """(True, description) if a plan from `backend` can be deserialized and run here, else
    (False, precise reason). Never raises; never needs a GPU to answer."""
    ok, info = probe_cuda()
    if not ok:
        return False, info
    cc, dev = info["cc"], f"device 0 ({info['name']}, compute capability {info['cc']})"
    if backend.is_rtx:
        supported = rtx_supported_ccs(backend)
        if cc not in supported:
            return False, (f"{backend.label} cannot run compute capability {cc} ({dev}); "
                           f"it supports {', '.join(supported)}")
        if compute_capabilities and cc not in compute_capabilities:
            return False, (f"the plan was built for compute capability {', '.join(compute_capabilities)} "
                           f"but {dev} is {cc}")
    return True, dev


@lru_cache(maxsize=1)
def probe_cuda() -> tuple[bool, dict | str]:
    """Ask the CUDA driver directly (ctypes): creating a trt.Runtime succeeds even without a GPU."""
    names = ["nvcuda.dll"] if sys.platform.startswith("win") else ["libcuda.so.1", "libcuda.so"]
    lib = None
    for libname in names:
        try:
            lib = ctypes.CDLL(libname)
            break
        except OSError:
            continue
    if lib is None:
        return False, f"no CUDA device (CUDA driver not found: {names[0]} cannot be loaded)"
    try:
        rc = lib.cuInit(0)
        if rc != 0:
            return False, f"no usable CUDA device (cuInit failed: {_cu_error(lib, rc)})"
        count = ctypes.c_int(0)
        rc = lib.cuDeviceGetCount(ctypes.byref(count))
        if rc != 0 or count.value == 0:
            return False, "no CUDA device (the CUDA driver reports 0 devices)"
        major, minor, name = ctypes.c_int(0), ctypes.c_int(0), ctypes.create_string_buffer(256)
        # 75/76 = CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR/MINOR
        lib.cuDeviceGetAttribute(ctypes.byref(major), 75, 0)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, 0)
        lib.cuDeviceGetName(name, 256, 0)
    except (AttributeError, OSError) as exc:
        return False, f"no usable CUDA device (CUDA driver query failed: {exc})"
    return True, {"cc": f"{major.value}.{minor.value}", "name": name.value.decode(errors="replace"),
                  "count": count.value}


def _cu_error(lib, rc):
    text = ctypes.c_char_p()
    try:
        lib.cuGetErrorName(rc, ctypes.byref(text))
        return f"{text.value.decode()} ({rc})" if text.value else str(rc)
    except (AttributeError, OSError):
        return str(rc)
