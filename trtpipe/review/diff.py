"""Semantic diff of two recipes: what changed, in which stage, and which stages will re-run.

Both sides are compared as a run sees them: schema defaults and each pass's parameter defaults
filled in, `precision: fp16` read as `{mode: fp16, ...defaults}`, sizes compared in bytes
(`2GiB` == `2048MiB`), `<name>` placeholders expanded, and paths equal when they are written
the same or resolve to the same file. So writing a default explicitly, reordering keys,
reformatting or editing comments is never a change (trtpipe/recipe_values.py).

Passes are aligned by name (difflib), so a pass whose parameters changed reads as changed, an
inserted one as added, and one that moved as moved, not as a removal plus an addition.

Stages and what re-runs (trtpipe/stage_order.py): `source -> passes[0] -> ... -> passes[n-1] ->
precision -> validate, build -> publish`. A change re-runs its stage and every stage downstream of it:

* `source.*`                       -> everything;
* a pass added/removed/moved/changed at passes[i] (enabled on either side) -> passes[i..],
  precision, validate, build, publish; a change to a pass disabled on both sides, or to a
  pass's `note`, re-runs nothing but the report;
* `precision`                      -> precision, validate, build, publish;
* `validate.*`                     -> validate, publish (and precision too when it calibrates or
  guards overflow on the validation data: int8/fp8 without `calibration`, fp16 with the guard);
* `build.*`                        -> build, publish (on a GPU machine validation also compares
  the engine, so it re-runs there too);
* `name`, `description`, `output.*` -> publish (file names and the report).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from trtpipe.recipe.schema import key_path, load_schema, schema_errors
from trtpipe.review.values import MISSING, flatten, lookup, normalized, pass_info, same_value, show, value_text

# downstream, stage_labels, compress, show: also imported from here by run, cache, explain and tests
from trtpipe.stages.order import compress, downstream, stage_labels


@dataclasses.dataclass
class Change:
    section: str        # top-level key: source, passes, precision, validate, build, output, name, ...
    kind: str           # changed, added, removed, moved, disabled, enabled
    subject: str        # key path (`build.workspace`) or pass (`passes[3] nms`)
    detail: str         # what changed, for a reviewer (`2GiB -> 4GiB`)
    start: object       # first stage it re-runs: "source", ("passes", i), "precision", ... or None
    path: tuple | None = None  # key path in the new recipe it is about (for annotations), if any

    @property
    def text(self) -> str:
        return f"{self.subject}: {self.detail}" if self.detail else self.subject


@dataclasses.dataclass
class Diff:
    changes: list
    reruns: list        # stage labels in run order
    reused: list
    n_passes: int       # passes in the new recipe
    warnings: list = dataclasses.field(default_factory=list)
    validate_enabled: bool = True

    @property
    def empty(self) -> bool:
        return not self.changes


# ------------------------------------------------------------------------------ the diff

SECTION_START = {"source": "source", "precision": "precision", "validate": "validate", "build": "build",
                 "output": "publish", "name": "publish", "description": "publish"}


def diff_recipes(old_raw: object, new_raw: object, old_dir: Path | None = None, new_dir: Path | None = None) -> Diff:
    """Diff two recipes as parsed from YAML (plain data). Directories resolve relative paths."""
    old_raw = old_raw if isinstance(old_raw, dict) else {}
    new_raw = new_raw if isinstance(new_raw, dict) else {}
    old, new = normalized(old_raw), normalized(new_raw)
    ctx = {"dirs": (old_dir, new_dir) if old_dir and new_dir else None}
    schema_order = list(load_schema("recipe.schema.json")["properties"])
    keys = sorted(set(old) | set(new), key=lambda k: (schema_order.index(k) if k in schema_order else 99, str(k)))
    changes = []
    for key in keys:
        if key == "passes":
            changes += _diff_passes(old["passes"], new["passes"], old_raw, new_raw)
            continue
        changes += _diff_section(key, old, new, old_raw, new_raw, ctx)
    _validation_feeds_precision(changes, new)
    for c in changes:  # validation compares at every profile corner: profiles are its input too
        if c.section == "build" and c.subject.startswith("build.profiles"):
            c.start = "profiles"
    warnings = [f"{label} recipe has {len(errs)} recipe error(s), e.g. {errs[0]}; "
                f"`python pipeline.py check` lists them" for label, errs in
                (("old", _errors(old_raw)), ("new", _errors(new_raw))) if errs]
    enabled = _validate_enabled(new)
    reruns, reused = _plan(changes, len(new["passes"]), enabled)
    return Diff(changes, reruns, reused, len(new["passes"]), warnings, enabled)


def _validate_enabled(data):
    v = data.get("validate")
    return v.get("enabled", True) is not False if isinstance(v, dict) else True


def _errors(raw):
    if not raw:
        return []
    out = [f"{key_path(p)}: {m}" for p, m in schema_errors(raw, load_schema("recipe.schema.json"))]
    for i, item in enumerate(raw.get("passes") or []):
        if isinstance(item, dict) and isinstance(item.get("pass"), str) and pass_info(item["pass"]) is None:
            out.append(f"passes[{i}].pass: unknown pass '{item['pass']}'")
    return out


def _diff_section(key, old, new, old_raw, new_raw, ctx):
    start = SECTION_START.get(key, "publish")
    a, b = old.get(key, MISSING), new.get(key, MISSING)
    if key == "precision" and isinstance(a, dict) and isinstance(b, dict) and a.get("mode") != b.get("mode"):
        # another mode: its options are new, not changed; name the mode and what is written
        return [Change(key, "changed", "precision", f"{_mode_text(a, old_raw)} -> {_mode_text(b, new_raw)}", start,
                       ("precision",))]
    fa = flatten(a, (key,)) if a is not MISSING else {}
    fb = flatten(b, (key,)) if b is not MISSING else {}
    out = []
    for path in sorted(set(fa) | set(fb), key=lambda p: _order(p, fa, fb)):
        va, vb = fa.get(path, MISSING), fb.get(path, MISSING)
        if va is MISSING and path not in fa:
            va = lookup(old, path)
        if vb is MISSING and path not in fb:
            vb = lookup(new, path)
        if same_value(path, va, vb, ctx):
            continue
        if {} in (va, vb) and (isinstance(va, dict) and va or isinstance(vb, dict) and vb):
            continue  # {} on one side, keys on the other: the keys are listed one by one
        what = f"{value_text(path, va, old_raw)} -> {value_text(path, vb, new_raw)}"
        if path[:2] == ("validate", "enabled") and vb is False:
            what += " (validation will be skipped)"
        out.append(Change(key, "changed", key_path(path), what, start, path))
    return out


def _mode_text(cfg, raw):
    written = raw.get("precision", MISSING)
    if written is MISSING:
        return f"{cfg.get('mode')} (default)"
    if isinstance(written, dict):
        options = {k: v for k, v in written.items() if k != "mode"}
        return f"{cfg.get('mode')}" + (f" with {show(options)}" if options else "")
    return show(written)


def _order(path, fa, fb):
    seq = list(fb) + [p for p in fa if p not in fb]
    return seq.index(path)


def _validation_feeds_precision(changes, new):
    """The precision stage calibrates / guards overflow on the validation data when it has no
    data of its own: then a change of validate.data changes the precision stage's output too."""
    p = new.get("precision") if isinstance(new.get("precision"), dict) else {}
    mode = p.get("mode")
    uses = (mode in ("int8", "fp8") and not p.get("calibration")) or (mode == "fp16" and p.get("overflow_guard", True))
    if not uses:
        return
    for c in changes:
        if c.section == "validate" and c.subject.startswith("validate.data"):
            c.start = "precision"
            c.detail += f" (precision {mode} uses the validation data)"


def _diff_passes(old, new, old_raw, new_raw):
    raw_old = old_raw.get("passes") if isinstance(old_raw.get("passes"), list) else []
    raw_new = new_raw.get("passes") if isinstance(new_raw.get("passes"), list) else []
    matcher = difflib.SequenceMatcher(a=[str(p.get("pass")) for p in old], b=[str(p.get("pass")) for p in new],
                                      autojunk=False)
    pairs, removed, added = [], [], []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pairs += list(zip(range(i1, i2), range(j1, j2)))
        else:
            removed += list(range(i1, i2))
            added += list(range(j1, j2))
    moved = []
    for i in list(removed):  # a pass removed here and added there with the same name has moved
        j = next((j for j in added if new[j].get("pass") == old[i].get("pass")), None)
        if j is not None:
            removed.remove(i)
            added.remove(j)
            moved.append((i, j))
    # new index where old index i's successor now sits (where a removed pass's output was consumed)
    after = {i: j for i, j in pairs + moved}

    def where_removed(i):
        later = [after[k] for k in range(i + 1, len(old)) if k in after]
        return min(later) if later else len(new)

    events = []  # (sort key, Change)
    for i, j in pairs + moved:
        a, b = old[i], new[j]
        label = f"passes[{j}] {b.get('pass')}"
        live = a.get("enabled", True) or b.get("enabled", True)
        if (i, j) in moved:
            # the first pass whose input differs: the moved one, or the one now where it was
            first = min(j, where_removed(i))
            events.append(((j, 0), Change("passes", "moved", label, f"from passes[{i}], {_neighbours(new, j)}",
                                          ("passes", first) if live and first < len(new) else
                                          ("precision" if live else None), ("passes", j))))
        for path, va, vb in _item_changes(a, b):
            raw_a = raw_old[i] if i < len(raw_old) and isinstance(raw_old[i], dict) else {}
            raw_b = raw_new[j] if j < len(raw_new) and isinstance(raw_new[j], dict) else {}
            if path == ("enabled",):
                kind = "enabled" if vb else "disabled"
                events.append(((j, 1), Change("passes", kind, label, f"enabled: {show(va)} -> {show(vb)}",
                                              ("passes", j), ("passes", j, "enabled"))))
                continue
            text = f"{key_path(path)}: {value_text(path, va, raw_a)} -> {value_text(path, vb, raw_b)}"
            start = ("passes", j) if live and path[0] != "note" else None
            if path[0] == "note":
                text += " (documentation only)"
            elif not live:
                text += " (pass disabled: nothing re-runs)"
            events.append(((j, 1), Change("passes", "changed", label, text, start, ("passes", j) + tuple(path))))
    for i in removed:
        a, j = old[i], where_removed(i)
        start = (("passes", j) if j < len(new) else "precision") if a.get("enabled", True) else None
        params = {k: v for k, v in (raw_old[i].get("params") or {}).items()} if i < len(raw_old) and \
            isinstance(raw_old[i], dict) and isinstance(raw_old[i].get("params"), dict) else {}
        detail = _neighbours(old, i).replace("now ", "was ") + (f", had params {show(params)}" if params else "")
        detail += "" if a.get("enabled", True) else " (it was disabled)"
        events.append(((j, -1), Change("passes", "removed", f"passes[{i}] {a.get('pass')}", detail, start,
                                       ("passes", j) if j < len(new) else ("passes",))))
    for j in added:
        b = new[j]
        params = raw_new[j].get("params") if j < len(raw_new) and isinstance(raw_new[j], dict) else None
        detail = (_neighbours(new, j) + (f", params {show(params)}" if params else ", default params")
                  + ("" if b.get("enabled", True) else " (disabled)"))
        events.append(((j, 0), Change("passes", "added", f"passes[{j}] {b.get('pass')}", detail,
                                      ("passes", j) if b.get("enabled", True) else None, ("passes", j))))
    return [c for _, c in sorted(events, key=lambda e: e[0])]


def _neighbours(passes, j):
    before = passes[j - 1].get("pass") if j > 0 else None
    after = passes[j + 1].get("pass") if j + 1 < len(passes) else None
    if before and after:
        return f"now between {before} and {after}"
    if before:
        return f"now last, after {before}"
    if after:
        return f"now first, before {after}"
    return "the only pass"


def _item_changes(a, b):
    fa = flatten({k: v for k, v in a.items() if k != "pass"})
    fb = flatten({k: v for k, v in b.items() if k != "pass"})
    order = list(fb) + [p for p in fa if p not in fb]
    return [(p, fa.get(p, MISSING), fb.get(p, MISSING)) for p in order if fa.get(p, MISSING) != fb.get(p, MISSING)]


# ------------------------------------------------------------------------------ stage plan and rendering

def _plan(changes, n, enabled):
    rerun = set()
    for c in changes:
        if c.start is not None:
            rerun |= set(downstream(c.start, n, enabled))
    if changes and not rerun:
        rerun = {"publish"}  # documentation-only changes still rewrite the report
    order = stage_labels(n)
    reruns = [s for s in order if s in rerun]
    reused = [s for s in order if s not in rerun and (enabled or s != "validate")]
    return reruns, reused


def render(diff: Diff, old_label: str, new_label: str) -> str:
    lines = [f"recipe diff: {old_label} -> {new_label}"]
    lines += [f"warning: {w}" for w in diff.warnings]
    if diff.empty:
        lines.append("no semantic changes (comments, key order, formatting or defaults written out only); "
                     "nothing re-runs")
        return "\n".join(lines)
    section = None
    for c in diff.changes:
        if c.section != section:
            section = c.section
            lines.append(f"{section}:")
        lines.append(f"  {c.kind:<8} {c.text}")
    lines.append("why stages re-run:")
    groups = {}  # (what, start) -> subjects; passes one line each, other sections grouped
    for c in diff.changes:
        if c.start is None:
            continue
        key = (c.subject if c.section == "passes" else c.section, c.kind if c.section == "passes" else "changed",
               str(c.start))
        groups.setdefault(key, (c, []))[1].append(c.subject)
    for (_, kind, _), (c, subjects) in groups.items():
        stages = ", ".join(compress(downstream(c.start, diff.n_passes, diff.validate_enabled)))
        lines.append(f"  {', '.join(dict.fromkeys(subjects))} {kind} -> re-runs {stages}")
    if not groups:
        lines.append("  documentation only (pass notes, disabled passes) -> re-runs publish (the report)")
    lines.append(f"stages that re-run: {', '.join(compress(diff.reruns)) or 'nothing'}")
    lines.append(f"stages reused (unchanged inputs): {', '.join(compress(diff.reused)) or 'none'}")
    return "\n".join(lines)


def render_whole(raw: object, label: str, state: str) -> str:
    """A recipe that exists on one side only: what it says, as written (`state`: new / deleted)."""
    lines = [f"recipe diff: {label}", state]
    order = list(load_schema("recipe.schema.json")["properties"])
    raw = raw if isinstance(raw, dict) else {}
    for key in sorted(raw, key=lambda k: order.index(k) if k in order else len(order)):
        if key == "passes" and isinstance(raw[key], list):
            lines.append("  passes:")
            for i, item in enumerate(raw[key]):
                item = item if isinstance(item, dict) else {"pass": item}
                extra = {k: v for k, v in item.items() if k != "pass"}
                lines.append(f"    passes[{i}] {item.get('pass')}" + (f" {show(extra)}" if extra else ""))
        else:
            lines.append(f"  {key}: {show(raw[key])}")
    return "\n".join(lines)


def reruns_of(diff: Diff, change: Change) -> list[str]:
    """The stages `change` re-runs, compressed (`passes[3..5]`), [] for documentation-only changes."""
    if change.start is None:
        return []
    return compress(downstream(change.start, diff.n_passes, diff.validate_enabled))


def as_json(diff: Diff, old_label: str, new_label: str) -> dict:
    """The diff as data (`diff --format json`): each change with its section, kind, subject,
    detail, key path in the new recipe and the stages it re-runs; then the stage plan."""
    return {"old": old_label, "new": new_label, "warnings": list(diff.warnings),
            "changes": [{"section": c.section, "kind": c.kind, "subject": c.subject, "detail": c.detail,
                         "key": key_path(c.path) if c.path else None, "reruns": reruns_of(diff, c)}
                        for c in diff.changes],
            "reruns": compress(diff.reruns), "reused": compress(diff.reused)}


def annotations(diff: Diff, new_file: str, locate: object) -> list[tuple[str, int | None, int | None, str, str]]:
    """(file, line, col, title, message) per change, placed at its key in the new recipe
    (`locate(path)` -> (line, col) or None), for `diff --format github` notices."""
    out = []
    for c in diff.changes:
        where = locate(c.path) if c.path else None
        stages = reruns_of(diff, c)
        title = f"recipe diff: re-runs {', '.join(stages)}" if stages else "recipe diff: nothing re-runs"
        out.append((new_file, *(where or (None, None)), title, f"{c.kind} {c.text}"))
    return out
