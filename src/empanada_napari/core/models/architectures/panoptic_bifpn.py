"""Panoptic-BiFPN with a PointRend semantic head (the MitoNet_v1_mini family).

Layout: a ResNet encoder (output stride 32) gives P2..P5; P6 and P7 come from P5 through two
stride-2 convolutions, so the input must be a multiple of 128 (``padding_factor``). All six
levels are projected to ``fpn_channels`` and refined by ``fpn_layers`` BiFPN layers
(top-down then bottom-up fusion with learned, fast-normalised weights). A semantic and an
instance branch each merge the six levels at 1/4 resolution before their prediction heads.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .panoptic_deeplab import PanopticModel, SeparableConvBNReLU, check_encoder, resize
from .pointrend import PointRend
from .resnet import build_resnet

__all__ = ["BiFPN", "BiFPNLayer", "FusionNode", "PanopticBiFPNPR", "PyramidMerge"]


class FusionNode(nn.Module):
    """Fast-normalised weighted sum of same-shaped maps, then a separable conv + BN + ReLU.

    The weights go through ReLU and are divided by their sum (plus ``eps``), which keeps the
    fusion bounded like a softmax at a fraction of the cost.
    """

    def __init__(self, num_inputs: int, channels: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.ones(num_inputs))
        self.eps = eps
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, inputs: list[Tensor]) -> Tensor:
        w = F.relu(self.weights)
        w = w / (w.sum() + self.eps)
        fused = inputs[0] * w[0]
        for i in range(1, len(inputs)):
            fused = fused + inputs[i] * w[i]
        return self.conv(fused)


def _downsample(x: Tensor, size: list[int]) -> Tensor:
    # 3x3/2 max pooling halves even sizes exactly; fall back to resizing for odd ones
    y = F.max_pool2d(x, 3, stride=2, padding=1)
    if y.shape[-2] != size[0] or y.shape[-1] != size[1]:
        y = F.interpolate(y, size=size, mode="nearest")
    return y


class BiFPNLayer(nn.Module):
    """One BiFPN layer over ``num_levels`` maps ordered fine (P2) to coarse (P7)."""

    def __init__(self, num_levels: int, channels: int) -> None:
        super().__init__()
        if num_levels < 2:
            raise ValueError("a BiFPN needs at least two levels")
        self.num_levels = num_levels
        # top-down nodes in execution order: level L-2 down to level 0
        self.top_down = nn.ModuleList([FusionNode(2, channels) for _ in range(num_levels - 1)])
        # bottom-up nodes for levels 1 .. L-1; the top level has no intermediate node
        bottom_up = [FusionNode(3, channels) for _ in range(num_levels - 2)]
        bottom_up.append(FusionNode(2, channels))
        self.bottom_up = nn.ModuleList(bottom_up)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        n = self.num_levels
        # top-down pass: td[i] fuses level i with the upsampled result of level i + 1
        td: list[Tensor] = [features[n - 1]]
        for k, node in enumerate(self.top_down):
            level = n - 2 - k
            target = features[level]
            up = F.interpolate(td[-1], size=[target.shape[-2], target.shape[-1]], mode="nearest")
            td.append(node([target, up]))
        td.reverse()  # td[i] is now level i
        # bottom-up pass: level i fuses its input, its top-down map and the level below
        outs: list[Tensor] = [td[0]]
        for k, node in enumerate(self.bottom_up):
            level = k + 1
            target = features[level]
            down = _downsample(outs[-1], [target.shape[-2], target.shape[-1]])
            if level < n - 1:
                outs.append(node([target, td[level], down]))
            else:
                outs.append(node([target, down]))
        return outs


class BiFPN(nn.Module):
    """Projects P2..P5 to a common width, adds P6/P7 and applies ``num_layers`` BiFPN layers."""

    def __init__(self, in_channels: list[int], channels: int = 128, num_layers: int = 3) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.BatchNorm2d(channels))
                for c in in_channels
            ]
        )
        self.p6 = nn.Sequential(
            nn.Conv2d(in_channels[-1], channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.p7 = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        num_levels = len(in_channels) + 2
        self.layers = nn.ModuleList([BiFPNLayer(num_levels, channels) for _ in range(num_layers)])

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        levels: list[Tensor] = []
        for i, lateral in enumerate(self.laterals):
            levels.append(lateral(features[i]))
        p6 = self.p6(features[-1])
        levels.append(p6)
        levels.append(self.p7(p6))
        for layer in self.layers:
            levels = layer(levels)
        return levels


class PyramidMerge(nn.Module):
    """Refine every pyramid level with a separable conv, resize all to level 0 and sum."""

    def __init__(self, num_levels: int, channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [SeparableConvBNReLU(channels, channels, 3) for _ in range(num_levels)]
        )

    def forward(self, levels: list[Tensor]) -> Tensor:
        size = [levels[0].shape[-2], levels[0].shape[-1]]
        out = torch.zeros_like(levels[0])
        for i, conv in enumerate(self.convs):
            out = out + resize(conv(levels[i]), size)
        return out


class PanopticBiFPNPR(PanopticModel):
    """Panoptic-BiFPN with PointRend (MitoNet_v1_mini is ResNet-50, 128 channels, 3 layers).

    Args:
        encoder: ``resnet18``, ``resnet34`` or ``resnet50``.
        num_classes: semantic classes (1 = binary, sigmoid).
        fpn_channels: width of the BiFPN and the heads.
        fpn_layers: number of BiFPN layers.
        pointrend: refine the semantic logits with PointRend (else bilinear upsampling).
        train_num_points: PointRend points per image in training.
        subdivision_num_points: points re-predicted per image and render step at inference.

    In training mode BatchNorm needs more than one value per channel at P7, so a batch of
    one image must be at least 256 pixels on a side (any size works with two images).
    """

    def __init__(
        self,
        encoder: str = "resnet50",
        num_classes: int = 1,
        fpn_channels: int = 128,
        fpn_layers: int = 3,
        pointrend: bool = True,
        train_num_points: int = 1024,
        subdivision_num_points: int = 8096,
    ) -> None:
        check_encoder(encoder)
        # P7 is at 1/128 of the input
        super().__init__(
            "panoptic_bifpn_pr", encoder, num_classes, 128, train_num_points, subdivision_num_points
        )
        self.encoder = build_resnet(encoder, output_stride=32)
        self.bifpn = BiFPN(self.encoder.out_channels, fpn_channels, fpn_layers)
        num_levels = len(self.encoder.out_channels) + 2
        self.semantic_merge = PyramidMerge(num_levels, fpn_channels)
        self.semantic_head = nn.Sequential(
            SeparableConvBNReLU(fpn_channels, fpn_channels, 3),
            nn.Conv2d(fpn_channels, num_classes, 1),
        )
        self.instance_merge = PyramidMerge(num_levels, fpn_channels)
        self.center_head = nn.Sequential(
            SeparableConvBNReLU(fpn_channels, 32, 3), nn.Conv2d(32, 1, 1)
        )
        self.offset_head = nn.Sequential(
            SeparableConvBNReLU(fpn_channels, 32, 3), nn.Conv2d(32, 2, 1)
        )
        if pointrend:
            self.pointrend = PointRend(fpn_channels, num_classes)

    def forward(
        self, x: Tensor, render_steps: int = 2, interpolate_ins: bool = True
    ) -> dict[str, Tensor]:
        levels = self.bifpn(self.encoder(x))
        sem_features = self.semantic_merge(levels)
        sem_logits = self.semantic_head(sem_features)
        ins_features = self.instance_merge(levels)
        ctr_hmp = self.center_head(ins_features)
        offsets = self.offset_head(ins_features)
        return self.assemble(
            x, sem_logits, [sem_features], ctr_hmp, offsets, render_steps, interpolate_ins
        )
