"""What correcting a patch cost the user: the objects changed from proposal to correction.

The loop's currency is the user's corrections, not CPU time (docs/design.md s.5). A picked
patch comes prefilled with the model's proposal; the saved mask is the user's correction.
Matched at IoU >= 0.5 (optimal assignment, as the metrics match), every object falls in one
class:

* ``kept``: matched and identical (the user did nothing to it);
* ``redrawn``: matched but with a changed outline;
* ``merged``: a corrected object that holds half or more of each of two or more proposed
  objects (its own match, if any, and unmatched ones): the user joined them, one action;
* ``split``: a proposed object that holds two or more corrected objects the same way;
* ``added``: any other corrected object without a match (painted or clicked in);
* ``deleted``: any other proposed object without a match.

``changed`` = added + deleted + redrawn + merged + split: the objects the user had to touch.
It is counted against neither side alone (added objects are not in the proposal, deleted ones
are not in the correction), so :func:`describe_effort` says it as a number of corrections
beside the proposal's ``proposed`` objects, the ``kept`` ones and the corrected ``objects``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

EFFORT_KEYS = ("added", "deleted", "redrawn", "merged", "split")


def _ids(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    return ids[ids != 0]


def _inside(a: np.ndarray, b: np.ndarray) -> dict[int, dict[int, float]]:
    """For every object of ``a``: the fraction of it inside each object of ``b``."""
    fg = (a > 0) & (b > 0)
    pairs, counts = np.unique(np.stack([a[fg], b[fg]]), axis=1, return_counts=True)
    areas = dict(zip(*np.unique(a[a > 0], return_counts=True), strict=True))
    out: dict[int, dict[int, float]] = {}
    for (i, j), n in zip(pairs.T.tolist(), counts.tolist(), strict=True):
        out.setdefault(int(i), {})[int(j)] = n / areas[i]
    return out


def correction_effort(proposal: np.ndarray, correction: np.ndarray) -> dict[str, int]:
    """Objects the user changed to turn ``proposal`` into ``correction`` (2D or 3D instance
    labels of one patch; see the module docstring). Returns counts per class plus
    ``kept``, ``changed``, ``proposed`` (objects in the proposal) and ``objects`` (in the
    correction)."""
    from ..metrics import match_instances

    proposal, correction = np.asarray(proposal), np.asarray(correction)
    if proposal.shape != correction.shape:
        raise ValueError(f"proposal {proposal.shape} and correction {correction.shape} differ")
    p = proposal.astype(np.int64)
    c = correction.astype(np.int64)
    match = match_instances(p, c)
    partner_of_c = dict(zip(match.gt_ids.tolist(), match.pred_ids.tolist(), strict=True))
    partner_of_p = {v: k for k, v in partner_of_c.items()}
    free_p = sorted(set(_ids(p).tolist()) - set(partner_of_p))
    free_c = sorted(set(_ids(c).tolist()) - set(partner_of_c))
    p_in_c, c_in_p = _inside(p, c), _inside(c, p)
    # A merge: one corrected object holds two or more proposed ones (its match, if it has
    # one, and unmatched ones, each half or more inside it). A split, the other way round.
    merged_c, merged_p = set(), set()
    for j in _ids(c).tolist():
        parts = [i for i in free_p if p_in_c.get(i, {}).get(j, 0) >= 0.5]
        if parts and (len(parts) >= 2 or j in partner_of_c):
            merged_c.add(j)
            merged_p.update(parts + ([partner_of_c[j]] if j in partner_of_c else []))
    split_p, split_c = set(), set()
    for i in _ids(p).tolist():
        if i in merged_p:
            continue
        parts = [j for j in free_c if j not in merged_c and c_in_p.get(j, {}).get(i, 0) >= 0.5]
        if parts and (len(parts) >= 2 or i in partner_of_p):
            split_p.add(i)
            split_c.update(parts + ([partner_of_p[i]] if i in partner_of_p else []))
    kept = redrawn = 0
    for ci, pi in partner_of_c.items():
        if ci in merged_c or pi in split_p:
            continue
        same = np.array_equal(p == pi, c == ci)
        kept += same
        redrawn += not same
    out = {
        "added": len(set(free_c) - merged_c - split_c),
        "deleted": len(set(free_p) - merged_p - split_p),
        "redrawn": redrawn,
        "merged": len(merged_c),
        "split": len(split_p),
    }
    out["kept"] = int(kept)
    out["changed"] = sum(out[k] for k in EFFORT_KEYS)
    out["proposed"] = len(_ids(p))
    out["objects"] = len(_ids(c))
    return out


def total_effort(rows: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The per-patch counts of :func:`correction_effort` summed (missing keys count 0)."""
    keys = (*EFFORT_KEYS, "kept", "changed", "proposed", "objects")
    total = dict.fromkeys(keys, 0)
    for row in rows:
        for k in keys:
            total[k] += int(row.get(k) or 0)
    return total


def describe_effort(effort: Mapping[str, int]) -> str:
    """One sentence on :func:`correction_effort` (or :func:`total_effort`) counts, e.g. "27
    objects corrected (13 added, 8 deleted, 6 redrawn, 0 merged, 0 split); of the model's
    21 objects 7 were kept as proposed; 19 objects after correcting."."""
    parts = ", ".join(f"{int(effort.get(k) or 0)} {k}" for k in EFFORT_KEYS)
    text = f"{int(effort.get('changed') or 0)} objects corrected ({parts})"
    if "proposed" in effort:
        text += (
            f"; of the model's {int(effort['proposed'])} objects {int(effort.get('kept') or 0)}"
            " were kept as proposed"
        )
    return f"{text}; {int(effort.get('objects') or 0)} objects after correcting."
