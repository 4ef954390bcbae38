"""Tests of empanada_napari.core.metrics on small hand-checked label images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from empanada_napari.core.metrics import (
    as_instances,
    average_precision,
    evaluate,
    f1_score,
    instance_scores,
    match_instances,
    panoptic_quality,
    semantic_iou,
)

approx = pytest.approx


def _img(shape=(8, 8), dtype=np.int32):
    return np.zeros(shape, dtype=dtype)


# --------------------------------------------------------------------------- hand-made cases


def test_perfect_match():
    gt = _img()
    gt[0:3, 0:3] = 1
    gt[4:8, 4:8] = 2
    pred = np.where(gt == 1, 7, np.where(gt == 2, 3, 0)).astype(np.uint8)  # same shapes, new ids
    s = instance_scores(pred, gt)
    assert s["n_pred"] == s["n_gt"] == 2
    for t in ("0.5", "0.75"):
        assert s[f"tp@{t}"] == 2 and s[f"fp@{t}"] == 0 and s[f"fn@{t}"] == 0
        assert s[f"f1@{t}"] == 1.0 and s[f"ap@{t}"] == 1.0
        assert s[f"precision@{t}"] == 1.0 and s[f"recall@{t}"] == 1.0
    assert s["pq"] == s["sq"] == s["rq"] == 1.0
    assert s["semantic_iou"] == 1.0
    m = match_instances(pred, gt)
    assert sorted(zip(m.pred_ids.tolist(), m.gt_ids.tolist(), strict=True)) == [(3, 2), (7, 1)]
    assert f1_score(pred, gt) == 1.0
    assert average_precision(pred, gt, 0.75) == 1.0
    assert panoptic_quality(pred, gt) == {"pq": 1.0, "sq": 1.0, "rq": 1.0}


def test_split_object():
    # truth: one 4x4 square (16 px); prediction: its left 4x3 part (12 px) and right column (4 px)
    gt = _img()
    gt[0:4, 0:4] = 1
    pred = _img()
    pred[0:4, 0:3] = 1
    pred[0:4, 3] = 2
    # IoU(big half, truth) = 12/16 = 0.75, IoU(small half, truth) = 4/16 = 0.25
    m = match_instances(pred, gt)
    assert m.pred_ids.tolist() == [1] and m.gt_ids.tolist() == [1]
    assert m.ious.tolist() == [0.75]
    assert m.counts(0.5) == (1, 1, 0)
    s = instance_scores(pred, gt)
    # TP = 1, FP = 1 (small half), FN = 0: F1 = 1/(1 + 0.5) = 2/3, AP = 1/2
    assert s["f1@0.5"] == approx(2 / 3) and s["ap@0.5"] == approx(0.5)
    # 0.75 >= 0.75 is still a TP
    assert s["tp@0.75"] == 1 and s["f1@0.75"] == approx(2 / 3)
    assert s["precision@0.5"] == 0.5 and s["recall@0.5"] == 1.0
    # SQ = 0.75, RQ = 2/3, PQ = 0.5
    assert s["sq"] == approx(0.75) and s["rq"] == approx(2 / 3) and s["pq"] == approx(0.5)
    assert s["semantic_iou"] == 1.0


def test_merged_objects_unequal():
    # truth: 4x4 (16 px) and 4x2 (8 px) side by side; prediction: one 4x6 object (24 px)
    gt = _img()
    gt[0:4, 0:4] = 1
    gt[0:4, 4:6] = 2
    pred = _img()
    pred[0:4, 0:6] = 9
    # IoU with truth 1 = 16/24 = 2/3, with truth 2 = 8/24 = 1/3
    m = match_instances(pred, gt)
    assert m.gt_ids.tolist() == [1] and m.ious == approx([2 / 3])
    s = instance_scores(pred, gt)
    # TP = 1, FP = 0, FN = 1 -> F1 = 1/(1 + 0.5) = 2/3; at 0.75 nothing matches -> F1 = 0
    assert (s["tp@0.5"], s["fp@0.5"], s["fn@0.5"]) == (1, 0, 1)
    assert s["f1@0.5"] == approx(2 / 3)
    assert s["f1@0.75"] == 0.0 and s["ap@0.75"] == 0.0
    assert s["pq"] == approx(2 / 3 * 2 / 3)


def test_merged_objects_exact_tie():
    # truth: two 4x4 squares (16 px each); prediction: one 4x8 object covering both (32 px)
    gt = _img()
    gt[0:4, 0:4] = 1
    gt[0:4, 4:8] = 2
    pred = _img()
    pred[0:4, 0:8] = 5
    # both IoUs are exactly 16/32 = 0.5: a tie, but the prediction is used only once
    m = match_instances(pred, gt)
    assert m.pred_ids.tolist() == [5] and m.ious.tolist() == [0.5]
    s = instance_scores(pred, gt)
    # TP = 1, FN = 1: F1 = 2/3, SQ = 0.5, PQ = 1/3
    assert (s["tp@0.5"], s["fp@0.5"], s["fn@0.5"]) == (1, 0, 1)
    assert s["f1@0.5"] == approx(2 / 3)
    assert s["sq"] == 0.5 and s["pq"] == approx(1 / 3)


def test_missed_object_and_false_positive():
    gt = _img()
    gt[0:2, 0:2] = 1  # 4 px, predicted exactly
    gt[5:8, 5:8] = 2  # 9 px, missed (FN)
    pred = _img()
    pred[0:2, 0:2] = 4
    pred[0:2, 5:8] = 6  # 6 px, no truth there (FP)
    s = instance_scores(pred, gt)
    # TP = 1, FP = 1, FN = 1: F1 = 1/(1 + 1) = 1/2, AP = 1/3
    assert (s["tp@0.5"], s["fp@0.5"], s["fn@0.5"]) == (1, 1, 1)
    assert s["f1@0.5"] == 0.5 and s["ap@0.5"] == approx(1 / 3)
    assert s["precision@0.5"] == 0.5 and s["recall@0.5"] == 0.5
    assert s["pq"] == 0.5 and s["sq"] == 1.0
    # foreground: intersection 4 px, union 4 + 9 + 6 = 19 px
    assert s["semantic_iou"] == approx(4 / 19)
    assert semantic_iou(pred, gt) == approx(4 / 19)


def test_iou_between_thresholds():
    # truth 4x4 at columns 0-3, prediction 4x4 at columns 1-4: intersection 12, union 20
    gt = _img()
    gt[0:4, 0:4] = 1
    pred = _img()
    pred[0:4, 1:5] = 1
    # IoU = 12/20 = 0.6: a TP at 0.5, one FP and one FN at 0.75
    s = instance_scores(pred, gt)
    assert (s["tp@0.5"], s["fp@0.5"], s["fn@0.5"]) == (1, 0, 0)
    assert (s["tp@0.75"], s["fp@0.75"], s["fn@0.75"]) == (0, 1, 1)
    assert s["f1@0.5"] == 1.0 and s["f1@0.75"] == 0.0
    assert s["ap@0.5"] == 1.0 and s["ap@0.75"] == 0.0
    assert s["sq"] == approx(0.6) and s["pq"] == approx(0.6)
    assert f1_score(pred, gt, 0.75) == 0.0


def test_empty_cases():
    empty = _img()
    obj = _img()
    obj[2:4, 2:4] = 3
    s = instance_scores(empty, empty)
    assert s["n_pred"] == s["n_gt"] == 0
    for k, v in s.items():
        if isinstance(v, float):
            assert v == 1.0, k  # nothing to find and nothing found: perfect
    for pred, gt in ((empty, obj), (obj, empty)):
        s = instance_scores(pred, gt)
        for k, v in s.items():
            if isinstance(v, float):
                assert v == 0.0, k
    assert semantic_iou(empty, empty) == 1.0
    assert semantic_iou(obj, empty) == 0.0
    assert panoptic_quality(empty, empty)["pq"] == 1.0
    assert f1_score(empty, obj) == 0.0


def _consecutive_case():
    gt = np.zeros((6, 10), np.int64)
    gt[0:3, 0:3] = 1
    gt[0:3, 4:8] = 2
    gt[4:6, 0:10] = 3
    pred = np.zeros_like(gt)
    pred[0:3, 0:2] = 1  # IoU 6/9 with truth 1
    pred[0:3, 2:3] = 2  # small leftover: FP
    pred[0:3, 4:9] = 3  # IoU 12/15 with truth 2
    pred[4:6, 5:10] = 4  # IoU 10/20 with truth 3
    return pred, gt


@pytest.mark.parametrize(
    ("dtype", "ids"),
    [
        (np.uint32, [10001, 2**31 + 5, 4294967295, 7]),
        (np.int64, [10001, 2**31 + 5, 2**62 + 1, 3]),
        (np.uint64, [2**64 - 1, 2**63 + 5, 10001, 1]),
        (np.uint16, [65535, 10001, 2, 40000]),
    ],
)
def test_huge_non_consecutive_ids(dtype, ids):
    pred, gt = _consecutive_case()
    ref = instance_scores(pred, gt)
    assert ref["tp@0.5"] == 3 and ref["tp@0.75"] == 1

    def remap(labels, new):
        out = np.zeros(labels.shape, dtype)
        for old, value in enumerate(new, start=1):
            out[labels == old] = value
        return out

    # gt uses three of the ids, in reverse order so the sort order of ids changes as well
    p2, g2 = remap(pred, ids), remap(gt, ids[:3][::-1])
    assert instance_scores(p2, g2) == ref
    assert instance_scores(p2, gt) == ref  # mixed dtypes
    m = match_instances(p2, g2)
    assert set(m.pred_ids.tolist()) <= set(ids)
    assert m.pred_ids.dtype == np.dtype(dtype)


# --------------------------------------------------------------------------- 3D and per slice


def _two_slice_volume():
    # slice 0: three 2x2 objects in both images; slice 1: truth object 1 continues, no prediction
    # slice 2: empty in both
    gt = np.zeros((3, 4, 8), np.uint16)
    gt[0, 0:2, 0:2] = 1
    gt[0, 0:2, 3:5] = 2
    gt[0, 0:2, 6:8] = 3
    gt[1, 0:2, 0:2] = 1
    pred = np.zeros_like(gt)
    pred[0, 0:2, 0:2] = 7
    pred[0, 0:2, 3:5] = 8
    pred[0, 0:2, 6:8] = 9
    return pred, gt


def test_3d_scoring():
    pred, gt = _two_slice_volume()
    s = evaluate(pred, gt)
    # 3D: truth 1 has 8 voxels, prediction 7 has 4 inside it -> IoU 4/8 = 0.5 (TP at 0.5);
    # the two others match exactly.
    assert (s["tp@0.5"], s["fp@0.5"], s["fn@0.5"]) == (3, 0, 0)
    assert s["f1@0.5"] == 1.0
    # at 0.75 the 0.5 pair is one FP and one FN: F1 = 2*2/(3+3) = 2/3
    assert (s["tp@0.75"], s["fp@0.75"], s["fn@0.75"]) == (2, 1, 1)
    assert s["f1@0.75"] == approx(2 / 3)
    # SQ = (0.5 + 1 + 1)/3 = 5/6, RQ = 1
    assert s["pq"] == approx(5 / 6) and s["sq"] == approx(5 / 6) and s["rq"] == 1.0
    # foreground: 12 common voxels out of 16
    assert s["semantic_iou"] == 0.75
    assert s == instance_scores(pred, gt)


def test_per_slice_pooled_vs_mean():
    pred, gt = _two_slice_volume()
    s = evaluate(pred, gt, per_slice=True)
    assert s["n_slices"] == 3 and s["n_slices_scored"] == 2  # the empty slice is not averaged
    # 2D instances: slice 0 has 3 + 3, slice 1 has 0 predicted + 1 true
    assert s["n_pred"] == 3 and s["n_gt"] == 4
    # pooled: TP = 3, FP = 0, FN = 1 -> F1 = 3/(3 + 0.5) = 6/7, AP = 3/4
    assert (s["tp@0.5"], s["fp@0.5"], s["fn@0.5"]) == (3, 0, 1)
    assert s["f1@0.5"] == approx(6 / 7) and s["ap@0.5"] == 0.75
    # per slice F1 = 1 and 0 -> mean 1/2
    assert s["f1@0.5_mean"] == 0.5 and s["ap@0.5_mean"] == 0.5
    # pooled PQ: SQ = 1 (all TPs exact), RQ = 6/7; mean PQ = (1 + 0)/2
    assert s["pq"] == approx(6 / 7) and s["sq"] == 1.0
    assert s["pq_mean"] == 0.5
    # semantic: pooled 12/16 (same as 3D), mean (1 + 0)/2
    assert s["semantic_iou"] == 0.75 and s["semantic_iou_mean"] == 0.5
    assert s["precision@0.5"] == 1.0 and s["recall@0.5"] == 0.75
    assert s["recall@0.5_mean"] == 0.5
    json.dumps(s)  # plain Python numbers only
    assert all(type(v) in (int, float) for v in s.values())


def test_per_slice_relabel_connected_components():
    # binary truth: two separate blobs in one slice; prediction labels them 1 and 2
    gt = np.zeros((1, 4, 8), np.uint8)
    gt[0, 0:2, 0:2] = 1
    gt[0, 0:2, 4:6] = 1
    pred = np.zeros((1, 4, 8), np.int32)
    pred[0, 0:2, 0:2] = 1
    pred[0, 0:2, 4:6] = 2
    # as given, the truth is one object of 8 px and each prediction has IoU 4/8 (a tie)
    plain = evaluate(pred, gt, per_slice=True)
    assert (plain["tp@0.5"], plain["fp@0.5"], plain["n_gt"]) == (1, 1, 1)
    cc = evaluate(pred, gt, per_slice=True, relabel_2d_cc=True)
    assert cc["n_gt"] == 2 and cc["f1@0.5"] == 1.0 and cc["f1@0.5_mean"] == 1.0
    assert evaluate(pred, as_instances(gt)) == instance_scores(pred, as_instances(gt))
    assert instance_scores(pred, as_instances(gt))["f1@0.5"] == 1.0


def test_as_instances():
    mask = np.zeros((5, 5), bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours
    mask[4, 0:5] = True
    assert as_instances(mask).max() == 3
    assert as_instances(mask, connectivity=2).max() == 2
    with pytest.raises(ValueError):
        as_instances(mask.astype(float))


# --------------------------------------------------------------------------- matching


def test_hungarian_beats_greedy_below_half():
    # one row of 24 px: truth Y = [5, 10), X = [10, 20); prediction A = [7, 16), B = [16, 24)
    gt = np.zeros((1, 24), np.int32)
    gt[0, 5:10] = 1  # Y, 5 px
    gt[0, 10:20] = 2  # X, 10 px
    pred = np.zeros_like(gt)
    pred[0, 7:16] = 1  # A, 9 px
    pred[0, 16:24] = 2  # B, 8 px
    # IoU(A, Y) = 3/11 ~ 0.273, IoU(A, X) = 6/13 ~ 0.462, IoU(B, X) = 4/14 ~ 0.286.
    # Greedy takes A-X (0.462) and leaves B and Y unmatched; the optimum is A-Y + B-X
    # (0.559 in total), which matches everything.
    m = match_instances(pred, gt, match_iou=0.25)
    pairs = sorted(zip(m.pred_ids.tolist(), m.gt_ids.tolist(), strict=True))
    assert pairs == [(1, 1), (2, 2)]
    assert sorted(m.ious.tolist()) == approx([3 / 11, 4 / 14])
    assert f1_score(pred, gt, iou_threshold=0.25, match_iou=0.25) == 1.0
    assert f1_score(pred, gt, iou_threshold=0.5, match_iou=0.25) == 0.0
    assert f1_score(pred, gt) == 0.0  # nothing reaches 0.5
    s = instance_scores(pred, gt, thresholds=(0.25, 0.5), match_iou=0.25)
    assert s["tp@0.25"] == 2 and s["tp@0.5"] == 0 and s["pq"] == 0.0


def test_threshold_below_match_iou_rejected():
    gt = _img()
    with pytest.raises(ValueError, match="match_iou"):
        f1_score(gt, gt, iou_threshold=0.3)
    with pytest.raises(ValueError, match="match_iou"):
        match_instances(gt, gt, match_iou=0.0)


# --------------------------------------------------------------------------- randomised


def _random_labels(rng, shape, n, max_size=12):
    out = np.zeros(shape, np.int64)
    for i in range(1, n + 1):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        h, w = rng.integers(2, max_size, size=2)
        out[y : y + h, x : x + w] = i
    return out


def _perturb(rng, labels):
    out = np.roll(labels, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
    ids = np.unique(out[out > 0])
    drop = rng.choice(ids, size=len(ids) // 10, replace=False)
    out[np.isin(out, drop)] = 0
    return out


def _permute_ids(rng, labels, dtype):
    ids = np.unique(labels[labels > 0])
    new = rng.choice(np.arange(1, 2**32 - 1, 997, dtype=np.uint64), size=ids.size, replace=False)
    lut_idx = np.searchsorted(ids, labels)
    out = np.where(labels > 0, new[np.minimum(lut_idx, ids.size - 1)], 0)
    return out.astype(dtype)


def test_random_permutation_invariance_and_semantic_iou():
    rng = np.random.default_rng(1234)
    for _ in range(5):
        gt = _random_labels(rng, (64, 64), 40)
        pred = _perturb(rng, gt)
        ref = instance_scores(pred, gt)
        p2 = _permute_ids(rng, pred, np.uint32)
        g2 = _permute_ids(rng, gt, np.int64)
        assert instance_scores(p2, g2) == approx(ref)
        # below 0.5 ties may pick other pairs, but the optimal total IoU is unique
        m1 = match_instances(pred, gt, match_iou=0.2)
        m2 = match_instances(p2, g2, match_iou=0.2)
        assert m1.ious.sum() == approx(m2.ious.sum())
        direct = np.logical_and(pred > 0, gt > 0).sum() / np.logical_or(pred > 0, gt > 0).sum()
        assert semantic_iou(p2, g2) == approx(direct)
        assert ref["semantic_iou"] == approx(direct)


def _dense_iou(pred, gt):
    pids = np.unique(pred[pred > 0])
    gids = np.unique(gt[gt > 0])
    iou = np.zeros((pids.size, gids.size))
    for i, a in enumerate(pids):
        for j, b in enumerate(gids):
            pa, gb = pred == a, gt == b
            iou[i, j] = (pa & gb).sum() / (pa | gb).sum()
    return iou


@pytest.mark.parametrize("match_iou", [0.1, 0.3, 0.5])
def test_matching_total_equals_brute_force(match_iou):
    rng = np.random.default_rng(7)
    for _ in range(5):
        gt = _random_labels(rng, (40, 40), 30, max_size=10)
        pred = _random_labels(rng, (40, 40), 30, max_size=10)
        iou = _dense_iou(pred, gt)
        weights = np.where(iou >= match_iou, iou, 0.0)
        r, c = linear_sum_assignment(weights, maximize=True)
        m = match_instances(pred, gt, match_iou=match_iou)
        assert m.ious.sum() == approx(weights[r, c].sum())
        assert np.all(m.ious >= match_iou)
        assert len(set(m.pred_ids.tolist())) == len(m.pred_ids)
        assert len(set(m.gt_ids.tolist())) == len(m.gt_ids)


# --------------------------------------------------------------------------- size and inputs


def _box_grid(shape=(200, 512, 512)):
    # 12 x 16 x 16 = 3072 boxes of 12 x 24 x 24 voxels, each in its own 16 x 32 x 32 cell
    # (margins of 2 in z and 4 in y and x, so shifts up to those margins keep boxes apart)
    def axis(n, cell, lo, hi, cells):
        i = np.arange(n)
        inside = (i % cell >= lo) & (i % cell < hi) & (i // cell < cells)
        return inside, i // cell

    mz, iz = axis(shape[0], 16, 2, 14, 12)
    my, iy = axis(shape[1], 32, 4, 28, 16)
    mx, ix = axis(shape[2], 32, 4, 28, 16)
    ids = (iz[:, None, None] * 256 + iy[None, :, None] * 16 + ix[None, None, :] + 1).astype(
        np.uint32
    )
    inside = mz[:, None, None] & my[None, :, None] & mx[None, None, :]
    return np.where(inside, ids, np.uint32(0))


def test_large_volume_sanity():
    gt = _box_grid()
    s = instance_scores(gt, gt)
    assert s["n_gt"] == 3072 and s["f1@0.5"] == 1.0 and s["pq"] == 1.0
    # shift every box by 2 in z and 4 in x: intersection 10*24*20 = 4800 voxels,
    # union 2*12*24*24 - 4800 = 9024 -> IoU = 4800/9024 = 25/47 ~ 0.532
    pred = np.roll(gt, (2, 4), axis=(0, 2))
    s = instance_scores(pred, gt)
    assert s["tp@0.5"] == 3072 and s["tp@0.75"] == 0
    assert s["f1@0.5"] == 1.0 and s["f1@0.75"] == 0.0
    assert s["pq"] == approx(25 / 47) and s["semantic_iou"] == approx(25 / 47)


def test_bad_inputs():
    a = _img((4, 4))
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        instance_scores(a, _img((4, 5)))
    with pytest.raises(ValueError, match="cast"):
        f1_score(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="as_instances"):
        semantic_iou(a, a.astype(bool))
    neg = a.copy()
    neg[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        instance_scores(neg, a)
    with pytest.raises(ValueError, match="3D"):
        evaluate(a, a, per_slice=True)
    with pytest.raises(ValueError):
        evaluate(a, a, relabel_2d_cc=True)


def test_array_likes():
    gt = [[0, 1, 1], [0, 2, 2]]
    assert instance_scores(gt, gt)["f1@0.5"] == 1.0
    da = pytest.importorskip("dask.array")
    arr = np.array(gt, dtype=np.uint16)
    assert evaluate(da.from_array(arr), arr) == evaluate(arr, arr)
