"""``panoptic_lite``: a small panoptic model meant to be trained and run on a CPU.

Design, with the cost of a 1024 x 1024 slice in mind:

* Encoder: a ResNet-18 layout at a reduced width (``width`` = 32 gives 32/64/128/256
  channels), output stride 32, torchvision module names under ``self.encoder``. The residual
  branches start at zero (``zero_init_residual``) because this model is trained from scratch.
* Decoder: an FPN-style top-down path to 1/4 resolution with ``decoder_channels`` channels,
  each merge smoothed by a depthwise-separable conv, then a shared two-block trunk.
* Heads: a semantic head and an instance branch that feeds a centre and an offset 1x1 conv.
* PointRend (optional): a narrow point head whose fine-grained features are the 1/4 trunk
  *and* the 1/2-resolution stem activations, so rendered boundaries can follow edges finer
  than the decoder resolution at almost no cost.
"""

from torch import Tensor, nn

from ..catalog import LITE_ENCODERS
from .panoptic_deeplab import PanopticModel, SeparableConvBNReLU, conv_bn_relu, resize
from .pointrend import PointRend
from .resnet import build_resnet

__all__ = ["LITE_ENCODERS", "PanopticLite"]


class PanopticLite(PanopticModel):
    """Compact panoptic network (about 3 M parameters with the defaults).

    Args:
        encoder: ``resnet18`` (default) or ``resnet34`` block layout.
        num_classes: semantic classes (1 = binary, sigmoid).
        width: base encoder width; stage widths are ``width * (1, 2, 4, 8)``.
        decoder_channels: width of the decoder, trunk and heads.
        pointrend: refine the semantic logits with PointRend (else bilinear upsampling).
        point_hidden_channels: width of the PointRend MLP.
        train_num_points: PointRend points per image in training.
        subdivision_num_points: points re-predicted per image and render step at inference.
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        num_classes: int = 1,
        width: int = 32,
        decoder_channels: int = 64,
        pointrend: bool = True,
        point_hidden_channels: int = 64,
        train_num_points: int = 1024,
        subdivision_num_points: int = 8096,
    ) -> None:
        if encoder not in LITE_ENCODERS:
            raise ValueError(
                f"Unknown encoder {encoder!r} for panoptic_lite; valid encoders: "
                f"{', '.join(LITE_ENCODERS)}"
            )
        if width < 8 or decoder_channels < 8:
            raise ValueError("width and decoder_channels must be >= 8")
        super().__init__(
            "panoptic_lite", encoder, num_classes, 32, train_num_points, subdivision_num_points
        )
        self.width = int(width)
        self.encoder = build_resnet(
            encoder,
            output_stride=32,
            widths=(width, 2 * width, 4 * width, 8 * width),
            zero_init_residual=True,
        )
        chans = self.encoder.out_channels
        d = decoder_channels
        self.lateral5 = conv_bn_relu(chans[3], d, 1)
        self.lateral4 = conv_bn_relu(chans[2], d, 1)
        self.lateral3 = conv_bn_relu(chans[1], d, 1)
        self.lateral2 = conv_bn_relu(chans[0], d, 1)
        self.smooth4 = SeparableConvBNReLU(d, d, 3)
        self.smooth3 = SeparableConvBNReLU(d, d, 3)
        self.smooth2 = SeparableConvBNReLU(d, d, 3)
        # a 5x5 depthwise kernel at 1/4 resolution widens the context cheaply
        self.trunk = nn.Sequential(SeparableConvBNReLU(d, d, 5), SeparableConvBNReLU(d, d, 3))
        self.semantic_head = nn.Sequential(
            SeparableConvBNReLU(d, d, 3), nn.Conv2d(d, num_classes, 1)
        )
        self.instance_branch = SeparableConvBNReLU(d, d, 3)
        self.center_head = nn.Conv2d(d, 1, 1)
        self.offset_head = nn.Conv2d(d, 2, 1)
        if pointrend:
            self.pointrend = PointRend(
                d + width, num_classes, hidden_channels=point_hidden_channels, num_layers=2
            )

    def forward(
        self, x: Tensor, render_steps: int = 2, interpolate_ins: bool = True
    ) -> dict[str, Tensor]:
        enc = self.encoder
        # run the encoder stage by stage to keep the stride-2 stem activations for PointRend
        stem = enc.relu(enc.bn1(enc.conv1(x)))
        c2 = enc.layer1(enc.maxpool(stem))
        c3 = enc.layer2(c2)
        c4 = enc.layer3(c3)
        c5 = enc.layer4(c4)

        p = self.lateral5(c5)
        p = self.smooth4(self.lateral4(c4) + resize(p, [c4.shape[-2], c4.shape[-1]]))
        p = self.smooth3(self.lateral3(c3) + resize(p, [c3.shape[-2], c3.shape[-1]]))
        p = self.smooth2(self.lateral2(c2) + resize(p, [c2.shape[-2], c2.shape[-1]]))
        trunk = self.trunk(p)

        sem_logits = self.semantic_head(trunk)
        ins = self.instance_branch(trunk)
        ctr_hmp = self.center_head(ins)
        offsets = self.offset_head(ins)
        return self.assemble(
            x, sem_logits, [trunk, stem], ctr_hmp, offsets, render_steps, interpolate_ins
        )
