"""YAML loading that remembers where every key and value came from.

PyYAML's composer keeps a mark (line, column) on every node; we build plain Python data from the
node tree and keep a map from key path (tuple of keys/indices) to the mark, so any later error
about `passes[2].params.scale` can point at `recipe.yaml:14:9`. Duplicate keys are errors: PyYAML
silently keeps the last one, which hides mistakes in reviewed recipes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from trtpipe.errors import RecipeError


class Marks:
    """Key path -> (line, column), both 1-based."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self._marks = {}

    def add(self, path: Iterable[str | int], mark: yaml.Mark) -> None:
        self._marks[tuple(path)] = (mark.line + 1, mark.column + 1)

    def locate(self, path: Iterable[str | int]) -> str:
        """`file:line:col` of the deepest recorded prefix of `path`."""
        path = tuple(path)
        while path not in self._marks and path:
            path = path[:-1]
        line, col = self._marks.get(path, (1, 1))
        return f"{self.filename}:{line}:{col}"

    def line(self, path: Iterable[str | int]) -> int | None:
        return self._marks.get(tuple(path), (None, None))[0]


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: `1e-3` is a number, as in every other YAML tool
    (YAML 1.1, which PyYAML follows, reads it as a string and wants `1.0e-3`)."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def load_yaml_with_marks(text: str, filename: str) -> tuple[Any, Marks]:
    """Parse `text`; return (data, Marks). Raises RecipeError on syntax errors."""
    marks = Marks(filename)
    try:
        node = yaml.compose(text, Loader=RecipeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        problem = getattr(err, "problem", None) or str(err)
        context = getattr(err, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise RecipeError(f"{where}: YAML syntax error: {detail}",
                          hint="check indentation and that every `key: value` has a space after the colon") from err
    if node is None:
        return None, marks
    constructor = RecipeLoader("")
    return _build(node, (), marks, constructor), marks


def _build(node, path, marks, constructor):
    marks.add(path, node.start_mark)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            if key in out:
                first = marks.locate(path + (key,))
                raise RecipeError(
                    f"{marks.filename}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}: "
                    f"duplicate key '{key}' (first defined at {first})",
                    hint="YAML keeps only one of them; remove or merge the duplicate")
            # The key's own mark is the most useful place to point at for key errors.
            out[key] = _build(value_node, path + (key,), marks, constructor)
            marks.add(path + (key,), key_node.start_mark)
            marks.add(path + (key, "<value>"), value_node.start_mark)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), marks, constructor) for i, item in enumerate(node.value)]
    return constructor.construct_object(node, deep=True)
