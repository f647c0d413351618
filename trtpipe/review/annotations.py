"""Review results as text, JSON or GitHub workflow annotations (`check`/`diff --format`).

Every message of the review commands starts with its place, `file:line:col: ...` (the recipe
loader's marks). `parse` splits a message back into (file, line, col, text), so one result
prints as

* text: the message as the run prints it;
* json: {"severity", "file", "line", "col", "message"} objects (scripts, bots);
* github: a workflow command, `::error file=F,line=L,col=C,title=T::message`, which GitHub
  Actions shows inline in a pull request's diff (docs.github.com, "Workflow commands for GitHub
  Actions": `error`, `warning` and `notice` take `file`, `line`, `col`, `title`; in values `%`,
  CR and LF are escaped as %25, %0D, %0A, and in properties also `:` and `,` as %3A and %2C).
"""

from __future__ import annotations

import dataclasses
import re

FORMATS = ("text", "json", "github")
SEVERITIES = ("error", "warning", "notice")

_LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<text>.*)$", re.S)


@dataclasses.dataclass
class Annotation:
    """One located message. `line`/`col` are 1-based, None when the message has no place in the
    file (then it belongs to the file as a whole)."""
    severity: str
    file: str
    line: int | None
    col: int | None
    message: str

    @property
    def location(self) -> str:
        """`file:line:col`, `file:line` or `file`."""
        return ":".join([self.file] + [str(x) for x in (self.line, self.col) if x is not None])

    def as_text(self) -> str:
        """The message as the commands print it: `file:line:col: message`."""
        return f"{self.location}: {self.message}"

    def as_dict(self) -> dict:
        """The JSON form: severity, file, line, col, message."""
        return dataclasses.asdict(self)

    def as_github(self, title: str | None = None) -> str:
        """The GitHub Actions workflow command for this message (one line)."""
        props = [f"file={_prop(self.file)}"]
        if self.line is not None:
            props.append(f"line={self.line}")
        if self.col is not None:
            props.append(f"col={self.col}")
        if title:
            props.append(f"title={_prop(title)}")
        return f"::{self.severity} {','.join(props)}::{_data(self.message)}"


def _data(text):
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(text):
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def parse(text: str, severity: str, default_file: str, file_prefix: str | None = None) -> list[Annotation]:
    """Split a review message into its located messages.

    A message may hold several (the recipe loader lists every error of a recipe, one per line,
    under a `FILE: N recipe errors:` header): each line that starts with `file:line:col: ` begins
    one; indented continuation lines (`  hint: ...`) stay with the message before them; a header
    is dropped when located lines follow it.

    Args:
        text: the message as printed.
        severity: "error", "warning" or "notice".
        default_file: the file an unlocated message belongs to (the recipe).
        file_prefix: the file name messages start with, when known (read literally, so a file
            name holding `:12:3: ` does not confuse the split).

    Returns:
        The messages, in order.
    """
    out, pending = [], []
    for line in text.splitlines() or [""]:
        found = _located(line.strip(), file_prefix)
        if found:
            out.append(Annotation(severity, *found))
        elif out and line[:1].isspace():
            out[-1].message += "\n" + line
        else:
            pending.append(line)
    header = "\n".join(pending).strip()
    if header and not out:
        return [Annotation(severity, default_file, None, None, _unprefixed(header, default_file))]
    if header and not re.search(r": \d+ recipe errors?:$", header):
        out.insert(0, Annotation(severity, default_file, None, None, _unprefixed(header, default_file)))
    return out


def _located(line, prefix):
    if prefix and line.startswith(prefix + ":"):
        m = re.match(r"^:(\d+):(\d+): (.*)$", line[len(prefix):], re.S)
        if m:
            return prefix, int(m.group(1)), int(m.group(2)), m.group(3)
    m = _LOCATED.match(line)
    if m:
        return m.group("file"), int(m.group("line")), int(m.group("col")), m.group("text")
    return None


def _unprefixed(text, file):
    return text[len(file) + 2:] if text.startswith(file + ": ") else text
