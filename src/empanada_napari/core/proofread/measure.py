"""Per-label measurements (a table of columns), readable column titles, CSV export."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from empanada_napari.core import jobs
from empanada_napari.core.errors import InputError

from ._boxes import BLOCK_VOXELS, MAX_ID, blocks, lazy, read


def _measure_volume(
    labels: Any, image: Any, block_voxels: int, step: Callable[[], None]
) -> dict[str, np.ndarray]:
    """Per-label sums over slabs with regionprops_table, combined exactly."""
    from skimage.measure import regionprops_table

    ndim = len(labels.shape)
    rows: list[dict[str, np.ndarray]] = []
    for box in blocks(labels.shape, block_voxels):
        block = read(labels, box)
        step()
        if not block.any():
            continue
        props = ["label", "area", "centroid", "bbox"]
        kwargs = {}
        if image is not None:
            props.append("intensity_mean")
            kwargs["intensity_image"] = read(image, box).astype(np.float64)
        if block.dtype.kind == "u" and block.dtype.itemsize == 8:
            block = block.astype(np.int64)
        t = regionprops_table(block, properties=props, **kwargs)
        off = [s.start for s in box]
        area = t["area"].astype(np.float64)
        row = {"label": t["label"].astype(np.int64), "area": area}
        for d in range(ndim):
            row[f"csum-{d}"] = (t[f"centroid-{d}"] + off[d]) * area
            row[f"lo-{d}"] = t[f"bbox-{d}"] + off[d]
            row[f"hi-{d}"] = t[f"bbox-{d + ndim}"] + off[d]
        if image is not None:
            row["isum"] = t["intensity_mean"] * area
        rows.append(row)
    if not rows:
        return {}
    cat = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    ids, inverse = np.unique(cat["label"], return_inverse=True)
    out: dict[str, np.ndarray] = {"label": ids}
    for k, v in cat.items():
        if k == "label":
            continue
        if k.startswith("lo-"):
            acc = np.full(len(ids), MAX_ID, np.int64)
            np.minimum.at(acc, inverse, v.astype(np.int64))
        elif k.startswith("hi-"):
            acc = np.zeros(len(ids), np.int64)
            np.maximum.at(acc, inverse, v.astype(np.int64))
        else:
            acc = np.zeros(len(ids), np.float64)
            np.add.at(acc, inverse, v)
        out[k] = acc
    return out


def measure_labels(
    labels: Any,
    image: Any | None = None,
    *,
    spacing: Sequence[float] | None = None,
    spatial_ndim: int | None = None,
    label_divisor: int | None = None,
    block_voxels: int = BLOCK_VOXELS,
    progress: jobs.Progress | None = None,
    cancel: jobs.CancelFlag = None,
) -> dict[str, np.ndarray]:
    """Per-label table: id, voxels, physical volume, bounding box, centroid, extent,
    mean intensity of ``image`` (when given) and whether the object touches the border.

    ``spacing`` is the voxel size per axis (the layer scale). Columns are numpy arrays of equal
    length (ready for pandas or CSV); :func:`column_titles` gives readable titles with units.
    Centroids and boxes are in data (voxel) coordinates. With ``spatial_ndim`` <
    ``labels.ndim`` each plane along the leading axes is measured on its own and
    ``index-<axis>`` columns say which. Blocks of ``block_voxels`` are read in turn;
    ``progress(done, total)`` counts them and ``cancel`` is checked between them.
    """
    ndim = len(labels.shape)
    spatial_ndim = ndim if spatial_ndim is None else int(spatial_ndim)
    if not 1 <= spatial_ndim <= ndim:
        raise InputError(f"spatial_ndim must be in 1..{ndim}")
    labels, image = lazy(labels), None if image is None else lazy(image)
    if image is not None and tuple(image.shape) != tuple(labels.shape):
        raise InputError(
            f"image shape {tuple(image.shape)} differs from labels shape {tuple(labels.shape)}"
        )
    spacing = np.ones(ndim) if spacing is None else np.asarray(spacing, float)
    if spacing.shape != (ndim,):
        raise InputError(f"spacing needs {ndim} values")
    lead = ndim - spatial_ndim
    leads = list(np.ndindex(*labels.shape[:lead]))
    total = len(leads) * len(blocks(labels.shape[lead:], block_voxels))
    done = 0

    def step() -> None:
        nonlocal done
        jobs.check_cancelled(cancel, "Measuring was cancelled.")
        done += 1
        jobs.report(progress, done, total)

    tables = []
    for lead_idx in leads:
        sub_labels = labels[lead_idx] if lead else labels
        sub_image = (image[lead_idx] if lead else image) if image is not None else None
        raw = _measure_volume(sub_labels, sub_image, block_voxels, step)
        if not raw:
            continue
        n = len(raw["label"])
        area = raw["area"]
        table: dict[str, np.ndarray] = {}
        for axis, i in enumerate(lead_idx):
            table[f"index-{axis}"] = np.full(n, i, np.int64)
        table["label"] = raw["label"]
        if label_divisor:
            table["class"] = raw["label"] // int(label_divisor)
        table["voxels"] = area.astype(np.int64)
        table["volume"] = area * float(np.prod(spacing[lead:]))
        shape = labels.shape[lead:]
        box_vol = np.ones(n)
        touch = np.zeros(n, bool)
        for d in range(spatial_ndim):
            table[f"bbox-min-{d + lead}"] = raw[f"lo-{d}"]
        for d in range(spatial_ndim):
            table[f"bbox-max-{d + lead}"] = raw[f"hi-{d}"]
            box_vol *= raw[f"hi-{d}"] - raw[f"lo-{d}"]
            touch |= (raw[f"lo-{d}"] == 0) | (raw[f"hi-{d}"] == shape[d])
        for d in range(spatial_ndim):
            table[f"centroid-{d + lead}"] = raw[f"csum-{d}"] / area
        table["extent"] = area / box_vol
        if image is not None:
            table["mean_intensity"] = raw["isum"] / area
        table["touches_border"] = touch
        tables.append(table)
    if not tables:
        return {"label": np.zeros(0, np.int64), "voxels": np.zeros(0, np.int64)}
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}


_POWERS = {1: "", 2: "²", 3: "³"}


def column_titles(
    columns: Iterable[str],
    *,
    unit: str | None = None,
    axis_names: Sequence[str] | None = None,
) -> dict[str, str]:
    """Readable titles with units for the columns of a :func:`measure_labels` table.

    ``unit`` is the physical unit of the layer scale (e.g. ``"nm"``); without one the volume
    is in "scale units" (voxels times the layer scale). ``axis_names`` names the labels' axes
    (by default the last three are z, y, x). Positions stay in voxels, as in the table.
    """
    columns = list(columns)
    ndim = 1 + max(
        [int(c.rsplit("-", 1)[1]) for c in columns if c.startswith(("bbox-", "centroid-"))]
        + [int(c.split("-")[1]) for c in columns if c.startswith("index-")]
        + [0]
    )
    if axis_names is None:
        spatial = ("z", "y", "x")[-min(ndim, 3) :]
        axis_names = [f"axis {a}" for a in range(ndim - len(spatial))] + list(spatial)
    n_spatial = sum(c.startswith("centroid-") for c in columns)
    power = _POWERS.get(n_spatial, f"^{n_spatial}")
    size_unit = f"{unit}{power}" if unit else f"scale units{power}"
    size_name = "area" if n_spatial == 2 else "volume"
    fixed = {
        "label": "label",
        "class": "class",
        "voxels": "voxels",
        "volume": f"{size_name} ({size_unit})",
        "extent": "extent (voxels / box)",
        "mean_intensity": "mean intensity",
        "touches_border": "touches border",
    }
    titles = {}
    for c in columns:
        name = axis_names[int(c.rsplit("-", 1)[1])] if c[-1].isdigit() else ""
        if c in fixed:
            titles[c] = fixed[c]
        elif c.startswith("bbox-min-"):
            titles[c] = f"{name} start (voxel)"
        elif c.startswith("bbox-max-"):
            titles[c] = f"{name} stop (voxel; exclusive)"
        elif c.startswith("centroid-"):
            titles[c] = f"centroid {name} (voxel)"
        elif c.startswith("index-"):
            titles[c] = f"{name} (plane)"
        else:
            titles[c] = c
    return titles


def class_counts(ids: Iterable[int], label_divisor: int | None) -> dict[int, int]:
    """Number of objects per class (``id // label_divisor``; class 1 when no divisor)."""
    ids = np.asarray(list(ids), np.int64)
    ids = ids[ids != 0]
    if not label_divisor:
        return {1: len(ids)} if len(ids) else {}
    classes, counts = np.unique(ids // int(label_divisor), return_counts=True)
    return {int(c): int(n) for c, n in zip(classes, counts, strict=True)}


def table_to_csv(
    table: Mapping[str, np.ndarray], path: Any, titles: Mapping[str, str] | None = None
) -> None:
    """Write a :func:`measure_labels` table to CSV (UTF-8: header + one row per label).

    ``titles`` (e.g. from :func:`column_titles`) replaces the column keys in the header.
    """
    import csv

    keys = list(table)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([(titles or {}).get(k, k) for k in keys])
        for row in zip(*(table[k].tolist() for k in keys), strict=True):
            writer.writerow(row)
