"""The comments of a YAML text and the keys they belong to, to put back after a re-dump.

fmt.py takes every comment out of a recipe, reorders its keys and dumps it without comments;
`Comments(text)` remembers which key each comment belongs to and `weave(dumped)` puts each
one back next to its key:

* full-line comments (and blank lines) belong to the key or list item that follows them and are
  re-indented to it; comments before the first key are the file header (e.g. the
  `# yaml-language-server: $schema=...` line) and stay at the top;
* a comment indented deeper than the key that follows closes the block above it (typically a
  commented-out last entry) and stays at the end of that block, unless it sits between a key and
  its first entry, which it then introduces;
* an end-of-line comment stays on the line of its key, with its original spacing.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

import yaml

from trtpipe.recipe.yamlmarks import RecipeLoader


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
        node = yaml.compose(self.text, Loader=RecipeLoader)
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
                key = key_node.value  # keys as the recipe loader makes them: the text as written
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


class Comments:
    """The comments of a recipe text and the keys they belong to."""

    def __init__(self, text):
        self.tree = tree = _Tree(text)
        lines = text.splitlines()
        self.header, self.trailer = [], []
        self.before, self.eol, self.tails = {}, {}, {}
        slots = list(tree.slots.values())  # document order: lines ascending
        self._by_line = {}  # line -> slots starting on it (keeps hostile files of many keys linear)
        for slot in slots:
            self._by_line.setdefault(slot.line, []).append(slot)
        self._slot_starts = [s.line for s in slots]
        slot_lines = sorted(self._by_line)
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

    def texts(self) -> list[str]:
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
        return min(self._by_line[at], key=lambda s: len(s.path))  # outermost

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
            before = bisect.bisect_left(self._slot_starts, start)  # slots[:before] start above the tail
            p = next((slots[i] for i in range(before - 1, -1, -1) if slots[i].col <= col), None)
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
        on_line = self._by_line.get(n)
        if on_line:
            self.eol[max(on_line, key=lambda s: len(s.path)).path] = found
            return
        # inside a multi-line value (e.g. a flow list spread over lines): keep it above its key
        owners = [s for s in slots if s.line < n <= self.tree.last.get(s.path, -1)]
        if owners:
            self.before.setdefault(max(owners, key=lambda s: len(s.path)).path, []).append(found[1])
        else:
            self.trailer.append(found[1])

    def weave(self, dumped: str) -> str:
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
