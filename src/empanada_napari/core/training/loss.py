"""The panoptic training loss (docs/design.md s.4), as in Panoptic-DeepLab / MitoNet.

total = ce_weight * bootstrapped BCE (hardest ``top_k_percent`` of pixels)
      + mse_weight * MSE(centre heat-map)
      + l1_weight * L1(offsets, foreground pixels only)
      + pr_weight * BCE at the PointRend points (models that return them)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..models import point_sample


@dataclass
class LossWeights:
    """Weights of the four terms (the MitoNet FINETUNE defaults)."""

    ce_weight: float = 1.0
    mse_weight: float = 200.0
    l1_weight: float = 0.01
    pr_weight: float = 1.0
    top_k_percent: float = 0.2

    @classmethod
    def from_config(cls, params: dict | None) -> LossWeights:
        """Read the ``criterion_params`` of a model config (unknown keys ignored)."""
        params = params or {}
        names = cls.__dataclass_fields__
        return cls(**{k: float(v) for k, v in params.items() if k in names})


def bootstrapped_bce(logits: Tensor, target: Tensor, top_k_percent: float) -> Tensor:
    """Mean BCE over the hardest ``top_k_percent`` of pixels (all pixels when >= 1)."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1)
    if top_k_percent >= 1.0:
        return loss.mean()
    k = max(1, int(top_k_percent * loss.shape[1]))
    return loss.topk(k, dim=1).values.mean()


def bootstrapped_ce(logits: Tensor, target: Tensor, top_k_percent: float) -> Tensor:
    """Multi-class counterpart of :func:`bootstrapped_bce` (target holds class indices)."""
    loss = F.cross_entropy(logits, target.long(), reduction="none").flatten(1)
    if top_k_percent >= 1.0:
        return loss.mean()
    k = max(1, int(top_k_percent * loss.shape[1]))
    return loss.topk(k, dim=1).values.mean()


class PanopticLoss(nn.Module):
    """Loss of a MitoNet-contract model's training-mode outputs against panoptic targets.

    ``outputs``: ``sem_logits`` (N, C, h, w) at any resolution (upsampled to the target),
    ``ctr_hmp`` (N, 1, H, W), ``offsets`` (N, 2, H, W), and optionally ``point_logits``
    (N, C, P) with ``point_coords`` (N, P, 2). ``targets``: ``sem`` (N, H, W) 0/1 (or class
    ids when C > 1), ``ctr_hmp`` (N, 1, H, W), ``offsets`` (N, 2, H, W).
    """

    def __init__(self, weights: LossWeights | None = None) -> None:
        super().__init__()
        self.weights = weights or LossWeights()

    def forward(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        w = self.weights
        sem_t = targets["sem"].float()
        size = sem_t.shape[-2:]
        logits = outputs["sem_logits"].float()
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if logits.shape[1] == 1:
            ce = bootstrapped_bce(logits[:, 0], sem_t, w.top_k_percent)
        else:
            ce = bootstrapped_ce(logits, sem_t, w.top_k_percent)

        ctr = outputs["ctr_hmp"].float()
        ctr_t = targets["ctr_hmp"].float()
        if ctr.shape[-2:] != ctr_t.shape[-2:]:
            ctr = F.interpolate(ctr, size=ctr_t.shape[-2:], mode="bilinear", align_corners=False)
        mse = F.mse_loss(ctr, ctr_t)

        off = outputs["offsets"].float()
        off_t = targets["offsets"].float()
        if off.shape[-2:] != off_t.shape[-2:]:
            off = F.interpolate(off, size=off_t.shape[-2:], mode="bilinear", align_corners=False)
        fg = (sem_t > 0).unsqueeze(1).float()
        # Mean absolute error per foreground pixel (and both components); 0 if no foreground.
        l1 = ((off - off_t).abs() * fg).sum() / (2.0 * fg.sum()).clamp(min=1.0)

        total = w.ce_weight * ce + w.mse_weight * mse + w.l1_weight * l1
        parts = {"ce": ce, "mse": mse, "l1": l1}
        point_logits = outputs.get("point_logits", outputs.get("sem_points"))
        coords = outputs.get("point_coords")
        if point_logits is not None and coords is not None and w.pr_weight > 0:
            point_logits = point_logits.float()
            if point_logits.shape[1] == 1:
                point_t = point_sample(sem_t.unsqueeze(1), coords.float())[:, 0]
                pr = F.binary_cross_entropy_with_logits(point_logits[:, 0], (point_t > 0.5).float())
            else:
                nearest = point_sample(sem_t.unsqueeze(1), coords.float(), mode="nearest")[:, 0]
                pr = F.cross_entropy(point_logits, nearest.long())
            total = total + w.pr_weight * pr
            parts["pr"] = pr
        parts["total"] = total
        return parts
