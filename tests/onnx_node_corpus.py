"""ONNX's backend node tests as recipes: a generator for the operator corpus (issue 12).

The onnx package builds about 1,900 single-op models with reference inputs and outputs
(`onnx.backend.test.case.node`). Each becomes a recipe here: the model as an ONNX source, the
`cleanup` pass, fp32, output.dir and stage cache in the case's own directory. A run ends in one of
two ways the tool promises: a plan whose final ONNX model computes the reference outputs (checked
in ONNX Runtime: plans cannot run without a GPU), or a documented exit code with a clear message and
no traceback. `classify` says which, and why not.

    from tests.onnx_node_corpus import node_cases, sample, write_case, run_case, classify

`python -m tests.onnx_node_corpus [PER_OP] [OUT.json] [--inproc] [--given]` runs the broad sample
(PER_OP cases per op type, default 2) through `python pipeline.py` (in child processes, or in this
process with --inproc) and prints a count per outcome; --given runs each case stopped for a
parameter input again with its reference inputs as `validate.data.npz`. This is the exploration
behind the table in docs/architecture.md ("The ONNX operator corpus").
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

REPO = pathlib.Path(__file__).resolve().parent.parent
TRACEBACK = "Traceback (most recent call last)"


def _reset_collector():
    """collect_testcases(op) leaves a filter behind; importing a module then skips other ops."""
    import onnx.backend.test.case.node as node
    node._TargetOpType = None
    return node


def node_cases(names: Iterable[str] | None = None, modules: Iterable[str] = ()) -> list[Any]:
    """ONNX backend node test cases (onnx.backend.test.case.test_case.TestCase).

    Args:
        names: the case names wanted (`test_abs`, ...); None: every case.
        modules: module names under onnx.backend.test.case.node to import instead of all of them
            (importing a module generates its cases; all of them take about 10 s).

    Returns:
        The cases, in the order of `names` when given (a missing name raises KeyError).
    """
    node = _reset_collector()
    with warnings.catch_warnings():  # the generators' own overflow warnings (casts to fp8 and the like)
        warnings.simplefilter("ignore", RuntimeWarning)
        if modules:
            for mod in modules:
                importlib.import_module(f"onnx.backend.test.case.node.{mod}")
            cases = list(node._NodeTestCases)
        else:
            cases = node.collect_testcases(None)
    if names is None:
        return list(cases)
    by_name = {c.name: c for c in cases}
    return [by_name[n] for n in names]


def op_type(case: Any) -> str:
    """The op a node test case is about (its model's first node)."""
    return case.model.graph.node[0].op_type


def sample(cases: Sequence[Any], per_op: int = 2) -> list[Any]:
    """Up to `per_op` cases per op type (the first and the last of each, function expansions left
    out: they test the same op), in the cases' order."""
    by_op: dict[str, list[Any]] = collections.defaultdict(list)
    for case in cases:
        if "_expanded" not in case.name:
            by_op[op_type(case)].append(case)
    keep = set()
    for group in by_op.values():
        picks = [group[0], group[-1]][:per_op] if per_op <= 2 else group[:per_op]
        keep.update(c.name for c in picks)
    return [c for c in cases if c.name in keep]


def _value(x: Any) -> Any:
    """A reference value as numpy (TensorProto decoded), a list for sequences, None for absent optionals."""
    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, list):
        return [_value(v) for v in x]
    return x if x is None else np.asarray(x)


def write_case(case: Any, folder: pathlib.Path, extra: str = "") -> pathlib.Path:
    """Write `case` as a recipe in `folder`: model.onnx, recipe.yaml (ONNX source, cleanup, fp32,
    output.dir `out`; `extra` appended as more recipe text) and reference.npz (the reference inputs,
    named after the model's graph inputs, where every one is a plain tensor numpy can hold).

    Returns:
        The recipe path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(case.model, str(folder / "model.onnx"))
    inputs, _ = case.data_sets[0]
    names = [i.name for i in case.model.graph.input]
    values = [_value(v) for v in inputs]
    if all(isinstance(v, np.ndarray) and v.dtype.kind in "biufc" and v.dtype.itemsize and v.dtype.names is None
           and str(v.dtype) in np.sctypeDict for v in values) and len(values) == len(names):
        np.savez(folder / "reference.npz", **dict(zip(names, values)))
    body = f"""
        name: {case.name.replace("_", "-")}
        source:
          onnx: model.onnx
        passes:
          - pass: cleanup
        precision: fp32
        output:
          dir: out
        """
    recipe = folder / "recipe.yaml"
    recipe.write_text(textwrap.dedent(body).lstrip() + textwrap.dedent(extra).lstrip())
    return recipe


def reference_check(case: Any, final_onnx: pathlib.Path) -> str | None:
    """Run the final ONNX model in ONNX Runtime on the case's reference inputs and compare with its
    reference outputs (the test case's own rtol/atol, but at least 1e-5 / 1e-4 for float32).

    Returns:
        None when every output matches; else what differs.
    """
    import onnxruntime as ort
    inputs, outputs = case.data_sets[0]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(final_onnx), opts, providers=["CPUExecutionProvider"])
    in_names = [i.name for i in case.model.graph.input]
    feed = dict(zip(in_names, (_value(v) for v in inputs)))
    got = sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})
    out_names = [o.name for o in sess.get_outputs()]
    want = dict(zip([o.name for o in case.model.graph.output], (_value(v) for v in outputs)))
    for name, g in zip(out_names, got):
        w = want.get(name)
        if w is None:
            return f"final output '{name}' is not an output of the test case"
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            return f"output '{name}': shape {list(g.shape)} != reference {list(w.shape)}"
        if w.dtype.kind in "fc":
            ok = np.allclose(g, w, rtol=max(case.rtol, 1e-4), atol=max(case.atol, 1e-5), equal_nan=True)
        else:
            ok = np.array_equal(g, w)
        if not ok:
            return f"output '{name}' differs from the reference"
    return None


def run_case(recipe: pathlib.Path, runner: Callable[[list[str]], tuple[int, str]] | None = None,
             timeout: float = 300, cache: bool = True) -> dict[str, Any]:
    """Run one recipe: `python pipeline.py RECIPE --cache-dir <folder>/cache` in a child process,
    or in-process through `runner(argv) -> (exit code, output text)`; `cache=False` leaves the
    stage cache to the environment ($TRTPIPE_CACHE_DIR: the tests' own).

    Returns:
        {"code", "output" (stdout + stderr), "seconds", "plan" (path or None), "final" (path or None)}.
    """
    folder = recipe.parent
    argv = [str(recipe)] + (["--cache-dir", str(folder / "cache")] if cache else [])
    t0 = time.perf_counter()
    if runner:
        code, text = runner(argv)
    else:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", COLUMNS="200")
        try:
            proc = subprocess.run([sys.executable, str(REPO / "pipeline.py"), *argv], capture_output=True,
                                  text=True, timeout=timeout, env=env, cwd=folder)
            code, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            code, text = -999, f"timeout after {timeout} s: {err}"
    out = folder / "out"
    plans = sorted(out.glob("*.plan")) if out.is_dir() else []
    finals = [p for p in sorted(out.glob("*.onnx")) if not p.name.endswith((".source.onnx", ".postprocess.onnx"))] \
        if out.is_dir() else []
    return {"code": code, "output": text, "seconds": time.perf_counter() - t0,
            "plan": plans[0] if plans else None, "final": finals[0] if finals else None}


def classify(case: Any, result: dict[str, Any]) -> tuple[str, str]:
    """(outcome, detail) of one run. Outcomes: `matched` (exit 0, plan published, final ONNX equals
    the reference outputs), `mismatch` (exit 0 but it does not, or no plan), `traceback` (a traceback
    or exit 1), `timeout`, or `exit N` (a documented error; the detail is the message's first line)."""
    code, text = result["code"], result["output"]
    if code == -999:
        return "timeout", text
    if TRACEBACK in text or code == 1 or code < 0:
        tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or [""]
        return "traceback", f"exit {code}: {tail[0][:300]}"
    if code == 0:
        if not result["plan"] or not result["final"]:
            return "mismatch", "exit 0 without a plan and a final ONNX model"
        try:
            why = reference_check(case, result["final"])
        except Exception as err:  # ORT cannot run what the tool published
            why = f"ONNX Runtime on the final model: {type(err).__name__}: {str(err)[:200]}"
        return ("matched", "") if why is None else ("mismatch", why)
    at = text.find("error (exit")
    return f"exit {code}", (text[at:] if at >= 0 else text.strip())[:1500]


def cli_runner(argv: list[str]) -> tuple[int, str]:
    """Run `python pipeline.py ARGV -q` in this process (trtpipe.cli.main); (exit code, output).
    An exception escaping main is a traceback: its text is returned with exit code 1."""
    import contextlib
    import io
    import traceback

    from trtpipe.cli import main as cli_main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = cli_main([*argv, "-q"])
        except BaseException:  # noqa: BLE001 - a traceback is an outcome here, reported as such
            code = 1
            out.write(traceback.format_exc())
    return code, out.getvalue()


def main(argv: list[str]) -> int:
    """The exploration run: a broad sample through the CLI, counts per outcome (and a JSON file).
    `--inproc` runs each recipe in this process (faster) instead of a child process."""
    import tempfile
    inproc = "--inproc" in argv
    given = "--given" in argv  # parameter-input cases again, with the reference inputs as validate.data.npz
    argv = [a for a in argv if a not in ("--inproc", "--given")]
    per_op = int(argv[0]) if argv else 2
    out_json = pathlib.Path(argv[1]) if len(argv) > 1 else None
    cases = sample(node_cases(), per_op)
    counts: collections.Counter[str] = collections.Counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnx-node-corpus-") as tmp:
        for i, case in enumerate(cases):
            recipe = write_case(case, pathlib.Path(tmp) / case.name)
            result = run_case(recipe, runner=cli_runner if inproc else None)
            outcome, detail = classify(case, result)
            if given and "is a parameter" in detail and (recipe.parent / "reference.npz").exists():
                retry = write_case(case, pathlib.Path(tmp) / (case.name + "-npz"),
                                   "validate:\n  data:\n    npz: reference.npz\n")
                again, more = classify(case, run_case(retry, runner=cli_runner if inproc else None))
                counts[f"parameter input, then with the .npz: {again}"] += 1
                detail = f"{detail}\n-- with validate.data.npz: {again}: {more}"
            counts[outcome] += 1
            rows.append({"case": case.name, "op": op_type(case), "outcome": outcome, "detail": detail,
                         "seconds": round(result["seconds"], 1)})
            print(f"[{i + 1}/{len(cases)}] {case.name}: {outcome} {detail[:1500]}", flush=True)
    print(json.dumps(dict(counts.most_common()), indent=1))
    if out_json:
        out_json.write_text(json.dumps({"counts": counts, "cases": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
