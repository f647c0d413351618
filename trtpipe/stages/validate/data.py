"""Validation data: what the source model is fed, and how the final model's feed is derived from it.

Data is always made for the *source* model's inputs (seeded random data through Polygraphy's
DataLoader, an .npz file, or a folder of images), then turned into the final model's feed with
the steps passes recorded in the input contract (docs/architecture.md "Input contract"). So the
recipe states its preprocessing once, and both models see the same pixels.

Input specs (`source_inputs`, `final_inputs`, what model_io returns) are
{name: (numpy dtype, dims)}, a dim None when dynamic; feeds are {input name: np.ndarray}.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from polygraphy.common import TensorMetadata
from polygraphy.comparator import DataLoader
from polygraphy.logger import G_LOGGER

from trtpipe.errors import RecipeError, ValidationError, ValidationNotRunError, suggest
from trtpipe.fileguard import not_a_file, special_kind
from trtpipe.stages.validate.parameters import check_feedable, describe_value, given_value

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_ARITH = {"mul": np.multiply, "add": np.add, "sub": np.subtract, "div": np.divide}
STEP_OPS = ("cast", "transpose", "reshape", *_ARITH)


def quiet_polygraphy() -> contextlib.AbstractContextManager:
    """Polygraphy logs every step at length; the validation result and table carry what matters."""
    return G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1)


def model_io(path: str | Path) -> tuple[OrderedDict[str, tuple[np.dtype, list[int | None]]],
                                       OrderedDict[str, tuple[np.dtype, list[int | None]]]]:
    """(inputs, outputs) of an ONNX file, each an OrderedDict name -> (numpy dtype, [dims]);
    dynamic dims are None. Reads the graph only (no external weights)."""
    ins, outs = graph_summary(path)[0]
    return OrderedDict(ins), OrderedDict(outs)  # the caller's own copies of the cached summary


def graph_summary(path: str | Path) -> tuple[tuple[OrderedDict, OrderedDict], frozenset[str]]:
    """((inputs, outputs) as model_io, names of the tensors the main graph computes) of an ONNX file,
    weights not read; worked out once per file version (validation and bisect ask for the same
    source model's I/O and tensor names several times). Only these small summaries are kept."""
    st = Path(path).stat()
    return _summary(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _summary(path: str, mtime_ns: int, size: int) -> tuple[tuple[OrderedDict, OrderedDict], frozenset[str]]:
    graph = onnx.load(path, load_external_data=False).graph
    return graph_io(graph), frozenset(t for node in graph.node for t in node.output if t)


def graph_io(graph: onnx.GraphProto) -> tuple[OrderedDict[str, tuple[np.dtype, list[int | None]]],
                                             OrderedDict[str, tuple[np.dtype, list[int | None]]]]:
    """(inputs, outputs) of a GraphProto, as model_io; initializers listed as inputs are skipped
    (IR < 4 graphs list every weight as an input). An output that is an initializer (a pass folded
    it to a constant) is a real output and stays."""
    inits = {i.name for i in graph.initializer}

    def info(values, skip_initializers):
        out = OrderedDict()
        for v in values:
            if skip_initializers and v.name in inits:
                continue
            t = v.type.tensor_type
            if v.type.WhichOneof("value") != "tensor_type" or not t.elem_type:
                role = "input" if skip_initializers else "output"
                raise ValidationNotRunError(
                    f"graph {role} '{v.name}' of graph '{graph.name}' is not a tensor "
                    f"({v.type.WhichOneof('value') or 'no type'}{'' if t.elem_type else ', no element type'}): "
                    f"validation feeds and compares tensors only")
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            out[v.name] = (np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), dims)
        return out

    return info(graph.input, True), info(graph.output, False)


def default_range(dtype: np.dtype) -> tuple[float, float]:
    """Value range used when the recipe gives none: full range for 8-bit images, else Polygraphy's [0, 1]."""
    if dtype == np.uint8:
        return (0, 255)
    if dtype == np.int8:
        return (-128, 127)
    return (0.0, 1.0)


def _source_key(key, source_inputs, contract, where):
    """Recipe keys may name a source input or the final input derived from it."""
    if key in source_inputs:
        return key
    if key in contract and contract[key].get("source_input") in source_inputs:
        return contract[key]["source_input"]
    raise RecipeError(f"{where}: '{key}' is not an input of the source model "
                      f"{list(source_inputs)}{suggest(key, list(source_inputs) + list(contract), cutoff=0.5)}")


def _data_shape(name, dims, override, contract):
    """Static shape for source input `name`: the recipe's, else the contract's (its dynamic dims
    filled from the model's static ones), else the model's. A dynamic leading (batch) dimension
    becomes 1; any other dynamic dimension must come from the recipe (None is returned). A fixed
    dimension of size 0 is static (an empty tensor), not dynamic."""
    if override:
        return list(override)
    static = lambda d: isinstance(d, int) and d >= 0  # noqa: E731
    shape = list(dims or [])
    for entry in contract.values():
        given = entry.get("shape")
        if entry.get("source_input") == name and given:
            model = shape if len(shape) == len(given) else [None] * len(given)
            shape = [c if static(c) else d for c, d in zip(given, model)]
            break
    if shape and not static(shape[0]) and all(static(d) for d in shape[1:]):
        shape[0] = 1
    return shape if all(static(d) for d in shape) else None


def make_source_feeds(data_cfg: dict, source_inputs: dict[str, tuple[np.dtype, list[int | None]]],
                      contract: dict[str, dict], *, base_dir: str | Path | None = None,
                      locate: Callable[[tuple], str] | None = None,
                      parameters: dict[str, list[str]] | None = None,
                      ) -> tuple[list[OrderedDict[str, np.ndarray]], dict[str, Any]]:
    """List of feed dicts for the source model, plus a JSON-able description of the data.

    Args:
        data_cfg: the resolved `validate.data` section.
        source_inputs: the source model's inputs (model_io).
        contract: the input contract (docs/architecture.md).
        base_dir: what relative data paths are relative to (the recipe's directory).
        locate: recipe key path -> "file:line:col", for messages.
        parameters: {source input: [what it feeds]} of inputs whose values act as shapes or
            attributes (graph.inputs.parameter_inputs): they get no random data, only values the
            recipe gives (`validate.data.npz`, `validate.data.inputs.<name>.value`).

    Raises:
        RecipeError: a data key names no source input; the .npz is missing or not a regular file.
        ValidationNotRunError: no data can be made for an input (exit 10): no static shape is
            known for a dynamic input; the .npz or images cannot be read or do not fit the inputs;
            the generated data would not fit in memory; a parameter input without given values; a
            type validation cannot feed (bfloat16, float8, int4, float4, string).
        ValidationError: a given `value` does not fit its input.
    """
    loc = (lambda *p: locate(("validate", "data") + p) + ": ") if locate else (lambda *p: "")
    per_input = {}
    for key, spec in (data_cfg.get("inputs") or {}).items():
        per_input[_source_key(key, source_inputs, contract, loc("inputs", key) + "validate.data.inputs")] = spec
    check_feedable(source_inputs, per_input, parameters or {}, bool(data_cfg.get("npz")), loc)
    base = Path(base_dir or ".")
    if data_cfg.get("npz"):
        feeds = _load_npz(base / data_cfg["npz"], source_inputs, loc("npz"))
        return feeds, {"kind": "npz", "path": str(base / data_cfg["npz"]), "iterations": len(feeds)}

    images = data_cfg.get("images")
    image_input = (images.get("input") or _image_input(source_inputs, loc("images"))) if images else None
    shapes, metadata, ranges, given = {}, TensorMetadata(), {}, {}
    for name, (dtype, dims) in source_inputs.items():
        spec = per_input.get(name, {})
        if "value" in spec:  # exact values (parameter inputs), the same in every iteration
            given[name] = given_value(name, spec["value"], dtype, dims, loc("inputs", name))
            shapes[name] = list(given[name].shape)
            continue
        shape = _data_shape(name, dims, spec.get("shape"), contract)
        if shape is None and name == image_input and images.get("size") and len(dims) == 4:
            # A dynamic image input (TF-OD's [1, ?, ?, 3]) takes its spatial size from images.size.
            nchw = images.get("layout") == "NCHW" or (not images.get("layout") and dims[1] in (1, 3))
            spatial = (2, 3) if nchw else (1, 2)
            shape = [images["size"][spatial.index(i)] if i in spatial else (d or 1) for i, d in enumerate(dims)]
        if shape is None:
            raise ValidationNotRunError(
                f"{loc('inputs')}source input '{name}' has dynamic shape {dims} and no shape is known to "
                f"generate data with; set validate.data.inputs.{name}.shape (or fix it with a pass)")
        if 0 in shape and name != image_input:  # an empty tensor: its only value, of any type (strings too)
            given[name] = np.empty(shape, dtype=dtype)
            shapes[name] = list(shape)
            continue
        gen_dtype = np.dtype(spec.get("dtype", dtype))
        _check_feed_size(name, shape, data_cfg.get("iterations", 2), loc("inputs", name))
        shapes[name] = shape
        metadata.add(name, gen_dtype, shape)
        ranges[name] = tuple(spec.get("range", default_range(gen_dtype)))

    if images:
        image_feeds, image_input, files = _load_images(images, base, source_inputs, shapes, loc("images"))
        iterations = len(image_feeds)
    else:
        iterations = data_cfg.get("iterations", 2)
    if len(metadata):
        with quiet_polygraphy():
            loader = DataLoader(seed=data_cfg.get("seed", 1), iterations=iterations,
                                input_metadata=metadata, val_range=ranges)
            generated_feeds = list(loader)
    else:  # every input has given values (or images)
        generated_feeds = [{} for _ in range(iterations)]
    feeds = []
    for i, generated in enumerate(generated_feeds):
        feed = {n: np.asarray(a).astype(source_inputs[n][0], copy=False) for n, a in generated.items()}
        feed.update(given)
        if images:
            feed[image_input] = image_feeds[i]
        feeds.append(OrderedDict((n, feed[n]) for n in source_inputs))
    for feed in feeds:  # Polygraphy would otherwise reshape or transpose a misfit silently
        for name, arr in feed.items():
            dims = source_inputs[name][1]
            if len(dims) != arr.ndim or any(d and d != s for d, s in zip(dims, arr.shape)):
                raise ValidationNotRunError(f"{loc('inputs', name)}data for source input '{name}' has shape "
                                      f"{list(arr.shape)}, but the model takes {dims}")
    desc = {"kind": "images" if images else "random", "seed": data_cfg.get("seed", 1), "iterations": len(feeds),
            "inputs": {n: ({"shape": shapes[n], "dtype": str(given[n].dtype), "value": describe_value(given[n])}
                           if n in given else
                           {"shape": shapes[n], "dtype": str(metadata[n].dtype), "range": list(ranges[n])})
                       for n in source_inputs}}
    if images:
        desc["inputs"][image_input] = {"shape": list(image_feeds[0].shape), "images": files}
    return feeds, desc


def _check_feed_size(name: str, shape: list[int], iterations: int, where: str) -> None:
    """Refuse, before allocating, random data that would not fit in memory.

    Polygraphy's DataLoader draws float64 values (8 bytes each) and then casts; all iterations
    are kept for both models' runs. The bound is half of the memory available now
    (`SC_AVPHYS_PAGES`), so a typo such as a 2 TiB shape is an error, not a MemoryError.

    Raises:
        ValidationNotRunError: the estimate exceeds the bound (names the input, shape and key).
    """
    elements = int(np.prod([int(d) for d in shape], dtype=object))
    need = elements * 8 * max(1, int(iterations))
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux: assume 16 GiB
        available = 16 << 30
    if need > available // 2:
        raise ValidationNotRunError(
            f"{where}data for source input '{name}' of shape {shape} needs about {need / 2**30:.1f} GiB "
            f"({iterations} iteration(s), generated as float64), more than half the memory available "
            f"({available / 2**30:.1f} GiB); set validate.data.inputs.{name}.shape to a smaller shape")


def _load_npz(path, source_inputs, where):
    kind = special_kind(path)  # asked of stat: np.load on a FIFO would block forever
    if kind == "missing":  # a recipe error, as `check` and the run's file checks say (exit 3)
        raise RecipeError(f"{where}validate.data.npz: cannot read {path}: "
                          f"{FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))}")
    if kind is not None:
        raise RecipeError(f"{where}validate.data.npz: {path} is {kind}, not a regular file")
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):  # a plain .npy: one array, no input names
            raise ValueError("it holds a single array, not arrays named after the model's inputs (use np.savez)")
        with archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # object arrays: ValueError (no pickles)
        raise ValidationNotRunError(f"{where}validate.data.npz: cannot read {path}: {err}") from err
    extra = [k for k in arrays if k not in source_inputs]
    missing = [n for n in source_inputs if n not in arrays]
    if extra or missing:
        hint = "".join(suggest(k, source_inputs, cutoff=0.5) for k in extra[:1])
        raise ValidationNotRunError(f"{where}{path}: the arrays must be named after the source model's inputs "
                              f"{list(source_inputs)}; missing {missing}, unexpected {extra}{hint}")
    counts, per_input = set(), {}
    for name, (dtype, dims) in source_inputs.items():
        arr = arrays[name]
        if not np.can_cast(arr.dtype, dtype, "same_kind"):
            raise ValidationNotRunError(f"{where}{path}: array '{name}' is {arr.dtype} but the source input "
                                        f"takes {dtype}")
        # One extra leading axis = one feed per index along it.
        batches = list(arr) if dims and arr.ndim == len(dims) + 1 else [arr]
        for b in batches:
            if dims and (b.ndim != len(dims) or any(d and d != s for d, s in zip(dims, b.shape))):
                raise ValidationNotRunError(f"{where}{path}: array '{name}' has shape {list(arr.shape)}, which fits "
                                      f"neither the input shape {dims} nor [iterations] + {dims}")
        per_input[name] = [b.astype(dtype, copy=False) for b in batches]
        counts.add(len(batches))
    if len(counts) > 1:
        raise ValidationNotRunError(f"{where}{path}: arrays disagree on the number of iterations "
                              f"({ {n: len(v) for n, v in per_input.items()} })")
    if counts == {0}:
        raise ValidationNotRunError(f"{where}{path}: the arrays hold no iterations (their leading axis is empty)")
    return [OrderedDict((n, per_input[n][i]) for n in source_inputs) for i in range(counts.pop())]


def _load_images(cfg, base, source_inputs, shapes, where):
    """Decode, resize and normalize image files into feeds for one source input."""
    folder = base / cfg["dir"]
    name = cfg.get("input") or _image_input(source_inputs, where)
    if name not in source_inputs:
        raise ValidationNotRunError(f"{where}validate.data.images.input: '{name}' is not a source input "
                              f"{list(source_inputs)}{suggest(name, source_inputs, cutoff=0.5)}")
    shape = shapes[name]
    if len(shape) != 4:
        raise ValidationNotRunError(f"{where}validate.data.images: input '{name}' has shape {shape}; images need a "
                              f"4-D input (NHWC or NCHW)")
    layout = cfg.get("layout") or ("NCHW" if shape[1] in (1, 3) and shape[3] not in (1, 3) else "NHWC")
    batch, channels = shape[0], (shape[1] if layout == "NCHW" else shape[3])
    size = cfg.get("size") or (shape[2:4] if layout == "NCHW" else shape[1:3])
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
    for p in files:  # never opened unless regular: a FIFO would block the decoder forever
        problem = not_a_file(p, "image")
        if problem:
            raise RecipeError(f"{where}validate.data.images.dir: {problem}")
    files = files[:cfg["limit"]] if cfg.get("limit") else files
    if len(files) < batch:
        raise ValidationNotRunError(f"{where}validate.data.images.dir: {folder} holds {len(files)} image(s) "
                              f"({', '.join(IMAGE_EXTENSIONS)}); need at least {batch} (the batch size)")
    dtype = source_inputs[name][0]
    images = []
    for path in files[: len(files) // batch * batch]:
        try:
            img = _decode(path, size, channels)                  # float32 HWC, values 0..255
        except ImportError as err:
            raise ValidationNotRunError(f"{where}validate.data.images: decoding images needs Pillow or TensorFlow "
                                  f"({err}); pip install pillow") from err
        except Exception as err:  # a corrupt or unsupported file: name it
            raise ValidationNotRunError(f"{where}validate.data.images: cannot decode {path}: "
                                  f"{type(err).__name__}: {err}") from err
        if channels == 3 and cfg.get("channel_order", "RGB") == "BGR":
            img = img[..., ::-1]
        img = img * np.float32(cfg.get("scale", 1.0))
        img = (img - np.float32(cfg.get("mean", 0.0))) / np.float32(cfg.get("std", 1.0))
        if np.issubdtype(dtype, np.integer):
            img = np.clip(np.rint(img), np.iinfo(dtype).min, np.iinfo(dtype).max)
        images.append(img.transpose(2, 0, 1) if layout == "NCHW" else img)
    feeds = [np.stack(images[i:i + batch]).astype(dtype) for i in range(0, len(images), batch)]
    return feeds, name, [p.name for p in files[:len(images)]]


def _image_input(source_inputs, where):
    four_d = [n for n, (_, dims) in source_inputs.items() if len(dims) == 4]
    if len(four_d) != 1:
        raise ValidationNotRunError(f"{where}validate.data.images.input: say which source input takes the images "
                              f"(4-D inputs: {four_d or 'none'})")
    return four_d[0]


def _decode(path, size, channels):
    """Decode and resize with Pillow (a dependency): one decoder, so data is the same everywhere."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32)
    return arr[..., None] if channels == 1 else arr


def cut_inputs(contract: dict[str, dict] | None) -> list[str]:
    """The source tensors (inside the source graph) that final inputs are cut from (set_outputs):
    validation reads them from the source run and feeds them to the final model."""
    return [e["source_tensor"] for e in (contract or {}).values()
            if not e.get("source_input") and e.get("source_tensor")]


def apply_contract(source_feed: dict[str, np.ndarray], contract: dict[str, dict],
                   final_inputs: dict[str, tuple[np.dtype, list[int | None]]]) -> OrderedDict[str, np.ndarray]:
    """The final model's feed: each final input is its source input with the contract's steps applied.

    Raises:
        ValidationError: the contract and the final model's inputs disagree (names, dtype, shape),
            or a step cannot be applied.
    """
    unknown = [n for n in contract if n not in final_inputs]
    if unknown:
        raise ValidationError(f"the input contract names {unknown}, which are not inputs of the final model "
                              f"{list(final_inputs)}{suggest(unknown[0], final_inputs, cutoff=0.5)}; "
                              f"a pass renamed an input "
                              f"without moving its contract entry")
    feed = OrderedDict()
    for name, (dtype, dims) in final_inputs.items():
        entry = contract.get(name)
        if entry is None:
            raise ValidationError(f"final model input '{name}' has no input-contract entry, so validation cannot "
                                  f"derive its data from the source inputs {list(source_feed)}; the pass that "
                                  f"added it must record it in ctx.input_contract")
        # From a source input, or (set_outputs cut the graph's start) a tensor inside the source model.
        origin = entry.get("source_input") or entry.get("source_tensor")
        if origin not in source_feed:
            raise ValidationError(f"the input contract derives final input '{name}' from '{origin}', which is "
                                  f"neither a source input nor a source tensor validation computed")
        arr = source_feed[origin]
        for i, step in enumerate(entry.get("steps") or []):
            arr = _apply_step(arr, step, f"input contract of '{name}', step {i} {step}")
        if arr.dtype != dtype or len(arr.shape) != len(dims) or any(d and d != s for d, s in zip(dims, arr.shape)):
            raise ValidationError(
                f"the input contract turns source '{origin}' into {arr.dtype} "
                f"{list(arr.shape)}, but final input '{name}' takes {dtype} {dims}; the contract steps "
                f"{entry.get('steps') or []} do not match what the passes did to the input")
        feed[name] = arr
    return feed


def _apply_step(arr, step, where):
    op = step.get("op")
    try:
        if op == "cast":
            return arr.astype(np.dtype(step["to"]))
        if op == "transpose":
            return np.transpose(arr, step["perm"])
        if op == "reshape":
            return arr.reshape(step["shape"])
        if op in _ARITH:
            if not np.issubdtype(arr.dtype, np.floating):
                arr = arr.astype(np.float32)  # the graph would have cast before normalizing
            value = np.asarray(step["value"], dtype=arr.dtype)
            if value.ndim == 1 and value.size > 1:
                # Per-channel values: along `axis` if given, else the last axis (numpy broadcasting).
                axis = step.get("axis", -1) % arr.ndim
                if arr.shape[axis] != value.size:
                    raise ValueError(f"{value.size} per-channel values, but axis {axis} of {list(arr.shape)} "
                                     f"has {arr.shape[axis]}; give the step an 'axis'")
                value = value.reshape([-1 if d == axis else 1 for d in range(arr.ndim)])
            return _ARITH[op](arr, value)
    except (KeyError, ValueError, TypeError) as err:
        raise ValidationError(f"{where}: {type(err).__name__}: {err}") from err
    raise ValidationError(f"{where}: unknown op {op!r}; known: {', '.join(STEP_OPS)}"
                          f"{suggest(op, STEP_OPS, cutoff=0.5)}")
