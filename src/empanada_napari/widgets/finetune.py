"""Finetune Model: train a registered model on corrected patches, with a live loss curve
and validation scores; the result is saved, registered and selected in every open
inference dock (Cancel keeps the best validated model so far as <name>_cancelled)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container

from ..core.train_settings import FINETUNE, TrainSettings
from ._common import settings_controls
from ._jobs import JobPanel
from ._pickers import ModelPicker
from ._training import UNFREEZE, LivePlot, RunControls, dock, run_training, watch

if TYPE_CHECKING:
    import napari


class FinetuneWidget(Container):
    """Dock widget over :func:`~empanada_napari.core.training.loops.finetune`."""

    user_help = (
        "Finetune a model on patches you corrected (a dataset folder made by Save "
        "Training Patches): the new model is saved, registered and selected in every "
        "inference dock, with its post-processing settings tuned on your patches. Watch "
        "the loss and validation curves; Cancel keeps the best validated model so far, named "
        "..._cancelled (nothing before the first validation)."
    )

    def __init__(self, napari_viewer: napari.viewer.Viewer | None = None) -> None:
        self.viewer = napari_viewer
        # A cancelled run's model is selected in the inference docks, never as the start of
        # the next finetune (it would silently start from a few iterations).
        self.model = ModelPicker(label="start from", only_finished=True)
        self.run_controls = RunControls(FINETUNE)
        whole = "heads only (encoder frozen)" if FINETUNE.freeze_encoder else "whole network"
        self.unfreeze = ComboBox(choices=list(UNFREEZE), value=whole, label="train")
        self.unfreeze.tooltip = (
            "which parts learn: the heads alone are fastest; the whole network adapts best to "
            "a new microscope"
        )
        self.tune = settings_controls(TrainSettings, ("tune",), defaults=FINETUNE)["tune"]
        self.plot = LivePlot()
        self.jobs = JobPanel("Finetune", self.run)
        rc = self.run_controls
        dock(
            self,
            [self.model, *rc.main(), self.unfreeze],
            [*rc.advanced(), self.tune],
            self.jobs,
            extra=[self.plot.canvas, self.plot.eta.native],
        )
        self._proposed = ""  # the name last proposed from the start model
        self.model.changed.connect(self._default_name)
        self._default_name()
        watch(self, napari_viewer)

    def _default_name(self, *_: Any) -> None:
        """Propose ``<start model>_finetuned`` (or its next free name) unless the user typed
        a name of their own or a run proposed the next round's."""
        from ..core.models import free_name

        name = self.run_controls.name
        if self.model.value and name.value.strip() in ("", self._proposed):
            name.value = self._proposed = free_name(f"{self.model.value}_finetuned")

    def problem(self) -> str | None:
        """Why finetuning cannot start, or None."""
        if self.model.value is None:
            return "No model registered: add one in the Model Manager."
        return self.run_controls.problem()

    def run(self) -> None:
        """Check the dataset and finetune in a worker."""
        if self.jobs.refuse(self.problem()):
            return
        rc = self.run_controls
        mode, stages = UNFREEZE[self.unfreeze.value]
        settings = rc.train_settings(
            freeze_encoder=mode == "freeze", unfreeze=stages, tune=bool(self.tune.value)
        )
        model, name, output = self.model.value, rc.name.value.strip(), rc.output_dir()
        overwrite = bool(rc.overwrite.value)

        def work(progress, cancel):
            from ..core.training.loops import finetune

            data = rc.data(settings)
            return finetune(
                model,
                data.dataset,
                name=name,
                overwrite=overwrite,
                val=data.val,
                output_dir=output,
                progress=progress,
                cancel=cancel,
                settings=settings,
            )

        run_training(self.jobs, self.plot, work, f"Finetuning {model}", rc, name)
