"""Canonical recipe formatting: schema key order, 2-space indentation, every comment kept.

Recipes are reviewed as diffs, so two people writing the same recipe should produce the same
bytes. Keys are ordered as the schemas list them (recipe.schema.json for the recipe, each pass's
own schema for its `params`); keys a schema does not know keep their relative order after the
known ones. ruamel.yaml's round trip keeps quoting, flow/block style and scalar spelling.

Comments need more care than ruamel gives them: it attaches a comment line to the *preceding*
value, so moving a key would drag the comment that introduces the next key along with it. We
therefore take every comment out of the document, remember which key it belongs to, dump the
reordered data without comments, and put each comment back next to its key:

* full-line comments (and blank lines) belong to the key or list item that follows them and are
  re-indented to it; comments before the first key are the file header (e.g. the
  `# yaml-language-server: $schema=...` line) and stay at the top;
* a comment indented deeper than the key that follows closes the block above it (typically a
  commented-out last entry) and stays at the end of that block, unless it sits between a key and
  its first entry, which it then introduces;
* an end-of-line comment stays on the line of its key, with its original spacing.

The result is checked to load to exactly the same data as the input, so formatting can never
change what a recipe means.
"""

import bisect
import io
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import Comment, CommentedBase, CommentedMap, CommentedSeq

from . import registry
from .schema_check import load_schema
from .yamlmarks import load_yaml_with_marks


def _yaml():
    y = YAML(typ="rt")
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 4096  # never re-wrap long values: wrapping changes make noisy diffs
    y.preserve_quotes = True
    return y


def format_text(text, filename="<recipe>"):
    """Return the canonical form of recipe `text`.

    Raises RecipeError (YAML syntax error, duplicate key) with the same file:line:col message a
    run gives. Text that is not a YAML mapping is returned unchanged (`check` reports it)."""
    data, _ = load_yaml_with_marks(text, str(filename))
    if not isinstance(data, dict) or not data:
        return text
    layout = _Comments(text)
    y = _yaml()
    doc = y.load(text)
    _strip_comments(doc)
    _reorder(doc, load_schema("recipe.schema.json"))
    out = io.StringIO()
    y.dump(doc, out)
    result = layout.weave(out.getvalue())
    again, _ = load_yaml_with_marks(result, str(filename))
    if again != data:  # a formatter bug must never silently change a recipe
        raise RuntimeError(f"{filename}: formatting would change the recipe's data; file left unchanged")
    if _Comments(result).texts() != layout.texts():  # ... nor drop a comment
        raise RuntimeError(f"{filename}: formatting would lose or duplicate a comment; file left unchanged")
    return result


def first_difference(text, formatted):
    """1-based line number of the first line where `formatted` differs from `text` (None if equal)."""
    a, b = text.splitlines(), formatted.splitlines()
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i + 1
    return None if len(a) == len(b) and text.endswith("\n") == formatted.endswith("\n") else min(len(a), len(b)) + 1


def write_atomically(path, text):
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


def key_order(schema):
    order = []
    for s in _branches(schema):
        order += [k for k in s.get("properties", {}) if k not in order]
    return order


def sub_schema(schema, key):
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


# ------------------------------------------------------------------------------ layout

@dataclass
class _Slot:
    path: tuple
    line: int  # 0-based line of the key (mapping entry) or of the dash (list item)
    col: int


@dataclass
class _Tree:
    """Where each key / list item of a YAML text is: block-style entries are "slots" comments can
    belong to; entries inside flow collections ({...}, [...]) are not."""

    text: str
    slots: dict = field(default_factory=dict)       # path -> _Slot (document order)
    last: dict = field(default_factory=dict)        # path -> last line of its value
    child_col: dict = field(default_factory=dict)   # block container path -> column of its entries
    ends: dict = field(default_factory=dict)        # line -> column where the last token on it ends
    inside: set = field(default_factory=set)        # lines inside multi-line scalars (not comments)

    def __post_init__(self):
        self._starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
        node = yaml.compose(self.text, Loader=yaml.SafeLoader)
        self._constructor = yaml.SafeLoader("")
        if node is not None:
            self._walk(node, (), False)

    def _pos(self, index):
        line = bisect.bisect_right(self._starts, index) - 1
        return line, index - self._starts[line]

    def _end(self, node):
        line, col = node.end_mark.line, node.end_mark.column
        self.ends[line] = max(self.ends.get(line, 0), col)
        return line if col > 0 or line == node.start_mark.line else line - 1

    def _walk(self, node, path, in_flow):
        if isinstance(node, yaml.ScalarNode):
            start, end = node.start_mark.line, node.end_mark.line
            self.inside.update(range(start + 1, end if node.end_mark.column == 0 else end + 1))
            return self._end(node)
        flow = in_flow or bool(node.flow_style)
        last = node.start_mark.line
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = self._constructor.construct_object(key_node, deep=True)
                sub = path + (key,)
                self._end(key_node)
                if not flow:
                    self.slots[sub] = _Slot(sub, key_node.start_mark.line, key_node.start_mark.column)
                    self.child_col.setdefault(path, key_node.start_mark.column)
                self.last[sub] = max(key_node.start_mark.line, self._walk(value_node, sub, flow))
                last = max(last, self.last[sub])
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = path + (i,)
                if not flow:
                    line, col = self._dash(item)
                    self.slots[sub] = _Slot(sub, line, col)
                    self.child_col.setdefault(path, col)
                self.last[sub] = self._walk(item, sub, flow)
                last = max(last, self.last[sub])
        if node.flow_style:
            return self._end(node)
        return last

    def _dash(self, item):
        """Line and column of the `-` that introduces a block list item."""
        i = item.start_mark.index
        while i > 0 and self.text[i - 1] in " \t\r\n":
            i -= 1
        if i > 0 and self.text[i - 1] == "-":
            return self._pos(i - 1)
        return item.start_mark.line, item.start_mark.column

    def eol_comment(self, line_no, line):
        """(gap, '# text') for a comment after the content of `line`, else None."""
        i = self.ends.get(line_no, 0)
        while i < len(line):
            ch = line[i]
            if ch == "#" and (i == 0 or line[i - 1] in " \t"):
                gap = i - len(line[:i].rstrip())
                return gap, line[i:].rstrip()
            if ch in " \t:-,[]{}?|>+0123456789":
                i += 1
                continue
            m = re.match(r"[&*!]\S*", line[i:])  # anchor, alias or tag
            if not m:
                return None
            i += m.end()
        return None


class _Comments:
    """The comments of a recipe text and the keys they belong to."""

    def __init__(self, text):
        self.tree = tree = _Tree(text)
        lines = text.splitlines()
        self.header, self.trailer = [], []
        self.before, self.eol, self.tails = {}, {}, {}
        slots = list(tree.slots.values())
        slot_lines = sorted({s.line for s in slots})
        first = slot_lines[0] if slot_lines else len(lines)
        block = []  # consecutive (line, col, text) of comments / blank lines; text "" = blank
        for n, line in enumerate(lines + [None]):
            stripped = line.strip() if line is not None else None
            is_comment = line is not None and n not in tree.inside and (not stripped or stripped.startswith("#"))
            if n < first and line is not None and (is_comment or stripped == "---"):
                self.header.append(line.rstrip())
                continue
            if is_comment:
                block.append((n, len(line) - len(line.lstrip()), stripped))
                continue
            if block:
                self._place(block, slots, slot_lines)
                block = []
            # a line inside a multi-line scalar can only hold a comment after the scalar's end
            if line is not None and (n not in tree.inside or n in tree.ends):
                found = tree.eol_comment(n, line)
                if found:
                    self._place_eol(n, found, slots)

    def texts(self):
        """Every comment's text, sorted (formatting must keep exactly these)."""
        found = [t for t in self.header + self.trailer if t.lstrip().startswith("#")]
        for group in (self.before, self.tails):
            found += [t for block in group.values() for t in block if t]
        found += [c for _, c in self.eol.values()]
        return sorted(t.strip() for t in found)

    def _next_slot(self, line, slots, slot_lines):
        i = bisect.bisect_right(slot_lines, line)
        if i == len(slot_lines):
            return None
        at = slot_lines[i]
        return min((s for s in slots if s.line == at), key=lambda s: len(s.path))  # outermost

    def _place(self, block, slots, slot_lines):
        nxt = self._next_slot(block[-1][0], slots, slot_lines)
        ncol = nxt.col if nxt else 0
        # comments indented deeper than the next key close the block above it
        k = next((i for i, (_, col, t) in enumerate(block) if t and col <= ncol), len(block))
        while k > 0 and not block[k - 1][2]:
            k -= 1  # blank lines between a tail and the next key stay with the next key
        tail, rest = block[:k], block[k:]
        if tail:
            start, col = tail[0][0], next(c for _, c, t in tail if t)
            prev = [s for s in slots if s.line < start and s.col <= col]
            p = prev[-1] if prev else None
            if p is None or (nxt and nxt.path[:len(p.path)] == p.path):
                # between a key and its first entry: it introduces that entry, whatever its indentation
                tail, rest = [], block
            else:
                target = p.path[:-1] if p.col == col else p.path
                self.tails.setdefault(target, []).extend(t for _, _, t in tail)
        if rest:
            if nxt:
                self.before.setdefault(nxt.path, []).extend(t for _, _, t in rest)
            else:
                self.trailer.extend(t for _, _, t in rest)

    def _place_eol(self, n, found, slots):
        on_line = [s for s in slots if s.line == n]
        if on_line:
            self.eol[max(on_line, key=lambda s: len(s.path)).path] = found
            return
        # inside a multi-line value (e.g. a flow list spread over lines): keep it above its key
        owners = [s for s in slots if s.line < n <= self.tree.last.get(s.path, -1)]
        if owners:
            self.before.setdefault(max(owners, key=lambda s: len(s.path)).path, []).append(found[1])
        else:
            self.trailer.append(found[1])

    def weave(self, dumped):
        """Put the comments back into `dumped` (the reordered recipe without comments)."""
        out_tree = _Tree(dumped)
        lines = dumped.splitlines()
        above = {i: [] for i in range(len(lines) + 1)}
        below = {i: [] for i in range(len(lines))}
        trailer = list(self.trailer)
        line_col = {}  # column of the outermost entry starting on each line
        for slot in out_tree.slots.values():
            line_col[slot.line] = min(line_col.get(slot.line, slot.col), slot.col)
        for path in sorted(self.before, key=len):  # outer entries' comments above inner ones'
            slot = out_tree.slots.get(path)
            if slot is None:
                trailer += self.before[path]
                continue
            col = line_col[slot.line]
            above[slot.line] += [" " * col + t if t else "" for t in self.before[path]]
        for path in sorted(self.tails, key=len, reverse=True):  # inner blocks close first
            if path in out_tree.last or path == ():
                last = out_tree.last.get(path, len(lines) - 1)
                col = out_tree.child_col.get(path)
                if col is None:
                    col = out_tree.slots[path].col + 2 if path in out_tree.slots else 0
                below[last] += [" " * col + t if t else "" for t in self.tails[path]]
            else:
                trailer += self.tails[path]
        for path, (gap, comment) in self.eol.items():
            slot = out_tree.slots.get(path)
            if slot is None:
                trailer.append(comment)
                continue
            lines[slot.line] = lines[slot.line].rstrip() + " " * max(gap, 1) + comment
        result = list(self.header)
        for i, line in enumerate(lines):
            result += above[i]
            result.append(line)
            result += below[i]
        result += above[len(lines)] + trailer
        return _tidy(result)


def _tidy(lines):
    """No leading/trailing blank lines, no runs of blank lines, one final newline."""
    out = []
    for line in lines:
        line = line.rstrip()
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"
