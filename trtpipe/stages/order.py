"""Stage labels in run order, and which stages a change re-runs.

`source -> passes[0] -> ... -> passes[n-1] -> precision -> validate, build -> publish`: a change
re-runs its stage and every stage downstream of it, except that validate and build do not feed
each other (each re-runs only itself and publish). Used by recipe_diff (review), explain and the
stage cache, so all three name stages the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

FIXED_BEFORE = ["source"]
FIXED_AFTER = ["precision", "validate", "build", "publish"]


def stage_labels(n: int) -> list[str]:
    """All stage labels of a recipe with `n` passes, in run order."""
    return FIXED_BEFORE + [f"passes[{i}]" for i in range(n)] + FIXED_AFTER


def _stage_index(start, n):
    """Position of a start stage in [source, passes[0..n-1], precision, validate, build, publish]."""
    if isinstance(start, tuple):
        return 1 + start[1]
    if start == "source":
        return 0
    return 1 + n + FIXED_AFTER.index(start)


def downstream(start: str | tuple[str, int], n: int, validate_enabled: bool = True) -> list[str]:
    """Stage labels `start` ("source", ("passes", i), "precision", ..., or "profiles" for
    build.profiles, which both validation and the build read) re-runs, in run order."""
    labels = stage_labels(n)
    if start == "build":
        out = ["build", "publish"]
    elif start == "profiles":  # build.profiles: the plan, and the shapes validation compares at
        out = ["validate", "build", "publish"]
    elif start == "validate":
        out = ["validate", "publish"]
    elif start == "publish":
        out = ["publish"]
    else:
        out = labels[_stage_index(start, n):]
    return [s for s in out if validate_enabled or s != "validate"]


def compress(labels: Iterable[str]) -> list[str]:
    """['passes[2]', 'passes[3]', 'passes[4]'] -> ['passes[2..4]']."""
    out, run = [], []

    def flush():
        if run:
            out.append(f"passes[{run[0]}]" if len(run) == 1 else f"passes[{run[0]}..{run[-1]}]")
            run.clear()
    for label in labels:
        if label.startswith("passes["):
            index = int(label[7:-1])
            if run and index != run[-1] + 1:
                flush()
            run.append(index)
            continue
        flush()
        out.append(label)
    flush()
    return out
