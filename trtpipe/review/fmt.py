"""Canonical recipe formatting: schema key order, 2-space indentation, every comment kept.

Recipes are reviewed as diffs, so two people writing the same recipe should produce the same
bytes. Keys are ordered as the schemas list them (recipe.schema.json for the recipe, each pass's
own schema for its `params`); keys a schema does not know keep their relative order after the
known ones. ruamel.yaml's round trip keeps quoting, flow/block style and scalar spelling.

Comments need more care than ruamel gives them: it attaches a comment line to the *preceding*
value, so moving a key would drag along the comment that introduces the next key. Every comment
is therefore taken out, the reordered data dumped without comments, and each comment put back
next to its key (trtpipe/yaml_comments.py).

The result is checked to load to exactly the same data as the input, so formatting can never
change what a recipe means.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import Comment, CommentedBase, CommentedMap, CommentedSeq
from ruamel.yaml.emitter import RoundTripEmitter
from ruamel.yaml.error import YAMLError as RuamelError

from trtpipe import registry
from trtpipe.errors import RecipeError
from trtpipe.recipe.load import check_mapping
from trtpipe.recipe.schema import load_schema
from trtpipe.recipe.yamlmarks import is_invisible, load_yaml_with_marks
from trtpipe.review.yaml_comments import Comments


class _Escaping:
    """A text stream wrapper writing every invisible character as a YAML escape (inside a
    double-quoted scalar, where escapes are valid)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, data):
        if isinstance(data, str):
            data = "".join(_escape(c) if is_invisible(c) else c for c in data)
        return self._stream.write(data)


def visible(text: str) -> str:
    """`text` with every invisible character (`is_invisible`: a byte-order mark U+FEFF, bidi
    controls, zero-width spaces, ...) written as its escape (`\\uFEFF`), for messages."""
    return "".join(_escape(c) if is_invisible(c) else c for c in text)


def _escape(ch):
    code = ord(ch)
    return f"\\x{code:02X}" if code <= 0xFF else f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"


class _Emitter(RoundTripEmitter):
    """ruamel's round-trip emitter, except that a string holding an invisible character (bidi
    control, zero-width space, ...) is always double-quoted with that character escaped: ruamel
    would write it raw (it escapes only what YAML cannot hold), where no reviewer can see it."""

    def choose_scalar_style(self):
        if isinstance(self.event.value, str) and any(map(is_invisible, self.event.value)):
            return '"'
        return super().choose_scalar_style()

    def write_double_quoted(self, text, split=True):
        if not any(map(is_invisible, text)):
            return super().write_double_quoted(text, split)
        stream = self.stream
        self.stream = _Escaping(stream)
        try:
            return super().write_double_quoted(text, split)
        finally:
            self.stream = stream


def _yaml():
    y = YAML(typ="rt")
    y.Emitter = _Emitter
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 4096  # never re-wrap long values: wrapping changes make noisy diffs
    y.preserve_quotes = True
    return y


def format_text(text: str, filename: str | Path = "<recipe>") -> str:
    """Return the canonical form of recipe `text`.

    Escaped invisible characters stay escaped: a string holding a character `is_invisible` names
    (bidi overrides such as U+202E, zero-width spaces, controls) is written double-quoted with
    that character as an escape (`"\\u202E"`), never raw, whatever its quoting was. A UTF-8
    byte-order mark (U+FEFF) before the document is accepted, as PyYAML and a run accept it, and
    dropped: the canonical form has none (`fmt --check` names it).

    Raises:
        RecipeError: what a run refuses before the schema, with the same file:line:col message: text
            over the size limit, a YAML syntax error, a tag, merge or complex key, nesting or alias
            limits, a duplicate key; and a document that is not a mapping (empty, a list, a value).
    """
    data, _ = load_yaml_with_marks(text, str(filename))
    check_mapping(data, str(filename))
    if not data:
        return text
    layout = Comments(text)
    y = _yaml()
    try:
        doc = y.load(text)
    except RuamelError as err:  # what PyYAML accepted above and ruamel (YAML 1.2) does not
        mark = getattr(err, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else str(filename)
        raise RecipeError(f"{where}: YAML error: {getattr(err, 'problem', None) or err}") from None
    _strip_comments(doc)
    _reorder(doc, load_schema("recipe.schema.json"))
    out = io.StringIO()
    y.dump(doc, out)
    result = layout.weave(out.getvalue())
    again, _ = load_yaml_with_marks(result, str(filename))
    if again != data:  # a formatter bug must never silently change a recipe
        raise RuntimeError(f"{filename}: formatting would change the recipe's data; file left unchanged")
    if Comments(result).texts() != layout.texts():  # ... nor drop a comment
        raise RuntimeError(f"{filename}: formatting would lose or duplicate a comment; file left unchanged")
    return result


def first_difference(text: str, formatted: str) -> int | None:
    """1-based line number of the first line where `formatted` differs from `text` (None if equal)."""
    a, b = text.splitlines(), formatted.splitlines()
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i + 1
    if len(a) == len(b) and text.endswith("\n") == formatted.endswith("\n"):
        return None
    return min(len(a), len(b)) + 1


def write_atomically(path: str | Path, text: str) -> None:
    """Replace `path` with `text` through a temp file + rename; keeps the file's permissions and
    writes through a symlink to its target."""
    path = Path(os.path.realpath(path))
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------ key order

def _branches(schema):
    """The schema and the sub-schemas whose properties apply to the same object."""
    out = [schema]
    for key in ("then", "else"):
        if isinstance(schema.get(key), dict):
            out.append(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        out += [s for s in schema.get(key, []) if isinstance(s, dict)]
    return out


def key_order(schema: dict) -> list[str]:
    """Property names in schema order, over the schema and its then/else/allOf/anyOf/oneOf branches."""
    order = []
    for s in _branches(schema):
        order += [k for k in s.get("properties", {}) if k not in order]
    return order


def sub_schema(schema: dict, key: str) -> dict | None:
    """The schema of property `key` (or of additional properties), None when it has none."""
    for s in _branches(schema):
        if key in s.get("properties", {}):
            return s["properties"][key]
    for s in _branches(schema):
        if isinstance(s.get("additionalProperties"), dict):
            return s["additionalProperties"]
    return None


def _reorder(node, schema):
    if not isinstance(schema, dict):
        return
    if isinstance(node, CommentedMap):
        rank = {k: i for i, k in enumerate(key_order(schema))}
        original = list(node)
        for key in sorted(original, key=lambda k: (rank.get(k, len(rank)), original.index(k))):
            node.move_to_end(key)
        for key, value in node.items():
            sub = sub_schema(schema, key)
            if key == "params" and isinstance(node.get("pass"), str) and "pass" in rank:
                info = registry.get(node["pass"])  # a pass's params follow the pass's own schema
                sub = info.schema if info else None
            _reorder(value, sub)
    elif isinstance(node, CommentedSeq) and isinstance(schema.get("items"), dict):
        for item in node:
            _reorder(item, schema["items"])


def _strip_comments(node):
    if isinstance(node, CommentedBase):
        setattr(node, Comment.attrib, Comment())
    if isinstance(node, dict):
        for value in node.values():
            _strip_comments(value)
    elif isinstance(node, list):
        for value in node:
            _strip_comments(value)
