"""Panoptic post-processing on hand-built semantic / heat-map / offset maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from empanada_napari.core.inference import postprocess as pp


def _maps(objects, shape, stride=1, peak=1.0):
    """Semantic logits (1, H, W), heat-map (h, w) and exact offsets (2, h, w) for boxes.

    ``objects`` are (y0, y1, x0, x1) boxes in full-resolution pixels; every pixel's offset
    points at its box centre, the heat-map has a single peak at each centre.
    """
    height, width = shape
    h, w = height // stride, width // stride
    sem = torch.full((1, height, width), -10.0)
    hmp = torch.zeros(h, w)
    off = torch.zeros(2, h, w)
    gy = torch.arange(h).float() * stride + (stride - 1) / 2
    gx = torch.arange(w).float() * stride + (stride - 1) / 2
    for y0, y1, x0, x1 in objects:
        sem[0, y0:y1, x0:x1] = 10.0
        cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
        inside_y = (gy >= y0) & (gy < y1)
        inside_x = (gx >= x0) & (gx < x1)
        box = inside_y[:, None] & inside_x[None, :]
        off[0][box] = (cy - gy[:, None].expand(h, w))[box]
        off[1][box] = (cx - gx[None, :].expand(h, w))[box]
        hmp[int(cy // stride), int(cx // stride)] = peak
    return torch.sigmoid(sem), hmp, off


def _truth(objects, shape):
    truth = np.zeros(shape, dtype=np.int64)
    for i, (y0, y1, x0, x1) in enumerate(objects, start=1):
        truth[y0:y1, x0:x1] = i
    return truth


def _same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    """True when labels equal truth up to a renaming of the ids (0 stays 0)."""
    if not np.array_equal(labels > 0, truth > 0):
        return False
    pairs = np.unique(np.stack([labels.ravel(), truth.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("stride", [1, 4])
def test_touching_objects_are_separated(stride):
    # Two boxes sharing an edge (columns 40|40) plus a separate one.
    objects = [(8, 40, 8, 40), (8, 40, 40, 72), (48, 60, 16, 28)]
    prob, hmp, off = _maps(objects, (64, 80), stride)
    labels = pp.panoptic_labels(
        prob, hmp, off, label_divisor=1000, min_distance_object_centers=3
    ).numpy()
    assert _same_partition(labels, _truth(objects, (64, 80)))
    assert sorted(np.unique(labels)) == [0, 1001, 1002, 1003]


def test_instance_ids_are_in_raster_order_and_use_divisor():
    objects = [(40, 50, 4, 14), (2, 12, 30, 40)]  # second box comes first in raster order
    prob, hmp, off = _maps(objects, (64, 64))
    labels = pp.panoptic_labels(prob, hmp, off, label_divisor=10000).numpy()
    assert labels[5, 35] == 10001 and labels[45, 8] == 10002


def test_no_centres_gives_empty_labels():
    objects = [(8, 40, 8, 40)]
    prob, hmp, off = _maps(objects, (64, 64), peak=0.05)  # below center_confidence_thr 0.1
    labels = pp.panoptic_labels(prob, hmp, off, center_confidence_thr=0.1)
    assert int(labels.max()) == 0
    # ...but the semantic-only output still has the foreground.
    sem = pp.panoptic_labels(prob, hmp, off, semantic_only=True).numpy()
    assert np.array_equal(sem, (_truth(objects, (64, 64)) > 0).astype(np.int64))


def test_many_centres_in_one_object_split_it_by_offsets():
    # One thing region but offsets that point to four quadrant centres: four instances.
    quads = [(0, 16, 0, 16), (0, 16, 16, 32), (16, 32, 0, 16), (16, 32, 16, 32)]
    prob, hmp, off = _maps(quads, (32, 32))
    labels = pp.panoptic_labels(prob, hmp, off).numpy()
    assert _same_partition(labels, _truth(quads, (32, 32)))


def test_nms_merges_nearby_peaks():
    objects = [(8, 40, 8, 40)]
    prob, hmp, off = _maps(objects, (48, 48))
    hmp[23, 24] = 0.9  # a weaker peak right next to the true one at (23, 23)
    assert pp.find_centers(hmp, 0.1, min_distance_object_centers=3).shape[0] == 1
    assert pp.find_centers(hmp, 0.1, min_distance_object_centers=1).shape[0] == 2
    labels = pp.panoptic_labels(prob, hmp, off, min_distance_object_centers=3).numpy()
    assert len(np.unique(labels)) == 2


def test_plateau_gives_one_centre():
    hmp = torch.zeros(16, 16)
    hmp[5:7, 5:7] = 0.8  # a 2x2 plateau of equal maxima
    hmp[12, 3] = hmp[12, 4] = 0.5  # a 2-pixel tie
    centres = pp.find_centers(hmp, 0.1, min_distance_object_centers=3).tolist()
    assert centres == [[5, 5], [12, 3]]


def test_empty_image():
    prob = torch.zeros(1, 32, 32)
    labels = pp.panoptic_labels(prob, torch.zeros(8, 8), torch.zeros(2, 8, 8))
    assert labels.shape == (32, 32) and int(labels.abs().sum()) == 0


def test_confidence_threshold_and_valid_crop():
    objects = [(4, 12, 4, 12)]
    prob, hmp, off = _maps(objects, (32, 32))
    prob[0, 4:12, 4:12] = 0.4
    assert int(pp.panoptic_labels(prob, hmp, off, confidence_thr=0.5).max()) == 0
    assert int(pp.panoptic_labels(prob, hmp, off, confidence_thr=0.3).max()) == 10001
    cropped = pp.panoptic_labels(prob, hmp, off, confidence_thr=0.3, valid_shape=(20, 10))
    assert cropped.shape == (20, 10)


def test_multiclass_things_and_stuff():
    # 3 channels: background, a thing class (1) and a stuff class (2).
    logits = torch.full((3, 32, 32), -5.0)
    logits[0] = 5.0
    logits[0, 2:10, 2:10], logits[1, 2:10, 2:10] = -5.0, 5.0
    logits[0, 20:30, 20:30], logits[2, 20:30, 20:30] = -5.0, 5.0  # 100 px of stuff
    prob = pp.semantic_probabilities(logits)
    hmp = torch.zeros(32, 32)
    hmp[5, 5] = 1.0
    off = torch.zeros(2, 32, 32)
    kwargs = dict(thing_list=[1], labels=[1, 2], label_divisor=100, stuff_area=64)
    labels = pp.panoptic_labels(prob, hmp, off, **kwargs).numpy()
    assert set(np.unique(labels)) == {0, 101, 200}
    assert (labels == 200).sum() == 100 and (labels == 101).sum() == 64
    # Stuff area is counted per class over the image (as Panoptic-DeepLab): 60 px < 64.
    logits[0, 20:30, 20:30], logits[2, 20:30, 20:30] = 5.0, -5.0
    logits[0, 20:26, 20:30], logits[2, 20:26, 20:30] = -5.0, 5.0
    labels = pp.panoptic_labels(pp.semantic_probabilities(logits), hmp, off, **kwargs).numpy()
    assert set(np.unique(labels)) == {0, 101}


def test_fill_holes_fills_only_single_owner_holes():
    labels = np.zeros((20, 30), dtype=np.uint32)
    labels[2:10, 2:10] = 5
    labels[4:6, 4:6] = 0  # hole inside 5 -> filled
    labels[2:10, 12:18] = 7
    labels[2:10, 18:24] = 8
    labels[5, 17:19] = 0  # gap between touching 7 and 8 -> stays
    before = labels.copy()
    out = pp.fill_instance_holes(labels)
    assert np.array_equal(labels, before)  # input untouched
    assert (out[4:6, 4:6] == 5).all()
    assert (out[5, 17:19] == 0).all()
    assert out.dtype == labels.dtype


def test_fill_holes_3d():
    labels = np.zeros((6, 10, 10), dtype=np.uint16)
    labels[1:5, 1:9, 1:9] = 3
    labels[2:4, 4:6, 4:6] = 0
    assert (pp.fill_instance_holes(labels)[2:4, 4:6, 4:6] == 3).all()


def test_split_fragments_new_ids_do_not_collide():
    labels = np.zeros((20, 20), dtype=np.uint32)
    labels[0:5, 0:5] = 10001  # big fragment keeps the id
    labels[10:12, 10:12] = 10001  # small fragment -> new id
    labels[15:18, 0:3] = 10002
    out = pp.split_fragments(labels, label_divisor=10000)
    assert (out[0:5, 0:5] == 10001).all()
    assert (out[15:18, 0:3] == 10002).all()
    assert out[10, 10] == 10003
    assert len(np.unique(out)) == 4
