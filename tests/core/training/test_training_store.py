"""Saving corrected patches, reading them back, and datasets checked in words."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from empanada_napari.core.errors import InputError
from empanada_napari.core.training import (
    check_dataset,
    is_dataset,
    load_training_data,
    read_dataset,
    read_manifest,
    save_patches,
)

from ...conftest import DATA


@pytest.fixture(scope="module")
def pairs():
    """Four real 64 px patches of the CDeep3M crop with 2D connected components."""
    from skimage.measure import label

    raw = tifffile.imread(DATA / "cdeep3m_val_crop_raw.tif")
    binary = tifffile.imread(DATA / "cdeep3m_val_crop_mito_binary.tif")
    images, masks = [], []
    for z, y, x in ((0, 0, 0), (0, 64, 64), (1, 128, 192), (1, 192, 192)):
        images.append(raw[z, y : y + 64, x : x + 64].copy())
        masks.append(label(binary[z, y : y + 64, x : x + 64] > 0).astype(np.uint16))
    assert all(m.any() for m in masks)
    return images, masks


def test_save_reads_back_identically_and_appends(tmp_path, pairs):
    images, masks = pairs
    root = tmp_path / "dataset"
    infos = [
        {"source": "raw", "axis": 0, "start": [i, 0, 0], "stop": [i + 1, 64, 64]} for i in range(2)
    ]
    first = save_patches(root, images[:2], masks[:2], source="raw", infos=infos, prefilled_by="M")
    assert [p.name for p in first] == ["raw_0000.tiff", "raw_0001.tiff"]
    names, back_images, back_masks = read_dataset(root)
    assert names == ["raw/raw_0000", "raw/raw_0001"]
    for a, b in zip(back_images, images[:2], strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    for a, b in zip(back_masks, masks[:2], strict=True):
        assert a.dtype == np.int32
        np.testing.assert_array_equal(a, b)
    before = {p: p.read_bytes() for p in root.rglob("*.tiff")}

    second = save_patches(root, images[2:], masks[2:], source="raw")
    assert [p.name for p in second] == ["raw_0002.tiff", "raw_0003.tiff"]
    assert all(p.read_bytes() == data for p, data in before.items())  # nothing overwritten
    assert len(read_dataset(root)[0]) == 4
    rows = read_manifest(root)
    assert [r["name"] for r in rows] == ["raw_0000", "raw_0001", "raw_0002", "raw_0003"]
    assert rows[1]["start"] == [1, 0, 0] and rows[1]["prefilled_by"] == "M"
    assert rows[0]["corrected_by"] == "" and rows[0]["date"]
    assert rows[3]["source"] == "" and rows[3]["start"] == []


def test_save_refuses_clearly_and_writes_nothing(tmp_path, pairs):
    images, masks = pairs
    root = tmp_path / "ds"
    empty = [masks[0], np.zeros_like(masks[1]), masks[2]]
    with pytest.raises(InputError, match=r"Patch\(es\) 2 have no labelled object"):
        save_patches(root, images[:3], empty)
    assert not root.exists()
    with pytest.raises(InputError, match="shape of the patch"):
        save_patches(root, images[:1], [masks[0][:10]])
    with pytest.raises(InputError, match="integer"):
        save_patches(root, images[:1], [masks[0].astype(np.float32)])
    save_patches(root, images[:3], empty, allow_empty=True)  # background examples on purpose
    assert len(read_dataset(root)[0]) == 3

    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.docx").write_text("x")
    with pytest.raises(InputError, match="not a dataset folder.*thesis.docx"):
        save_patches(home, images[:1], masks[:1])
    assert not is_dataset(home) and is_dataset(root)


def _write(root, names_images, names_masks, image, mask):
    (root / "s" / "images").mkdir(parents=True, exist_ok=True)
    (root / "s" / "masks").mkdir(parents=True, exist_ok=True)
    for n in names_images:
        tifffile.imwrite(root / "s" / "images" / f"{n}.tiff", image)
    for n in names_masks:
        tifffile.imwrite(root / "s" / "masks" / f"{n}.tiff", mask)


def test_bad_datasets_get_errors_in_words(tmp_path, pairs):
    image, mask = pairs[0][0], pairs[1][0].astype(np.int32)

    no_masks = tmp_path / "no_masks"
    _write(no_masks, ["a", "b"], [], image, mask)
    with pytest.raises(InputError, match="2 images but no masks"):
        check_dataset(no_masks)

    unpaired = tmp_path / "unpaired"
    _write(unpaired, ["a", "b", "c"], ["a", "b", "d"], image, mask)
    with pytest.raises(InputError, match=r"2 file name\(s\) do not pair.*images/c.tiff"):
        check_dataset(unpaired)

    floats = tmp_path / "floats"
    _write(floats, ["a", "b"], ["a", "b"], image, mask.astype(np.float32))
    with pytest.raises(InputError, match="floating-point.*integer instance labels"):
        check_dataset(floats)

    one = tmp_path / "one"
    _write(one, ["a"], ["a"], image, mask)
    with pytest.raises(InputError, match=r"1 image/mask pair\(s\); finetuning needs at least 2"):
        check_dataset(one)

    blank = tmp_path / "blank"
    _write(blank, ["a", "b"], ["a", "b"], image, np.zeros_like(mask))
    with pytest.raises(InputError, match="nothing to learn"):
        check_dataset(blank)

    wrong = tmp_path / "wrong"
    _write(wrong, ["a", "b"], ["a", "b"], image, mask[:32])
    with pytest.raises(InputError, match="sizes disagree"):
        check_dataset(wrong)

    with pytest.raises(InputError, match="does not exist"):
        check_dataset(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not a dataset"):
        check_dataset(tmp_path / "plain")


def test_training_data_holds_out_validation_patches(tmp_path, pairs):
    images, masks = pairs
    save_patches(tmp_path / "d", images, masks)
    data = load_training_data(tmp_path / "d", val_fraction=0.25, patch_size=32, batch_size=2)
    assert (data.n_train, data.n_val) == (3, 1)
    assert len(data.val[0]) == 1 and data.val[0][0].shape == (64, 64)
    assert "1 held out" in data.describe()
    sample, targets = data.dataset[0]
    assert sample.shape == (1, 32, 32) and set(targets) >= {"sem", "ctr_hmp", "offsets"}
    small = tmp_path / "small"
    save_patches(small, images[:2], masks[:2])
    assert load_training_data(small).val is None  # too few to hold any out


def test_manifest_records_rounds_and_effort_and_upgrades_old_manifests(tmp_path, pairs):
    import csv

    from empanada_napari.core.training.effort import correction_effort
    from empanada_napari.core.training.manifest import MANIFEST_FIELDS, picked_places

    images, masks = pairs
    root = tmp_path / "ds"
    root.mkdir()
    # A manifest as earlier versions wrote it (fewer columns), with one row.
    old = root / "manifest.csv"
    old.write_text(
        "name,folder,source,axis,start,stop,date,prefilled_by,corrected_by\n"
        'old_0000,old,raw,0,"[0, 0, 0]","[1, 64, 64]",2026-12-01,Lucchi_Lite_v1,\n',
        encoding="utf-8",
    )
    proposal = np.where(masks[0] == 1, 0, masks[0])  # the model missed object 1
    effort = correction_effort(proposal, masks[0])
    assert effort["added"] == 1
    infos = [{"source": "raw", "axis": 0, "start": [0, 0, 0], "stop": [1, 64, 64], "doubt": 0.4}]
    save_patches(root, images[:1], masks[:1], source="raw", infos=infos,
                 prefilled_by="Lucchi_Lite_v1", efforts=[effort])  # fmt: skip
    save_patches(root, images[1:2], masks[1:2], source="raw", infos=infos, prefilled_by="mine_1")
    with open(old, newline="", encoding="utf-8") as fh:
        assert tuple(next(csv.reader(fh))) == MANIFEST_FIELDS  # rewritten once, new header
    rows = read_manifest(root)
    assert [r["name"] for r in rows] == ["old_0000", "raw_0000", "raw_0001"]
    # Round: the model's earlier round (the old row), then one more for a new model.
    assert [r["round"] for r in rows] == ["", "1", "2"]
    assert rows[1]["added"] == "1" and rows[1]["doubt"] == "0.4" and rows[2]["added"] == ""
    assert len(picked_places(root, "raw")) == 3 and picked_places(root, "other") == []
