"""ResNet encoders (18/34/50) for single-channel electron-microscopy images.

The module and parameter names follow the torchvision layout exactly (``conv1``, ``bn1``,
``layer1`` .. ``layer4``, blocks with ``conv1/bn1/...`` and ``downsample.0/1``) so a plain
ResNet state dict - such as the CEM1.5M SwAV ResNet-50 weights - loads with
``encoder.load_state_dict(state_dict_without_fc)``. There is no ``avgpool``/``fc``: the encoder
returns the feature maps of ``layer1`` .. ``layer4`` (strides 4, 8, 16, 32 at output stride 32).

Unlike torchvision, dilation (used for output stride 16 or 8) works with BasicBlock as well.
"""

from collections.abc import Iterable, Mapping

from torch import Tensor, nn

__all__ = [
    "ENCODERS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "adapt_resnet_state_dict",
    "build_resnet",
    "count_parameters",
    "encoder_stage_modules",
    "encoder_stages",
    "set_encoder_trainable",
]

# Stage names used to freeze/unfreeze parts of the encoder, from input to output.
ENCODER_STAGES: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding == dilation keeps the spatial size for stride 1 whatever the dilation
    return nn.Conv2d(
        in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        # The first conv of a block that switches to a larger dilation keeps the previous
        # dilation (as the downsampling conv would have), the second one uses the new one.
        d0 = dilation if first_dilation is None else first_dilation
        self.conv1 = _conv3x3(inplanes, planes, stride, d0)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with the stride on the 3x3 conv (torchvision "v1.5")."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        d0 = dilation if first_dilation is None else first_dilation
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, d0)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


# name -> (block type, number of blocks per stage)
_SPECS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}

ENCODERS: tuple[str, ...] = tuple(_SPECS)


class ResNet(nn.Module):
    """ResNet trunk returning ``[layer1, layer2, layer3, layer4]`` feature maps.

    ``output_stride`` 32 is the classic network; 16 replaces the stride of ``layer4`` by a
    dilation of 2, and 8 also dilates ``layer3`` (dilation 2, ``layer4`` dilation 4). This keeps
    every parameter shape, so pre-trained weights load whatever the output stride.
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: tuple[int, int, int, int],
        in_channels: int = 1,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        stem_width: int | None = None,
        output_stride: int = 32,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        stem = widths[0] if stem_width is None else stem_width
        expansion = int(block.expansion)  # type: ignore[attr-defined]
        self.inplanes = stem
        self.dilation = 1
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        # stride 8 and 16 come from dilating the last stage(s) instead of striding them
        dilate3 = output_stride == 8
        dilate4 = output_stride <= 16
        self.layer1 = self._make_layer(block, widths[0], layers[0], 1, False)
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2, False)
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2, dilate3)
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2, dilate4)
        self.out_channels: list[int] = [w * expansion for w in widths]
        # strides of the four returned feature maps
        self.strides: list[int] = [4, 8, 8 if dilate3 else 16, output_stride]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # each residual branch starts as the identity, which helps training from scratch
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self, block: type[nn.Module], planes: int, blocks: int, stride: int, dilate: bool
    ) -> nn.Sequential:
        expansion = int(block.expansion)  # type: ignore[attr-defined]
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes * expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * expansion, stride),
                nn.BatchNorm2d(planes * expansion),
            )
        layers: list[nn.Module] = [
            block(
                self.inplanes,
                planes,
                stride,
                downsample,
                dilation=self.dilation,
                first_dilation=previous_dilation,
            )
        ]
        self.inplanes = planes * expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, dilation=self.dilation))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def build_resnet(
    name: str = "resnet50",
    in_channels: int = 1,
    output_stride: int = 32,
    widths: tuple[int, int, int, int] | None = None,
    zero_init_residual: bool = False,
) -> ResNet:
    """Build a ResNet encoder by name (``resnet18``, ``resnet34`` or ``resnet50``).

    ``widths`` overrides the per-stage base widths (default 64/128/256/512); the stem width
    follows ``widths[0]``. Raises ``ValueError`` for an unknown name.
    """
    if name not in _SPECS:
        raise ValueError(f"Unknown encoder {name!r}; valid encoders: {', '.join(ENCODERS)}")
    block, layers = _SPECS[name]
    return ResNet(
        block,
        layers,
        in_channels=in_channels,
        widths=widths if widths is not None else (64, 128, 256, 512),
        output_stride=output_stride,
        zero_init_residual=zero_init_residual,
    )


def encoder_stages(model: nn.Module | None = None) -> list[str]:
    """Names of the freezable encoder stages, input first: stem, layer1 .. layer4.

    ``stem`` is ``encoder.conv1`` + ``encoder.bn1``; ``layerN`` is ``encoder.layerN``.
    """
    return list(ENCODER_STAGES)


def _children(module: nn.Module) -> dict[str, nn.Module]:
    # named_children works for eager modules and TorchScript RecursiveScriptModules alike
    return dict(module.named_children())


def _find_encoder(model: nn.Module) -> nn.Module:
    children = _children(model)
    if "encoder" in children:
        return children["encoder"]
    if "layer1" in children and "conv1" in children:  # a bare encoder
        return model
    raise ValueError("model has no 'encoder' submodule with torchvision-style ResNet names")


def encoder_stage_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Map ``stem``, ``layer1`` .. ``layer4`` to the encoder modules of a model.

    Works on eager models and on TorchScript (``torch.jit.load``) models, so a loaded model can
    be partially frozen in place. ScriptModules do not support ``module.requires_grad_``: set
    the flag per parameter (``for p in m.parameters(): p.requires_grad_(False)``), or use
    :func:`set_encoder_trainable`. ``m.eval()`` works on both kinds.
    """
    enc = _children(_find_encoder(model))
    missing = [n for n in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4") if n not in enc]
    if missing:
        raise ValueError(f"encoder lacks the torchvision-style modules {missing}")
    stages: dict[str, list[nn.Module]] = {"stem": [enc["conv1"], enc["bn1"]]}
    for i in range(1, 5):
        stages[f"layer{i}"] = [enc[f"layer{i}"]]
    return stages


def set_encoder_trainable(
    model: nn.Module, trainable: Iterable[str] = (), freeze_bn_stats: bool = True
) -> list[str]:
    """Freeze the encoder except the named stages; return the frozen stage names.

    With ``freeze_bn_stats`` the frozen stages are also put in eval mode so their BatchNorm
    running statistics stay those of the pre-trained weights. Call it again after
    ``model.train()``, which switches every submodule back to training mode.
    """
    keep = set(trainable)
    unknown = keep - set(ENCODER_STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; valid: {list(ENCODER_STAGES)}")
    frozen: list[str] = []
    for name, modules in encoder_stage_modules(model).items():
        for m in modules:
            for p in m.parameters():  # ScriptModules lack requires_grad_()
                p.requires_grad_(name in keep)
            if freeze_bn_stats and name not in keep:
                m.eval()
        if name not in keep:
            frozen.append(name)
    return frozen


def adapt_resnet_state_dict(
    state_dict: Mapping[str, Tensor], in_channels: int = 1
) -> dict[str, Tensor]:
    """Turn a torchvision-style ResNet checkpoint into one this encoder loads.

    Strips the ``module.``/``encoder.``/``backbone.`` prefixes that training frameworks add,
    drops ``fc.*`` and sums an RGB ``conv1`` down to one input channel.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        k = key
        for prefix in ("module.", "encoder.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        if k.startswith("fc."):
            continue
        out[k] = value
    w = out.get("conv1.weight")
    if w is not None and w.shape[1] != in_channels:
        if in_channels != 1:
            raise ValueError(f"cannot adapt a {w.shape[1]}-channel conv1 to {in_channels} inputs")
        # summing keeps the response to a grey image equal to that of the same grey in RGB
        out["conv1.weight"] = w.sum(dim=1, keepdim=True)
    return out


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of a module."""
    return sum(int(p.numel()) for p in model.parameters())
