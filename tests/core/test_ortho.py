"""Ortho-plane consensus on hand-made views, and the whole pipeline on a toy volume."""

from __future__ import annotations

import numpy as np
import pytest

from empanada_napari.core.errors import InputError
from empanada_napari.core.inference.engine import Engine2D
from empanada_napari.core.inference.ortho import ortho_consensus, segment_ortho
from empanada_napari.core.metrics import instance_scores

from ..core.test_stack import _balls

SHAPE = (12, 30, 40)


def _box(labels, value, z, y, x):
    labels[z[0] : z[1], y[0] : y[1], x[0] : x[1]] = value
    return labels


def test_agreeing_views_give_the_same_objects():
    a = _box(np.zeros(SHAPE, np.int32), 1, (1, 9), (2, 12), (2, 12))
    a = _box(a, 2, (2, 10), (15, 28), (20, 35))
    out = ortho_consensus([a, a.copy(), a.copy()])
    assert instance_scores(out, a)["f1@0.75"] == 1.0 and out.max() == 2


def test_object_in_one_view_only_is_dropped_unless_allowed():
    a = _box(np.zeros(SHAPE, np.int32), 1, (1, 9), (2, 12), (2, 12))
    b = a.copy()
    a = _box(a, 7, (2, 10), (15, 28), (20, 35))  # only view 0 sees it
    assert ortho_consensus([a, b, b]).max() == 1
    assert ortho_consensus([a, b, b], allow_one_view=True).max() == 2


def test_voxels_need_two_votes():
    a = _box(np.zeros(SHAPE, np.int32), 1, (1, 9), (2, 12), (2, 12))
    grown = _box(a.copy(), 3, (1, 9), (2, 12), (2, 16))  # one view extends it 4 px in x
    out = ortho_consensus([a, a, grown])
    assert (out[1:9, 2:12, 2:12] == 1).all() and (out[:, :, 12:16] == 0).all()
    lenient = ortho_consensus([a, a, grown], pixel_vote_thr=1)
    assert (lenient[1:9, 2:12, 12:16] > 0).all()


def test_weak_cluster_is_split_along_the_separating_view():
    # View 0 separates two touching objects; views 1 and 2 merged them into one.
    sep = _box(np.zeros(SHAPE, np.int32), 1, (1, 11), (5, 25), (2, 15))
    sep = _box(sep, 2, (1, 11), (5, 25), (15, 38))
    merged = (sep > 0).astype(np.int32) * 5
    out = ortho_consensus([sep, merged, merged], cluster_iou_thr=0.75)
    assert instance_scores(out, sep)["f1@0.75"] == 1.0 and len(np.unique(out)) == 3
    # With a permissive threshold the cluster counts as consistent and stays whole.
    assert ortho_consensus([sep, merged, merged], cluster_iou_thr=0.3).max() == 1


def test_bad_views():
    a = np.zeros(SHAPE, np.int32)
    with pytest.raises(InputError):
        ortho_consensus([a])
    with pytest.raises(InputError):
        ortho_consensus([a, a[:-1]])
    with pytest.raises(InputError):
        ortho_consensus([a, a, a], pixel_vote_thr=4)


def test_segment_ortho_recovers_balls(toy_model):
    image, truth = _balls(
        (36, 112, 120), [(17, 33.5, 33.5), (18, 33.5, 97.5), (17, 81.5, 57.5)], 15
    )
    seen = []
    labels = segment_ortho(
        image, Engine2D(toy_model), min_size=200, progress=lambda d, t: seen.append((d, t))
    )
    scores = instance_scores(labels, truth)
    assert scores["n_pred"] == 3 and scores["f1@0.75"] == 1.0 and scores["semantic_iou"] > 0.85
    assert seen[-1] == (36 + 112 + 120, 36 + 112 + 120)


def test_views_with_no_overlap_at_all():
    a = _box(np.zeros(SHAPE, np.int32), 1, (1, 9), (2, 12), (2, 12))
    b = _box(np.zeros(SHAPE, np.int32), 1, (1, 9), (15, 28), (20, 35))
    assert ortho_consensus([a, b, np.zeros(SHAPE, np.int32)]).max() == 0
    assert ortho_consensus([a, b, b], allow_one_view=True).max() == 2
