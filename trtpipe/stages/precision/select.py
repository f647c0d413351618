"""Selecting nodes and op types a precision option names (`keep_nodes`, `exclude_nodes`,
`keep_op_types`, `exclude_op_types`), with recipe-located errors. Shared by mixed.py and quantize.py."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import onnx

from trtpipe.errors import RecipeError, suggest
from trtpipe.recipe.precision import where_prefix
from trtpipe.recipe.schema import key_path


def match_nodes(patterns: list[str], names: list[str], locate: Callable | None, path: tuple) -> set[str]:
    """Node names or fnmatch globs ('*/box_net/*') -> matching names; a pattern that matches
    nothing is a RecipeError with the closest name."""
    found = set()
    for i, pat in enumerate(patterns):
        hit = {n for n in names if n == pat or fnmatch.fnmatchcase(n, pat)}
        if not hit:
            raise RecipeError(f"{where_prefix(locate, path + (i,))}{key_path(path + (i,))}: no node named or "
                              f"matching '{pat}'{suggest(pat, names)}; the graph has {len(names)} nodes "
                              f"(names are listed in the pipeline's final .onnx)")
        found |= hit
    return found


def check_op_types(op_types: list[str], locate: Callable | None, path: tuple) -> set[str]:
    """The op types as a set; RecipeError (with the closest name) for one ONNX does not define."""
    known = {s.name for s in onnx.defs.get_all_schemas_with_history()}
    for i, op in enumerate(op_types):
        if op not in known:
            raise RecipeError(f"{where_prefix(locate, path + (i,))}{key_path(path + (i,))}: '{op}' is not an ONNX "
                              f"op type{suggest(op, sorted(known))}")
    return set(op_types)
