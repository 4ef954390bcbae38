"""Batched PointRend refinement of coarse semantic logits.

A small MLP (1x1 ``Conv1d`` layers) re-predicts the logits at chosen points from two inputs
sampled at those points: fine-grained features (a stride-4 feature map) and the current logits.

* Training: points are drawn by importance sampling - ``oversample_ratio * P`` random points,
  of which the ``importance_ratio * P`` most uncertain are kept, plus random ones.
* Inference: each step upsamples the logits x2 and re-predicts the most uncertain pixels.

Every operation is batched over N and written to compile with ``torch.jit.script``.
Point coordinates are in [0, 1], ordered (x, y), with the ``align_corners=False`` convention
of ``F.grid_sample``: pixel ``j`` of a row of width ``W`` has x = (j + 0.5) / W.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PointHead", "PointRend", "point_sample", "uncertainty"]


def point_sample(
    input: Tensor, coords: Tensor, mode: str = "bilinear", align_corners: bool = False
) -> Tensor:
    """Sample ``input`` (N, C, H, W) at ``coords`` (N, P, 2) -> (N, C, P).

    ``coords`` are (x, y) in [0, 1] (``align_corners=False`` convention); ``mode`` is that of
    ``F.grid_sample`` (``"nearest"`` suits integer label maps cast to float), with zero
    padding outside the image.
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # (N, P, 1, 2) in grid_sample's [-1, 1]
    out = F.grid_sample(input, grid, mode=mode, align_corners=align_corners)
    return out.squeeze(3)


def uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of logits (N, C, ...) -> (N, 1, ...); higher means less certain.

    One class (sigmoid): ``-|logit|``; several classes (softmax): minus the gap between the two
    largest logits.
    """
    if logits.shape[1] == 1:
        return -torch.abs(logits)
    top2 = torch.topk(logits, 2, dim=1)[0]
    return (top2[:, 1:2] - top2[:, 0:1]).contiguous()


def _most_uncertain(unc: Tensor, k: int) -> Tensor:
    """Flat indices (N, k) of the ``k`` largest values of ``unc`` (N, M).

    Batched and single-image convolutions differ in the last bits, which would flip the
    choice between near-equal candidates at the selection margin and make an image's result
    depend on its batch. Quantising to 2**-12 and breaking ties by the lower index keeps the
    choice stable unless a value straddles a quantisation step exactly at the margin (rare);
    the resolution is far below any meaningful logit difference.
    """
    m = unc.shape[1]
    # the clamp keeps q * m inside int64 even for huge logits and maps
    q = torch.round(unc.clamp(-1.0e5, 1.0e5) * 4096.0).to(torch.int64)
    rank = torch.arange(m - 1, -1, -1, dtype=torch.int64, device=unc.device)
    return torch.topk(q * m + rank, k, dim=1)[1]


class PointHead(nn.Module):
    """Point-wise MLP: (fine features, coarse logits) at P points -> logits at the points.

    The coarse logits are appended again after every hidden layer so that deeper layers can
    still correct them rather than re-deriving the class from the features alone.
    """

    def __init__(
        self, in_channels: int, num_classes: int, hidden_channels: int = 256, num_layers: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Conv1d] = []
        ch = in_channels + num_classes
        for _ in range(num_layers):
            layers.append(nn.Conv1d(ch, hidden_channels, 1))
            ch = hidden_channels + num_classes
        for m in layers:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
        self.layers = nn.ModuleList(layers)
        self.predictor = nn.Conv1d(ch, num_classes, 1)
        # a near-zero start makes the first predictions follow the coarse logits' scale
        nn.init.normal_(self.predictor.weight, std=1e-3)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, fine: Tensor, coarse: Tensor) -> Tensor:
        x = torch.cat([fine, coarse], dim=1)
        for layer in self.layers:
            x = torch.cat([F.relu(layer(x)), coarse], dim=1)
        return self.predictor(x)


class PointRend(nn.Module):
    """PointRend for semantic logits, batched over the images of a batch.

    The number of points is passed to the methods (the model owns ``train_num_points`` and
    ``subdivision_num_points``) so they can be changed on a scripted model.
    """

    def __init__(
        self,
        feature_channels: int,
        num_classes: int,
        hidden_channels: int = 256,
        num_layers: int = 3,
        oversample_ratio: float = 3.0,
        importance_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        if oversample_ratio < 1.0 or not 0.0 <= importance_ratio <= 1.0:
            raise ValueError("need oversample_ratio >= 1 and 0 <= importance_ratio <= 1")
        self.oversample_ratio = float(oversample_ratio)
        self.importance_ratio = float(importance_ratio)
        self.head = PointHead(feature_channels, num_classes, hidden_channels, num_layers)

    def predict(self, logits: Tensor, features: list[Tensor], coords: Tensor) -> Tensor:
        """Re-predict ``logits`` at ``coords`` (N, P, 2) -> (N, C, P).

        ``features`` are fine-grained maps of any resolution whose channels add up to the
        ``feature_channels`` given at construction; each is sampled at the same points.
        """
        samples = [point_sample(f, coords) for f in features]
        fine = samples[0] if len(samples) == 1 else torch.cat(samples, dim=1)
        coarse = point_sample(logits, coords)
        return self.head(fine, coarse)

    def sample_training_points(self, logits: Tensor, num_points: int) -> Tensor:
        """Importance-sampled point coordinates (N, P, 2) in [0, 1] for a training step."""
        n = logits.shape[0]
        num_sampled = int(self.oversample_ratio * num_points)
        num_uncertain = min(int(self.importance_ratio * num_points), num_sampled)
        num_random = num_points - num_uncertain
        # the point choice is not differentiable, so keep it out of the autograd graph
        scores = logits.detach()
        cand = torch.rand(n, num_sampled, 2, dtype=scores.dtype, device=scores.device)
        unc = uncertainty(point_sample(scores, cand))[:, 0]  # (N, num_sampled)
        idx = torch.topk(unc, num_uncertain, dim=1)[1]
        coords = torch.gather(cand, 1, idx.unsqueeze(2).expand(-1, -1, 2))
        if num_random > 0:
            extra = torch.rand(n, num_random, 2, dtype=scores.dtype, device=scores.device)
            coords = torch.cat([coords, extra], dim=1)
        return coords

    def forward_train(
        self, logits: Tensor, features: list[Tensor], num_points: int
    ) -> tuple[Tensor, Tensor]:
        """Training output: ``(point_logits (N, C, P), point_coords (N, P, 2))``."""
        coords = self.sample_training_points(logits, num_points)
        return self.predict(logits, features, coords), coords

    def render(self, logits: Tensor, features: list[Tensor], steps: int, num_points: int) -> Tensor:
        """Refine ``logits`` over ``steps`` x2 upsamplings, re-predicting uncertain pixels."""
        for _ in range(steps):
            n, c, h, w = logits.shape
            h, w = 2 * h, 2 * w
            logits = F.interpolate(logits, size=[h, w], mode="bilinear", align_corners=False)
            k = min(num_points, h * w)
            if k <= 0:
                continue
            idx = _most_uncertain(uncertainty(logits).reshape(n, h * w), k)
            # pixel centres in the align_corners=False convention
            xs = ((idx % w).to(logits.dtype) + 0.5) / w
            ys = (torch.div(idx, w, rounding_mode="floor").to(logits.dtype) + 0.5) / h
            coords = torch.stack([xs, ys], dim=2)
            point_logits = self.predict(logits, features, coords)
            flat = logits.reshape(n, c, h * w)
            flat = flat.scatter(2, idx.unsqueeze(1).expand(-1, c, -1), point_logits)
            logits = flat.reshape(n, c, h, w)
        return logits
