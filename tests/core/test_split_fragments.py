"""split_fragments (issue 19): one connected-components pass, output identical to the previous
implementation, which is kept below as the reference (commit e5ae945)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from empanada_napari.core.inference.postprocess import split_fragments
from tests.conftest import DATA


def reference_split_fragments(labels: np.ndarray, label_divisor: int = 10000) -> np.ndarray:
    """split_fragments as it was before issue 19 (verbatim but for this docstring)."""
    from skimage.measure import label as cc_label

    labels = np.asarray(labels)
    comps = cc_label(labels, background=0, connectivity=1)
    n = int(comps.max())
    if n == 0:
        return labels.copy()
    fg = comps > 0
    orig = np.zeros(n + 1, dtype=np.int64)
    orig[comps[fg]] = labels[fg]
    sizes = np.bincount(comps[fg], minlength=n + 1)
    comp_ids = np.arange(1, n + 1)
    order = np.lexsort((-sizes[1:], orig[1:]))
    sorted_orig = orig[1:][order]
    keeps = np.ones(n, dtype=bool)
    keeps[1:] = sorted_orig[1:] != sorted_orig[:-1]
    new_label = np.zeros(n + 1, dtype=np.int64)
    new_label[comp_ids[order][keeps]] = sorted_orig[keeps]
    extra = comp_ids[order][~keeps]
    if extra.size:
        divisor = max(1, int(label_divisor))
        extra_cls = orig[extra] // divisor
        all_ids = np.unique(labels[fg]).astype(np.int64)
        for c in np.unique(extra_cls):
            members = extra[extra_cls == c]
            in_class = all_ids[all_ids // divisor == c]
            start = int(in_class.max() % divisor if c > 0 else in_class.max()) + 1
            new_label[members] = c * divisor + start + np.arange(members.size)
    out_dtype = np.result_type(labels.dtype, np.min_scalar_type(int(new_label.max())))
    return new_label[comps].astype(out_dtype)


def _fragmented_real_slices() -> np.ndarray:
    """Real Lucchi 2D instances as panoptic ids (10001, ...), cut by lines and with pairs of
    distant objects given one id, so instances have several fragments."""
    gt = tifffile.imread(DATA / "lucchi_crop_instances_2d.tif").astype(np.int64)
    out = np.where(gt > 0, 10000 + gt, 0)
    out[:, 100, :] = 0  # a horizontal cut through every slice
    out[:, :, 200:202] = 0  # and a vertical one
    for z in range(out.shape[0]):  # merge ids pairwise: one id, far-apart pieces
        ids = np.unique(out[z][out[z] > 0])
        for a, b in zip(ids[::2], ids[1::2], strict=False):
            out[z][out[z] == b] = a
    return out


def test_identical_on_real_slices_and_volume():
    labels = _fragmented_real_slices()
    n_split = 0
    for plane in labels:
        new, ref = split_fragments(plane, 10000), reference_split_fragments(plane, 10000)
        assert new.dtype == ref.dtype
        np.testing.assert_array_equal(new, ref)
        n_split += len(np.unique(new)) - len(np.unique(plane))
    assert n_split > 10  # the cuts and merges did create fragments to split
    np.testing.assert_array_equal(split_fragments(labels), reference_split_fragments(labels))


@pytest.mark.parametrize("seed", range(25))
def test_identical_on_random_stress_cases(seed):
    rng = np.random.default_rng(seed)
    ndim = 2 if seed % 3 else 3
    shape = (48, 64) if ndim == 2 else (6, 24, 32)
    divisor = int(rng.choice([1, 7, 1000, 10000]))
    n_ids = int(rng.integers(1, 40))
    classes = rng.integers(0 if divisor > 1 else 1, 4, size=n_ids)
    ids = np.unique(classes * divisor + rng.integers(1, max(2, divisor), size=n_ids))
    ids = ids[ids > 0]
    labels = rng.choice(np.concatenate([[0] * len(ids), ids]), size=shape)
    dtype = rng.choice([np.uint16, np.uint32, np.int32, np.int64])
    if ids.max() >= np.iinfo(dtype).max:
        dtype = np.int64
    labels = labels.astype(dtype)
    new, ref = split_fragments(labels, divisor), reference_split_fragments(labels, divisor)
    assert new.dtype == ref.dtype
    np.testing.assert_array_equal(new, ref)


def test_empty_and_single_fragment():
    zeros = np.zeros((5, 5), np.uint32)
    np.testing.assert_array_equal(split_fragments(zeros), zeros)
    one = np.zeros((5, 5), np.uint32)
    one[1:3, 1:3] = 10001
    np.testing.assert_array_equal(split_fragments(one), one)
