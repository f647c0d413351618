"""YAML loading that remembers where every key and value came from, within limits.

PyYAML's composer keeps a mark (line, column) on every node; we build plain Python data from the
node tree and keep a map from key path (tuple of keys/indices) to the mark, so any later error
about `passes[2].params.scale` can point at `recipe.yaml:14:9`. Keys are strings, as written (a
tensor named `7` is the key "7", and `1:` and `true:` are two keys, not one). Duplicate keys are
errors: PyYAML silently keeps the last one, which hides mistakes in reviewed recipes.

A recipe is data, so what YAML can do beyond data is refused, each with its line and column:

* tags other than the core schema's (`!!str`, `!!int`, `!!float`, `!!bool`, `!!null`, `!!seq`,
  `!!map`): `!!python/...`, `!!binary`, `!!set`, `!foo`, ... (a tag asks for a constructor);
* merge keys (`<<: *base`) and complex keys (a list or mapping as a key);
* more than MAX_NODES keys, values and list items (each costs tens of microseconds to compose,
  check and report, so a 1 MiB file of them would take many seconds), and nesting deeper than
  MAX_DEPTH levels (PyYAML's composer recurses per level: 20,000 `[` would
  end in a RecursionError);
* aliases that expand to more than MAX_ALIAS_NODES nodes in all (a 1 KB "billion laughs" document
  expands to 10^9 nodes), and an alias used inside its own anchor (a cycle);
* raw bidi embedding/override/isolate characters anywhere, comments included ("Trojan Source":
  the file would display other than it parses); escaped in a double-quoted string they are data.

The limits are enforced while composing the node graph (libyaml's parser when PyYAML has it, our
composer on its events), before anything is expanded. As in
YAML 1.2 (and every other YAML tool), `1e-3` is a float, and `2024-01-01` and `=` are strings.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Iterable
from typing import Any

import yaml

from trtpipe.errors import RecipeError

MAX_RECIPE_BYTES = 2**20       # 1 MiB: real recipes are a few KB
MAX_DEPTH = 64                 # nested mappings/lists; a recipe needs about 8
MAX_NODES = 5_000              # keys, values and list items written; effdet.yaml has 92
MAX_ALIAS_NODES = 10_000       # nodes added by expanding aliases, over the whole document
CORE_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}
MERGE_TAG = "tag:yaml.org,2002:merge"


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


class RefusedYAML(yaml.MarkedYAMLError):
    """Valid YAML a recipe may not use (a tag, a merge key, a complex key, too deep, too many
    alias expansions); `problem_mark` is where, `hint` the way out."""

    def __init__(self, problem: str, mark: yaml.Mark, hint: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.hint = hint


def _without(resolvers: dict, tags: set) -> dict:
    return {first: [(tag, rx) for tag, rx in pairs if tag not in tags] for first, pairs in resolvers.items()}


if yaml.__with_libyaml__:  # libyaml's scanner and parser (about 10x faster), our composer on its events
    from yaml.cyaml import CParser

    class _Loader(yaml.composer.Composer, CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
else:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader


class RecipeLoader(_Loader):
    """PyYAML's safe loader with YAML 1.2's scalars: `1e-3` is a number, as in every other YAML tool
    (YAML 1.1, which PyYAML follows, reads it as a string and wants `1.0e-3`); `2024-01-01` and
    `=` are strings (YAML 1.1's timestamp and value types, which no recipe key takes). Composing
    enforces the module's limits (MAX_NODES, MAX_DEPTH, MAX_ALIAS_NODES) and refuses tags, merge
    keys and complex keys with RefusedYAML."""

    yaml_implicit_resolvers = _without(yaml.SafeLoader.yaml_implicit_resolvers,
                                       {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"})

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0       # nodes composed (aliases not counted)
        self._sizes = {}      # id(node) -> (nodes, levels) of its subtree, aliases expanded (complete nodes only)
        self._expanded = 0    # nodes added by aliases so far

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            self._count_alias(self.peek_event())
            return super().compose_node(parent, index)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise RefusedYAML(f"more than {MAX_NODES} keys, values and list items", self.peek_event().start_mark,
                              "recipes have about a hundred (recipes/effdet.yaml: 92); this is not a recipe")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise RefusedYAML(f"nesting deeper than {MAX_DEPTH} levels", self.peek_event().start_mark, _DEEP)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._check_node(node)
        return node

    def _count_alias(self, event):
        node = self.anchors.get(event.anchor)
        if node is None:
            return  # PyYAML reports the undefined alias
        if id(node) not in self._sizes:
            raise RefusedYAML(f"alias *{event.anchor} is used inside its own anchor &{event.anchor} (a cycle)",
                              event.start_mark, "an alias can only repeat a value that is complete")
        size, levels = self._sizes[id(node)]
        if self._depth + levels > MAX_DEPTH:
            raise RefusedYAML(f"alias *{event.anchor} nests its value deeper than {MAX_DEPTH} levels",
                              event.start_mark, _DEEP)
        self._expanded += size
        if self._expanded > MAX_ALIAS_NODES:
            raise RefusedYAML(f"aliases expand to more than {MAX_ALIAS_NODES} nodes (at *{event.anchor}, "
                              f"which repeats {size} nodes)", event.start_mark,
                              "write the values out, or repeat less (an alias of aliases multiplies)")

    def _check_node(self, node):
        children = []
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    kind = "a list" if isinstance(key, yaml.SequenceNode) else "a mapping"
                    raise RefusedYAML(f"a key must be a plain name, not {kind} (a complex `?` key)",
                                      key.start_mark, "recipe keys are names such as `workspace`")
                children += [self._sizes[id(key)], self._sizes[id(value)]]
        elif isinstance(node, yaml.SequenceNode):
            children = [self._sizes[id(item)] for item in node.value]
        if node.tag == MERGE_TAG:  # `<<` as a key
            raise RefusedYAML("merge keys (`<<`) are not supported in recipes", node.start_mark,
                              "write the keys out; an alias (`key: *anchor`) may repeat a whole value")
        if node.tag in CORE_TAGS and _KIND[node.tag] is not type(node):
            kind = {yaml.ScalarNode: "a plain value", yaml.SequenceNode: "a list"}.get(type(node), "a mapping")
            raise RefusedYAML(f"YAML tag '{_short(node.tag)}' cannot tag {kind}", node.start_mark,
                              "remove the tag")
        if node.tag not in CORE_TAGS:
            raise RefusedYAML(f"YAML tag '{_short(node.tag)}' is not allowed in a recipe", node.start_mark,
                              "remove the tag: recipe values are plain strings, numbers, booleans, lists "
                              "and mappings (`!!str`, `!!int`, `!!float`, `!!bool` and `!!null` are allowed)")
        self._sizes[id(node)] = (1 + sum(n for n, _ in children), 1 + max((h for _, h in children), default=0))


_KIND = {**{t: yaml.ScalarNode for t in CORE_TAGS}, "tag:yaml.org,2002:seq": yaml.SequenceNode,
         "tag:yaml.org,2002:map": yaml.MappingNode}
_DEEP = "a recipe nests about 8 levels; this is not a recipe"
def _short(tag):
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


# bidi embeddings, overrides and isolates: raw, they make a file display other than it parses
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
# characters that are invisible, reorder text (bidi controls) or end lines
_INVISIBLE = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}


def is_invisible(ch: str) -> bool:
    """Whether a character should never appear raw in a reviewed file: control and format characters
    (bidi overrides such as U+202E, zero-width spaces), line/paragraph separators, private-use,
    surrogate and unassigned code points, and spaces other than U+0020 (tab and newline excepted)."""
    if ch in "\t\n":
        return False
    cat = unicodedata.category(ch)
    return cat in _INVISIBLE or (cat == "Zs" and ch != " ")


def load_yaml_with_marks(text: str, filename: str) -> tuple[Any, Marks]:
    """Parse recipe `text` into plain data (dict, list, str, int, float, bool, None).

    Args:
        text: the YAML text (at most MAX_RECIPE_BYTES bytes as UTF-8).
        filename: how messages name the file.

    Returns:
        (data, Marks): the data, and the file:line:col of every key path in it.

    Raises:
        RecipeError: a raw bidi embedding, override or isolate character (U+202A-U+202E,
            U+2066-U+2069; escaped in a double-quoted string they are fine); text over
            MAX_RECIPE_BYTES; a YAML syntax error, a character YAML does not allow or a second
            document; a tag, merge key or complex key; more than MAX_NODES nodes; nesting deeper
            than MAX_DEPTH; aliases expanding to more than MAX_ALIAS_NODES nodes or used inside their
            own anchor; a scalar its tag cannot read (`!!int abc`, over 4,300 digits); a duplicate key.
    """
    marks = Marks(filename)
    bidi = _BIDI.search(text)
    if bidi:  # "Trojan Source" (CVE-2021-42574): shown text that is not what the parser reads
        line = text.count("\n", 0, bidi.start()) + 1
        col = bidi.start() - (text.rfind("\n", 0, bidi.start()) + 1) + 1
        code = ord(bidi.group())
        raise RecipeError(f"{filename}:{line}:{col}: raw bidirectional control character U+{code:04X} "
                          f"({unicodedata.name(bidi.group())}): it reorders how the recipe is displayed",
                          hint=f"inside a double-quoted string write it as an escape: \"\\u{code:04x}\"")
    if len(text) > MAX_RECIPE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise RecipeError(too_big(filename, len(text.encode("utf-8", "surrogatepass"))))
    loader = None
    try:
        loader = RecipeLoader(text)  # the reader refuses control characters here
        node = loader.get_single_node()
    except RefusedYAML as err:
        raise RecipeError(f"{_where(filename, err.problem_mark)}: {err.problem}", hint=err.hint) from None
    except yaml.reader.ReaderError as err:
        message, hint = _reader_error(err, text, filename)
        raise RecipeError(message, hint=hint) from None
    except yaml.composer.ComposerError as err:
        if "single document" not in str(getattr(err, "context", "")):
            raise _syntax_error(err, filename) from None
        raise RecipeError(f"{_where(filename, err.problem_mark)}: a second YAML document starts here; a recipe is "
                          f"one document", hint="remove the `---` line and what follows it (or make it a recipe "
                                                "file of its own)") from None
    except yaml.YAMLError as err:
        raise _syntax_error(err, filename) from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        return None, marks
    return _build(node, (), marks, RecipeLoader("")), marks


def _syntax_error(err, filename):
    mark = getattr(err, "problem_mark", None)
    where = _where(filename, mark) if mark else filename
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    detail = f"{problem} ({context})" if context else problem
    if "maximum nesting depth" in str(problem):  # PyYAML >= 6.0.4's scanner stops deep flow nesting first
        return RecipeError(f"{where}: nesting deeper than {MAX_DEPTH} levels (YAML: {detail})", hint=_DEEP)
    return RecipeError(f"{where}: YAML syntax error: {detail}",
                       hint="check indentation and that every `key: value` has a space after the colon")


def too_big(filename: str, size: int) -> str:
    """The message for a recipe of `size` bytes, over MAX_RECIPE_BYTES."""
    return (f"{filename}: recipe is too large: {size} bytes; the limit is {MAX_RECIPE_BYTES} bytes "
            f"({MAX_RECIPE_BYTES // 2**20} MiB; real recipes are a few KB)")


def _where(filename, mark):
    return f"{filename}:{mark.line + 1}:{mark.column + 1}"


def _reader_error(err, text, filename):
    pos = min(max(err.position, 0), len(text))
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    char = err.character if isinstance(err.character, str) else chr(err.character)
    name = unicodedata.name(char, "a control character")
    return (f"{filename}:{line}:{col}: YAML syntax error: character U+{ord(char):04X} ({name}) is not allowed "
            f"in a YAML file", f"write it as an escape in a double-quoted string: \"\\u{ord(char):04x}\"")


def _build(node, path, marks, constructor):
    marks.add(path, node.start_mark)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = key_node.value  # a key is a name, as written: `7:` is "7" (a tensor name), `true:` is "true"
            if key in out:
                first = marks.locate(path + (key,))
                raise RecipeError(
                    f"{_where(marks.filename, key_node.start_mark)}: "
                    f"duplicate key {_shown(key)} (first defined at {first})",
                    hint="YAML keeps only one of them; remove or merge the duplicate")
            # The key's own mark is the most useful place to point at for key errors.
            out[key] = _build(value_node, path + (key,), marks, constructor)
            marks.add(path + (key,), key_node.start_mark)
            marks.add(path + (key, "<value>"), value_node.start_mark)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), marks, constructor) for i, item in enumerate(node.value)]
    return _scalar(node, marks.filename, constructor)


def _scalar(node, filename, constructor):
    try:
        return constructor.construct_object(node, deep=True)
    except (ValueError, KeyError, yaml.YAMLError) as err:  # `!!int abc`, `!!bool maybe`, 5,000 digits
        value = node.value if len(node.value) <= 40 else node.value[:40] + "..."
        why = f": more than {sys.get_int_max_str_digits()} digits" if "digits" in str(err) else ""
        raise RecipeError(f"{_where(filename, node.start_mark)}: '{value}' is not a valid {_short(node.tag)}{why}",
                          hint="write the value plainly (e.g. 3, 0.5, true), or quote it as a string") from None


def _shown(key):
    """A key for a message: quoted, invisible characters escaped."""
    text = str(key)
    return repr(text) if any(is_invisible(c) for c in text) else f"'{text}'"


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))
