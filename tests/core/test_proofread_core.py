"""Proofreading algorithms (no Qt) on the real Lucchi crop: exact results, exact undo,
nothing changed (or read) outside the boxes of the labels concerned, index kept in step."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.measure import regionprops_table
from skimage.segmentation import expand_labels

from empanada_napari.core.errors import InputError
from empanada_napari.core.proofread import (
    LabelIndex,
    apply_edit,
    class_counts,
    column_titles,
    delete_labels,
    filter_labels,
    label_location,
    labels_at,
    measure_labels,
    merge_labels,
    morph_labels,
    path_coordinates,
    split_label,
    table_to_csv,
)

from ..conftest import DATA

IDS = (17, 30, 37, 44)


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return tifffile.imread(DATA / "lucchi_crop_instances_3d_cc.tif")


@pytest.fixture(scope="module")
def crop2d() -> np.ndarray:
    return tifffile.imread(DATA / "lucchi_crop_instances_2d.tif")


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    return tifffile.imread(DATA / "lucchi_crop_raw.tif")


class ReadLog:
    """An array-like (like a zarr array) that records every box read or written."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.reads, self.writes = data, [], []
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]

    def __setitem__(self, key, value):
        self.writes.append(key)
        self.data[key] = value


def _within(key, box) -> bool:
    key = key if isinstance(key, tuple) else (key,)
    for k, b in zip(key, box, strict=False):
        if isinstance(k, slice):
            if k.start < b.start or k.stop > b.stop:
                return False
        elif not b.start <= k < b.stop:
            return False
    return True


def _union(index: LabelIndex, ids, pad=0):
    return index.union_box(ids, pad=pad)


def _check_edit(labels, edit, expected, index):
    """Apply, compare with the expected volume, check the outside, undo exactly, redo."""
    before = labels.copy()
    apply_edit(labels, edit, index)
    np.testing.assert_array_equal(labels, expected)
    outside = np.ones(labels.shape, bool)
    outside[edit.box] = False
    assert np.array_equal(labels[outside], before[outside])
    assert index.equals(LabelIndex.build(labels))
    edit.revert(labels)
    assert np.array_equal(labels, before)
    index.update(labels, edit.box, old=edit.new, new=edit.old)
    assert index.equals(LabelIndex.build(labels))


# --------------------------------------------------------------------------- index
def test_index_matches_find_objects(crop):
    index = LabelIndex.build(crop)
    assert index.ids.tolist() == list(IDS)
    slices = ndi.find_objects(crop)
    for i in IDS:
        assert index.bbox(i) == slices[i - 1]
        assert index.count(i) == int((crop == i).sum())
    assert index.count(44) == 218 and index.max_id == 44
    # Chunked builds (slabs of 1 plane), sparse huge ids, zarr and dask give the same index.
    assert index.equals(LabelIndex.build(crop, block_voxels=320 * 320))
    big = crop.astype(np.uint32) * 100_003
    sparse = LabelIndex.build(big)
    assert sparse.ids.tolist() == [i * 100_003 for i in IDS]
    assert np.array_equal(sparse.lo, index.lo) and np.array_equal(sparse.counts, index.counts)


def test_index_on_zarr_and_dask(crop, tmp_path):
    import dask.array as da
    import zarr

    z = zarr.create_array(tmp_path / "l.zarr", shape=crop.shape, chunks=(4, 64, 64), dtype="u2")
    z[:] = crop
    ref = LabelIndex.build(crop)
    assert LabelIndex.build(z, block_voxels=5 * 320 * 320).equals(ref)
    assert LabelIndex.build(da.from_array(crop, chunks=(4, 80, 80))).equals(ref)


def test_next_available(crop):
    index = LabelIndex.build(crop)
    assert index.next_available() == [45]
    assert index.next_available(2) == [45, 46]
    assert index.next_available(class_id=0, label_divisor=40) == [38]
    assert index.next_available(3, class_id=0, label_divisor=40) == [38, 39, 1]  # then gaps
    assert index.next_available(class_id=1, label_divisor=40) == [45]
    assert index.next_available(class_id=3, label_divisor=40) == [121]
    with pytest.raises(InputError, match="no free label"):
        index.next_available(10, class_id=1, label_divisor=7)


# --------------------------------------------------------------------------- merge / delete
def test_merge_3d(crop):
    labels = crop.copy()
    index = LabelIndex.build(labels)
    edit = merge_labels(labels, [37, 30], index=index)
    assert np.array_equal(labels, crop)  # the input is not mutated
    assert edit.target == 30 and edit.removed_ids == [37]
    expected = np.where(crop == 37, 30, crop).astype(crop.dtype)
    _check_edit(labels, edit, expected, index)
    # The selected label wins when it is one of the picks.
    assert merge_labels(labels, [30, 37], index=index, target=37).target == 37
    assert merge_labels(labels, [30, 37], index=index, target=17).target == 30


@pytest.mark.parametrize(
    ("volume", "plane", "ids"),
    [("crop", 5, [17, 30]), ("crop2d", 4, [1, 2])],  # crop2d: t, y, x per-plane instances
)
def test_merge_in_one_plane(request, volume, plane, ids):
    truth = request.getfixturevalue(volume)
    labels = truth.copy()
    index = LabelIndex.build(labels)
    edit = merge_labels(labels, ids, index=index, fixed={0: plane})
    expected = truth.copy()
    expected[plane][np.isin(truth[plane], ids)] = min(ids)
    _check_edit(labels, edit, expected, index)
    assert edit.box[0] == slice(plane, plane + 1)


def test_merge_reads_and_writes_only_the_boxes(crop):
    log = ReadLog(crop.copy())
    index = LabelIndex.build(crop)
    edit = merge_labels(log, [17, 30], index=index)
    apply_edit(log, edit, index)
    box = _union(index, [17])
    assert log.reads and all(_within(k, box) for k in log.reads + log.writes)
    assert index.equals(LabelIndex.build(log.data))


def test_bad_picks(crop):
    index = LabelIndex.build(crop)
    with pytest.raises(InputError, match="background"):
        merge_labels(crop, [0, 30], index=index)
    with pytest.raises(InputError, match="at least two"):
        merge_labels(crop, [30, 30], index=index)
    with pytest.raises(InputError, match="not found"):
        delete_labels(crop, [99], index=index)
    with pytest.raises(InputError, match="no label picked"):
        delete_labels(crop, [], index=index)
    with pytest.raises(InputError, match="outside the labels"):
        labels_at(crop, [[3, 200, 120], [3, -2, 5]])
    with pytest.raises(InputError, match="no voxel at index 3"):
        delete_labels(crop, [44], index=index, fixed={0: 3})  # 44 is only in plane 0
    assert labels_at(crop, [[3, 200, 120.4], [0, 0, 0]]).tolist() == [17, 0]


def test_delete_3d_and_plane(crop):
    labels = crop.copy()
    index = LabelIndex.build(labels)
    edit = delete_labels(labels, [44, 17], index=index)
    _check_edit(labels, edit, np.where(np.isin(crop, [17, 44]), 0, crop), index)
    edit = delete_labels(labels, [37], index=index, fixed={0: 15})
    expected = crop.copy()
    expected[15][crop[15] == 37] = 0
    _check_edit(labels, edit, expected, index)


def test_path_coordinates_pick_labels_along_a_line(crop):
    pts = path_coordinates([[8, 200, 110], [8, 120, 150]])
    assert len(pts) == 81 and pts[0].tolist() == [8, 120, 150]
    picked = set(labels_at(crop, pts).tolist()) - {0}
    assert picked == {17, 30}


# --------------------------------------------------------------------------- split
def _merged_pair(crop):
    labels = np.where(crop == 37, 30, crop).astype(crop.dtype)
    # Join the two objects by a bridge so they are one connected label.
    labels[:, 150:152, 150:230][labels[:, 150:152, 150:230] == 0] = 30
    return labels


def _largest_part(pieces: np.ndarray, ids) -> float:
    """The smallest share, over planes and pieces, of a piece's voxels in a plane that lie in
    its largest connected part there: 1 when no piece is cut into stripes in any plane."""
    worst = 1.0
    for plane in pieces:
        for i in ids:
            parts, n = ndi.label(plane == i)
            if n:
                sizes = np.bincount(parts.ravel())[1:]
                worst = min(worst, sizes.max() / sizes.sum())
    return worst


def test_split_with_markers_in_one_plane(crop):
    # Markers in one plane: that plane is split by the 2D watershed of its distance
    # transform, and the cut runs straight through the volume (no stripes in any plane).
    labels = _merged_pair(crop)
    index = LabelIndex.build(labels)
    # One marker per blob, neither on its centre: the cut still follows the neck.
    markers = [[8, 110, 140], [8, 222, 272]]
    edit = split_label(labels, 30, index=index, markers=markers)
    assert edit.new_ids == [45]
    after = labels.copy()
    apply_edit(after, edit, index)
    assert index.equals(LabelIndex.build(after))
    assert np.array_equal(after != 0, labels != 0)  # nothing lost, nothing added
    mask = labels == 30
    assert np.array_equal(after[~mask], labels[~mask])
    for piece, original in ((30, 37), (45, 30)):  # the larger piece (37's) keeps the id
        both = ((after == piece) & (crop == original)).sum()
        assert both / (crop == original).sum() > 0.95, piece
        assert both / ((after == piece) & (crop != 0)).sum() > 0.99, piece
        assert ndi.label(after[8] == piece)[1] == 1  # one piece in the marked plane
    assert _largest_part(after, (30, 45)) > 0.85  # (the artificial 2-voxel bridge aside)
    edit.revert(after)
    assert np.array_equal(after, labels)


def test_split_in_3d_seeds_in_the_viewed_plane_no_stripes(crop):
    # The two objects span all 16 planes (cut by both z faces), so the 3D distance transform
    # peaks on the faces: seeding in 3D gave 15 pieces, stacked along z (up to 11 stripes of
    # one piece in a plane). Seeds from the viewed plane give the two objects.
    labels = _merged_pair(crop)
    index = LabelIndex.build(labels)
    for plane in (3, 8, 12):
        edit = split_label(labels, 30, index=index, plane={0: plane})
        assert len(edit.new_ids) == 1, plane
        after = labels.copy()
        edit.apply(after)
        assert ((after == 30) & (crop == 37)).sum() / (crop == 37).sum() > 0.95
        new = edit.new_ids[0]
        assert ((after == new) & (crop == 30)).sum() / (crop == 30).sum() > 0.9
        assert _largest_part(after, (30, new)) > 0.85
    # Anisotropic voxels: the same objects when z is 8x coarser (distances in nm).
    edit = split_label(labels, 30, index=index, plane={0: 8}, spacing=(40, 5, 5))
    after = labels.copy()
    edit.apply(after)
    assert ((after == 30) & (crop == 37)).sum() / (crop == 37).sum() > 0.95


def test_split_the_samples_object_5_in_3d():
    # The bundled model's own 3D result on the bundled sample (tests/data/README.md): label 5
    # is one mitochondrion. Seeded in 3D it split into pieces interleaved in every plane.
    labels = tifffile.imread(DATA / "sample_stack_object5.tif")
    index = LabelIndex.build(labels)
    with pytest.raises(InputError, match="single distance maximum in this plane"):
        split_label(labels, 5, index=index, plane={0: 8})  # one object: nothing to split
    # A user cutting it in two in plane 8, across its long axis and along it. (A plain
    # watershed of the distance from these clicks gave pieces of 29 and 4,700 voxels.)
    for markers in ([[8, 50, 45], [8, 81, 44]], [[8, 60, 30], [8, 62, 55]]):
        edit = split_label(labels, 5, index=index, markers=markers, plane={0: 8})
        after = labels.copy()
        edit.apply(after)
        new = edit.new_ids[0]
        assert np.array_equal(after != 0, labels != 0)
        sizes = [(after == i).sum() for i in (5, new)]
        assert min(sizes) / sum(sizes) > 0.3, sizes
        for z in range(len(after)):  # the cut goes straight through: both pieces everywhere
            assert (after[z] == 5).any() and (after[z] == new).any(), z
        assert _largest_part(after, (5, new)) > 0.99
        # The marked plane shows exactly two pieces, each holding its own click.
        assert ndi.label(after[8] == 5)[1] == 1 and ndi.label(after[8] == new)[1] == 1
        assert {after[tuple(m)] for m in markers} == {5, new}


def test_split_keeps_fragments_no_seed_reaches(crop):
    # A fragment of the label far from the markers used to be set to 0 (data lost).
    labels = _merged_pair(crop)
    labels[0, 5:9, 5:9] = 30  # a detached fragment of label 30
    index = LabelIndex.build(labels)
    edit = split_label(labels, 30, index=index, markers=[[8, 120, 150], [8, 190, 255]])
    after = labels.copy()
    edit.apply(after)
    assert np.array_equal(after != 0, labels != 0)
    assert len(np.unique(after[0, 5:9, 5:9])) == 1


def test_split_by_distance_maxima_and_in_a_plane(crop):
    labels = _merged_pair(crop)
    index = LabelIndex.build(labels)
    edit = split_label(labels, 30, index=index, min_distance=10, fixed={0: 8})
    assert edit.box[0] == slice(8, 9) and len(edit.new_ids) >= 1
    assert min(edit.new_ids) > labels.max()
    plane = labels[8]
    assert np.array_equal(
        edit.new[edit.new != edit.old] != 0, np.ones_like(edit.new[edit.new != edit.old], bool)
    )
    before = labels.copy()
    apply_edit(labels, edit, index)
    assert np.array_equal(labels[8] != 0, plane != 0)  # the object keeps its footprint
    assert np.array_equal(np.delete(labels, 8, 0), np.delete(before, 8, 0))
    assert index.equals(LabelIndex.build(labels))
    with pytest.raises(InputError, match="single distance maximum"):
        split_label(crop, 44, index=LabelIndex.build(crop), min_distance=50)
    with pytest.raises(InputError, match="not on label"):
        split_label(crop, 37, index=LabelIndex.build(crop), markers=[[8, 120, 150], [8, 0, 0]])


def test_split_ids_respect_the_class_divisor(crop):
    labels = _merged_pair(crop).astype(np.uint32) + 0
    labels[labels > 0] += 1000  # class 1 with divisor 1000
    index = LabelIndex.build(labels)
    edit = split_label(
        labels, 1030, index=index, markers=[[8, 120, 150], [8, 190, 255]], label_divisor=1000
    )
    assert edit.new_ids == [1045]


# --------------------------------------------------------------------------- morph
def _ball(r, ndim=3):
    grid = np.mgrid[(slice(-r, r + 1),) * ndim]
    return (grid**2).sum(0) <= r * r


def test_dilate_erode_open_close_match_binary_morphology(crop):
    index = LabelIndex.build(crop)
    m = crop == 17
    fp = _ball(2)
    cases = {
        "dilate": ndi.binary_dilation(m, fp) & (crop == 0) | m,
        "erode": ndi.binary_erosion(m, fp, border_value=1),
        "open": ndi.binary_dilation(ndi.binary_erosion(m, fp, border_value=1), fp) & m,
        "close": ndi.binary_erosion(ndi.binary_dilation(m, fp), fp, border_value=1) | m,
    }
    for op, ref in cases.items():
        labels = crop.copy()
        edit = morph_labels(labels, op, 2, index=index, ids=[17])
        expected = np.where(m, 0, crop)
        expected[ref] = 17
        assert edit.n_changed > 0, op
        _check_edit(labels, edit, expected, index)


def test_dilate_does_not_grow_into_another_label(crop):
    labels = _merged_pair(crop)
    index = LabelIndex.build(labels)
    apply_edit(
        labels, split_label(labels, 30, index=index, markers=[[8, 120, 150], [8, 190, 255]]), index
    )
    before = labels.copy()
    edit = morph_labels(labels, "dilate", 3, index=index, ids=[45])
    expected = before.copy()
    grown = expand_labels(np.where(before == 45, 45, 0), 3)
    expected[(before == 0) & (grown == 45)] = 45
    _check_edit(labels, edit, expected, index)
    assert np.array_equal(before == 30, expected == 30)  # the neighbour keeps every voxel


def test_fill_holes_and_all_labels_in_a_plane(crop):
    holed = crop.copy()
    holed[8, 180:190, 240:250] = 0  # a cavity inside label 37
    assert (crop[8, 180:190, 240:250] == 37).all()
    index = LabelIndex.build(holed)
    edit = morph_labels(holed, "fill holes", index=index, ids=[37])
    _check_edit(holed, edit, crop, index)
    edit = morph_labels(holed, "fill holes", index=index, fixed={0: 8})  # all labels, plane 8
    _check_edit(holed, edit, crop, index)
    edit = morph_labels(crop, "erode", 1, index=LabelIndex.build(crop), fixed={0: 3})
    expected = crop.copy()
    for i in IDS:
        m = crop[3] == i
        expected[3][m & ~ndi.binary_erosion(m, _ball(1, 2), border_value=1)] = 0
    _check_edit(crop.copy(), edit, expected, LabelIndex.build(crop))
    with pytest.raises(InputError, match="unknown operation"):
        morph_labels(crop, "grow", 1, index=index)


def test_morph_in_slabs_equals_one_piece(crop):
    # All labels in 3D run slab by slab (progress and cancel between slabs): the same result.
    index = LabelIndex.build(crop)
    for op, radius in (("dilate", 2), ("erode", 2), ("open", 1), ("close", 1)):
        whole = morph_labels(crop, op, radius, index=index)
        calls = []
        slabs = morph_labels(
            crop,
            op,
            radius,
            index=index,
            block_voxels=320 * 320,
            progress=lambda *a, c=calls: c.append(a),
        )
        assert len(calls) >= 2 and calls[-1][0] == calls[-1][1], op
        assert slabs.box == whole.box and np.array_equal(slabs.new, whole.new), op


def test_opening_away_a_whole_label_removes_it(crop):
    # Nothing survives the erosion: the distance transform of an array without zeros used to
    # keep voxels near the box corner.
    index = LabelIndex.build(crop)
    edit = morph_labels(crop, "open", 12, index=index, ids=[44])
    after = crop.copy()
    apply_edit(after, edit, index)
    assert not (after == 44).any() and index.count(44) == 0


# --------------------------------------------------------------------------- zarr / dask / 2D+t
def test_edits_on_zarr_and_dask(crop, tmp_path):
    import dask.array as da
    import zarr

    z = zarr.create_array(tmp_path / "l.zarr", shape=crop.shape, chunks=(4, 64, 64), dtype="u2")
    z[:] = crop
    index = LabelIndex.build(z)
    edit = merge_labels(z, [17, 30], index=index)
    apply_edit(z, edit, index)
    expected = np.where(crop == 30, 17, crop)
    assert np.array_equal(z[:], expected)
    assert index.equals(LabelIndex.build(expected))
    edit.revert(z)
    assert np.array_equal(z[:], crop)

    d = da.from_array(crop.copy(), chunks=(4, 80, 80))
    index = LabelIndex.build(d)
    edit = delete_labels(d, [37], index=index)
    apply_edit(d, edit, index)
    assert np.array_equal(d.compute(), np.where(crop == 37, 0, crop))
    edit.revert(d)
    assert np.array_equal(d.compute(), crop)


def test_4d_merge_at_one_time_point(crop):
    # t, z, y, x: a 3D merge at one time point leaves the other untouched.
    tz = np.stack([crop, crop])
    index = LabelIndex.build(tz)
    edit = merge_labels(tz, [17, 44], index=index, fixed={0: 1})
    expected = tz.copy()
    expected[1][crop == 44] = 17
    _check_edit(tz, edit, expected, index)


def test_generic_update_after_an_arbitrary_paint(crop):
    labels = crop.copy()
    index = LabelIndex.build(labels)
    box = (slice(2, 9), slice(140, 200), slice(100, 260))
    labels[box] = np.where(labels[box] == 37, 17, labels[box])  # spreads 17, shrinks 37
    labels[3, 150:160, 150:160] = 99
    index.update(labels, box)
    assert index.equals(LabelIndex.build(labels))


# --------------------------------------------------------------------------- jump / filter
def test_label_location(crop):
    index = LabelIndex.build(crop)
    loc = label_location(crop, 37, index=index)
    assert crop[loc] == 37
    coords = np.argwhere(crop == 37)
    assert np.abs(np.array(loc) - coords.mean(0)).max() < 15
    loc = label_location(crop, 37, index=index, fixed={0: 2})
    assert loc[0] == 2 and crop[loc] == 37


def test_filter_by_size_and_border(crop, crop2d, tmp_path):
    import zarr

    out, removed = filter_labels(crop, min_size=1000)
    assert removed.tolist() == [44]
    assert np.array_equal(out, np.where(crop == 44, 0, crop))
    out, removed = filter_labels(crop, exclude_border=True, spatial_ndim=2)
    # Per plane: 37 touches nothing in y/x; border objects are removed plane by plane.
    expected = crop.copy()
    for t in range(crop.shape[0]):
        for i in np.unique(crop[t])[1:]:
            ys, xs = np.nonzero(crop[t] == i)
            if ys.min() == 0 or xs.min() == 0 or ys.max() == 319 or xs.max() == 319:
                expected[t][crop[t] == i] = 0
    assert np.array_equal(out, expected)
    out, removed = filter_labels(crop, exclude_border=True)  # 3D: z border counts
    assert np.array_equal(out, np.zeros_like(crop)) and removed.tolist() == list(IDS)
    z = zarr.create_array(tmp_path / "f.zarr", shape=crop2d.shape, chunks=(1, 160, 160), dtype="u2")
    z[:] = crop2d
    lazy, _ = filter_labels(z, min_size=2000, spatial_ndim=2)
    ref, _ = filter_labels(crop2d, min_size=2000, spatial_ndim=2)
    assert hasattr(lazy, "compute") and np.array_equal(lazy.compute(), ref)
    sizes_kept = [np.bincount(ref[t].ravel())[1:] for t in range(ref.shape[0])]
    assert all(((s == 0) | (s >= 2000)).all() for s in sizes_kept)
    assert (ref != crop2d).any()


# --------------------------------------------------------------------------- measure
def test_measure_matches_regionprops(crop, raw, tmp_path):
    table = measure_labels(
        crop, raw, spacing=(5, 5, 5), label_divisor=10, block_voxels=3 * 320 * 320
    )
    ref = regionprops_table(
        crop, raw, properties=("label", "area", "centroid", "bbox", "intensity_mean")
    )
    assert table["label"].tolist() == list(IDS)
    assert np.array_equal(table["voxels"], ref["area"].astype(int))
    np.testing.assert_allclose(table["volume"], ref["area"] * 125)
    for d in range(3):
        np.testing.assert_allclose(table[f"centroid-{d}"], ref[f"centroid-{d}"])
        assert np.array_equal(table[f"bbox-min-{d}"], ref[f"bbox-{d}"])
        assert np.array_equal(table[f"bbox-max-{d}"], ref[f"bbox-{d + 3}"])
    np.testing.assert_allclose(table["mean_intensity"], ref["intensity_mean"])
    assert table["class"].tolist() == [1, 3, 3, 4]
    assert table["touches_border"].all()
    np.testing.assert_allclose(table["extent"][3], 218 / (1 * 17 * 17))
    assert class_counts(table["label"], 10) == {1: 1, 3: 2, 4: 1}
    table_to_csv(table, tmp_path / "m.csv")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0].startswith("label,class,voxels,volume") and lines[4].startswith("44,4,218,")


def test_measure_per_plane(crop2d):
    table = measure_labels(crop2d, spatial_ndim=2)
    n = sum(len(np.unique(p)) - 1 for p in crop2d)
    assert len(table["label"]) == n
    first = (table["index-0"] == 0) & (table["label"] == 1)
    assert table["voxels"][first][0] == int((crop2d[0] == 1).sum())


def test_benchmark_runs_on_a_small_tiled_volume(tmp_path):
    # Self-contained: the committed crop (4 real objects), subsampled by 2 and tiled.
    import json

    from benchmarks import proofread as bench

    out = tmp_path / "b.json"
    argv = ["--labels", str(DATA / "lucchi_crop_instances_3d_cc.tif"), "--stride", "2"]
    argv += ["--shape", "32x320x640", "--objects", "3", "--naive-repeats", "1"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["index_consistent_after_all_edits"] and result["objects"] > 50
    assert set(result["indexed_ms"]) >= {"merge", "delete"}


# --------------------------------------------------------------------------- jobs and edges
def test_long_work_reports_progress_and_can_be_cancelled(crop):
    from empanada_napari.core.errors import Cancelled

    calls = []
    index = LabelIndex.build(crop, block_voxels=320 * 320, progress=lambda *a: calls.append(a))
    assert calls == [(k, 16) for k in range(1, 17)]
    calls.clear()
    table = measure_labels(crop, block_voxels=4 * 320 * 320, progress=lambda *a: calls.append(a))
    assert calls[-1] == (4, 4) and len(table["label"]) == 4
    calls.clear()
    filter_labels(crop, min_size=1000, progress=lambda *a: calls.append(a))
    assert calls[-1][0] == calls[-1][1] == 2  # index, then the copy
    stop_after = {"n": 0}

    def cancel_third() -> bool:
        stop_after["n"] += 1
        return stop_after["n"] > 2

    for work in (
        lambda c: LabelIndex.build(crop, block_voxels=320 * 320, cancel=c),
        lambda c: measure_labels(crop, block_voxels=320 * 320, cancel=c),
        lambda c: filter_labels(crop, min_size=10, spatial_ndim=2, cancel=c),
        lambda c: morph_labels(crop, "dilate", 1, index=index, block_voxels=320 * 320, cancel=c),
    ):
        stop_after["n"] = 0
        with pytest.raises(Cancelled):
            work(cancel_third)


def test_undoing_an_edit_that_changed_nothing(crop):
    labels = crop.copy()
    index = LabelIndex.build(labels)
    edit = morph_labels(labels, "fill holes", index=index, ids=[17])  # 17 has no cavity
    assert edit.n_changed == 0 and edit.old.size == 0
    apply_edit(labels, edit, index)
    edit.revert(labels)  # used to fail: empty values of the wrong shape for the empty box
    index.update(labels, edit.box, old=edit.new, new=edit.old)
    index.update(labels, edit.box)
    assert np.array_equal(labels, crop) and index.equals(LabelIndex.build(crop))


@pytest.mark.parametrize(
    ("markers", "message"),
    [
        ([8, 120, 150], r"\(n, 3\) array"),  # one point, not a list of points
        ([[120, 150], [190, 255]], r"\(n, 3\) array"),  # 2D points on 3D labels
        ([[8, 120, 150, 0], [8, 190, 255, 0]], r"\(n, 3\) array"),
        ([[8, 120, np.nan], [8, 190, 255]], "finite"),
        ([[8, 120], [8, 190, 255]], "list of points|array"),  # ragged
        ([[8, 120, 150], [8, 120, 150]], "different voxels"),
    ],
)
def test_split_wrong_markers_are_clear_errors(crop, markers, message):
    labels = _merged_pair(crop)
    with pytest.raises(InputError, match=message):
        split_label(labels, 30, index=LabelIndex.build(labels), markers=markers)


@pytest.mark.parametrize("min_distance", [0, -3, 2.5, float("nan"), "far"])
def test_split_bad_min_distance_is_a_clear_error(crop, min_distance):
    with pytest.raises(InputError, match="min distance"):
        split_label(crop, 30, index=LabelIndex.build(crop), min_distance=min_distance)


def test_split_huge_min_distance_is_one_maximum_not_a_memory_error(crop):
    # peak_local_max would allocate a (2 * d + 1)**3 footprint.
    for d in (10**6, 10**18):
        with pytest.raises(InputError, match="single distance maximum"):
            split_label(crop, 30, index=LabelIndex.build(crop), min_distance=d)


@pytest.mark.parametrize("bad", [-1, -(2**40), 2**63, 2**70, 1.5])
def test_bad_ids_are_clear_errors(crop, bad):
    index = LabelIndex.build(crop)
    for call in (
        lambda: merge_labels(crop, [30, bad], index=index),
        lambda: delete_labels(crop, [bad], index=index),
        lambda: split_label(crop, bad, index=index),
        lambda: morph_labels(crop, "dilate", 1, index=index, ids=[bad]),
        lambda: label_location(crop, bad, index=index),
        lambda: index.bbox(bad),
    ):
        with pytest.raises(InputError, match="negative|2\\*\\*63|whole number"):
            call()
    assert bad not in index and index.count(bad) == 0


def test_labels_with_negative_or_huge_ids_are_refused(crop):
    signed = crop.astype(np.int32)
    signed[0, 0, 0] = -4
    with pytest.raises(InputError, match="negative values"):
        LabelIndex.build(signed)
    huge = crop.astype(np.uint64)
    huge[0, 0, 0] = 2**63 + 5
    with pytest.raises(InputError, match="2\\*\\*63"):
        LabelIndex.build(huge)
    top = crop.astype(np.uint64)
    top[0, 0, 0] = 2**63 - 1  # the largest id still works
    assert LabelIndex.build(top).max_id == 2**63 - 1


def test_next_available_edges(crop):
    index = LabelIndex.build(crop)
    with pytest.raises(InputError, match="class id"):
        index.next_available(class_id=-1, label_divisor=10)
    with pytest.raises(InputError, match="label divisor"):
        index.next_available(class_id=1, label_divisor=-10)
    with pytest.raises(InputError, match="above 2\\*\\*63"):
        index.next_available(class_id=2**62, label_divisor=10)
    with pytest.raises(InputError, match="number of ids"):
        index.next_available(0)
    top = LabelIndex.build(np.array([[0, 2**63 - 2]], np.uint64))
    assert top.next_available(2) == [1, 2]  # past the largest id: gaps, without a huge range


def test_bad_radius_and_spacing_are_clear_errors(crop):
    index = LabelIndex.build(crop)
    for radius in (0, -1, 1.5):
        with pytest.raises(InputError, match="radius"):
            morph_labels(crop, "dilate", radius, index=index, ids=[17])
    with pytest.raises(InputError, match="larger than the labels"):
        morph_labels(crop, "erode", 10**9, index=index, ids=[17])
    with pytest.raises(InputError, match="spacing"):
        split_label(crop, 30, index=index, spacing=(1, 0, 1))
    with pytest.raises(InputError, match="no voxel in plane"):
        split_label(crop, 44, index=index, plane={0: 9})  # 44 is only in plane 0


def test_measure_column_titles_and_csv(crop, tmp_path):
    table = measure_labels(crop, spacing=(5, 5, 5), label_divisor=10)
    titles = column_titles(table, unit="nm")
    assert titles["volume"] == "volume (nm³)" and titles["centroid-0"] == "centroid z (voxel)"
    assert titles["bbox-min-2"] == "x start (voxel)" and titles["extent"] == "extent (voxels / box)"
    assert column_titles(table)["volume"] == "volume (scale units³)"
    per_plane = measure_labels(crop, spatial_ndim=2)
    plane_titles = column_titles(per_plane, unit="µm")
    assert plane_titles["volume"] == "area (µm²)" and plane_titles["index-0"] == "z (plane)"
    table_to_csv(table, tmp_path / "t.csv", titles)
    import csv

    with open(tmp_path / "t.csv", encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == [titles[k] for k in table] and all("," not in t for t in header)
    first = (tmp_path / "t.csv").read_text(encoding="utf-8").splitlines()[1]
    table_to_csv(table, tmp_path / "k.csv")  # keys by default; same rows
    assert (tmp_path / "k.csv").read_text().splitlines()[1] == first


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.int64, np.uint64])
def test_has_ids_equals_isin(dtype):
    from empanada_napari.core.proofread._boxes import has_ids

    rng = np.random.default_rng(0)
    values = rng.integers(0, 40, size=(6, 30, 30)).astype(dtype)
    for ids in ([0], [3, 7], [3, 300, -1], list(range(0, 40, 2)), np.array([5], np.int64)):
        expected = np.isin(values.astype(np.int64), np.asarray(ids, np.int64))
        assert np.array_equal(has_ids(values, ids), expected)
