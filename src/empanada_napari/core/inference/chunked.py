"""Chunked, out-of-core 3D segmentation: any volume size, local threads or dask.distributed.

The volume is cut into blocks of shape ``chunks``. Every block is read with ``halo`` extra
voxels on each side and segmented in memory by the stack or ortho-plane pipeline
(:mod:`.stack`, :mod:`.ortho`), so memory depends on the block size, never on the volume's.
Instance ids are then made consistent across blocks:

1. **segment** (one task per block): labels of the padded block, ids 1..n local to it, are
   saved in the run's work directory with a summary (voxel count and bounding box of each id
   inside the block's *core*, the part the block owns). A resumed run skips saved blocks.
2. **link** (one task per block): the block and each of its 26 neighbours both segmented the
   region where their padded blocks intersect. Two objects are the same when their IoU
   *inside that region* is at least ``link_iou`` (0.5), or when one lies mostly (``link_ioa``,
   0.5, of all its voxels in its block) inside the other: a fragment one block split off at
   its edge. Overlap rather than contact: touching mitochondria share a face, not voxels, so
   they stay apart. In stack mode the two slices either side of a face along the stack axis
   are also linked with the stack's own slice-to-slice rules.
3. **resolve** (on the client, small arrays only): connected components of the link graph
   are the objects; ``min_size`` and ``min_extent`` apply to whole objects (sizes and boxes
   summed over the cores of the blocks they cross); the kept objects get ids 1..K.
4. **write** (one task per block): the block's core, relabelled through its lookup table,
   goes to the output zarr (one chunk per block, so writers never share a chunk) or into a
   numpy result for small volumes.

Tasks run on a local thread pool or on a ``distributed.Client`` (its futures API), each with
a bounded number of blocks in flight. Workers load the model once each (the model cache is
per process) from a picklable :class:`~empanada_napari.core.models.loading.ModelSpec`.

A zarr output is a valid array from the first moment (zeros until written), carries its
parameters and status under the ``empanada`` attribute, and keeps the per-block work files
in ``<output>/.empanada-work`` until the run completes, so a cancelled or killed run can be
finished with ``resume=True``. Writing (phase 4) reads only the saved blocks, so repeating it
after an interruption is always safe.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import math
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import Cancelled, EmpanadaError, InputError
from ..io import _disk_error, create_zarr_labels
from ..jobs import CancelFlag, Progress, is_cancelled
from ..metrics import label_overlap
from ..preprocess import check_image, intensity_range
from .engine import InferenceSettings
from .stack import AXES, StackSettings, link_slices

WORK_DIR = ".empanada-work"
FORMAT_VERSION = 1
MODES = ("stack", "ortho")
# One block when the whole volume has at most this many voxels (about 0.5-1 GB of working
# memory in the stack pipeline), or when its working memory fits in MEMORY_FRACTION of this
# machine's RAM; otherwise the default block shapes below. One block does no work twice (no
# halos) and gives ortho-plane the network's full field of view (issue 19).
SINGLE_BLOCK_VOXELS = 2**25
MEMORY_FRACTION = 0.5
# Peak working memory of one block per voxel, beyond the model and the input (bytes), measured
# on one block of 9.4 M and 33.6 M voxels: stack 15-19 (segment_volume); ortho 85 (three views
# + consensus) to 103 (segment_volume) with a toy model that labels half the volume. The
# consensus part grows with the labelled share, 5-10 % for real mitochondria volumes.
BYTES_PER_VOXEL = {"stack": 24, "ortho": 88}
STACK_BLOCK, STACK_HALO = (64, 512, 512), (8, 32, 32)  # (stack axis, plane, plane)
ORTHO_BLOCK, ORTHO_HALO = (160, 160, 160), (16, 16, 16)


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    """One block: its grid index, the region it owns (``core``) and the region it reads."""

    index: tuple[int, int, int]
    core: tuple[slice, slice, slice]
    padded: tuple[slice, slice, slice]

    @property
    def name(self) -> str:
        return "_".join(str(i) for i in self.index)

    @property
    def core_in_padded(self) -> tuple[slice, slice, slice]:
        """The core as a slice of the padded block's array."""
        return tuple(
            slice(c.start - p.start, c.stop - p.start)
            for c, p in zip(self.core, self.padded, strict=True)
        )


def _triple(value: int | Iterable[int], what: str) -> tuple[int, int, int]:
    if isinstance(value, int | np.integer):
        out = (int(value),) * 3
    else:
        out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise InputError(f"{what} needs one value or three (z, y, x), got {value!r}")
    return out  # type: ignore[return-value]


def plan_blocks(
    shape: tuple[int, int, int],
    chunks: int | tuple[int, int, int],
    halo: int | tuple[int, int, int] = 0,
    align: tuple[int, int, int] = (1, 1, 1),
) -> list[Block]:
    """Blocks of ``chunks`` covering ``shape``, each padded by ``halo`` (clipped to the volume).

    Padded starts are rounded down to multiples of ``align`` so that every block sees the
    image on the same pixel grid as the whole volume (networks downsample by 4 to 32).
    """
    chunks = _triple(chunks, "chunks")
    halo = _triple(halo, "halo")
    if any(c < 1 for c in chunks) or any(h < 0 for h in halo):
        raise InputError(f"chunks must be >= 1 and halo >= 0, got {chunks} and {halo}")
    counts = [math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)]
    blocks = []
    for index in itertools.product(*(range(n) for n in counts)):
        core, padded = [], []
        for i, s, c, h, a in zip(index, shape, chunks, halo, align, strict=True):
            start, stop = i * c, min((i + 1) * c, s)
            lo = max(0, start - h) // a * a
            core.append(slice(start, stop))
            padded.append(slice(lo, min(s, stop + h)))
        blocks.append(Block(tuple(index), tuple(core), tuple(padded)))  # type: ignore[arg-type]
    return blocks


def _intersection(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...] | None:
    out = tuple(
        slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )
    return None if any(s.start >= s.stop for s in out) else out


def _relative(region: tuple[slice, ...], origin: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, origin, strict=True)
    )


def default_chunks(
    shape: tuple[int, ...], mode: str, axis: str = "xy", memory: int | None = None
) -> tuple[int, int, int]:
    """Block shape used when none is given: the whole volume when it is small or its working
    memory fits in ``MEMORY_FRACTION`` of ``memory`` bytes (default: this machine's RAM)."""
    voxels = math.prod(shape)
    memory = _total_memory() if memory is None else memory
    if voxels <= SINGLE_BLOCK_VOXELS or voxels * BYTES_PER_VOXEL[mode] <= MEMORY_FRACTION * memory:
        return tuple(int(s) for s in shape)  # type: ignore[return-value]
    if mode == "ortho":
        return ORTHO_BLOCK
    return _along_axis(STACK_BLOCK, axis)


def _total_memory() -> int:
    """Physical memory of this machine in bytes (0 when unknown: then blocks by size only).

    Total, not available, memory: the default blocks must not change between a run and its
    resume, which checks that the blocks are the same."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return 0


def default_halo(mode: str, axis: str = "xy") -> tuple[int, int, int]:
    """Halo used when none is given (a single block needs none: it is clipped away)."""
    return ORTHO_HALO if mode == "ortho" else _along_axis(STACK_HALO, axis)


def _along_axis(values: tuple[int, int, int], axis: str) -> tuple[int, int, int]:
    """Put ``values[0]`` on the stack axis and ``values[1:]`` on the image-plane axes."""
    out = [values[1]] * 3
    out[AXES[axis][0]] = values[0]
    return tuple(out)  # type: ignore[return-value]


# --------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs; picklable (no arrays, no open files, no models)."""

    model: Any  # ModelSpec
    device: str
    inference: dict
    stack: dict
    mode: str
    ortho: dict
    value_range: tuple[float, float]
    work: str
    link_iou: float
    link_ioa: float = 0.5
    torch_threads: int | None = None
    cancel_event: str | None = None  # name of a distributed.Event (cluster runs)


_ENGINES: dict[tuple, Any] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(job: _Job):
    """The job's engine in this process; the model is loaded once per process (cached)."""
    from ..models.loading import load_model
    from .engine import Engine2D

    key = (
        job.model.path,
        job.model.quantized,
        job.device,
        json.dumps(job.inference, sort_keys=True),
    )
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            if job.torch_threads:
                import torch

                torch.set_num_threads(job.torch_threads)
            model = load_model(job.model, job.device)
            engine = Engine2D(model, settings=InferenceSettings(**job.inference))
            _ENGINES.clear()  # one engine per process: a new job replaces the old one
            _ENGINES[key] = engine
        return engine


def _cancel_flag(job: _Job, local: CancelFlag) -> CancelFlag:
    if job.cancel_event is None:
        return local
    from distributed import Event

    event = Event(job.cancel_event)
    return event.is_set


def _block_file(work: str, block: Block) -> Path:
    """The block's summary; it is written last, so it exists only for finished blocks."""
    return Path(work) / f"block_{block.name}.npz"


def _labels_store(work: str, block: Block) -> Path:
    return Path(work) / f"block_{block.name}.zarr"


def _work_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    # Small chunks so that linking reads little more than the halo it compares.
    return tuple(min(s, c) for s, c in zip(shape, (32, 256, 256), strict=True))


def _read_block(source, block: Block) -> np.ndarray:
    try:
        region = source[block.padded]
        if hasattr(region, "compute"):  # dask: compute here, inside this task
            region = region.compute(scheduler="sync")
        return np.asarray(region)
    except EmpanadaError:
        raise
    except Exception as err:
        where = ", ".join(f"{s.start}:{s.stop}" for s in block.padded)
        raise InputError(
            f"Could not read block {block.name} (z, y, x = {where}) of the input: "
            f"{type(err).__name__}: {err}"
        ) from err


def _segment_block(job: _Job, block: Block, source, cancel: CancelFlag = None) -> int:
    """Phase 1 for one block; returns the number of local ids (ids are 1..n)."""
    from .ortho import segment_ortho
    from .stack import segment_stack_3d

    cancel = _cancel_flag(job, cancel)
    if is_cancelled(cancel):
        raise Cancelled("Cancelled before all blocks were segmented.")
    data = _read_block(source, block)
    engine = _engine(job)
    # Size filters apply to whole objects after linking, never to pieces inside a block.
    settings = replace(StackSettings(**job.stack), min_size=0, min_extent=0)
    if job.mode == "stack":
        labels = segment_stack_3d(
            data, engine, settings, value_range=job.value_range, cancel=cancel
        )
    else:
        labels = segment_ortho(
            data, engine, settings, value_range=job.value_range, cancel=cancel, **job.ortho
        )
    return _save_block(job.work, block, labels)


def _save_block(work: str, block: Block, labels: np.ndarray) -> int:
    """Save a padded block's labels with its summary; returns its number of ids.

    The labels go to a compressed zarr array (linking reads only the regions it needs); the
    summary holds the voxel count of each id in the padded block and the size and bounding
    box of each id inside the block's core.
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
    path = _block_file(work, block)
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
        raise _disk_error(err, path) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def _load(work: str, block: Block, *keys: str):
    """Summary arrays ``keys`` of a saved block (one array for one key), one file read."""
    path = _block_file(work, block)
    try:
        with np.load(path) as data:
            arrays = tuple(data[k] for k in keys)
        return arrays[0] if len(arrays) == 1 else arrays
    except Exception as err:
        raise _unreadable(path, block, err) from err


def _read_labels(work: str, block: Block, region: tuple = (...,)) -> np.ndarray:
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
        f"delete {_block_file(str(path.parent), block).name} and resume to segment that "
        "block again."
    )


def _link_block(job: _Job, block: Block, neighbours: list[Block]) -> list[tuple]:
    """Phase 2: (neighbour index, ids here, ids there) of objects linked across faces."""
    sizes = _load(job.work, block, "psizes")
    links = []
    for other in neighbours:
        region = _intersection(block.padded, other.padded)
        if region is None:
            continue
        here = _read_labels(job.work, block, _relative(region, block.padded))
        there = _read_labels(job.work, other, _relative(region, other.padded))
        ov = label_overlap(here, there)
        # Same object: IoU in the shared region >= link_iou, or one of the two lies mostly
        # (>= link_ioa of its voxels in its own padded block) inside the other. The second
        # rule joins a fragment that one block split off near its edge; measuring it on the
        # whole object, not on its part in the shared region, keeps an object that pokes a
        # few voxels into its neighbour's territory from merging with that neighbour.
        other_sizes = _load(job.work, other, "psizes")
        ia_all, ib_all = ov.pred_ids[ov.pair_pred], ov.gt_ids[ov.pair_gt]
        smaller = np.minimum(sizes[ia_all], other_sizes[ib_all])
        keep = (ov.pair_ious() >= job.link_iou) | (ov.pair_inter >= job.link_ioa * smaller)
        ia, ib = ov.pred_ids[ov.pair_pred[keep]], ov.gt_ids[ov.pair_gt[keep]]
        face = _stack_face(job, block, other)
        if face is not None:
            # Across a face along the stack axis, the slice pair either side of it is also
            # linked by the stack's own slice-to-slice rules, as in a whole-volume run: a
            # block starts its linking afresh, so near its first slices its objects are
            # still pieces that the block before it had already joined.
            fa, fb = _face_links(block, other, face, job)
            ia, ib = np.concatenate([ia, fa]), np.concatenate([ib, fb])
        if ia.size:
            links.append((other.index, ia, ib))
    return links


def _stack_face(job: _Job, block: Block, other: Block) -> int | None:
    """The stack axis when ``other`` is the next block along it in stack mode, else None."""
    if job.mode != "stack":
        return None
    k = AXES[job.stack["axis"]][0]
    step = tuple(o - i for i, o in zip(block.index, other.index, strict=True))
    return k if step == tuple(int(d == k) for d in range(3)) else None


def _face_links(block: Block, other: Block, k: int, job: _Job):
    """(ids in block, ids in other) joined by :func:`link_slices` on the slices at the face."""
    last = block.core[k].stop - 1
    # Only the part of the face that the two blocks own: elsewhere their halos hold pieces
    # of objects cut by the block edges, which their own neighbours link.
    sa = list(block.core_in_padded)
    sb = list(other.core_in_padded)
    sa[k] = last - block.padded[k].start
    sb[k] = last + 1 - other.padded[k].start
    pair = np.stack([_read_labels(job.work, block, tuple(sa)),
                     _read_labels(job.work, other, tuple(sb))])  # fmt: skip
    linked = link_slices(pair, job.stack["iou_thr"], job.stack["ioa_thr"])
    # Each object lies whole inside one linked object: read its linked id at any voxel.
    ids_a, at_a = np.unique(pair[0], return_index=True)
    ids_b, at_b = np.unique(pair[1], return_index=True)
    to_a, to_b = linked[0].ravel()[at_a], linked[1].ravel()[at_b]
    ids_a, to_a = ids_a[ids_a > 0], to_a[ids_a > 0]
    ids_b, to_b = ids_b[ids_b > 0], to_b[ids_b > 0]
    # Every (a, b) pair that shares a linked id (several ids may share one).
    ia, ib = np.nonzero(to_a[:, None] == to_b[None, :])
    return ids_a[ia].astype(np.int64), ids_b[ib].astype(np.int64)


def _write_block(job: _Job, block: Block, lut: np.ndarray, out: str | None):
    """Phase 4: the block's core through its lookup table, into ``out`` or returned."""
    result = lut[_read_labels(job.work, block, block.core_in_padded)]
    if out is None:
        return result
    import zarr

    try:
        zarr.open_array(out, mode="r+")[block.core] = result
    except OSError as err:
        raise _disk_error(err, Path(out)) from err
    return None


# --------------------------------------------------------------------------- running tasks


class _Runner:
    """Submit tasks to a local thread pool or a dask.distributed client, a window at a time."""

    def __init__(self, scheduler, workers: int | None) -> None:
        self.client = None
        self._own: list = []
        if isinstance(scheduler, str) and scheduler.startswith("local:"):
            workers, scheduler = int(scheduler.split(":", 1)[1]), None
            if workers < 1:
                raise InputError("local:N needs N >= 1 worker processes")
        if scheduler is None and workers:
            from distributed import Client, LocalCluster

            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            self.client = Client(cluster)
            self._own = [self.client, cluster]
            self.slots = workers
        elif scheduler is not None:
            from distributed import Client

            self.client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
            if self.client is not scheduler:
                self._own = [self.client]
            self.slots = max(1, sum(self.client.nthreads().values()))
        else:
            # In-process: one block at a time; torch already uses every core for a block.
            self.slots = 1
        self._pool = cf.ThreadPoolExecutor(max_workers=self.slots) if self.client is None else None

    @property
    def distributed(self) -> bool:
        return self.client is not None

    def worker_threads(self) -> int | None:
        """torch threads per task on a cluster we started (share the cores, do not fight)."""
        if self._own and self.slots:
            return max(1, (os.cpu_count() or 1) // self.slots)
        return None

    def map(
        self,
        fn: Callable,
        items: list,
        args: Callable[[Any], tuple],
        cancel: CancelFlag,
        on_done: Callable[[Any, Any], None] | None = None,
    ) -> None:
        """Run ``fn(*args(item))`` for every item; ``on_done(item, result)`` as they finish.

        At most twice the number of worker slots are in flight, so block inputs sent from
        this process never pile up. On cancel, pending tasks are dropped, running ones are
        awaited (they check the cancel flag themselves) and :class:`Cancelled` is raised.
        """
        todo: Iterator = iter(items)
        running: dict = {}
        window = 2 * self.slots
        try:
            while True:
                while len(running) < window and not is_cancelled(cancel):
                    item = next(todo, None)
                    if item is None:
                        break
                    running[self._submit(fn, *args(item))] = item
                if not running:
                    break
                done, _ = cf.wait(list(running), timeout=0.2, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    item = running.pop(fut)
                    result = fut.result()  # re-raises the task's error here
                    if on_done is not None:
                        on_done(item, result)
                if is_cancelled(cancel) and not running:
                    break
        except BaseException:
            for fut in running:
                fut.cancel()
            cf.wait(list(running))
            raise
        if is_cancelled(cancel):
            raise Cancelled("Cancelled; finished blocks are kept for resume=True.")

    def _submit(self, fn, *args) -> cf.Future:
        if self.client is None:
            return self._pool.submit(fn, *args)
        fut = self.client.submit(fn, *args, pure=False)
        return _as_concurrent(fut)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for obj in self._own:
            obj.close()


def _as_concurrent(fut) -> cf.Future:
    """A concurrent.futures view of a distributed future (so one wait() serves both)."""
    out: cf.Future = cf.Future()

    def copy(f) -> None:
        try:
            out.set_result(f.result())
        except BaseException as err:  # noqa: BLE001 - forwarded to the caller
            out.set_exception(err)

    out.add_done_callback(lambda o: fut.cancel() if o.cancelled() else None)
    fut.add_done_callback(copy)
    return out


# --------------------------------------------------------------------------- public API


def _fingerprint(volume, model, job: _Job, chunks, halo) -> dict:
    path = Path(model.path)
    stat = path.stat()
    return json.loads(
        json.dumps(
            {
                "version": FORMAT_VERSION,
                "input_shape": list(volume.shape),
                "input_dtype": str(np.dtype(volume.dtype)),
                "value_range": list(job.value_range),
                "chunks": list(chunks),
                "halo": list(halo),
                "mode": job.mode,
                "model": model.name,
                "model_file": str(path),
                "model_bytes": stat.st_size,
                "model_mtime": stat.st_mtime,
                "inference": job.inference,
                "stack": job.stack,
                "ortho": job.ortho,
                "link_iou": job.link_iou,
                "link_ioa": job.link_ioa,
            }
        )
    )


def _split_params(params: dict) -> tuple[dict, dict]:
    inference_keys = {f.name for f in fields(InferenceSettings)}
    stack_keys = {f.name for f in fields(StackSettings)}
    unknown = set(params) - inference_keys - stack_keys
    if unknown:
        raise InputError(f"Unknown parameter(s): {', '.join(sorted(unknown))}")
    return (
        {k: v for k, v in params.items() if k in inference_keys},
        {k: v for k, v in params.items() if k in stack_keys},
    )


def _neighbours(blocks: list[Block]) -> dict[tuple, list[Block]]:
    """Each block's neighbours that come after it (each pair once), 26-connected."""
    by_index = {b.index: b for b in blocks}
    out = {}
    for b in blocks:
        later = []
        for d in itertools.product((-1, 0, 1), repeat=3):
            if d > (0, 0, 0):
                other = by_index.get(tuple(i + k for i, k in zip(b.index, d, strict=True)))
                if other is not None:
                    later.append(other)
        out[b.index] = later
    return out


def _resolve_objects(
    blocks: list[Block],
    counts: dict[tuple, int],
    links: list[tuple],
    work: str,
    min_size: int,
    min_extent: int,
) -> tuple[dict[tuple, np.ndarray], int]:
    """Phase 3: per-block lookup tables (local id -> final id) and the number of objects."""
    offsets, total = {}, 0
    for b in blocks:
        offsets[b.index] = total
        total += counts[b.index]
    rows = [offsets[a] + ia - 1 for a, _, ia, _ in links]
    cols = [offsets[b] + ib - 1 for _, b, _, ib in links]
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(r.size, np.int8), (r, c)), shape=(total, total))
    n_comp, comp = connected_components(graph, directed=False)
    size = np.zeros(n_comp, np.int64)
    lo = np.full((n_comp, 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((n_comp, 3), np.iinfo(np.int64).min, np.int64)
    for b in blocks:
        n = counts[b.index]
        if n == 0:
            continue
        idx = comp[offsets[b.index] : offsets[b.index] + n]
        b_size, b_lo, b_hi = _load(work, b, "sizes", "lo", "hi")
        np.add.at(size, idx, b_size[1:])
        np.minimum.at(lo, idx, b_lo[1:])
        np.maximum.at(hi, idx, b_hi[1:])
    keep = (size > 0) & (size >= min_size)
    if min_extent > 0:
        keep &= (hi - lo).min(axis=1) >= min_extent
    n_objects = int(keep.sum())
    if n_objects > np.iinfo(np.uint32).max:
        raise EmpanadaError(f"{n_objects} objects do not fit uint32 labels.")
    final = np.zeros(n_comp, np.uint32)
    final[keep] = np.arange(1, n_objects + 1, dtype=np.uint32)  # in order of first block
    luts = {}
    for b in blocks:
        n = counts[b.index]
        lut = np.zeros(n + 1, np.uint32)
        lut[1:] = final[comp[offsets[b.index] : offsets[b.index] + n]]
        luts[b.index] = lut
    return luts, n_objects


def segment_volume(
    image,
    model="default",
    *,
    mode: str = "stack",
    axis: str = "xy",
    out: str | Path | None = None,
    chunks: int | tuple[int, int, int] | None = None,
    halo: int | tuple[int, int, int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    scheduler=None,
    workers: int | None = None,
    device: str = "auto",
    pixel_vote_thr: int = 2,
    cluster_iou_thr: float = 0.75,
    allow_one_view: bool = False,
    link_iou: float = 0.5,
    link_ioa: float = 0.5,
    progress: Progress | None = None,
    cancel: CancelFlag = None,
    **params,
):
    """Segment a 3D volume (Z, Y, X) block by block; see the module docstring.

    ``image`` is any array dask can read a region of (numpy, memory-mapped TIFF, zarr, a
    dask array, one OME-Zarr level). ``mode`` is ``"stack"`` (along ``axis``) or ``"ortho"``.
    ``params`` are :class:`InferenceSettings` and :class:`StackSettings` fields by name.
    ``out`` is a zarr path to write uint32 labels to (returned opened read-only); without it
    a numpy array is returned. ``scheduler``: ``None`` (this process), a
    ``distributed.Client``, a scheduler address, or ``"local:N"`` (``workers=N``) for a local
    cluster of N processes. ``progress(done, total)`` counts segmented blocks; ``cancel`` (an
    Event or a callable) stops within one batch of slices and raises :class:`Cancelled`.
    """
    from ..models.loading import LoadedModel, load_model

    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    check_image(image, ndim=(3,), what="volume")
    if not (0 < link_iou <= 1 and 0 < link_ioa <= 1):
        raise InputError(f"link_iou and link_ioa must be in (0, 1], got {link_iou}, {link_ioa}")
    inference_params, stack_params = _split_params(params)
    inference = InferenceSettings(**inference_params).validate()
    stack = StackSettings(axis=axis, **stack_params).validate()
    ortho = dict(
        pixel_vote_thr=int(pixel_vote_thr),
        cluster_iou_thr=float(cluster_iou_thr),
        allow_one_view=bool(allow_one_view),
    )
    if mode == "ortho" and not 1 <= pixel_vote_thr <= 3:
        raise InputError(f"pixel_vote_thr must be 1..3, got {pixel_vote_thr}")
    if resume and out is None:
        raise InputError("resume=True needs an output zarr path (out=...).")
    shape = tuple(int(s) for s in image.shape)
    # On a cluster, blocks by size only: one big block would run on one worker.
    local = scheduler is None and not workers
    if chunks is None:
        chunks = default_chunks(shape, mode, axis, memory=None if local else 0)
    chunks = _triple(chunks, "chunks")
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    halo = _triple(halo, "halo") if halo is not None else default_halo(mode, axis)
    if mode == "stack" and halo[AXES[axis][0]] < stack.median_slices // 2:
        raise InputError(
            f"The halo along the stack axis ({halo[AXES[axis][0]]}) must cover half the median "
            f"window ({stack.median_slices // 2}) so blocks agree at their faces."
        )
    # Align padded starts on the network grid in the axes the model sees as image planes.
    plane_axes = {0, 1, 2} if mode == "ortho" else set(AXES[axis][1:])
    align = tuple(32 if k in plane_axes else 1 for k in range(3))
    blocks = plan_blocks(shape, chunks, halo, align)  # type: ignore[arg-type]

    loaded = model if isinstance(model, LoadedModel) else load_model(model, device)
    value_range = intensity_range(image)
    runner = _Runner(scheduler, workers)
    cancel_event = None
    try:
        if runner.distributed:
            from distributed import Event

            cancel_event = f"empanada-cancel-{uuid.uuid4().hex}"
            Event(cancel_event, client=runner.client)  # create it before the tasks do
        store = Path(out).expanduser() if out is not None else None
        work = str(store / WORK_DIR) if store is not None else tempfile.mkdtemp(prefix="empanada-")
        job = _Job(
            model=loaded.spec(),
            device=str(device) if runner.distributed else str(loaded.device),
            inference=inference.to_dict(),
            stack=stack.to_dict(),
            mode=mode,
            ortho=ortho,
            value_range=tuple(float(v) for v in value_range),  # type: ignore[arg-type]
            work=work,
            link_iou=float(link_iou),
            link_ioa=float(link_ioa),
            torch_threads=runner.worker_threads(),
            cancel_event=cancel_event,
        )
        fingerprint = _fingerprint(image, loaded, job, chunks, halo)
        array = _prepare_output(store, shape, chunks, fingerprint, resume, overwrite)
        if array is not None and array.attrs.get("empanada", {}).get("status") == "complete":
            return _reopen(store)
        Path(work).mkdir(parents=True, exist_ok=True)
        try:
            return _run(job, runner, image, blocks, store, progress, cancel, cancel_event)
        finally:
            if store is None:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        runner.close()


def _prepare_output(store, shape, chunks, fingerprint, resume, overwrite):
    """Create (or, on resume, check) the output zarr array; None for in-memory results."""
    if store is None:
        return None
    import zarr

    if store.exists() and resume:
        try:
            array = zarr.open_array(str(store), mode="r+")
        except Exception as err:
            raise InputError(f"{store} is not a zarr array from an earlier run: {err}") from err
        previous = dict(array.attrs.get("empanada", {}))
        if previous.get("fingerprint") != fingerprint:
            changed = sorted(
                k
                for k in set(fingerprint) | set(previous.get("fingerprint", {}))
                if fingerprint.get(k) != previous.get("fingerprint", {}).get(k)
            )
            raise InputError(
                f"{store} was written with different settings ({', '.join(changed)}); "
                "resume with the same input and settings, or overwrite it."
            )
        return array
    if store.exists() and not overwrite:
        raise InputError(f"Output {store} exists; pass resume=True to finish it or overwrite.")
    if store.exists():
        shutil.rmtree(store)
    array = create_zarr_labels(store, shape, np.uint32, chunks=chunks, overwrite=True)
    array.attrs["empanada"] = {"status": "running", "fingerprint": fingerprint}
    return array


def _reopen(store: Path):
    import zarr

    return zarr.open_array(str(store), mode="r")


def _run(job: _Job, runner: _Runner, image, blocks, store, progress, cancel, cancel_event):
    total = len(blocks)
    counts: dict[tuple, int] = {}
    for b in blocks:  # blocks finished by an earlier (interrupted) run
        if _block_file(job.work, b).exists():
            counts[b.index] = len(_load(job.work, b, "sizes")) - 1
    if progress is not None:
        progress(len(counts), total)

    def stop_requested() -> bool:
        if is_cancelled(cancel):
            if cancel_event is not None:
                from distributed import Event

                Event(cancel_event, client=runner.client).set()
            return True
        return False

    def segment_args(block: Block) -> tuple:
        if runner.distributed and not _readable_remotely(image):
            return (job, block, _PreSliced(np.asarray(image[block.padded]), block))
        return (job, block, image, None if runner.distributed else cancel)

    def segmented(block: Block, n: int) -> None:
        counts[block.index] = n
        if progress is not None:
            progress(len(counts), total)

    todo = [b for b in blocks if b.index not in counts]
    runner.map(_segment_block, todo, segment_args, stop_requested, segmented)

    links: list[tuple] = []
    later = _neighbours(blocks)

    def linked(block: Block, found: list[tuple]) -> None:
        links.extend((block.index, other, ia, ib) for other, ia, ib in found)

    runner.map(
        _link_block, [b for b in blocks if later[b.index]], lambda b: (job, b, later[b.index]),
        stop_requested, linked,
    )  # fmt: skip
    stack = StackSettings(**job.stack)
    luts, n_objects = _resolve_objects(
        blocks, counts, links, job.work, stack.min_size, stack.min_extent
    )
    if store is None:
        result = np.zeros(image.shape, np.uint32)

        def place(block: Block, core: np.ndarray) -> None:
            result[block.core] = core

        runner.map(
            _write_block, blocks, lambda b: (job, b, luts[b.index], None), stop_requested, place
        )
        return result
    runner.map(_write_block, blocks, lambda b: (job, b, luts[b.index], str(store)), stop_requested)
    import zarr

    array = zarr.open_array(str(store), mode="r+")
    meta = dict(array.attrs["empanada"])
    meta.update(status="complete", objects=n_objects)
    array.attrs["empanada"] = meta
    shutil.rmtree(job.work, ignore_errors=True)
    return _reopen(store)


class _PreSliced:
    """A block's input read by the client (numpy inputs on a cluster) in place of the source."""

    def __init__(self, data: np.ndarray, block: Block) -> None:
        self.data, self.padded = data, block.padded

    def __getitem__(self, key):
        if key != self.padded:
            raise IndexError("a pre-sliced block serves only its own region")
        return self.data


def _readable_remotely(image) -> bool:
    """Whether workers can read regions of ``image`` themselves (zarr or dask, not numpy)."""
    if hasattr(image, "dask"):
        return True
    module = type(image).__module__
    return module.startswith("zarr")
