"""Chunked, out-of-core 3D segmentation: any volume size, in this process or on dask.distributed.

The volume is cut into blocks (``blocks.chunks``), each read with ``blocks.halo`` extra voxels
on every side and segmented in memory by the stack or ortho-plane pipeline, so memory depends
on the block size, never on the volume's. Instance ids are then made consistent across blocks
in four phases, each in its own module of :mod:`.blocks`, after an opening here:

0. **open** (``_check_request``, then ``_open_job``): refusals that need no model (mode,
   volume, output path, labels that would not fit), then the blocks (:func:`.blocks.plan.
   blocking`, the rule the 3D dock shows), the model and its tuned settings, the :class:`Job`.
1. **segment** (:mod:`.blocks.segment`, one task per block): labels of the padded block, ids
   local to it, saved in the run's work folder with a summary. A resumed run skips them.
2. **link** (:mod:`.blocks.link`, one task per block): objects of neighbouring blocks that
   overlap where the padded blocks intersect are the same object.
3. **resolve** (:mod:`.blocks.resolve`, on the client, small arrays only): connected
   components of the links are the objects; ``min_size``/``min_extent`` apply to whole
   objects; kept objects get ids 1..K.
4. **write** (:mod:`.blocks.store`, one task per block): the block's core, relabelled, goes to
   the output zarr (chunks that split every block evenly, so writers never share a chunk) or
   into a numpy result.

Tasks run in the calling thread or on a dask.distributed cluster (:mod:`.blocks.executor`); workers
load the model once each from a picklable :class:`~..models.loading.ModelSpec`. A zarr output
is valid from the start, records its settings and status, and keeps the work files in
``<output>/.empanada-work`` until the run completes, so an interrupted run can be finished with
``resume=True``.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..jobs import CancelFlag, Progress, is_cancelled, report
from ..memory import check_fits, reuse_freed_memory, zeros
from ..output import ZarrOutput, check_not_input, check_writable, output_lock
from ..preprocess import check_image, intensity_range
from ..settings import AXES, BlockSettings, resolve, settings_for_model
from .blocks.executor import Runner
from .blocks.link import link_block
from .blocks.plan import (
    MODES,
    Block,
    Job,
    blocking,
    grid_alignment,
    neighbours,
    output_chunks,
    plan_blocks,
)
from .blocks.resolve import resolve_blocks
from .blocks.segment import segment_block, segment_whole
from .blocks.store import (
    WORK_DIR,
    fingerprint,
    finished_blocks,
    reopen,
    resumed_chunks,
    write_block,
)

__all__ = ["WORK_DIR", "Block", "BlockSettings", "plan_blocks", "segment_volume"]


@reuse_freed_memory()
def segment_volume(
    image,
    model="default",
    *,
    mode: str = "stack",
    inference=None,
    stack=None,
    ortho=None,
    blocks=None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    scheduler=None,
    workers: int | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    cancel: CancelFlag = None,
    **params,
):
    """Segment a 3D volume (Z, Y, X) block by block; see the module docstring.

    ``image`` is any array dask can read a region of (numpy, memory-mapped TIFF, zarr, a
    dask array, one OME-Zarr level). ``mode`` is ``"stack"`` or ``"ortho"``. Settings come as
    :class:`~..settings.InferenceSettings`, ``StackSettings``, ``OrthoSettings`` and
    ``BlockSettings`` objects, or as their fields by name in ``params``. ``out`` is a zarr
    path to write uint32 labels to (returned opened read-only); without it a numpy array is
    returned. ``scheduler``: ``None`` (this process), a ``distributed.Client``, a scheduler
    address, or ``"local:N"``; ``workers=N`` starts a local cluster of N processes.
    ``progress(done, total, info)`` counts the slices seen by the network (``info`` counts
    blocks); ``cancel`` (an Event or a callable) stops within one batch of slices and raises
    :class:`~..errors.Cancelled`.
    """
    settings = resolve(params, inference=inference, stack=stack, ortho=ortho, blocks=blocks)
    store = _check_request(image, mode, out, resume)
    runner = Runner(scheduler, workers)
    try:
        job, plan, loaded = _open_job(
            image, model, mode, settings, runner, device, store, resume,
            tuned=inference is None, params=params,
        )  # fmt: skip
        if store is None and len(plan) == 1 and not runner.distributed:
            # A volume that is one block, in this process: segmented whole, no work files.
            return _run_whole(job, image, plan[0], progress, cancel)
        if store is None:
            work = tempfile.mkdtemp(prefix="empanada-")
            try:
                return _run(replace(job, work=work), runner, image, plan, None, progress, cancel)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        output = ZarrOutput(
            store,
            tuple(int(s) for s in image.shape),
            output_chunks(job.blocks.chunks),
            fingerprint(image, loaded, job),
            resume=resume,
            overwrite=overwrite,
        )
        with output_lock(store):
            output.open()
            if output.complete:
                return reopen(store)
            job = replace(job, work=str(output.target / WORK_DIR))
            Path(job.work).mkdir(parents=True, exist_ok=True)
            return _run(job, runner, image, plan, output, progress, cancel)
    finally:
        runner.close()


def _check_request(image, mode: str, out: str | Path | None, resume: bool) -> Path | None:
    """Opening, first part: what can be refused before a model or a worker starts (the mode,
    the volume, the output path, labels kept whole that would not fit). Returns the store."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    check_image(image, ndim=(3,), what="volume")
    if resume and out is None:
        raise InputError("resume=True needs an output zarr path (out=...).")
    shape = tuple(int(s) for s in image.shape)
    store = Path(out).expanduser() if out is not None else None
    if store is not None:
        check_not_input(store, [image])
        check_writable(store, folder=True)
    else:  # the labels are returned whole: they must fit
        check_fits(
            math.prod(shape) * np.dtype(np.uint32).itemsize,
            f"Keeping the labels of a {' x '.join(map(str, shape))} volume",
            "write them to a .zarr output (out=..., written block by block)",
        )
    return store


def _open_job(
    image, model, mode: str, settings: dict, runner: Runner, device, store: Path | None,
    resume: bool, *, tuned: bool, params: dict,
) -> tuple[Job, list[Block], Any]:  # fmt: skip
    """Opening, second part: the blocks (a resumed run keeps its own), the model (with the
    settings tuned for it where the caller set none), the intensity range, and the
    :class:`Job` every task receives. Returns (job, plan, loaded model)."""
    from ..models import LoadedModel, load_model

    stack, blocks = settings["stack"], settings["blocks"]
    shape = tuple(int(s) for s in image.shape)
    # A resumed run keeps its blocks, whatever this machine or cluster would choose now.
    resumed = resumed_chunks(store) if resume else None
    chunks, halo = blocking(shape, mode, stack, blocks, runner=runner, resumed=resumed)
    plan = plan_blocks(shape, chunks, halo, grid_alignment(mode, stack.axis))
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device)
    if tuned:
        settings["inference"] = settings_for_model(loaded.config, settings["inference"], params)
    cancel_event = None
    if runner.distributed:
        from distributed import Event

        cancel_event = f"empanada-cancel-{uuid.uuid4().hex}"
        Event(cancel_event, client=runner.client)  # create it before the tasks do
    job = Job(
        model=loaded.spec(),
        device=str(device) if runner.distributed else str(loaded.device),
        mode=mode,
        inference=settings["inference"],
        stack=stack,
        ortho=settings["ortho"],
        blocks=blocks.updated(chunks=chunks, halo=halo),
        value_range=tuple(intensity_range(image)),  # type: ignore[arg-type]
        work="",
        torch_threads=runner.worker_threads(),
        cancel_event=cancel_event,
    )
    return job, plan, loaded


def _work_units(job: Job, block: Block) -> int:
    """Slices the network sees for a block: progress is counted in these, inside blocks too."""
    sizes = [s.stop - s.start for s in block.padded]
    return sum(sizes) if job.mode == "ortho" else sizes[AXES[job.stack.axis][0]]


def _run(job: Job, runner: Runner, image, plan: list[Block], store, progress, cancel):
    """The four phases, in order; ``store`` is the :class:`~..output.ZarrOutput` or None.

    ``progress(done, total, info)`` counts the slices the network has seen (inside a block
    too, when blocks run in this process); ``info`` has ``blocks_done`` and ``blocks``.
    """
    units = {b.index: _work_units(job, b) for b in plan}
    total = sum(units.values())
    counts = finished_blocks(job.work, plan)
    finished = {"units": sum(units[i] for i in counts)}

    def info() -> dict:
        return {"blocks_done": len(counts), "blocks": len(plan)}

    report(progress, finished["units"], total, info())

    def block_progress(done: int, _total: int, _info=None) -> None:
        # Blocks run one after another in this process: the running one adds its slices.
        report(progress, finished["units"] + done, total, info())

    def stop_requested() -> bool:
        if is_cancelled(cancel):
            if job.cancel_event is not None:
                from distributed import Event

                Event(job.cancel_event, client=runner.client).set()
            return True
        return False

    def segment_args(block: Block) -> tuple:
        if runner.distributed:
            source = image if _readable_remotely(image) else None
            if source is None:
                source = _PreSliced(np.asarray(image[block.padded]), block)
            return (job, block, source)
        return (job, block, image, cancel, block_progress if progress is not None else None)

    def segmented(block: Block, n: int) -> None:
        counts[block.index] = n
        finished["units"] += units[block.index]
        report(progress, finished["units"], total, info())

    todo = [b for b in plan if b.index not in counts]
    runner.map(segment_block, todo, segment_args, stop_requested, segmented)

    links: list[tuple] = []
    later = neighbours(plan)

    def linked(block: Block, found: list[tuple]) -> None:
        links.extend((block.index, other, ia, ib) for other, ia, ib in found)

    runner.map(
        link_block, [b for b in plan if later[b.index]], lambda b: (job, b, later[b.index]),
        stop_requested, linked,
    )  # fmt: skip
    luts, n_objects = resolve_blocks(
        plan,
        counts,
        links,
        job.work,
        job.stack.min_size,
        job.stack.min_extent,
        image.shape if job.stack.border_aware else None,
    )
    if store is None:
        result = zeros(image.shape, np.uint32)

        def place(block: Block, core: np.ndarray) -> None:
            result[block.core] = core

        runner.map(
            write_block, plan, lambda b: (job, b, luts[b.index], None), stop_requested, place
        )
        return result
    target = str(store.target)
    runner.map(write_block, plan, lambda b: (job, b, luts[b.index], target), stop_requested)
    shutil.rmtree(job.work, ignore_errors=True)
    return store.finish(objects=n_objects)


def _run_whole(job: Job, image, block: Block, progress, cancel) -> np.ndarray:
    """:func:`_run` for one block in this process: the same labels, without the work files."""
    total = _work_units(job, block)

    def step(done: int, _total: int, _info=None) -> None:
        report(progress, done, total, {"blocks_done": 0, "blocks": 1})

    report(progress, 0, total, {"blocks_done": 0, "blocks": 1})
    labels = segment_whole(job, block, image, cancel, step if progress is not None else None)
    report(progress, total, total, {"blocks_done": 1, "blocks": 1})
    return np.ascontiguousarray(labels, dtype=np.uint32)


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
