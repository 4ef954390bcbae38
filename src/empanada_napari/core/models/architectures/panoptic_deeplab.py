"""Panoptic-DeepLab with a PointRend semantic head (the MitoNet_v1 family).

Layout: a ResNet encoder (output stride 16 by default, ``layer4`` dilated), then two
independent DeepLabV3+-style decoders - each an ASPP on the last feature map followed by two
fusion stages with the stride-8 and stride-4 encoder features - one for the semantic logits,
one for the instance outputs (centre heat-map and offsets). Everything is predicted at 1/4
resolution; PointRend renders the semantic logits to higher resolutions.

This module also holds the pieces the other architectures share: conv blocks and
:class:`PanopticModel`, which turns the 1/4-resolution predictions into the model outputs.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pointrend import PointRend
from .resnet import ENCODERS, build_resnet

__all__ = [
    "ASPP",
    "DeepLabDecoder",
    "PanopticDeepLabPR",
    "PanopticModel",
    "SeparableConvBNReLU",
    "conv_bn_relu",
]


def conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int = 3, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, "same" padding) + BatchNorm + ReLU."""
    pad = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SeparableConvBNReLU(nn.Sequential):
    """Depthwise kxk conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(
                in_ch, in_ch, kernel_size, padding=kernel_size // 2, groups=in_ch, bias=False
            ),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


def resize(x: Tensor, size: list[int]) -> Tensor:
    """Bilinear resize (``align_corners=False``) to ``size`` = [H, W]; no-op if already there."""
    if x.shape[-2] == size[0] and x.shape[-1] == size[1]:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def check_encoder(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a supported encoder."""
    if name not in ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}; valid encoders: {', '.join(ENCODERS)}")


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 + three dilated 3x3 convs + image pooling."""

    def __init__(
        self, in_ch: int, out_ch: int = 256, rates: tuple[int, int, int] = (6, 12, 18)
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [conv_bn_relu(in_ch, out_ch, 1)]
        branches += [conv_bn_relu(in_ch, out_ch, 3, r) for r in rates]
        self.branches = nn.ModuleList(branches)
        # No BatchNorm on the pooled 1x1 map: it would fail for a training batch of one image.
        self.pooling = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1), nn.ReLU(inplace=True)
        )
        self.project = conv_bn_relu(out_ch * (len(rates) + 2), out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        pooled = self.pooling(x)
        outs.append(pooled.expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabDecoder(nn.Module):
    """ASPP on the stride-16/32 features, fused with the stride-8 and stride-4 features.

    ``in_channels`` are those of the encoder's four outputs; the result is a
    ``decoder_channels`` map at 1/4 resolution.
    """

    def __init__(
        self,
        in_channels: list[int],
        aspp_channels: int = 256,
        project_channels: tuple[int, int] = (64, 32),
        decoder_channels: int = 256,
        atrous_rates: tuple[int, int, int] = (6, 12, 18),
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels[3], aspp_channels, atrous_rates)
        p8, p4 = project_channels
        self.project8 = conv_bn_relu(in_channels[1], p8, 1)
        self.fuse8 = SeparableConvBNReLU(aspp_channels + p8, decoder_channels, 5)
        self.project4 = conv_bn_relu(in_channels[0], p4, 1)
        self.fuse4 = SeparableConvBNReLU(decoder_channels + p4, decoder_channels, 5)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.aspp(features[3])
        skip = self.project8(features[1])
        x = self.fuse8(torch.cat([resize(x, [skip.shape[-2], skip.shape[-1]]), skip], dim=1))
        skip = self.project4(features[0])
        x = self.fuse4(torch.cat([resize(x, [skip.shape[-2], skip.shape[-1]]), skip], dim=1))
        return x


def prediction_head(in_ch: int, hidden: int, out_ch: int) -> nn.Sequential:
    """5x5 separable conv block followed by a 1x1 conv predicting ``out_ch`` maps."""
    return nn.Sequential(SeparableConvBNReLU(in_ch, hidden, 5), nn.Conv2d(hidden, out_ch, 1))


class PanopticModel(nn.Module):
    """Base class implementing the output contract shared by all panoptic architectures.

    Subclasses compute, at 1/4 resolution, coarse semantic logits, the fine-grained features
    PointRend samples, the centre heat-map and the offsets, and call :meth:`assemble`.

    Attributes kept by ``torch.jit.script``: ``architecture``, ``encoder_name``,
    ``padding_factor``, ``num_classes``, ``train_num_points``, ``subdivision_num_points``.
    """

    def __init__(
        self,
        architecture: str,
        encoder_name: str,
        num_classes: int,
        padding_factor: int,
        train_num_points: int = 1024,
        subdivision_num_points: int = 8096,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.architecture = architecture
        self.encoder_name = encoder_name
        self.num_classes = int(num_classes)
        self.padding_factor = int(padding_factor)
        self.train_num_points = int(train_num_points)
        self.subdivision_num_points = int(subdivision_num_points)
        # set by subclasses; None means plain bilinear upsampling of the semantic logits
        self.pointrend: PointRend | None = None

    def render(self, logits: Tensor, features: list[Tensor], steps: int) -> Tensor:
        """Upsample coarse logits ``steps`` times by 2, refined by PointRend when present."""
        if steps <= 0:
            return logits
        if self.pointrend is not None:
            return self.pointrend.render(logits, features, steps, self.subdivision_num_points)
        # step by step, so that the result equals PointRend's upsampling minus the refinement
        for _ in range(steps):
            logits = resize(logits, [2 * logits.shape[-2], 2 * logits.shape[-1]])
        return logits

    def assemble(
        self,
        x: Tensor,
        sem_logits: Tensor,
        fine_features: list[Tensor],
        ctr_hmp: Tensor,
        offsets: Tensor,
        render_steps: int,
        interpolate_ins: bool,
    ) -> dict[str, Tensor]:
        """Build the output dict from the 1/4-resolution predictions.

        Eval: ``sem_logits`` rendered ``render_steps`` times x2 from 1/4; ``ctr_hmp`` (N, 1)
        and ``offsets`` (N, 2, (dy, dx) in input pixels) at 1/4, or bilinearly resized to the
        input size when ``interpolate_ins``. Training: coarse ``sem_logits`` at 1/4, ``ctr_hmp``
        and ``offsets`` at input size and, with PointRend, ``point_logits`` (N, C, P) and
        ``point_coords`` (N, P, 2; (x, y) in [0, 1]) with P = ``train_num_points``.
        """
        full = [x.shape[-2], x.shape[-1]]
        out: dict[str, Tensor] = {}
        if self.training:
            out["sem_logits"] = sem_logits
            # offsets are in full-resolution pixels already, so resizing does not rescale them
            out["ctr_hmp"] = resize(ctr_hmp, full)
            out["offsets"] = resize(offsets, full)
            if self.pointrend is not None:
                point_logits, point_coords = self.pointrend.forward_train(
                    sem_logits, fine_features, self.train_num_points
                )
                out["point_logits"] = point_logits
                out["point_coords"] = point_coords
            return out
        out["sem_logits"] = self.render(sem_logits, fine_features, render_steps)
        if interpolate_ins:
            ctr_hmp = resize(ctr_hmp, full)
            offsets = resize(offsets, full)
        out["ctr_hmp"] = ctr_hmp
        out["offsets"] = offsets
        return out


class PanopticDeepLabPR(PanopticModel):
    """Panoptic-DeepLab with PointRend (MitoNet_v1 is ResNet-50 at output stride 16).

    Args:
        encoder: ``resnet18``, ``resnet34`` or ``resnet50``.
        num_classes: semantic classes (1 = binary, sigmoid).
        output_stride: 8, 16 or 32; also the ``padding_factor``.
        pointrend: refine the semantic logits with PointRend (else bilinear upsampling).
        train_num_points: PointRend points per image in training.
        subdivision_num_points: points re-predicted per image and render step at inference.
    """

    def __init__(
        self,
        encoder: str = "resnet50",
        num_classes: int = 1,
        output_stride: int = 16,
        pointrend: bool = True,
        train_num_points: int = 1024,
        subdivision_num_points: int = 8096,
        aspp_channels: int = 256,
        semantic_decoder_channels: int = 256,
        instance_decoder_channels: int = 128,
    ) -> None:
        check_encoder(encoder)
        super().__init__(
            "panoptic_deeplab_pr",
            encoder,
            num_classes,
            output_stride,
            train_num_points,
            subdivision_num_points,
        )
        self.encoder = build_resnet(encoder, output_stride=output_stride)
        chans = self.encoder.out_channels
        # the standard (6, 12, 18) rates are meant for stride 16; keep the same field of view
        rates = (6 * 16 // output_stride, 12 * 16 // output_stride, 18 * 16 // output_stride)
        self.semantic_decoder = DeepLabDecoder(
            chans, aspp_channels, (64, 32), semantic_decoder_channels, rates
        )
        self.instance_decoder = DeepLabDecoder(
            chans, aspp_channels, (32, 16), instance_decoder_channels, rates
        )
        self.semantic_head = prediction_head(
            semantic_decoder_channels, semantic_decoder_channels, num_classes
        )
        self.center_head = prediction_head(instance_decoder_channels, 32, 1)
        self.offset_head = prediction_head(instance_decoder_channels, 32, 2)
        if pointrend:
            self.pointrend = PointRend(semantic_decoder_channels, num_classes)

    def forward(
        self, x: Tensor, render_steps: int = 2, interpolate_ins: bool = True
    ) -> dict[str, Tensor]:
        features = self.encoder(x)
        sem_features = self.semantic_decoder(features)
        sem_logits = self.semantic_head(sem_features)
        ins_features = self.instance_decoder(features)
        ctr_hmp = self.center_head(ins_features)
        offsets = self.offset_head(ins_features)
        return self.assemble(
            x, sem_logits, [sem_features], ctr_hmp, offsets, render_steps, interpolate_ins
        )
