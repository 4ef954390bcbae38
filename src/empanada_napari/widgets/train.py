"""Train Model: train a new model from scratch (optionally from an encoder checkpoint) for
one or several classes, each an instance or a semantic class, with the same live plot,
cancel and registration as Finetune Model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, LineEdit

from ._jobs import JobPanel
from ._training import LivePlot, RunControls, dock, run_training, watch

if TYPE_CHECKING:
    import napari

PRETRAINED = ("none (random start)", "CEM1.5M ResNet-50 (download)")


def parse_classes(text: str) -> dict[str, str]:
    """``"mito:instance, er:semantic"`` -> {"mito": "instance", "er": "semantic"}."""
    from ..core.errors import InputError

    classes: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, kind = part.partition(":")
        kind = (kind.strip() or "instance").lower()
        if kind not in ("instance", "semantic") or not name.strip():
            raise InputError(
                f"Class '{part}': write name:instance or name:semantic, separated by commas."
            )
        classes[name.strip()] = kind
    if not classes:
        raise InputError("Give at least one class, e.g. mito:instance.")
    return classes


class TrainWidget(Container):
    """Dock widget over :func:`~empanada_napari.core.training.loops.train`."""

    user_help = (
        "Train a new model from scratch (optionally from pretrained encoder weights), for "
        "mitochondria or other organelles and several classes; the result is registered "
        "and selected in every inference dock."
    )

    def __init__(self, napari_viewer: napari.viewer.Viewer | None = None) -> None:
        from ..core.models import list_architectures

        self.viewer = napari_viewer
        from ..core.train_settings import TRAIN

        self.run_controls = RunControls(TRAIN, name="MyModel")
        self.architecture = ComboBox(
            choices=list_architectures(), value="panoptic_lite", label="architecture"
        )
        self.architecture.tooltip = (
            "panoptic_lite: small and CPU-friendly; panoptic_deeplab_pr / panoptic_bifpn_pr: "
            "the MitoNet architectures (need a GPU to train in reasonable time)"
        )
        self.encoder = ComboBox(choices=self._encoders, label="encoder")
        self.encoder.tooltip = "The ResNet layout of the architecture's encoder."
        self.classes = LineEdit(value="mito:instance", label="classes")
        self.classes.tooltip = (
            "name:kind, comma separated; kind is instance (objects told apart) or semantic "
            "(area only). Several classes: masks hold class * 1000 + object id."
        )
        self.pretrained = ComboBox(choices=PRETRAINED, label="encoder weights")
        self.pretrained.tooltip = (
            "Start the encoder from random weights, or from the CEM1.5M self-supervised "
            "ResNet-50 weights (downloaded once)."
        )
        self.plot = LivePlot()
        self.jobs = JobPanel("Train", self.run)
        rc = self.run_controls
        dock(
            self,
            [*rc.main(), self.architecture, self.encoder, self.classes],
            [self.pretrained, *rc.advanced()],
            self.jobs,
            extra=[self.plot.canvas, self.plot.eta.native],
        )
        self.architecture.changed.connect(lambda *_: self.encoder.reset_choices())
        watch(self, napari_viewer)

    def _encoders(self, _widget: Any = None) -> list[str]:
        from ..core.models import list_encoders

        return list_encoders(self.architecture.value)

    def problem(self) -> str | None:
        """Why training cannot start, or None."""
        from ..core.errors import InputError

        try:
            parse_classes(self.classes.value)
        except InputError as exc:
            return str(exc)
        if self.pretrained.value != PRETRAINED[0] and self.encoder.value != "resnet50":
            return "The CEM1.5M weights are for a ResNet-50 encoder: choose resnet50."
        return self.run_controls.problem()

    def run(self) -> None:
        """Check the dataset and train in a worker."""
        if self.jobs.refuse(self.problem()):
            return
        rc = self.run_controls
        classes = parse_classes(self.classes.value)
        architecture, encoder = self.architecture.value, self.encoder.value
        pretrained = None if self.pretrained.value == PRETRAINED[0] else "cem1.5m"
        name, output, settings = rc.name.value.strip(), rc.output_dir(), rc.train_settings()
        overwrite = bool(rc.overwrite.value)

        def work(progress, cancel):
            from ..core.training.loops import train

            data = rc.data(settings, classes)
            return train(
                architecture,
                data.dataset,
                name=name,
                overwrite=overwrite,
                encoder=encoder,
                pretrained=pretrained,
                classes=classes,
                val=data.val,
                output_dir=output,
                progress=progress,
                cancel=cancel,
                settings=settings,
            )

        run_training(self.jobs, self.plot, work, f"Training {architecture}", rc, name)
