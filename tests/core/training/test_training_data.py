"""Training-data pipeline: dataset folders, Panoptic-DeepLab targets, augmentation, patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from empanada_napari.core.errors import InputError
from empanada_napari.core.preprocess import normalize
from empanada_napari.core.training import (
    MITONET_NORMS,
    PatchDataset,
    find_pairs,
    instance_centroids,
    load_volume_slices,
    panoptic_targets,
    random_augment,
    write_dataset,
)

DATA = Path(__file__).parents[2] / "data"
RAW = DATA / "lucchi_crop_raw.tif"
INSTANCES = DATA / "lucchi_crop_instances_2d.tif"
BINARY = DATA / "lucchi_crop_mito_binary.tif"


@pytest.fixture(scope="module")
def lucchi():
    """Four slices of the real Lucchi crop (uint8 raw, uint16 2D instance ids)."""
    raw = tifffile.imread(RAW)[:4]
    instances = tifffile.imread(INSTANCES)[:4]
    return list(raw), list(instances)


def _assert_offsets_point_to_centroids(instances: np.ndarray, offsets: np.ndarray) -> None:
    """position + offset == centroid on every object pixel, offsets 0 on background."""
    ids, cy, cx = instance_centroids(instances)
    lut_y = np.zeros(int(instances.max()) + 1)
    lut_x = np.zeros(int(instances.max()) + 1)
    lut_y[ids], lut_x[ids] = cy, cx
    ys, xs = np.nonzero(instances)
    np.testing.assert_allclose(ys + offsets[0, ys, xs], lut_y[instances[ys, xs]], atol=1e-3)
    np.testing.assert_allclose(xs + offsets[1, ys, xs], lut_x[instances[ys, xs]], atol=1e-3)
    assert not offsets[:, instances == 0].any()


# --------------------------------------------------------------------------- dataset folders


def test_dataset_round_trip(tmp_path, lucchi):
    raw, instances = lucchi
    # Non-square crops smaller than the patch: the patch is the whole image, evenly padded.
    images = [raw[0][:64, :80], raw[1][100:164, 50:130]]
    masks = [instances[0][:64, :80], instances[1][100:164, 50:130]]
    written = write_dataset(tmp_path / "ds", images, masks, source="lucchi")
    assert [p.name for p in written] == ["lucchi_0000.tiff", "lucchi_0001.tiff"]
    assert tifffile.imread(written[0]).dtype == np.uint8
    assert tifffile.imread(tmp_path / "ds/lucchi/masks/lucchi_0000.tiff").dtype == np.int32

    pairs = find_pairs(tmp_path / "ds")
    assert [(i.name, m.parent.name) for i, m in pairs] == [
        ("lucchi_0000.tiff", "masks"),
        ("lucchi_0001.tiff", "masks"),
    ]

    ds = PatchDataset(tmp_path / "ds", patch_size=96, augment=False)
    assert len(ds) == 2
    for k in range(2):
        image, targets = ds[k]
        inner = (slice(16, 80), slice(8, 88))  # (96 - 64) / 2 and (96 - 80) / 2
        expected = normalize(images[k], *MITONET_NORMS)
        np.testing.assert_array_equal(image[0][inner].numpy(), expected)
        np.testing.assert_array_equal(targets["instances"][inner].numpy(), masks[k])
        # Padding is the normalised mean grey (0) and background.
        assert image[0, :16].abs().max() == 0 and targets["instances"][:16].max() == 0


def test_find_pairs_skips_junk_and_warns_on_unpaired(tmp_path, lucchi):
    raw, instances = lucchi
    write_dataset(tmp_path, raw[:2], instances[:2], source="a")
    write_dataset(tmp_path, raw[2:3], instances[2:3], source="b", names=["slice"])
    for folder in ("a/images", "a/masks"):
        for junk in ("Thumbs.db", ".DS_Store", "notes.txt", ".hidden.tiff"):
            (tmp_path / folder / junk).write_bytes(b"junk")
    tifffile.imwrite(tmp_path / "a/images/orphan.tif", raw[3])
    with pytest.warns(UserWarning, match="orphan.tif has no mask"):
        pairs = find_pairs(tmp_path)
    assert [p[0].relative_to(tmp_path).as_posix() for p in pairs] == [
        "a/images/a_0000.tiff",
        "a/images/a_0001.tiff",
        "b/images/slice.tiff",
    ]
    assert all(i.stem == m.stem for i, m in pairs)


def test_dataset_errors(tmp_path, lucchi):
    raw, instances = lucchi
    with pytest.raises(InputError):
        find_pairs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="No image/mask pairs"):
        find_pairs(tmp_path / "empty")
    with pytest.raises(InputError, match="No image/mask pairs"):
        PatchDataset(tmp_path / "empty")
    # Mismatched shapes are refused on write and in memory, before anything is written.
    with pytest.raises(InputError, match="differ in shape"):
        write_dataset(tmp_path / "ds", [raw[0], raw[1]], [instances[0], instances[1][:100]])
    assert not (tmp_path / "ds").exists()
    with pytest.raises(InputError, match="differ in shape"):
        PatchDataset([raw[0]], [instances[0][:, :100]])
    with pytest.raises(InputError):
        PatchDataset([raw[0]], [instances[0].astype(np.float32)])
    # Existing files need overwrite=True.
    write_dataset(tmp_path / "ds", raw[:1], instances[:1])
    with pytest.raises(InputError, match="already exist"):
        write_dataset(tmp_path / "ds", raw[1:2], instances[1:2])
    write_dataset(tmp_path / "ds", raw[1:2], instances[1:2], overwrite=True)
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "ds/data/images/data_0000.tiff"), raw[1]
    )


def test_flipbook_reads_middle_slice(tmp_path, lucchi):
    raw, instances = lucchi
    stack = np.stack([raw[0], raw[1], raw[2], raw[3], raw[0]])[:, :96, :96]
    mask = instances[2][:96, :96]
    write_dataset(tmp_path, [stack], [mask], names=["flip"])
    ds = PatchDataset(tmp_path, patch_size=96, augment=False)
    rec = ds.records[0]
    np.testing.assert_array_equal(rec.image, stack[2])
    assert rec.stack is not None and rec.stack.shape == (5, 96, 96)
    image, targets = ds[0]
    np.testing.assert_array_equal(image[0].numpy(), normalize(stack[2], *MITONET_NORMS))
    np.testing.assert_array_equal(targets["instances"].numpy(), mask)


def test_load_volume_slices():
    images, masks = load_volume_slices(RAW, INSTANCES, z_range=(2, 5))
    assert len(images) == len(masks) == 3
    np.testing.assert_array_equal(images[0], tifffile.imread(RAW)[2])
    np.testing.assert_array_equal(masks[1], tifffile.imread(INSTANCES)[3])
    assert masks[0].dtype == np.int32
    # A binary mask is split into 2D connected components per slice.
    _, cc = load_volume_slices(RAW, BINARY, z_range=(0, 2))
    binary = tifffile.imread(BINARY)[:2]
    assert all(((c > 0) == (b > 0)).all() for c, b in zip(cc, binary, strict=True))
    assert cc[0].max() >= 2
    with pytest.raises(InputError):
        load_volume_slices(RAW, INSTANCES, z_range=(10, 40))


# --------------------------------------------------------------------------- targets


def test_targets_two_rectangles():
    labels = np.zeros((64, 80), dtype=np.int32)
    labels[10:21, 5:16] = 3  # 11 x 11, centroid (15, 10)
    labels[30:37, 40:61] = 7  # 7 x 21, centroid (33, 50)
    sigma = 3.0
    t = panoptic_targets(labels, sigma=sigma)
    assert t["sem"].dtype == t["ctr_hmp"].dtype == t["offsets"].dtype == np.float32
    assert t["ctr_hmp"].shape == (1, 64, 80) and t["offsets"].shape == (2, 64, 80)
    np.testing.assert_array_equal(t["sem"], labels > 0)

    hmp = t["ctr_hmp"][0]
    assert hmp.max() == 1.0
    assert hmp[15, 10] == 1.0 and hmp[33, 50] == 1.0
    for (y, x), (cy, cx) in [((15, 12), (15, 10)), ((18, 14), (15, 10)), ((31, 47), (33, 50))]:
        d2 = (y - cy) ** 2 + (x - cx) ** 2
        assert hmp[y, x] == pytest.approx(np.exp(-d2 / (2 * sigma**2)), rel=1e-6)
    assert hmp[0, 79] == 0 and hmp[63, 0] == 0  # far from both centres

    off = t["offsets"]
    assert tuple(off[:, 10, 5]) == (5.0, 5.0)
    assert tuple(off[:, 20, 15]) == (-5.0, -5.0)
    assert tuple(off[:, 36, 60]) == (-3.0, -10.0)
    assert tuple(off[:, 33, 50]) == (0.0, 0.0)
    _assert_offsets_point_to_centroids(labels, off)


def test_targets_edge_cases():
    # C-shaped object: the centroid lies in the hole, outside the object (Panoptic-DeepLab).
    labels = np.zeros((40, 40), dtype=np.uint16)
    labels[5:35, 5:12] = 1
    labels[5:12, 5:35] = 1
    labels[28:35, 5:35] = 1
    t = panoptic_targets(labels, sigma=4.0)
    ids, cy, cx = instance_centroids(labels)
    assert labels[int(round(cy[0])), int(round(cx[0]))] == 0
    _assert_offsets_point_to_centroids(labels, t["offsets"])
    # Sub-pixel centroid: the peak pixel is just below 1.
    two = np.zeros((9, 9), dtype=np.int32)
    two[4, 4:6] = 1
    hmp = panoptic_targets(two, sigma=2.0)["ctr_hmp"][0]
    assert hmp[4, 4] == pytest.approx(np.exp(-0.25 / 8.0), rel=1e-6)
    # Empty and bad inputs.
    empty = panoptic_targets(np.zeros((8, 8), dtype=np.int32))
    assert not any(v.any() for v in empty.values())
    for bad in (np.zeros((8, 8), np.float32), np.zeros((2, 8, 8), np.int32), -np.ones((4, 4))):
        with pytest.raises(InputError):
            panoptic_targets(bad)
    with pytest.raises(InputError):
        panoptic_targets(two, sigma=0)


# --------------------------------------------------------------------------- augmentation


def test_augment_keeps_image_and_mask_aligned(lucchi):
    _, instances = lucchi
    mask = instances[0][60:260, 60:260].astype(np.int32)
    assert mask.max() > 0
    image = (mask > 0).astype(np.float32)
    ids_before = set(np.unique(mask).tolist())
    for seed in range(25):
        rng = np.random.default_rng(seed)
        out_image, out_mask = random_augment(
            image, mask, rng, brightness=0, contrast=0, out_size=128
        )
        assert out_image.shape == out_mask.shape == (128, 128)
        assert out_image.dtype == np.float32 and out_mask.dtype == np.int32
        agreement = ((out_image > 0.5) == (out_mask > 0)).mean()
        assert agreement >= 0.98, (seed, agreement)
        assert set(np.unique(out_mask).tolist()) <= ids_before


def test_augment_flips_are_exact_permutations():
    values = np.arange(30 * 40).reshape(30, 40)
    image, mask = values.astype(np.float32), values.astype(np.int32)
    seen = set()
    for seed in range(12):
        out_image, out_mask = random_augment(
            image,
            mask,
            np.random.default_rng(seed),
            rotate=False,
            scale=(1.0, 1.0),
            brightness=0,
            contrast=0,
        )
        np.testing.assert_array_equal(out_image, out_mask)  # same permutation for both
        np.testing.assert_array_equal(np.sort(out_mask, axis=None), values.ravel())
        seen.add((out_mask[0, 0], out_mask[-1, -1]))
    assert len(seen) == 4  # identity, horizontal, vertical and both flips all occur


def test_augment_intensity_is_a_bounded_shift():
    image = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    mask = np.zeros((32, 32), dtype=np.int32)
    kw = dict(rotate=False, flips=False, scale=(1.0, 1.0), contrast=0, norm_std=0.125)
    shifts = []
    for seed in range(10):
        out, _ = random_augment(image, mask, np.random.default_rng(seed), brightness=0.1, **kw)
        diff = out - image
        assert np.ptp(diff) < 1e-5
        shifts.append(float(diff.mean()))
    assert max(abs(s) for s in shifts) <= 0.1 / 0.125 + 1e-5 and np.ptp(shifts) > 0


# --------------------------------------------------------------------------- PatchDataset


def test_patch_dataset_on_real_crop(lucchi):
    raw, instances = lucchi
    ds = PatchDataset(raw, instances, patch_size=128, foreground_fraction=1.0, samples_per_epoch=12)
    assert len(ds) == 12
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.shape == (1, 128, 128) and image.dtype == torch.float32
        assert t["sem"].shape == (128, 128) and t["sem"].dtype == torch.float32
        assert t["ctr_hmp"].shape == (1, 128, 128) and t["offsets"].shape == (2, 128, 128)
        assert t["instances"].dtype == torch.int64 and t["weight"].dtype == torch.float32
        assert t["sem"].sum() > 0, f"sample {i} has no foreground"
        np.testing.assert_array_equal(t["sem"].numpy(), t["instances"].numpy() > 0)
        _assert_offsets_point_to_centroids(t["instances"].numpy(), t["offsets"].numpy())
    batch_image, batch_targets = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch_image.shape == (4, 1, 128, 128)
    assert batch_targets["offsets"].shape == (4, 2, 128, 128)
    with pytest.raises(IndexError):
        ds[12]


def test_patch_dataset_is_deterministic(lucchi):
    raw, instances = lucchi
    kw = dict(patch_size=96, samples_per_epoch=6, seed=3)
    a, b = PatchDataset(raw, instances, **kw), PatchDataset(raw, instances, **kw)
    for i in (0, 5):
        (ia, ta), (ib, tb) = a[i], b[i]
        assert torch.equal(ia, ib) and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert torch.equal(a[2][0], a[2][0])
    first = a[2][0]
    a.set_epoch(1)
    assert not torch.equal(a[2][0], first)
    assert not torch.equal(PatchDataset(raw, instances, **{**kw, "seed": 4})[2][0], first)


def test_patch_dataset_normalises_like_inference(lucchi):
    raw, instances = lucchi
    # A patch the size of the image has one possible position: the image itself.
    ds = PatchDataset(raw[:2], instances[:2], patch_size=320, augment=False)
    image, t = ds[1]
    np.testing.assert_array_equal(image[0].numpy(), normalize(raw[1], *MITONET_NORMS))
    np.testing.assert_array_equal(t["instances"].numpy(), instances[1])
    # Non-uint8 images use their own robust range, computed once per image.
    wide = raw[0].astype(np.uint16) * 4 + 1000
    ds16 = PatchDataset([wide], [instances[0]], patch_size=320, augment=False)
    np.testing.assert_allclose(ds16[0][0][0].numpy(), normalize(wide, *MITONET_NORMS), atol=1e-6)


def test_patch_dataset_background_sampling(lucchi):
    raw, instances = lucchi
    blank = [np.zeros_like(instances[0])]
    ds = PatchDataset(raw[:1], blank, patch_size=64, foreground_fraction=1.0, samples_per_epoch=3)
    for i in range(3):  # no foreground anywhere: falls back to uniform sampling
        assert ds[i][1]["sem"].sum() == 0
    with pytest.raises(InputError):
        PatchDataset(raw[:1], instances[:1], foreground_fraction=1.5)
    with pytest.raises(InputError, match="Unknown augmentation"):
        PatchDataset(raw[:1], instances[:1], augment={"rotation": False})
    # Augmentation options pass through to random_augment.
    plain = PatchDataset(
        raw[:1], instances[:1], patch_size=64, augment={"rotate": False, "scale": (1, 1)}
    )
    image, t = plain[0]
    assert image.shape == (1, 64, 64) and t["instances"].shape == (64, 64)


def test_held_out_patches_hold_enough_objects_to_score():
    # Issue 37: 2 held-out patches of 2-3 objects moved validation F1 in steps of 0.1.
    from empanada_napari.core.training.store import VAL_OBJECTS, _held_out

    sparse = [np.pad(np.eye(2, dtype=np.int32) * (k + 1), 3) for k in range(16)]  # 2 objects
    held = _held_out(sparse, 0.15, seed=0)
    assert len(held) == 16 // 3  # grown from round(16 * 0.15) = 2, capped at a third
    crowded = []
    for _ in range(16):
        m = np.zeros((40, 40), np.int32)
        for i in range(12):
            m[3 * i, :2] = i + 1
        crowded.append(m)  # 12 objects each
    held = _held_out(crowded, 0.15, seed=0)
    assert len(held) == 2 and sum(12 for _ in held) >= VAL_OBJECTS
    assert _held_out(crowded, 0.15, seed=0) == held  # seeded
