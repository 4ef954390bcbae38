"""Effort counted from proposal to correction (issue 37): each kind of change once."""

from __future__ import annotations

import numpy as np
import tifffile

from empanada_napari.core.training.effort import (
    correction_effort,
    describe_effort,
    total_effort,
)

from ...conftest import DATA


def _crop() -> np.ndarray:
    """The 21 mitochondrion profiles of a real ssTEM crop (fafb), one id each."""
    from skimage.measure import label

    binary = tifffile.imread(DATA / "fafb_crop_mito_binary.tif")[0]
    return label(binary > 0, connectivity=1).astype(np.int32)


def test_nothing_changed_is_no_effort():
    truth = _crop()
    e = correction_effort(truth, truth)
    assert e["changed"] == 0 and e["kept"] == e["objects"] == len(np.unique(truth)) - 1


def test_each_kind_of_change_counts_once():
    truth = _crop()
    ids = [int(i) for i in np.unique(truth) if i]
    assert len(ids) >= 5
    a, b, c, d, e = ids[:5]
    proposal = truth.copy()
    proposal[truth == a] = 0  # the model missed a: the user adds it
    extra = np.zeros_like(truth)
    extra[2:12, 2:12] = 1
    proposal[(extra > 0) & (truth == 0)] = 900  # a false object: the user deletes it
    bmask = truth == b  # the model cut b in two: the user merges them
    cols = np.flatnonzero(bmask.any(0))
    half = bmask & (np.arange(truth.shape[1])[None, :] >= cols[len(cols) // 2])
    proposal[half] = 901
    proposal[truth == d] = c  # the model joined c and d: the user splits them
    rows = np.flatnonzero((truth == e).any(1))
    proposal[(truth == e) & (np.arange(truth.shape[0])[:, None] > rows[len(rows) // 2])] = 0
    effort = correction_effort(proposal, truth)  # e's lower half was missing: redrawn
    assert effort["added"] == 1 and effort["deleted"] == 1, effort
    assert effort["merged"] == 1 and effort["split"] == 1 and effort["redrawn"] == 1, effort
    assert effort["changed"] == 5
    assert total_effort([effort, effort])["changed"] == 10


def test_the_sentence_counts_corrections_against_the_proposal():
    # Was: "You changed 27 of 19 objects": deleted objects counted against the objects
    # left after correcting. Each number now says what it counts.
    truth = _crop()
    ids = [int(i) for i in np.unique(truth) if i]
    proposal = truth.copy()
    for i in ids[:3]:
        proposal[truth == i] = 0  # three missed: added by the user
    extra = np.zeros_like(truth)
    extra[2:12, 2:12] = 1
    proposal[(extra > 0) & (truth == 0)] = 900  # one false object: deleted
    effort = correction_effort(proposal, truth)
    assert effort["proposed"] == len(ids) - 3 + 1 and effort["objects"] == len(ids)
    text = describe_effort(total_effort([effort, effort]))
    n = len(ids)
    assert text == (
        f"8 objects corrected (6 added, 2 deleted, 0 redrawn, 0 merged, 0 split); of the "
        f"model's {2 * (n - 2)} objects {2 * (n - 3)} were kept as proposed; {2 * n} objects "
        "after correcting."
    )
