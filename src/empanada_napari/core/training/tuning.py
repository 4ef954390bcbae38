"""Choose a model's post-processing settings on the user's corrected patches.

A finetuned model's outputs are calibrated differently from the model it started from: on a
new microscope its semantic probabilities are less sure, its centres are spread differently,
and the objects have their own size and spacing. The defaults of :class:`InferenceSettings`
were chosen for MitoNet. After finetuning, :func:`tune_settings` runs the network once on
every corrected patch, scores a small grid of post-processing settings (:data:`GRID`, the
defaults among them) by F1@0.5 against the corrections, and the best combination is stored
in the model's config (``inference_settings:``) as the settings the inference docks, the CLI
and :class:`Engine2D` use for that model unless the user sets them.

Stray pieces are always joined (``absorb_fragments``, also the default): that repairs the
grouping rather than calibrating it, and the patches cannot show its worth because the model
has learnt them (on the CDeep3M benchmark a grid with it chose it off, by a tie on the
patches, and scored 0.466 F1@0.5 on the validation volume, below the plain defaults with it
on, 0.553).

Averaging over flips (``tta``) is kept on, and the grid is scored on the flip-averaged
outputs: on the adaptation benchmark flips added 0.01-0.05 F1@0.5 on held-out data to every
one of 12 finetuned models (CDeep3M and fafb), and settings chosen on flip-averaged outputs
did better than settings chosen on plain ones even with flips off (the averaged outputs of
patches the model has learnt are less over-confident). Comparing the two on the patches did
not work: the patches understate the gain and chose flips for 2 of 6 CDeep3M models. The
price is 3-4x slower inference, which the finetune dock's message names; ``flips=False``
tunes the plain outputs.

The patches include those the model was trained on (with 16 patches the held-out split is 2
or 3 patches, too few to choose between settings), so the score printed is optimistic; what
carries over is the objects' size and spacing and the model's own calibration.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import Cancelled, InputError
from ..jobs import is_cancelled
from ..memory import reuse_freed_memory
from ..settings import InferenceSettings

# Fewer corrected objects than this cannot tell settings apart: the defaults stay.
MIN_OBJECTS = 20

# Candidates per setting, the default first (ties keep the earlier, more default, choice).
GRID: dict[str, tuple] = {
    "confidence_thr": (0.5, 0.4, 0.3),
    "center_confidence_thr": (0.1, 0.2, 0.3),
    "min_distance_object_centers": (3, 5, 8, 12),
    "min_area": (0, 100, 200, 300, 400),
}


@dataclass(frozen=True)
class TuningResult:
    """The chosen settings (``settings``), their pooled F1@0.5 on the patches and the
    F1@0.5 of the defaults (with stray pieces joined) on the same outputs."""

    settings: dict[str, Any]
    score: float
    default_score: float
    n_images: int
    n_objects: int

    def describe(self) -> str:
        """One sentence for the model's description and the dock."""
        chosen = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        return (
            f"Post-processing tuned on {self.n_images} corrected patches ({self.n_objects} "
            f"objects): {chosen}; F1@0.5 there {self.default_score:.3f} at the defaults with "
            f"stray pieces joined -> "
            f"{self.score:.3f}."
        )


def _pooled_f1(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    from ..metrics import match_instances

    tp = fp = fn = 0
    for p, t in zip(preds, truths, strict=True):
        a, b, c = match_instances(p.astype(np.int64), t).counts(0.5)
        tp, fp, fn = tp + a, fp + b, fn + c
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


@reuse_freed_memory()
def tune_settings(
    model: Any,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    grid: dict[str, tuple] | None = None,
    flips: bool = True,
    cancel: Any = None,
    started: Callable[[], None] | None = None,
) -> TuningResult:
    """Pick the post-processing settings of ``model`` (a :class:`LoadedModel`) that score
    the best F1@0.5 on 2D ``images`` against instance ``masks`` (0 = background).

    The network runs once per image for the defaults' score and, with ``flips``, once more
    averaged over flips; the grid is scored on the last outputs. Raises
    :class:`InputError` without images or with too few objects (before ``started()`` is
    called), :class:`Cancelled` on ``cancel``.
    """
    from ..inference.engine import Engine2D

    grid = dict(GRID if grid is None else grid)
    if len(images) == 0 or len(images) != len(masks):
        raise InputError("Tuning needs as many corrected masks as images (at least one).")
    shapes = [np.shape(i) for i in images]
    if any(len(sh) != 2 or sh != np.shape(m) for sh, m in zip(shapes, masks, strict=True)):
        raise InputError(f"Tuning takes 2D images with masks of their shape, got {shapes}.")
    truths = [np.asarray(m).astype(np.int64) for m in masks]
    n_objects = sum(int(np.unique(t[t > 0]).size) for t in truths)
    if n_objects < MIN_OBJECTS:
        raise InputError(
            f"The corrected patches hold {n_objects} objects; tuning the post-processing "
            f"needs at least {MIN_OBJECTS}."
        )
    if started is not None:
        started()
    engine = Engine2D(model, settings=InferenceSettings())
    base = InferenceSettings()  # stray pieces joined: a default since 2026-12-02
    raws = _outputs(engine, images, tta=False)
    engine.settings = base  # the defaults, for comparison
    default_score = _pooled_f1([engine.postprocess(r, 0) for r in raws], truths)
    if flips:
        raws = _outputs(engine, images, tta=True)
    score, chosen = _best_on(engine, raws, truths, base, grid, cancel)
    settings = {k: _plain(v) for k, v in chosen.items()}
    settings |= {"tta": bool(flips), "absorb_fragments": True}
    return TuningResult(settings, score, default_score, len(images), n_objects)


def _outputs(engine, images: Sequence[np.ndarray], *, tta: bool) -> list:
    """The network's raw outputs for each image, averaged over flips with ``tta``."""
    from ..preprocess import intensity_range

    engine.settings = InferenceSettings(tta=tta)
    raws = []
    for image in images:
        image = np.asarray(image)
        raws.append(engine.infer(engine.normalize(image[None], intensity_range(image))))
    return raws


def _best_on(engine, raws, truths, base, grid, cancel) -> tuple[float, dict[str, Any]]:
    """The best-scoring grid point on the network outputs ``raws`` (earliest on ties)."""
    from ..inference import postprocess as pp

    grid = dict(grid)
    sizes = grid.pop("min_area", (0,))
    best: tuple[float, dict[str, Any]] | None = None
    for values in itertools.product(*grid.values()):
        if is_cancelled(cancel):
            raise Cancelled("Tuning cancelled.")
        chosen = dict(zip(grid, values, strict=True))
        engine.settings = replace(base, **chosen)
        labels = [engine.postprocess(raw, 0) for raw in raws]
        for size in sizes:
            kept = [pp.remove_small(lab, size) if size else lab for lab in labels]
            score = _pooled_f1(kept, truths)
            if best is None or score > best[0]:
                best = (score, chosen | {"min_area": int(size)})
    assert best is not None
    return best


def _plain(value: Any) -> Any:
    """numpy scalars -> Python values (the YAML must stay plain)."""
    return value.item() if isinstance(value, np.generic) else value
