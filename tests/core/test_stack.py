"""3D stack inference: slice linking, filters, and the whole pipeline on a toy volume."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from empanada_napari.core.errors import Cancelled, InputError
from empanada_napari.core.inference.engine import Engine2D
from empanada_napari.core.inference.stack import (
    filter_labelled,
    filter_objects,
    link_slices,
    matched_pairs,
    segment_stack_3d,
)
from empanada_napari.core.metrics import instance_scores


def _balls(shape, centres, radius):
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    image = np.full(shape, 200, np.uint8)
    truth = np.zeros(shape, np.int32)
    for i, (cz, cy, cx) in enumerate(centres, start=1):
        inside = (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        image[inside] = 40
        truth[inside] = i
    return image, truth


@pytest.fixture(scope="module")
def balls():
    return _balls((36, 112, 120), [(17, 33.5, 33.5), (18, 33.5, 97.5), (17, 81.5, 57.5)], 15)


def test_link_slices_follows_moving_objects_and_keeps_neighbours_apart():
    s = np.zeros((4, 20, 30), np.int32)
    for z in range(4):
        s[z, 2:8, 2 + z : 8 + z] = 5 + z  # drifts by one pixel per slice, ids change
        s[z, 12:18, 20:26] = 1  # a second object, same 2D id every slice
    out = link_slices(s)
    assert len(np.unique(out[:, 2:8, :15][out[:, 2:8, :15] > 0])) == 1
    assert len(np.unique(out[out > 0])) == 2


def test_link_slices_low_iou_does_not_link_but_ioa_joins_a_branch():
    s = np.zeros((3, 20, 40), np.int32)
    s[0, 2:10, 2:10] = 1
    s[1, 2:10, 12:20] = 1  # no overlap with slice 0: a new object
    s[2, 2:10, 12:20] = 1
    s[2, 12:14, 12:14] = 2  # unrelated tiny object
    out = link_slices(s)
    assert out[0, 5, 5] != out[1, 5, 15] and out[1, 5, 15] == out[2, 5, 15]
    # A branch: one object in slice 0 becomes two in slice 1; the smaller half (IoU < 0.25
    # with the parent, but fully covered by it) joins through the intersection rule.
    b = np.zeros((2, 20, 40), np.int32)
    b[0, 2:12, 2:30] = 1
    b[1, 2:12, 2:22] = 1
    b[1, 2:12, 23:30] = 2
    assert len(np.unique(link_slices(b)[link_slices(b) > 0])) == 1


def test_legacy_backward_pass_joins_an_object_that_ends_inside_another():
    s = np.zeros((3, 20, 40), np.int32)
    s[0, 2:12, 2:10] = 1
    s[1, 2:12, 2:30] = 1  # grows: IoU 8/28 links forward already
    s[0, 2:12, 20:28] = 2  # a second object that ends in slice 0 and lies inside slice 1's
    out = link_slices(s, linking="legacy")
    assert out[0, 5, 5] == out[0, 5, 25] == out[1, 5, 15]
    # The default keeps the object that ends apart: two mitochondria side by side, one
    # ending against the other, are two objects (issue 17).
    out = link_slices(s)
    assert out[0, 5, 5] == out[1, 5, 15] != out[0, 5, 25] > 0
    with pytest.raises(InputError, match="linking"):
        link_slices(s, linking="tracks")


def test_matched_pairs_is_optimal_per_component():
    # Component 1: greedy would take (1, 10) at 0.6 and leave (2, 11) at 0.1; the optimum
    # takes (1, 11) + (2, 10) = 0.5 + 0.5. Component 2: a single pair. Component 3: one row
    # overlapping two columns keeps its best.
    a = np.array([1, 1, 2, 2, 5, 7, 7])
    b = np.array([10, 11, 10, 11, 20, 30, 31])
    w = np.array([0.6, 0.5, 0.5, 0.1, 0.3, 0.2, 0.4])
    picked = matched_pairs(a, b, w)
    assert sorted(zip(a[picked].tolist(), b[picked].tolist(), strict=True)) == [
        (1, 11), (2, 10), (5, 20), (7, 31)
    ]  # fmt: skip
    assert matched_pairs(a[:0], b[:0], w[:0]).size == 0


def test_filter_objects_size_extent_and_relabel():
    labels = np.zeros((10, 20, 20), np.int64)
    labels[0:10, 0:10, 0:10] = 7  # big: kept
    labels[0:2, 12:20, 12:20] = 9  # 128 voxels but only 2 slices thick
    labels[5:8, 15:18, 15:18] = 3  # 27 voxels
    out = filter_objects(labels, min_size=100, min_extent=5)
    assert out.dtype == np.uint32 and set(np.unique(out)) == {0, 1}
    assert (out[0:10, 0:10, 0:10] == 1).all()
    out = filter_objects(labels, min_size=20, min_extent=0)
    assert set(np.unique(out)) == {0, 1, 2, 3} and out[6, 16, 16] == 1  # old id 3 -> 1


@pytest.mark.parametrize("seed", range(12))
def test_filter_labelled_equals_filter_objects(seed):
    """The in-place filter of ortho-plane's consensus (counts on the labelled voxels only)
    gives filter_objects' result, with every filter and on every kind of id."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(4, 30, size=3))
    labels = ndi.label(ndi.gaussian_filter(rng.random(shape), 1.2) > 0.52)[0].astype(np.uint32)
    if seed % 3 == 1:  # sparse, large ids
        labels = np.where(labels > 0, labels * 37 + 1000, 0).astype(np.uint32)
    if seed % 3 == 2:  # ids beyond what bincount counts: the fallback
        labels = np.where(labels > 0, labels + (1 << 30), 0).astype(np.uint32)
    where = labels > 0
    where |= rng.random(shape) < 0.1  # a mask larger than the labels, as in the consensus
    kwargs = {
        "min_size": int(rng.integers(0, 60)),
        "min_extent": int(rng.integers(0, 5)),
        "border_aware": bool(seed % 2),
    }
    expected = filter_objects(labels, **kwargs)
    out = filter_labelled(labels.copy(), where, **kwargs)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, expected)
    if seed == 0:
        assert 0 < expected.max() < labels.max()  # some objects kept, some dropped


@pytest.mark.parametrize("axis", ["xy", "xz", "yz"])
def test_stack_recovers_balls_along_every_axis(toy_model, balls, axis):
    image, truth = balls
    labels = segment_stack_3d(image, Engine2D(toy_model), axis=axis, min_size=200)
    assert labels.shape == image.shape and labels.dtype == np.uint32
    scores = instance_scores(labels, truth)
    assert scores["n_pred"] == 3 and scores["f1@0.75"] == 1.0
    assert scores["semantic_iou"] > 0.85


def test_median_filter_fills_a_one_slice_hole(toy_model, balls):
    image, truth = balls
    holed = image.copy()
    holed[17, 28:40, 28:40] = 200  # one slice of the first ball gets a bright hole
    plain = segment_stack_3d(holed, Engine2D(toy_model), median_slices=1, min_size=200)
    smoothed = segment_stack_3d(holed, Engine2D(toy_model), median_slices=3, min_size=200)
    assert (plain[17, 30:38, 30:38] == 0).all()
    assert (smoothed[17, 30:38, 30:38] == smoothed[17, 22, 33]).all()
    assert smoothed[17, 22, 33] > 0
    assert instance_scores(smoothed, truth)["f1@0.75"] == 1.0


def test_stack_progress_cancel_and_bad_settings(toy_model, balls):
    image, _ = balls
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        cancel.set()

    with pytest.raises(Cancelled):
        segment_stack_3d(image, Engine2D(toy_model, batch_size=4), progress=progress, cancel=cancel)
    assert seen == [4]
    for bad in ({"median_slices": 4}, {"axis": "zz"}, {"min_size": -1}):
        with pytest.raises(InputError):
            segment_stack_3d(image, Engine2D(toy_model), **bad)
    with pytest.raises(InputError, match="dimensions"):
        segment_stack_3d(image[0], Engine2D(toy_model))


def test_pipelined_post_processing_gives_the_same_labels_and_reports_errors(
    toy_model, balls, monkeypatch
):
    image, _ = balls
    engine = Engine2D(toy_model, batch_size=4)
    plain = segment_stack_3d(image, engine, min_size=200, pipeline=False)
    piped = segment_stack_3d(image, engine, min_size=200, pipeline=True)
    assert np.array_equal(plain, piped) and plain.max() == 3

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("post-processing failed")

    monkeypatch.setattr(engine, "postprocess", broken)
    with pytest.raises(RuntimeError, match="post-processing failed"):
        segment_stack_3d(image, engine, pipeline=True)
    # The error stops the run: at most the one batch already queued behind it also ran.
    assert 1 <= len(calls) <= 2
