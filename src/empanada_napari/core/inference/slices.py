"""2D mode to a file: every slice segmented on its own, written safely, resumable in zarr.

``.tif``/``.tiff`` outputs are computed in memory and appear only once complete (a temporary
file, then a rename). ``.zarr`` outputs are written batch by batch through
:class:`~..output.ZarrOutput`: the store records its status and how many slices are done, so
a killed run never looks finished and ``resume=True`` continues where it stopped; with
``overwrite`` the old result stays until the new one is complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import write_labels
from ..jobs import CancelFlag, Progress, report
from ..ngff import read_meta
from ..output import ZarrOutput, input_fingerprint, output_lock
from ..preprocess import check_image, intensity_range
from .engine import Engine2D
from .stack import present_ids

FORMAT_VERSION = 1


def count_objects(labels: np.ndarray) -> int:
    """Objects in 2D-mode labels: the distinct ids of each slice, summed over slices (ids
    restart in every slice, so one id in two slices is two objects)."""
    labels = np.asarray(labels)
    n = int(np.prod(labels.shape[:-2]))  # not -1: an empty array has no size to infer it
    planes = labels.reshape(n, *labels.shape[-2:]) if labels.ndim >= 2 else labels[None]
    return int(sum(_distinct_nonzero(p) for p in planes))


def _distinct_nonzero(plane: np.ndarray) -> int:
    """Distinct non-zero ids of one plane. 2D ids are small (class * divisor + k), so a
    bincount does where it fits: about 4x faster than np.unique's hash on 768 x 1024."""
    flat = plane.reshape(-1)
    if flat.size == 0:
        return 0
    if flat.dtype.kind in "ui" and flat.dtype != np.uint64 and int(flat.min()) >= 0:
        ids = present_ids(flat)
        if ids is not None:
            return int(ids.size)
    return int(np.count_nonzero(np.unique(flat)))


def segment_slices_to(
    path: str | os.PathLike,
    engine: Engine2D,
    image,
    *,
    resume: bool = False,
    overwrite: bool = False,
    source: str | os.PathLike | None = None,
    progress: Progress | None = None,
    cancel: CancelFlag = None,
) -> dict[str, Any]:
    """Segment each slice of ``image`` (H, W) or (N, H, W) into ``path``; return a summary
    (``output``, ``objects``: summed over the slices, ``label_ids``: the distinct ids in the
    output, as ids restart in every slice, ``slices``). ``source`` is the input's file, for the zarr
    fingerprint that ``resume`` checks."""
    check_image(image, ndim=(2, 3))
    path = Path(path).expanduser()
    stack = image if image.ndim == 3 else image[None]
    if path.suffix.lower() != ".zarr":
        if resume:
            raise InputError("resume needs a .zarr output (a TIFF is written whole at the end).")
        labels = engine.segment_slices(stack, progress=progress, cancel=cancel)
        write_labels(path, labels if image.ndim == 3 else labels[0], overwrite=overwrite)
        return {
            "output": str(path),
            "objects": count_objects(labels),
            "label_ids": _most_in_a_slice(labels),
            "slices": len(labels),
        }
    engine.check_memory(stack.shape)  # before the output exists
    value_range = intensity_range(stack)
    fingerprint = {
        "version": FORMAT_VERSION,
        "mode": "2d",
        "input": input_fingerprint(image, source),
        "value_range": [float(v) for v in value_range],  # a Fraction (64-bit images) as a number
        "model_file": str(engine.model.path),
        "inference": engine.settings.to_dict(),
    }
    output = ZarrOutput(
        path, tuple(image.shape), None, fingerprint, resume=resume, overwrite=overwrite
    )
    with output_lock(path):
        array = output.open()
        meta = read_meta(output.target)
        first = int(meta.get("slices_done", 0)) if resume else 0
        objects = int(meta.get("objects_done", 0)) if resume else 0
        label_ids = int(meta.get("label_ids_done", 0)) if resume else 0
        total = stack.shape[0]
        if not output.complete:
            report(progress, first, total)
            target = array if image.ndim == 3 else None
            for start, labels in engine.iter_batches(
                stack, value_range=value_range, progress=progress, cancel=cancel, first=first
            ):
                if target is not None:
                    target[start : start + len(labels)] = labels
                else:
                    array[...] = labels[0]
                objects += count_objects(labels)
                label_ids = max(label_ids, _most_in_a_slice(labels))
                # Recorded after the batch is written: a resumed run redoes at most one batch.
                output.update(
                    slices_done=start + len(labels),
                    objects_done=objects,
                    label_ids_done=label_ids,
                )
        output.finish(objects=objects)
    return {"output": str(path), "objects": objects, "label_ids": label_ids, "slices": total}


def _most_in_a_slice(labels: np.ndarray) -> int:
    """The distinct label ids of a 2D result: ids restart in every slice (1..k of each
    class), so the file holds as many as the most crowded slice has objects."""
    return max((count_objects(plane) for plane in labels), default=0)
