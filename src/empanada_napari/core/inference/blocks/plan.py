"""Planning a chunked run: blocks with a halo, their neighbours, and the job every task carries."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from ...errors import InputError
from ...memory import total_memory
from ...settings import AXES, BlockSettings, InferenceSettings, OrthoSettings, StackSettings

# One block when the whole volume has at most this many voxels (about 0.5-1 GB of working
# memory in the stack pipeline), or when its working memory fits in MEMORY_FRACTION of this
# machine's RAM; otherwise the default block shapes below. One block does no work twice (no
# halos) and gives ortho-plane the network's full field of view.
SINGLE_BLOCK_VOXELS = 2**25
MEMORY_FRACTION = 0.5
# Peak working memory of one block per voxel, beyond the model and the input (bytes), measured
# on one block of 9.4 M and 33.6 M voxels: stack 15-19 (segment_volume); ortho 85 (three views
# + consensus) to 103 (segment_volume) with a toy model that labels half the volume. The
# consensus part grows with the labelled share, 5-10 % for real mitochondria volumes.
BYTES_PER_VOXEL = {"stack": 24, "ortho": 88}
STACK_BLOCK, STACK_HALO = (64, 512, 512), (8, 32, 32)  # (stack axis, plane, plane)
ORTHO_BLOCK, ORTHO_HALO = (160, 160, 160), (16, 16, 16)
# The smallest piece memory_chunks cuts an axis into (one network grid step of 32); its
# pieces are multiples of it.
MIN_CHUNK = 32
# Largest chunk of a zarr output along each axis (uint32: 4 MB). Small enough that napari
# showing one slice decompresses 16 slices, not 64, and that an edit of a result (a delete
# in the Delete Labels dock) rewrites only the chunks it touches: on a 256 x 768 x 1024
# result, chunks of 64 x 384 x 512 made a delete 0.3-0.9 s, these 0.16-0.5 s.
OUTPUT_CHUNK = (16, 256, 256)
# Stack mode keeps image planes whole when that costs at most this much more network work
# than the cheapest cut: blocks cut only along the stack axis give the unchunked foreground.
WHOLE_PLANE_SLACK = 1.25
MODES = ("stack", "ortho")
#: Blockings refused before a run starts, as hours of work that look like a hang: blocks
#: whose padded reads add up to more than MAX_WORK_FACTOR times the volume (tiny blocks in
#: a wide halo: --chunks 1,8,8 makes the network see every voxel hundreds of times), blocks
#: thinner than MIN_CHUNK pixels in the image planes the network sees, or more blocks than
#: MAX_BLOCKS (each is a task with its own files).
MAX_WORK_FACTOR = 16
MAX_BLOCKS = 1_000_000


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
        )  # type: ignore[return-value]


@dataclass(frozen=True)
class Job:
    """Everything a task needs; picklable (settings, paths and names: no arrays or models)."""

    model: Any  # a ModelSpec
    device: str
    mode: str
    inference: InferenceSettings
    stack: StackSettings
    ortho: OrthoSettings
    blocks: BlockSettings  # with the chunks and halo actually used
    value_range: tuple[float, float]
    work: str
    torch_threads: int | None = None
    cancel_event: str | None = None  # name of a distributed.Event (cluster runs)


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
    checked = BlockSettings(chunks=chunks, halo=halo)  # validates and makes triples
    chunks, halo = checked.chunks, checked.halo  # type: ignore[assignment]
    counts = [math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)]  # type: ignore[arg-type]
    blocks = []
    for index in itertools.product(*(range(n) for n in counts)):
        core, padded = [], []
        for i, s, c, h, a in zip(index, shape, chunks, halo, align, strict=True):  # type: ignore[arg-type]
            start, stop = i * c, min((i + 1) * c, s)
            core.append(slice(start, stop))
            padded.append(_padded(start, stop, s, h, a))
        blocks.append(Block(tuple(index), tuple(core), tuple(padded)))  # type: ignore[arg-type]
    return blocks


def check_blocking(
    shape: tuple[int, int, int],
    chunks: tuple[int, int, int],
    halo: tuple[int, int, int],
    mode: str,
    axis: str = "xy",
) -> None:
    """Refuse blocks that would turn a run into hours of repeated work (see
    :data:`MAX_WORK_FACTOR`), with the estimate, before anything runs."""
    given = ",".join(map(str, chunks))
    plane_axes = range(3) if mode == "ortho" else AXES[axis][1:]
    for k in plane_axes:
        if chunks[k] < min(MIN_CHUNK, shape[k]):
            raise InputError(
                f"Blocks of {given} are thinner than {MIN_CHUNK} pixels in the image planes "
                f"the network sees (axis {'zyx'[k]}); use larger chunks."
            )
    align = grid_alignment(mode, axis)
    count, work = 1, 1.0
    for s, c, h, a in zip(shape, chunks, halo, align, strict=True):
        starts = range(0, s, c)
        count *= len(starts)
        reads = (_padded(b, min(b + c, s), s, h, a) for b in starts)
        work *= sum(r.stop - r.start for r in reads) / s
    if count > MAX_BLOCKS or work > MAX_WORK_FACTOR:
        raise InputError(
            f"Blocks of {given} with a halo of {','.join(map(str, halo))} cut this "
            f"{'x'.join(map(str, shape))} volume into {count} blocks that make the network "
            f"see every voxel about {work:.0f} times; use larger chunks (or none: blocks "
            "that fit this computer's memory)."
        )


def _padded(start: int, stop: int, size: int, halo: int, align: int) -> slice:
    """The range a block's core ``[start, stop)`` is read with: ``halo`` more on each side,
    clipped to the axis, its start rounded down to a multiple of ``align``."""
    return slice(max(0, start - halo) // align * align, min(size, stop + halo))


def default_chunks(
    shape: tuple[int, ...],
    mode: str,
    axis: str = "xy",
    memory: int | None = None,
    slots: int = 1,
) -> tuple[int, int, int]:
    """Block shape used when none is given: the whole volume when it is small or its working
    memory fits in ``MEMORY_FRACTION`` of ``memory`` bytes (default: this machine's RAM; on a
    cluster, what one task may use), otherwise the blocks of :func:`memory_chunks`; ``memory``
    0 (unknown): the fixed ``STACK_BLOCK`` / ``ORTHO_BLOCK`` shapes. With ``slots`` > 1 tasks
    at a time (a cluster), the cut that ends soonest with every slot busy."""
    shape = tuple(int(s) for s in shape)
    voxels = math.prod(shape)
    memory = total_memory() if memory is None else memory
    budget = int(MEMORY_FRACTION * memory / BYTES_PER_VOXEL[mode])
    if voxels <= SINGLE_BLOCK_VOXELS or (slots == 1 and voxels <= budget):
        return shape  # type: ignore[return-value]
    fixed = ORTHO_BLOCK if mode == "ortho" else along_axis(STACK_BLOCK, axis)
    if budget <= 0:
        return fixed
    halo = default_halo(mode, axis)
    whole = () if mode == "ortho" else AXES[axis][1:]
    chosen = memory_chunks(shape, halo, grid_alignment(mode, axis), budget, whole, slots)
    return fixed if chosen is None else chosen


#: The share of this machine's memory one block may use in an interactive session (napari):
#: the viewer, the image and result layers and the user's other work share the rest. A
#: 256 x 768 x 1024 volume on a 24 GB machine then peaks at 2.2 GB in the 3D dock in 4 blocks
#: instead of 4.25 GB in one, and takes 1.4x as long (docs/benchmarks.md, "Big volumes
#: inside napari").
INTERACTIVE_MEMORY_FRACTION = 1 / 16
#: ...but never less than this (GB): smaller blocks spend most of their time on halos.
INTERACTIVE_MEMORY_MIN_GB = 1.0


def interactive_memory_gb() -> float:
    """The 3D dock's default block memory (GB): :data:`INTERACTIVE_MEMORY_FRACTION` of this
    machine's RAM rounded to 0.5 GB, at least :data:`INTERACTIVE_MEMORY_MIN_GB` (that too
    when the memory is unknown)."""
    share = total_memory() * INTERACTIVE_MEMORY_FRACTION / 1e9
    return max(INTERACTIVE_MEMORY_MIN_GB, round(share * 2) / 2)


def block_memory(blocks: BlockSettings, runner: Any = None) -> int | None:
    """Bytes one block may use for :func:`default_chunks`: ``blocks.memory_gb`` when set
    (on a cluster, no more than a worker's share), else the runner's task memory (None in
    this process: half this machine's RAM)."""
    task = runner.task_memory() if runner is not None else None
    if blocks.memory_gb is None:
        return task
    given = int(float(blocks.memory_gb) * 1e9 / MEMORY_FRACTION)  # default_chunks halves it
    return min(given, task) if task else given


def blocking(
    shape: tuple[int, ...],
    mode: str,
    stack: StackSettings,
    blocks: BlockSettings,
    *,
    runner: Any = None,
    resumed: tuple[int, int, int] | None = None,
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The blocks and halo a run will use, checked: the given chunks, else those an
    interrupted run recorded (``resumed``), else the largest that fit the block memory (of
    ``runner``'s workers, or this process). One rule for the driver and the docks, which show
    its answer (or its refusal, an :class:`InputError`) before a run."""
    halo = blocks.halo or default_halo(mode, stack.axis)
    along = AXES[stack.axis][0]
    if mode == "stack" and halo[along] < stack.median_slices // 2:
        raise InputError(
            f"The halo along the stack axis ({halo[along]}) must cover half the median "
            f"window ({stack.median_slices // 2}) so blocks agree at their faces."
        )
    slots = runner.slots if runner is not None else 1
    chunks = blocks.chunks or resumed
    chunks = chunks or default_chunks(
        shape, mode, stack.axis, block_memory(blocks, runner), slots=slots
    )
    chunks = tuple(min(int(c), int(s)) for c, s in zip(chunks, shape, strict=True))
    check_blocking(shape, chunks, halo, mode, stack.axis)  # type: ignore[arg-type]
    return chunks, tuple(halo)  # type: ignore[return-value]


def output_chunks(chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of a zarr output written block by block: per axis the largest divisor of the
    block's size up to :data:`OUTPUT_CHUNK` (so no two blocks ever write one chunk), or the
    block's size where the only such divisors are much smaller (a prime size, say)."""
    out = []
    for chunk, limit in zip(chunks, OUTPUT_CHUNK, strict=True):
        divisor = max(d for d in range(1, min(chunk, limit) + 1) if chunk % d == 0)
        out.append(divisor if divisor * 4 >= min(chunk, limit) else chunk)
    return tuple(out)


def _axis_plans(size: int, halo: int, align: int) -> list[tuple[int, int, int]]:
    """(chunk, largest padded extent, summed padded extent) of the ways to cut one axis,
    from one piece down to pieces of ``MIN_CHUNK`` (every count up to 16, then ~1.2x steps)."""
    out, seen, n = [], set(), 1
    while True:
        # Pieces in multiples of MIN_CHUNK, so output_chunks can split them evenly.
        chunk = -(-size // n)
        chunk = -(-chunk // MIN_CHUNK) * MIN_CHUNK if n > 1 else size
        if chunk < min(MIN_CHUNK, size):
            break
        if chunk not in seen:
            seen.add(chunk)
            reads = [
                _padded(start, min(start + chunk, size), size, halo, align)
                for start in range(0, size, chunk)
            ]
            pads = [r.stop - r.start for r in reads]
            out.append((chunk, max(pads), sum(pads)))
        if chunk <= MIN_CHUNK:
            break
        n = n + 1 if n < 16 else max(n + 1, int(n * 1.2))
    return out


def memory_chunks(
    shape: tuple[int, int, int],
    halo: tuple[int, int, int],
    align: tuple[int, int, int],
    budget: int,
    whole: tuple[int, ...] = (),
    slots: int = 1,
) -> tuple[int, int, int] | None:
    """Blocks whose padded size fits ``budget`` voxels with the least network work in all.

    Every way of cutting the volume (per axis: a number of equal pieces, starts aligned as
    :func:`plan_blocks` aligns them) is scored by the voxels all padded blocks hold together,
    which counts every halo voxel the network sees twice; the cheapest whose largest padded
    block fits wins (ties: fewer blocks). With ``slots`` > 1 blocks at a time (a cluster) the
    score is the time to the last block instead: rounds of ``slots`` blocks times the largest
    block. Axes in ``whole`` are kept uncut when that costs at most
    :data:`WHOLE_PLANE_SLACK` times the best score (stack mode: whole planes give the network
    the view of an unchunked run). None when even the smallest blocks do not fit.
    """
    per_axis = [_axis_plans(s, h, a) for s, h, a in zip(shape, halo, align, strict=True)]
    best = _cheapest(shape, per_axis, budget, slots)
    if best is None or not whole:
        return None if best is None else best[1]
    uncut = [p[:1] if k in whole else p for k, p in enumerate(per_axis)]
    kept = _cheapest(shape, uncut, budget, slots)
    if kept is not None and kept[0][0] <= WHOLE_PLANE_SLACK * best[0][0]:
        return kept[1]
    return best[1]


def _cheapest(shape, per_axis, budget, slots):
    """(score, chunks) of the best combination of per-axis cuts that fits ``budget``."""
    best = None
    for c0, m0, t0 in per_axis[0]:
        for c1, m1, t1 in per_axis[1]:
            if m0 * m1 * per_axis[2][-1][1] > budget:
                continue
            for c2, m2, t2 in per_axis[2]:
                if m0 * m1 * m2 > budget:
                    continue
                count = math.prod(-(-s // c) for s, c in zip(shape, (c0, c1, c2), strict=True))
                if slots > 1:  # time to the last block, then work
                    key = (-(-count // slots) * m0 * m1 * m2, t0 * t1 * t2, count)
                else:
                    key = (t0 * t1 * t2, count)
                if best is None or key < best[0]:
                    best = (key, (c0, c1, c2))
                if slots == 1:
                    break  # larger pieces along the last axis come first: the first fit wins
    return best


def default_halo(mode: str, axis: str = "xy") -> tuple[int, int, int]:
    """Halo used when none is given (a single block needs none: it is clipped away)."""
    return ORTHO_HALO if mode == "ortho" else along_axis(STACK_HALO, axis)


def along_axis(values: tuple[int, int, int], axis: str) -> tuple[int, int, int]:
    """Put ``values[0]`` on the stack axis and ``values[1:]`` on the image-plane axes."""
    out = [values[1]] * 3
    out[AXES[axis][0]] = values[0]
    return tuple(out)  # type: ignore[return-value]


def grid_alignment(mode: str, axis: str) -> tuple[int, int, int]:
    """Align padded starts on the network grid in the axes the model sees as image planes."""
    plane_axes = {0, 1, 2} if mode == "ortho" else set(AXES[axis][1:])
    return tuple(32 if k in plane_axes else 1 for k in range(3))  # type: ignore[return-value]


def intersection(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...] | None:
    """The region two boxes share, or None."""
    out = tuple(
        slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )
    return None if any(s.start >= s.stop for s in out) else out


def relative(region: tuple[slice, ...], origin: tuple[slice, ...]) -> tuple[slice, ...]:
    """``region`` in the coordinates of the box ``origin``."""
    return tuple(
        slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, origin, strict=True)
    )


def neighbours(blocks: list[Block]) -> dict[tuple, list[Block]]:
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
