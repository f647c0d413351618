"""The TensorRT path is checked against TensorRT itself: every attribute trt-pipeline uses on the
`tensorrt` module exists in the real Python bindings of the versions the backend claims (10.x and
11.x: backend.py refuses anything older than 10), so a call to a removed API fails here, not on a
user's GPU.

No TensorRT runs here, but its bindings wheels download from PyPI without the libraries. The
names the Python module exports are read from the extension module without loading it (it needs
libnvinfer): pybind11 passes every class, method, property and enum member name to its
registration calls as a C string, which the code loads with a RIP-relative `lea`; the test
collects the strings those instructions point at in `.rodata` (x86-64 ELF). Collecting the
strings the code references, not every string in the file, keeps docstrings ("... CHW2 + FP16")
and tail-merged literals ("Builder" stored inside "IExprBuilder") from giving false answers.

The names trt-pipeline uses are collected statically (ast) from backend.py, the build stage and
the deploy package: attributes of the module (`trt.X`, `backend.trt.X`, `trt.Enum.MEMBER`), of
TensorRT objects held in the variables those modules use for them (config, builder, network, ...),
and names given to getattr/hasattr on them, which are guarded (the code handles their absence:
a deployment option is refused, a feature skipped) and so may be missing from older bindings.
"""

from __future__ import annotations

import ast
import re
import socket
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

# (PyPI project, version): the newest 11.x and the oldest 10.x release the backend accepts.
WHEELS = {"11.4": ("tensorrt-cu13-bindings", "11.4.0.106"), "10.0": ("tensorrt-cu12-bindings", "10.0.1")}
SOURCES = [REPO / "trtpipe" / "backend.py", *sorted((REPO / "trtpipe" / "stages" / "build").glob("*.py")),
           *sorted((REPO / "trtpipe" / "deploy").glob("*.py"))]
# Variables that hold TensorRT objects in those modules (the module itself is `trt` / `backend.trt`).
TRT_OBJECTS = {"trt", "config", "builder", "network", "parser", "tprof", "engine", "runtime", "refitter",
               "inspector", "serialized"}
# Used only under `backend.is_rtx` (TensorRT-RTX's ahead-of-time targets): not TensorRT API.
RTX_ONLY = {"ComputeCapability", "num_compute_capabilities", "set_compute_capability",
            # build.runtime_cache (stages/build/runtime_cache.py returns early unless backend.is_rtx)
            "create_runtime_config", "create_runtime_cache", "get_runtime_cache", "set_runtime_cache"}
# The builder APIs TensorRT 10 removed or TensorRT 11 (and RTX: strongly typed) dropped; never used.
REMOVED = {"FP16", "INT8", "int8_calibrator", "max_workspace_size", "build_engine", "build_cuda_engine",
           "fp16_mode", "int8_mode", "max_batch_size", "EXPLICIT_BATCH"}


# --- reading the bindings ---------------------------------------------------------------------

def _sections(data: bytes) -> dict[str, tuple[int, int, int]]:
    """ELF64 little-endian section name -> (address, file offset, size)."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit little-endian ELF file"
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = raw[shstrndx][4]
    out = {}
    for name, _type, _flags, addr, off, size in raw:
        end = data.index(b"\0", names_at + name)
        out[data[names_at + name:end].decode()] = (addr, off, size)
    return out


def exported_names(extension: Path) -> set[str]:
    """C strings in .rodata that the code of `extension` loads with a RIP-relative lea (x86-64:
    REX.W 8D /r, mod 00, r/m 101), i.e. the names it hands to pybind11, without loading it."""
    data = extension.read_bytes()
    sections = _sections(data)
    taddr, toff, tsize = sections[".text"]
    raddr, roff, rsize = sections[".rodata"]
    text = data[toff:toff + tsize]
    names = set()
    for m in re.finditer(rb"[\x48\x4c]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]", text):
        target = taddr + m.start() + 7 + struct.unpack_from("<i", text, m.start() + 3)[0]
        if raddr <= target < raddr + rsize:
            start = roff + target - raddr
            end = data.find(b"\0", start, start + 256)
            if end > start:
                try:
                    names.add(data[start:end].decode("ascii"))
                except UnicodeDecodeError:
                    pass
    return names


def python_names(init: Path) -> set[str]:
    """Top-level names the bindings package's __init__.py defines (e.g. __version__)."""
    tree = ast.parse(init.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return out


def _reachable(host: str = "pypi.org", port: int = 443) -> bool:
    try:
        socket.create_connection((host, port), timeout=10).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def bindings(request) -> dict[str, set[str]]:
    """Version -> names exported by that bindings wheel (downloaded once into pytest's cache)."""
    cache = Path(request.config.cache.mkdir("tensorrt-bindings-wheels"))
    out = {}
    for version, (project, pin) in WHEELS.items():
        wheels = sorted(cache.glob(f"{project.replace('-', '_')}-{pin}-*.whl"))
        if not wheels:
            if not _reachable():
                pytest.skip("PyPI (pypi.org:443) is unreachable: cannot download the TensorRT bindings wheels")
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                   "-d", str(cache), f"{project}=={pin}"], capture_output=True, text=True,
                                  timeout=600)
            assert proc.returncode == 0, f"pip download {project}=={pin} failed:\n{proc.stdout}\n{proc.stderr}"
            wheels = sorted(cache.glob(f"{project.replace('-', '_')}-{pin}-*.whl"))
        assert wheels, f"pip download left no {project} {pin} wheel in {cache}"
        dest = cache / f"{project}-{pin}"
        with zipfile.ZipFile(wheels[0]) as zf:
            members = [n for n in zf.namelist() if n.endswith(("tensorrt_bindings/__init__.py", ".so"))
                       and "/plugin/" not in n]
            zf.extractall(dest, members)
        so = next(p for p in dest.rglob("tensorrt*.so"))
        out[version] = exported_names(so) | python_names(next(dest.rglob("tensorrt_bindings/__init__.py")))
    return out


# --- what trt-pipeline uses ------------------------------------------------------------------

def _is_trt_module(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "trt") or (isinstance(node, ast.Attribute) and node.attr == "trt")


def _is_trt_thing(node: ast.AST, not_trt: set[str]) -> bool:
    """The module, an attribute chain on it (trt.BuilderFlag), or a variable holding a TRT object."""
    if _is_trt_module(node):
        return True
    if isinstance(node, ast.Attribute):
        return _is_trt_thing(node.value, not_trt)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args:
        return _is_trt_thing(node.args[0], not_trt)  # getattr(getattr(trt, "Enum", None), "MEMBER", None)
    return isinstance(node, ast.Name) and node.id in TRT_OBJECTS and node.id not in not_trt


def _argparse_names(func: ast.AST) -> set[str]:
    """Variables of a function bound to argparse parsers (`parser = argparse.ArgumentParser(...)`,
    `parser = _parser(...)`, `sub.add_parser(...)`): TRT_OBJECTS names that are not TensorRT's there."""
    out = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            f = node.value.func
            called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if called in ("ArgumentParser", "_parser", "add_parser"):
                out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return out


def used_names(paths: list[Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(required, guarded): name -> files using it unconditionally / through getattr or hasattr."""
    required, guarded = {}, {}
    for path in paths:
        rel = str(path.relative_to(REPO))
        tree = ast.parse(path.read_text())
        scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        scopes += [ast.Module(body=[n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))],
                              type_ignores=[])]
        for scope in scopes:
            not_trt = _argparse_names(scope)
            body = scope.body if isinstance(scope, ast.Module) else [scope]
            for node in (n for stmt in body for n in _walk_own(stmt, scope)):
                if isinstance(node, ast.Attribute) and not _is_trt_module(node) and _is_trt_thing(node.value, not_trt):
                    required.setdefault(node.attr, set()).add(rel)
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                      and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                      and _is_trt_thing(node.args[0], not_trt)
                      and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
                    guarded.setdefault(node.args[1].value, set()).add(rel)
    # the deployment options name their flags and attributes in a table (stages/build/options.py)
    from trtpipe.stages.build import options
    for opt in options.OPTIONS:
        guarded.setdefault(opt.name, set()).add("trtpipe/stages/build/options.py")
    for member in [*options.HARDWARE_LEVELS.values(), options.REFIT_IDENTICAL, "HardwareCompatibilityLevel"]:
        guarded.setdefault(member, set()).add("trtpipe/stages/build/options.py")
    # a name the same file checks with hasattr/getattr before using it is guarded there too
    for name in [n for n in required if n in guarded and required[n] <= guarded[n]]:
        del required[name]
    return required, guarded


def _walk_own(node: ast.AST, scope: ast.AST):
    """ast.walk of `node`, not descending into functions nested in it (they are scopes of their own)."""
    stack = [node]
    while stack:
        cur = stack.pop()
        if cur is not scope and cur is not node and isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield cur
        stack.extend(ast.iter_child_nodes(cur))


@pytest.fixture(scope="module")
def used():
    return used_names(SOURCES)


def test_the_scanner_reads_known_names(bindings):
    """The reader itself: names every version has are found, docstring words and tail-merged
    fragments are not names, and 11.4 has what the issue lists (and lacks FP16, int8_calibrator)."""
    for version, names in bindings.items():
        for name in ("Builder", "Refitter", "Runtime", "OnnxParser", "BuilderFlag", "REFIT", "set_flag",
                     "create_builder_config", "__version__"):
            assert name in names, f"{version}: {name}"
    new = bindings["11.4"]
    for name in ("STRIP_PLAN", "WEIGHT_STREAMING", "VERSION_COMPATIBLE", "hardware_compatibility_level",
                 "max_aux_streams", "OnnxParserRefitter", "EngineInspector"):
        assert name in new, name
    assert "FP16" not in new and "int8_calibrator" not in new  # gone in 11 (strongly typed)
    assert "FP16" in bindings["10.0"] and "int8_calibrator" in bindings["10.0"]
    assert "ExprBuilder" not in new  # a fragment of "IExprBuilder", never handed to pybind11 on its own


def test_every_required_name_exists_in_every_claimed_version(bindings, used):
    required, _ = used
    missing = {version: sorted(n for n in required if n not in names and n not in RTX_ONLY)
               for version, names in bindings.items()}
    detail = {v: {n: sorted(required[n]) for n in m} for v, m in missing.items() if m}
    assert not detail, f"attributes used on tensorrt that the bindings lack: {detail}"
    assert len(required) > 40  # the collection found the API actually used (a broken walk finds nothing)


def test_guarded_names_exist_in_the_newest_version(bindings, used):
    """getattr/hasattr uses may be absent from older bindings (the code refuses the option or skips
    the feature there), but the newest claimed version must have each, or the guard hides a typo."""
    _, guarded = used
    missing = sorted(n for n in guarded if n not in bindings["11.4"] and n not in RTX_ONLY)
    assert not missing, f"guarded names 11.4 lacks (typos?): {missing}"


def test_no_removed_api_is_used(bindings, used):
    required, guarded = used
    used_all = set(required) | set(guarded)
    assert not (used_all & REMOVED), f"removed TensorRT APIs used: {sorted(used_all & REMOVED)}"
    gone = bindings["10.0"] - bindings["11.4"]   # in the oldest claimed version, gone from the newest
    assert not (set(required) & gone), f"used but removed in 11.4: {sorted(set(required) & gone)}"


def test_rtx_only_names_exist_in_tensorrt_rtx(rtx, used):
    """TensorRT-RTX is imported for real here: every name used exists in it too (by introspection)."""
    required, guarded = used
    trt = rtx.trt
    have = set(dir(trt))
    for obj in vars(trt).values():
        if isinstance(obj, type):
            have |= set(dir(obj)) | set(getattr(obj, "__members__", {}))
    assert RTX_ONLY <= have
    missing = sorted(n for n in set(required) | set(guarded) if n not in have)
    assert not missing, f"names the TensorRT-RTX bindings lack: {missing}"
