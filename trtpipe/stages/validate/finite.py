"""NaN and Inf in validation: a reference that is not finite, and values both sides share.

* The source model computing NaN/Inf on the validation data (acosh of values below 1, log of 0) is
  no reference to compare with: validation cannot run (exit code 10), and the data is at fault,
  not a pass (`check_reference_finite`).
* An element that is the same non-finite value in both runs (+inf and +inf: the min of an empty
  set) agrees, though Polygraphy's statistics make inf - inf a NaN error (`same_nonfinite_agrees`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from trtpipe.errors import ValidationNotRunError


def check_reference_finite(run: Any, cfg: Mapping[str, Any], outputs: Collection[str], where: str = "") -> None:
    """Refuse a reference run (the source model's) whose outputs hold NaN/Inf (as far as
    `validate.check_nan` / `check_inf` ask) on the validation data: there is no valid value to
    compare against, and the data is outside what the model accepts (acosh of values below 1,
    log of 0). Outputs `validate.skip` names are not checked.

    Args:
        run: the reference RunResults (run_ort).
        cfg: the resolved `validate` section.
        outputs: the reference outputs to check.
        where: a "recipe.yaml:3:1: " prefix for the message.

    Raises:
        ValidationNotRunError: naming the output, how many values are NaN/Inf, and the way out.
    """
    if not (cfg["check_nan"] or cfg["check_inf"]):
        return
    runner, iterations = list(run.items())[0]
    for name in outputs:
        if cfg["skip"].get(name) or name not in iterations[0].keys():
            continue
        arrays = [np.asarray(it[name]) for it in iterations]
        if any(a.dtype.kind not in "fc" for a in arrays):
            continue
        total = sum(a.size for a in arrays)
        bad = {"NaN": sum(int(np.isnan(a).sum()) for a in arrays) if cfg["check_nan"] else 0,
               "Inf": sum(int(np.isinf(a).sum()) for a in arrays) if cfg["check_inf"] else 0}
        text = " and ".join(f"{n} {k}" for k, n in bad.items() if n)
        if text:
            raise ValidationNotRunError(
                f"{where}validation could not run: the source model itself computes {text} value(s) (of {total}) "
                f"in output '{name}' on the validation data ({runner}, {len(arrays)} iteration(s)), so there is "
                f"no valid reference to compare with: the data is outside what the model accepts",
                hint="feed data the model accepts (validate.data.inputs.<name>.range, validate.data.npz or "
                     "images), or skip the output with a reason (validate.skip), or set validate.check_nan / "
                     "check_inf: false if the model is meant to produce them")


def same_nonfinite_agrees(cand_run: Any, ref_run: Any, pairs: Mapping[str, str]) -> tuple[Any, Any]:
    """Copies of both runs where an element that is the same non-finite value on both sides (+inf
    and +inf, -inf and -inf, NaN and NaN) is 0 on both: it agrees (the min of an empty set is +inf
    in both models), yet inf - inf is NaN in Polygraphy's error statistics. Whether NaN/Inf may
    appear at all is validate.check_nan / check_inf's business. The runs as they are when nothing
    is non-finite."""
    from polygraphy.comparator import IterationResult, RunResults
    (cand_name, cand_its), (ref_name, ref_its) = list(cand_run.items())[0], list(ref_run.items())[0]
    changed, new_cand, new_ref = False, [], []
    for cand_it, ref_it in zip(cand_its, ref_its):
        cand_out, ref_out = dict(cand_it.items()), dict(ref_it.items())
        for f, s in pairs.items():
            if f not in cand_out or s not in ref_out:
                continue
            c, r = np.asarray(cand_out[f]), np.asarray(ref_out[s])
            if c.shape != r.shape or c.dtype.kind != "f" or r.dtype.kind != "f":
                continue
            same = (np.isinf(c) & (c == r)) | (np.isnan(c) & np.isnan(r))
            if same.any():
                cand_out[f], ref_out[s] = np.where(same, 0, c).astype(c.dtype), np.where(same, 0, r).astype(r.dtype)
                changed = True
        new_cand.append(IterationResult(cand_out, runner_name=cand_name))
        new_ref.append(IterationResult(ref_out, runner_name=ref_name))
    if not changed:
        return cand_run, ref_run
    return RunResults([(cand_name, new_cand)]), RunResults([(ref_name, new_ref)])
