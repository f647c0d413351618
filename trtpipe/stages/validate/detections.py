"""Detection-aware comparison of NMS outputs.

After `nms: split` the engine ends at raw boxes/scores and a post-processing model does NMS. Its
padded outputs (boxes [B, K, 4], scores [B, K], classes [B, K], num_detections [B]) cannot be
compared element-wise with the source's: equal detection sets may come out in another order, and
a box whose score moved by 1e-6 may swap places with its neighbour. So detections are matched by
IoU (same class first), then matched pairs are compared on score and class, and what is left
unmatched on either side is counted.

Unmatched detections that sit at a cut-off are "borderline", not failures: those scoring within
`score_atol` of `min_score`, and, when the other side is full (K detections), those scoring no
higher than the other side's lowest kept score plus `score_atol` (a top-K tie that fell off).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from trtpipe.errors import ValidationError
from trtpipe.stages.validate.wording import BORDERLINE  # noqa: F401 -- used and re-exported

ROLES = ("boxes", "scores", "classes", "num_detections")
_HINTS = {"boxes": "box", "scores": "score", "classes": "class", "num_detections": "num"}


def detection_roles(names: Collection[str], cfg: dict) -> dict[str, str]:
    """role -> output name among `names` (source output names): from the recipe, else by name."""
    roles = {}
    for role in ROLES:
        if cfg.get(role):
            if cfg[role] not in names:
                raise ValidationError(f"validate.detections.{role}: '{cfg[role]}' is not among the "
                                      f"post-processing outputs {list(names)}")
            roles[role] = cfg[role]
            continue
        hits = [n for n in names if _HINTS[role] in n.lower() and n not in roles.values()]
        if len(hits) == 1:
            roles[role] = hits[0]
        elif len(hits) > 1 or role in ("boxes", "scores"):
            raise ValidationError(f"cannot tell which post-processing output holds the {role} "
                                  f"(candidates: {hits or list(names)}); set validate.detections.{role}")
    return roles


def _per_image(arrays, roles, min_score):
    """List (one per batch item) of (boxes [n,4], scores [n], classes [n] or None, capacity K)."""
    boxes = np.asarray(arrays[roles["boxes"]], dtype=np.float64)
    boxes = boxes.reshape((-1,) + boxes.shape[-2:])  # [K, 4] -> [1, K, 4]
    scores = np.asarray(arrays[roles["scores"]], dtype=np.float64).reshape(boxes.shape[:2])
    classes = (np.asarray(arrays[roles["classes"]]).reshape(boxes.shape[:2])
               if "classes" in roles else None)
    nums = (np.asarray(arrays[roles["num_detections"]]).reshape(boxes.shape[0], -1)[:, 0].astype(int)
            if "num_detections" in roles else None)
    out = []
    for b in range(boxes.shape[0]):
        keep = scores[b] > min_score
        if nums is not None:
            keep &= np.arange(boxes.shape[1]) < nums[b]
        out.append((boxes[b][keep], scores[b][keep], None if classes is None else classes[b][keep],
                    boxes.shape[1]))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of corner boxes (either (y1,x1,y2,x2) or (x1,y1,x2,y2))."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    # Degenerate (zero-area) boxes, common on random data, are the same box only when identical.
    same = np.all(np.abs(a[:, None, :] - b[None, :, :]) <= 1e-6, axis=-1)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), same.astype(np.float64))


def match(ref: tuple[np.ndarray, np.ndarray, np.ndarray | None, int],
          cand: tuple[np.ndarray, np.ndarray, np.ndarray | None, int],
          iou_threshold: float) -> list[tuple[int, int, float]]:
    """Greedy matching, highest reference score first: among unmatched candidates with IoU >= the
    threshold prefer the same class, then the highest IoU. Returns [(ref_i, cand_j, iou)].
    `ref` / `cand`: one image's (boxes [n, 4], scores [n], classes [n] or None, capacity K)."""
    rboxes, rscores, rclasses, _ = ref
    cboxes, _, cclasses, _ = cand
    overlaps = iou(rboxes, cboxes)
    taken, pairs = set(), []
    for i in np.argsort(-rscores, kind="stable"):
        best = None
        for j in np.flatnonzero(overlaps[i] >= iou_threshold):
            if j in taken:
                continue
            same = rclasses is None or rclasses[i] == cclasses[j]
            key = (same, overlaps[i, j])
            if best is None or key > best[0]:
                best = (key, j)
        if best is not None:
            taken.add(best[1])
            pairs.append((int(i), int(best[1]), float(overlaps[i, best[1]])))
    return pairs


def _borderline(scores, other, min_score, score_atol):
    """Which unmatched scores sit at a cut-off (min_score, or the other side's full top-K)."""
    _, oscores, _, capacity = other
    edge = scores < min_score + score_atol
    if len(oscores) >= capacity and len(oscores):
        edge |= scores <= oscores.min() + score_atol
    return edge


def compare_detections(ref_iterations: list[dict[str, np.ndarray]], cand_iterations: list[dict[str, np.ndarray]],
                       roles: dict[str, str], cfg: dict) -> dict[str, Any]:
    """Compare per-iteration dicts {output name: array} (reference = source). Returns a JSON-able
    summary with "status" and "reason"."""
    thr, score_atol = cfg["iou_threshold"], cfg["score_atol"]
    min_score, max_unmatched = cfg.get("min_score", 0.0), cfg.get("max_unmatched", 0)
    totals = dict(images=0, source_detections=0, final_detections=0, matched=0, unmatched_source=0,
                  unmatched_final=0, borderline=0, borderline_source=0, borderline_final=0, class_mismatches=0)
    score_diffs, ious, box_diffs = [], [], []
    for ref_arrays, cand_arrays in zip(ref_iterations, cand_iterations):
        for ref, cand in zip(_per_image(ref_arrays, roles, min_score), _per_image(cand_arrays, roles, min_score)):
            pairs = match(ref, cand, thr)
            ri = np.array([p[0] for p in pairs], dtype=int)
            ci = np.array([p[1] for p in pairs], dtype=int)
            score_diffs += list(np.abs(ref[1][ri] - cand[1][ci]))
            box_diffs += list(np.abs(ref[0][ri] - cand[0][ci]).max(axis=-1)) if len(pairs) else []
            ious += [p[2] for p in pairs]
            if ref[2] is not None:
                totals["class_mismatches"] += int(np.sum(ref[2][ri] != cand[2][ci]))
            for side, name, other, used in ((ref, "source", cand, ri), (cand, "final", ref, ci)):
                left = np.setdiff1d(np.arange(len(side[1])), used)
                edge = _borderline(side[1][left], other, min_score, score_atol)
                totals[f"unmatched_{name}"] += int(np.sum(~edge))
                totals[f"borderline_{name}"] += int(np.sum(edge))
                totals["borderline"] += int(np.sum(edge))
            totals["images"] += 1
            totals["source_detections"] += len(ref[1])
            totals["final_detections"] += len(cand[1])
            totals["matched"] += len(pairs)
    summary = {"roles": roles, "iou_threshold": thr, "score_atol": score_atol, "min_score": min_score,
               "max_unmatched": max_unmatched, **totals,
               "max_score_diff": float(max(score_diffs, default=0.0)),
               "min_iou": float(min(ious, default=1.0)), "max_box_diff": float(max(box_diffs, default=0.0))}
    problems = []
    unmatched = totals["unmatched_source"] + totals["unmatched_final"]
    if unmatched > max_unmatched:
        problems.append(f"{totals['unmatched_source']} source detection(s) have no match in the final model's "
                        f"and {totals['unmatched_final']} final detection(s) have none in the source's "
                        f"(IoU >= {thr}; allowed unmatched: {max_unmatched})")
    if totals["class_mismatches"]:
        problems.append(f"{totals['class_mismatches']} matched detection(s) changed class")
    if summary["max_score_diff"] > score_atol:
        problems.append(f"max score difference {summary['max_score_diff']:.4g} > score_atol {score_atol:g}")
    summary["status"] = "failed" if problems else "passed"
    summary["reason"] = "; ".join(problems) or None
    return summary


# What "borderline" means, as the table and report.md say it.


def counts_line(summary: dict[str, Any]) -> str:
    """The detection counts so that they add up, per side: detections = matched + unmatched
    (missing from the final model / extra in it) + borderline."""
    s = summary
    return (f"source {s['source_detections']} = {s['matched']} matched + {s['unmatched_source']} missing "
            f"+ {s.get('borderline_source', 0)} borderline; final {s['final_detections']} = {s['matched']} matched "
            f"+ {s['unmatched_final']} extra + {s.get('borderline_final', 0)} borderline "
            f"({s['images']} image(s); min IoU {s['min_iou']:.4g}, max score diff {s['max_score_diff']:.4g})")
