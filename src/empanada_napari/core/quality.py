"""How much to trust a model on an image, without ground truth, and which model to use.

A model that knows an instrument answers the same whichever way the image is flipped; on a
microscope it never saw, its four flipped views disagree about where the mitochondria are.
:func:`estimate_quality` runs the model's four flipped views on a few sampled slices (their
central part) and scores that agreement: the IoU of the views' foreground (pixels all four
call mitochondria over pixels any of them does), pooled over the slices. It costs about one
flip-averaged inference of a slice (seconds on a CPU), reads only the sampled regions, and
needs no labels. :func:`choose_model` scores every candidate model and keeps the best;
:data:`UNSURE_BELOW` is the agreement under which the result should not be trusted (the
data behind it: docs/models.md, "Which model fits my microscope").
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import EmpanadaError, InputError

#: Slices sampled from a volume (evenly spaced; a 2D image is one slice).
SLICES = 3
#: Side of the central region of each sampled slice the model sees (pixels).
REGION = 512
#: Below this agreement the result is likely poor: say so and point to the loop.
UNSURE_BELOW = 0.6
#: A sampled region with less foreground than this (fraction, in every view) says nothing
#: about agreement: it does not count (an empty view agrees trivially).
MIN_FOREGROUND = 0.002


@dataclass
class QualityEstimate:
    """The agreement of a model's flipped views on an image (0..1; higher is better), and
    what went into it."""

    model: str
    agreement: float
    foreground: float
    slices: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unsure(self) -> bool:
        """Whether the model is likely to do poorly here (see :data:`UNSURE_BELOW`)."""
        return not self.agreement >= UNSURE_BELOW

    def describe(self) -> str:
        return f"{self.model} {self.agreement:.2f}"


def _sample(shape: tuple[int, ...], slices: int, region: int):
    """(plane index or None, ys, xs) of the regions to read: ``slices`` evenly spaced planes
    of a volume (one for a 2D image), the central ``region`` x ``region`` of each."""
    height, width = shape[-2:]
    ys = slice(max(0, (height - region) // 2), max(0, (height - region) // 2) + min(region, height))
    xs = slice(max(0, (width - region) // 2), max(0, (width - region) // 2) + min(region, width))
    if len(shape) == 2:
        return [(None, ys, xs)]
    depth = shape[0]
    count = min(slices, depth)
    planes = sorted({int(round(v)) for v in np.linspace(0, depth - 1, count + 2)[1:-1]})
    return [(z, ys, xs) for z in planes]


def estimate_quality(
    image: Any,
    model: Any = "default",
    *,
    device: Any = "auto",
    slices: int = SLICES,
    region: int = REGION,
    value_range: tuple[float, float] | None = None,
) -> QualityEstimate:
    """The agreement of ``model``'s four flipped views on ``image`` (2D, or 3D: ``slices``
    sampled planes), on the central ``region`` pixels of each (see the module docstring)."""
    from .inference.engine import Engine2D
    from .preprocess import check_image, intensity_range

    check_image(image, ndim=(2, 3))
    if slices < 1 or region < 32:
        raise InputError("slices must be >= 1 and region >= 32")
    start = time.perf_counter()
    engine = model if isinstance(model, Engine2D) else Engine2D(model, device)
    if value_range is None:
        value_range = intensity_range(image)
    thr = engine.settings.confidence_thr
    inter = union = fg = total = 0
    planes = []
    regions = _sample(tuple(image.shape), slices, region)
    crops = np.stack(
        [np.asarray(image[ys, xs] if z is None else image[z, ys, xs]) for z, ys, xs in regions]
    )
    # Every sampled region and its flips in one batch of model calls (the engine splits
    # nothing here: a few 512 px regions), probabilities only.
    sem = engine.flipped_views(engine.normalize(crops, value_range))[0]  # (4, N, C, H, W)
    prob = sem[:, :, 0] if sem.shape[2] == 1 else 1.0 - sem[:, :, 0]
    prob = prob[..., : crops.shape[1], : crops.shape[2]]
    for k, (z, _ys, _xs) in enumerate(regions):
        masks = (prob[:, k] >= thr).cpu().numpy()
        if masks.mean(axis=(1, 2)).max() < MIN_FOREGROUND:
            continue
        inter += int(masks.all(axis=0).sum())
        union += int(masks.any(axis=0).sum())
        fg += int(masks.sum())
        total += masks.size
        planes.append(-1 if z is None else z)
    agreement = inter / union if union else math.nan
    return QualityEstimate(
        engine.model.name,
        float(agreement),
        float(fg / total) if total else 0.0,
        planes,
        time.perf_counter() - start,
    )


def choose_model(
    image: Any,
    models: Iterable[str] | None = None,
    *,
    device: Any = "auto",
    slices: int = SLICES,
    region: int = REGION,
) -> tuple[str, list[QualityEstimate]]:
    """The model whose flipped views agree most on ``image`` among ``models`` (default:
    every registered model whose file is on this computer: the bundled ones, those you
    registered or finetuned; nothing is downloaded), and every estimate, best first. A
    model that cannot run is left out (it is not the answer); with none left, an error."""
    from .models import get_registry
    from .preprocess import intensity_range

    registry = get_registry()
    if models is None:
        models = [n for n in registry.names() if _local(registry, n)]
    value_range = intensity_range(image)
    estimates = []
    for name in models:
        try:
            estimates.append(
                estimate_quality(
                    image, name, device=device, slices=slices, region=region,
                    value_range=value_range,
                )
            )  # fmt: skip
        except EmpanadaError:
            continue
    scored = [e for e in estimates if not math.isnan(e.agreement)]
    if not scored:
        raise InputError(
            "No model could be scored on this image: none sees any mitochondria in the "
            "sampled slices, or none of the models can run here."
        )
    scored.sort(key=lambda e: -e.agreement)
    return scored[0].model, scored + [e for e in estimates if e not in scored]


def _local(registry: Any, name: str) -> bool:
    try:
        return registry.local_file(name) is not None
    except EmpanadaError:
        return False


def summary_line(estimates: Sequence[QualityEstimate], chosen: str) -> str:
    """One line: the chosen model and every model's agreement, with the warning when even
    the best is unsure."""
    scores = ", ".join(e.describe() for e in estimates if not math.isnan(e.agreement))
    line = f"model {chosen}: flipped views agree best ({scores})"
    best = next((e for e in estimates if e.model == chosen), None)
    if best is not None and best.unsure:
        line += ". " + unsure_warning(best)
    return line


def unsure_warning(estimate: QualityEstimate) -> str:
    """What to tell a user when a model is unsure on their data."""
    return (
        f"{estimate.model} is unsure on this data (its flipped views agree "
        f"{estimate.agreement:.2f}, below {UNSURE_BELOW}): expect a poor result. Adapt it "
        "to your microscope: Pick Training Patches, correct them, Finetune Model "
        "(docs/tutorial_finetune.md)."
    )
