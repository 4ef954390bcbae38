"""Pieces shared by the adaptation docks (Pick/Save Training Patches, Finetune/Train Model):
a scrollable dock with a collapsible "advanced" section, a live loss/validation plot, and the
dataset/run controls and job glue common to finetuning and training.

matplotlib (its Qt canvas) is imported when a plot is first built, not at plugin load.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, Container, FileEdit, Label, LineEdit

from ..core.errors import EmpanadaError
from ..core.settings import setting_fields, tooltip
from ._common import settings_controls, settings_values, watch_inputs
from ._jobs import JobPanel
from ._layout import collapsible, dock
from ._pickers import device_picker, select_model

__all__ = ["collapsible", "dock"]  # the adaptation docks import them from here


def watch(widget: Container, viewer) -> None:
    """Re-check ``widget.problem()`` on every change (and on layer changes with a viewer)."""
    if viewer is not None:
        watch_inputs(widget, viewer)
        return
    widget.changed.connect(lambda *_: widget.jobs.set_problem(widget.problem()))
    widget.jobs.set_problem(widget.problem())


# --------------------------------------------------------------------------- live plot


class LivePlot:
    """Loss curve (left axis, log scale) and validation F1/IoU (right axis) of a run, drawn
    with matplotlib's Qt canvas, plus an ETA line. Fed the ``info`` mappings of the job."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.2), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.loss_ax = self.figure.add_subplot(111)
        self.val_ax = self.loss_ax.twinx()
        self.eta = Label(value="")
        self.eta.native.setWordWrap(True)
        self.eta.native.setMinimumWidth(120)  # wraps instead of widening the dock
        self.reset()

    def reset(self) -> None:
        """Forget the previous run."""
        self.its: list[int] = []
        self.losses: list[float] = []
        self.val_its: list[int] = []
        self.f1: list[float] = []
        self.iou: list[float] = []
        self.eta.value = ""
        self._draw()

    def add(self, info: dict) -> None:
        """One iteration's record (``iteration``, ``total``, optional ``val_*``, ``eta_s``)."""
        try:
            self._add(info)
        except RuntimeError:  # the dock was closed while its job ran: nothing to draw on
            pass

    def _add(self, info: dict) -> None:
        if "stage" in info:  # after the loop, e.g. tuning the post-processing
            self.eta.value = f"{info['stage']}..."
            return
        if "iteration" not in info or "total" not in info:
            return
        self.its.append(int(info["iteration"]))
        self.losses.append(float(info["total"]))
        if "val_f1@0.5" in info:
            self.val_its.append(int(info["iteration"]))
            self.f1.append(float(info["val_f1@0.5"]))
            self.iou.append(float(info.get("val_semantic_iou", math.nan)))
        eta = info.get("eta_s")
        if eta is not None:
            best = f"; best val F1 {max(self.f1):.3f}" if self.f1 else ""
            self.eta.value = (
                f"iteration {self.its[-1]}, loss {self.losses[-1]:.3f}{best}; "
                f"about {_duration(float(eta))} left (measured on this machine)"
            )
        self._draw()

    def finish(self) -> None:
        """The run is over: no ETA or stage line left behind."""
        try:
            self.eta.value = ""
        except RuntimeError:  # the dock was closed while its job ran
            pass

    def _draw(self) -> None:
        ax, vax = self.loss_ax, self.val_ax
        ax.clear()
        vax.clear()
        # clear() moves a twin axis to the left: put it back on the right.
        vax.yaxis.tick_right()
        vax.yaxis.set_label_position("right")
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8)
        vax.set_ylabel("validation", fontsize=8)
        vax.set_ylim(0, 1)
        if self.losses:
            ax.plot(self.its, self.losses, color="tab:blue", lw=1, label="loss")
            if min(self.losses) > 0:
                ax.set_yscale("log")
        if self.f1:
            vax.plot(self.val_its, self.f1, "o-", color="tab:orange", ms=3, label="F1@0.5")
            vax.plot(self.val_its, self.iou, "s--", color="tab:green", ms=3, label="IoU")
            vax.legend(loc="lower right", fontsize=7)
        for a in (ax, vax):
            a.tick_params(labelsize=7)
        self.canvas.draw_idle()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- run controls

UNFREEZE = {
    "heads only (encoder frozen)": ("freeze", ()),
    "heads + layer4": ("freeze", ("layer4",)),
    "heads + layer3, layer4": ("freeze", ("layer3", "layer4")),
    "whole network": ("train", ()),
}


#: The check box that allows replacing a registered model (named in refusals).
OVERWRITE = "replace a model of the same name"

#: The TrainSettings fields every training dock shows (main, then advanced).
MAIN_FIELDS = ("iterations",)
ADVANCED_FIELDS = ("val_fraction", "patch_size", "batch_size", "lr", "val_every", "seed")


class RunControls:
    """Dataset folders, validation, output name and the run's settings: controls built from
    :class:`~empanada_napari.core.train_settings.TrainSettings` with the defaults of ``preset``
    (the same as the command line's), which also checks them."""

    def __init__(self, preset: Any, *, name: str = "") -> None:
        from ..core.train_settings import TrainSettings

        self.preset = preset
        self.dataset = FileEdit(mode="d", label="dataset folder")
        self.dataset.tooltip = (
            "The dataset folder to train on (made by Save Training Patches: "
            "<folder>/<source>/images and masks)."
        )
        self.more = LineEdit(value="", label="more datasets")
        self.more.tooltip = "other dataset folders to train on too, separated by ';'"
        self.val_folder = FileEdit(mode="d", label="validation folder")
        self.val_folder.tooltip = "optional: scored during training; else patches are held out"
        self.name = LineEdit(value=name, label="new model name")
        self.name.tooltip = (
            "The name the trained model is registered under (letters, digits, _ - .). A name "
            "already registered is refused unless 'replace a model of the same name' is "
            "ticked; after each run the next free name is proposed (round1 -> round2)."
        )
        self.overwrite = CheckBox(value=False, text=OVERWRITE)
        self.overwrite.tooltip = (
            "Register the new model in place of a registered model of the same name (that "
            "model is lost; built-in models are never replaced). Unticked after each run."
        )
        self.fields = settings_controls(
            TrainSettings, (*MAIN_FIELDS, *ADVANCED_FIELDS), defaults=preset
        )
        self.fields["lr"].native.setDecimals(5)
        for key, value in self.fields.items():
            setattr(self, key, value)  # rc.iterations, rc.batch_size...
        self.device = device_picker()
        self.device.tooltip = tooltip(
            {f.name: f for f in setting_fields(TrainSettings)}["device"], preset.device
        )
        self.output = FileEdit(mode="d", label="save model in")
        self.output.tooltip = "optional: else the model lives in the registry's folder only"
        self.loop = Label(value="")
        self.loop.tooltip = "what the dataset holds: patches, the loop's round, your corrections"
        _wrap_across(self.loop)
        self.dataset.changed.connect(self._describe)

    # the names the docks and tests used before the controls came from TrainSettings
    @property
    def batch(self) -> Any:
        return self.fields["batch_size"]

    def _describe(self, *_: Any) -> None:
        """Say which round of the loop the chosen dataset is at (from its manifest)."""
        from ..core.training.manifest import describe_loop

        folders = [f for f in self.folders() if f.is_dir()]
        try:
            self.loop.value = describe_loop(folders[0]) if folders else ""
        except (OSError, ValueError):  # an unreadable manifest: the dataset check will say
            self.loop.value = ""

    def main(self) -> list[Any]:
        return [self.dataset, self.loop, self.name, *(self.fields[k] for k in MAIN_FIELDS)]

    def advanced(self) -> list[Any]:
        return [
            self.more,
            self.val_folder,
            *(self.fields[k] for k in ADVANCED_FIELDS),
            self.device,
            self.output,
            self.overwrite,
        ]

    def folders(self) -> list[Path]:
        """The dataset folders chosen (the main one first)."""
        out = []
        main = str(self.dataset.value or "").strip()
        if main not in ("", "."):
            out.append(Path(main))
        out += [Path(p.strip()) for p in self.more.value.split(";") if p.strip()]
        return out

    def problem(self) -> str | None:
        """Why a run cannot start (reads no files), or None."""
        if not self.folders():
            return "Choose a dataset folder (made with 'Save Training Patches')."
        for folder in self.folders():
            if not folder.is_dir():
                return f"Dataset folder {folder} does not exist."
        name = self.name.value.strip()
        if not name:
            return "Give the new model a name."
        problem = self.name_problem(name)
        if problem:
            return problem
        try:
            self.train_settings()
        except EmpanadaError as err:  # the settings' own rule, with the labels on screen
            from ..core.settings_meta import in_labels
            from ..core.train_settings import TrainSettings

            return in_labels(str(err), TrainSettings)
        return None

    def name_problem(self, name: str) -> str | None:
        """Why ``name`` cannot name the new model (taken, built-in, invalid), or None: the
        rule of the library and the command line, said with this dock's controls."""
        from ..core.models import name_problem

        return name_problem(
            name,
            overwrite=bool(self.overwrite.value),
            field="'new model name'",
            replace_hint=f"tick '{OVERWRITE}' under Advanced options",
        )

    def after_run(self, name: str) -> None:
        """After a run that used ``name``: propose the next free name (``round1`` ->
        ``round2``; the same name when nothing was registered under it) and ask again before
        replacing a model."""
        from ..core.models import free_name

        self.overwrite.value = False
        self.name.value = free_name(name)

    def train_settings(self, **more: Any) -> Any:
        """The run's TrainSettings: the preset with the controls' values (checked)."""
        from dataclasses import replace

        values = settings_values(type(self.preset), self.fields)
        return replace(self.preset, device=str(self.device.value), **values, **more)

    def data(self, settings: Any, classes=None):
        """Check the folders and load the training data (worker thread)."""
        from ..core.training.store import load_training_data

        val = str(self.val_folder.value or "").strip()
        return load_training_data(
            self.folders(),
            val_folders=[val] if val not in ("", ".") else None,
            val_fraction=settings.val_fraction,
            patch_size=settings.patch_size,
            batch_size=settings.batch_size,
            seed=settings.seed,
            classes=classes,
        )

    def output_dir(self) -> Path | None:
        out = str(self.output.value or "").strip()
        return Path(out) if out not in ("", ".") else None


def _wrap_across(label: Label) -> None:
    """Let a long line wrap over the row's whole width: a word-wrapped QLabel asks for the
    width of a short line (it wrapped into a 120-pixel column, 6 lines), so it is
    made to expand, and its row gives up the empty label column in front of it."""
    from qtpy.QtWidgets import QSizePolicy

    native = label.native
    native.setWordWrap(True)
    native.setMinimumWidth(120)
    policy = QSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    policy.setHeightForWidth(True)
    native.setSizePolicy(policy)

    def span(*_: Any) -> None:
        # The form wraps the label in a row with a label column (magicgui's labelled
        # widget): an empty one is hidden, so the text starts at the dock's left edge.
        row = native.parentWidget()
        layout = row.layout() if row is not None else None
        if layout is None or layout.count() < 2 or layout.itemAt(1).widget() is not native:
            return
        front = layout.itemAt(0).widget()
        if front is not None and not getattr(front, "text", lambda: "x")():
            front.setVisible(False)

    label.changed.connect(span)


def run_training(
    jobs: JobPanel,
    plot: LivePlot,
    work,
    description: str,
    controls: RunControls | None = None,
    name: str = "",
) -> None:
    """Start ``work(progress, cancel) -> TrainResult`` in ``jobs``; a cancelled run hands back
    the model it saved; the new model is selected in every open model picker, and
    ``controls`` propose the next free name after ``name``."""
    from ..core.training.runner import TrainingCancelled

    def job(progress, cancel):
        try:
            return work(progress, cancel)
        except TrainingCancelled as stop:
            if stop.result is None:
                raise
            return stop.result

    def done(result) -> str:
        select_model(result.name, finished=not result.cancelled)
        if controls is not None:
            controls.after_run(name or result.name)
        plot.finish()
        best = ""
        if result.validation:
            top = max(v["f1@0.5"] for v in result.validation)
            best = f"; best validation F1@0.5 {top:.3f}"
            if result.best_iteration is not None:
                best += f" (iteration {result.best_iteration}, the weights kept)"
        what = "Cancelled; kept the best validated weights as" if result.cancelled else "Saved"
        tuned = result.config.get("inference_settings")
        settings = ""
        if tuned:
            settings = f", with settings tuned on your patches: {_settings_text(tuned)}"
        if result.cancelled:
            settings = " (post-processing not tuned: the start model's settings or the defaults)"
        return (
            f"{what} model '{result.name}' after {result.iterations} iterations in "
            f"{_duration(result.seconds)}{best}. It is selected in the inference docks"
            f"{settings}"
            + ("; finetuning still starts from the model you chose." if result.cancelled else ".")
        )

    plot.reset()
    jobs.start(
        job,
        done,
        description=description,
        on_info=plot.add,
        result_after_cancel=True,
        compute=True,
    )


def _settings_text(values: dict[str, Any]) -> str:
    """``{'confidence_thr': 0.3, ...}`` as the docks name them: "confidence 0.3, ..."."""
    from ..core.settings import InferenceSettings, setting_fields, widget_label

    labels = {f.name: widget_label(f) for f in setting_fields(InferenceSettings)}
    shown = {True: "on", False: "off"}
    return ", ".join(
        f"{labels.get(k, k)} {shown.get(v, v) if isinstance(v, bool) else v}"
        for k, v in values.items()
    )
