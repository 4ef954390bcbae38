"""What a chunked run keeps on disk: per-block work files; the output's fingerprint.

Work files (``<output>/.empanada-work`` or a temporary folder): each block's padded labels as
a compressed zarr array (linking reads only the regions it compares) and a small summary
(``.npz``) written last, so a block counts as done only once its summary exists. The output
zarr is a valid array from the first moment (zeros until written) and records its settings
and status under the ``empanada`` attribute, so an interrupted run can be resumed.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ...errors import EmpanadaError
from ...io import disk_error
from ...output import input_fingerprint, recorded_fingerprint
from .plan import Block, Job

WORK_DIR = ".empanada-work"
FORMAT_VERSION = 2


def block_file(work: str, block: Block) -> Path:
    """The block's summary; it is written last, so it exists only for finished blocks."""
    return Path(work) / f"block_{block.name}.npz"


def _labels_store(work: str, block: Block) -> Path:
    return Path(work) / f"block_{block.name}.zarr"


def _work_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    # Small chunks so that linking reads little more than the halo it compares.
    return tuple(min(s, c) for s, c in zip(shape, (32, 256, 256), strict=True))


def save_block(work: str, block: Block, labels: np.ndarray) -> int:
    """Save a padded block's labels with its summary; returns its number of ids.

    The summary holds the voxel count of each id in the padded block and the size and
    bounding box of each id inside the block's core.
    """
    import zarr

    n = int(labels.max()) if labels.size else 0
    core = labels[block.core_in_padded]
    sizes = np.bincount(core.ravel(), minlength=n + 1).astype(np.int64)
    psizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.int64)
    lo = np.full((n + 1, 3), np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full((n + 1, 3), np.iinfo(np.int64).min, dtype=np.int64)
    for i, box in enumerate(ndi.find_objects(core, max_label=n), start=1):
        if box is not None:
            lo[i] = [s.start + c.start for s, c in zip(box, block.core, strict=True)]
            hi[i] = [s.stop + c.start for s, c in zip(box, block.core, strict=True)]
    path = block_file(work, block)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.part")
    try:
        # zarr's default codec (zstd in zarr 3, blosc-lz4 in zarr 2): fast, and label
        # blocks compress hundreds of times.
        store = zarr.open_array(
            str(_labels_store(work, block)),
            mode="w",  # replaces one left by a run killed while writing it
            shape=labels.shape,
            dtype=np.uint32,
            chunks=_work_chunks(labels.shape),
            fill_value=0,
        )
        store[...] = labels
        with open(tmp, "wb") as fh:  # a file object: savez would append ".npz" to a name
            np.savez(fh, sizes=sizes, psizes=psizes, lo=lo, hi=hi)
        os.replace(tmp, path)  # a block counts as done only once its summary exists
    except OSError as err:
        raise disk_error(err, path) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def load_summary(work: str, block: Block, *keys: str):
    """Summary arrays ``keys`` of a saved block (one array for one key), one file read."""
    path = block_file(work, block)
    try:
        with np.load(path) as data:
            arrays = tuple(data[k] for k in keys)
        return arrays[0] if len(arrays) == 1 else arrays
    except Exception as err:
        raise _unreadable(path, block, err) from err


def read_labels(work: str, block: Block, region: tuple = (...,)) -> np.ndarray:
    """A region (relative to the padded block) of a saved block's labels."""
    import zarr

    path = _labels_store(work, block)
    try:
        return np.asarray(zarr.open_array(str(path), mode="r")[region])
    except Exception as err:
        raise _unreadable(path, block, err) from err


def _unreadable(path: Path, block: Block, err: Exception) -> EmpanadaError:
    return EmpanadaError(
        f"The work file {path} of block {block.name} is unreadable ({err}); "
        f"delete {block_file(str(path.parent), block).name} and resume to segment that "
        "block again."
    )


def finished_blocks(work: str, blocks: list[Block]) -> dict[tuple, int]:
    """Number of ids of each block an earlier (interrupted) run already saved."""
    return {
        b.index: len(load_summary(work, b, "sizes")) - 1
        for b in blocks
        if block_file(work, b).exists()
    }


def write_block(job: Job, block: Block, lut: np.ndarray, out: str | None):
    """Phase 4: the block's core through its lookup table, into ``out`` or returned."""
    result = lut[read_labels(job.work, block, block.core_in_padded)]
    if out is None:
        return result
    from ...ngff import open_labels

    try:
        open_labels(out, mode="r+")[block.core] = result
    except OSError as err:
        raise disk_error(err, Path(out)) from err
    return None


# --------------------------------------------------------------------------- output array


def fingerprint(volume, model, job: Job) -> dict:
    """What makes two runs the same job: the input (its file and sampled content), the model
    file and every setting."""
    path = Path(model.path)
    stat = path.stat()
    return json.loads(
        json.dumps(
            {
                "version": FORMAT_VERSION,
                "input": input_fingerprint(volume),
                "value_range": [float(v) for v in job.value_range],
                "mode": job.mode,
                "model": model.name,
                "model_file": str(path),
                "model_bytes": stat.st_size,
                "model_mtime": stat.st_mtime,
                "inference": job.inference.to_dict(),
                "stack": job.stack.to_dict(),
                "ortho": job.ortho.to_dict(),
                "blocks": job.blocks.to_dict(),
            }
        )
    )


def resumed_chunks(store: Path | None) -> tuple[int, int, int] | None:
    """The block shape an interrupted run recorded in ``store``, or None (nothing to resume:
    ``ZarrOutput`` says why when it opens the store)."""
    previous = recorded_fingerprint(store) if store is not None else None
    try:
        return tuple(int(c) for c in previous["blocks"]["chunks"])  # type: ignore[index, return-value]
    except (TypeError, KeyError, ValueError):
        return None


def reopen(store: Path):
    """The output array, read-only."""
    from ...ngff import open_labels

    return open_labels(store)
