"""Phase 1 of a chunked run: each padded block segmented in memory, saved with its summary."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from typing import Any

import numpy as np

from ...errors import Cancelled
from ...io import read_region
from ...jobs import CancelFlag, Progress, is_cancelled
from .plan import Block, Job
from .store import save_block

_ENGINES: dict[tuple, Any] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(job: Job):
    """The job's engine in this process; the model is loaded once per process (cached)."""
    from ...models import load_model
    from ..engine import Engine2D

    key = (
        job.model.path,
        job.model.quantized,
        job.device,
        json.dumps(job.inference.to_dict(), sort_keys=True),
    )
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            if job.torch_threads:
                import torch

                torch.set_num_threads(job.torch_threads)
            model = load_model(job.model, job.device)
            engine = Engine2D(model, settings=job.inference)
            _ENGINES.clear()  # one engine per process: a new job replaces the old one
            _ENGINES[key] = engine
        return engine


def cancel_flag(job: Job, local: CancelFlag) -> CancelFlag:
    """The local flag, or on a cluster the job's shared ``distributed.Event``."""
    if job.cancel_event is None:
        return local
    from distributed import Event

    return Event(job.cancel_event).is_set


def read_block(source, block: Block) -> np.ndarray:
    """The padded block's voxels from any sliceable source (dask computed in this task)."""
    where = ", ".join(f"{s.start}:{s.stop}" for s in block.padded)
    return read_region(
        source, block.padded, f"block {block.name} (z, y, x = {where})", in_task=True
    )


def segment_block(
    job: Job,
    block: Block,
    source,
    cancel: CancelFlag = None,
    progress: Progress | None = None,
) -> int:
    """Segment one padded block and save it; returns its number of local ids (1..n).

    ``progress(done, total)`` counts the slices (stack) or slices over the three views
    (ortho) inside this block.
    """
    # Size filters apply to whole objects after linking, never to pieces inside a block.
    settings = replace(job.stack, min_size=0, min_extent=0)
    labels = _segment(job, block, source, settings, cancel, progress)
    return save_block(job.work, block, labels)


def segment_whole(
    job: Job,
    block: Block,
    source,
    cancel: CancelFlag = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """The final labels of a volume that is one block (no halo), size filters included.

    Gives the labels the block phases would give (same ids, ``tests/core/test_chunked.py``)
    without writing the block to the work folder and reading it back twice: for a volume
    that fits in memory that round trip cost about 10 % of a stack run (issue 19).
    """
    return _segment(job, block, source, job.stack, cancel, progress)


def _segment(job: Job, block: Block, source, settings, cancel, progress) -> np.ndarray:
    from ..ortho import segment_ortho
    from ..stack import segment_stack_3d

    cancel = cancel_flag(job, cancel)
    if is_cancelled(cancel):
        raise Cancelled("Cancelled before all blocks were segmented.")
    data = read_block(source, block)
    engine = engine_for(job)
    common = dict(value_range=job.value_range, cancel=cancel, progress=progress)
    if job.mode == "stack":
        return segment_stack_3d(data, engine, settings, **common)
    return segment_ortho(data, engine, settings, job.ortho, **common)
