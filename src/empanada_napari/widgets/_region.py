"""Which part of a big volume the 3D dock segments: a range of slices and an area of the
planes (whole, the view on screen, or a rectangle of a Shapes layer). The box itself is
checked and cut lazily by :mod:`..core.inference.region`."""

from __future__ import annotations

from typing import Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, SpinBox

from ..core.errors import InputError
from ..core.inference.region import Box, box_from_points, check_box, is_whole
from ._pickers import LayerPicker

WHOLE, VIEW, RECTANGLE = "whole planes", "view on screen", "Shapes rectangle"
AREAS = (WHOLE, VIEW, RECTANGLE)


class RegionControls:
    """The region widgets of the 3D dock and the box they describe on an image layer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.first = SpinBox(value=0, min=0, max=10**7, label="slices from")
        self.first.tooltip = "First slice (z) of the volume to segment."
        self.last = SpinBox(value=0, min=0, max=10**7, label="slices to")
        self.last.tooltip = (
            "Last slice (z) to segment, included. Choosing an image sets its whole range."
        )
        self.area = ComboBox(choices=AREAS, value=WHOLE, label="area")
        self.area.tooltip = (
            "Part of every slice to segment: whole planes; the view on screen (what the "
            "canvas shows now, in the 2D view); or the rectangle of a Shapes layer (the "
            "selected one, else the last drawn). The result is placed where it belongs."
        )
        self.shapes = LayerPicker(viewer, ("shapes",), label="rectangle layer")
        self.shapes.tooltip = "The Shapes layer whose rectangle bounds the region."
        self.shapes.visible = False
        self.area.changed.connect(self._on_area)

    def _on_area(self, *_: Any) -> None:
        self.shapes.visible = self.area.value == RECTANGLE

    def fit(self, slices: int) -> None:
        """Offer the slices of a volume of ``slices`` slices, all of them chosen."""
        top = max(0, int(slices) - 1)
        self.first.max = self.last.max = top
        self.first.value, self.last.value = 0, top

    @property
    def widgets(self) -> list[Any]:
        """The controls, in dock order."""
        return [self.first, self.last, self.area, self.shapes]

    def box(self, layer: napari.layers.Image, shape: tuple[int, ...]) -> Box | None:
        """The region of ``layer``'s volume (its last three axes, ``shape``) to segment, None
        for the whole volume. InputError when the region is empty or cannot be read."""
        z0, z1 = int(self.first.value), int(self.last.value)
        if z1 < z0:
            raise InputError(f"slices from {z0} to {z1}: the last slice is before the first")
        if z0 >= shape[0]:
            raise InputError(f"slice {z0} is past the volume's last slice ({shape[0] - 1})")
        box = [slice(z0, z1 + 1), slice(0, shape[1]), slice(0, shape[2])]
        if self.area.value == VIEW:
            box[1:] = box_from_points(self._view_corners(layer), shape, (1, 2))[1:]
        elif self.area.value == RECTANGLE:
            box[1:] = box_from_points(self._rectangle(layer), shape, (1, 2))[1:]
        checked = check_box(shape, box)
        return None if is_whole(shape, checked) else checked

    def _data_points(self, layer: Any, worlds: list[np.ndarray]) -> np.ndarray:
        """World points (of the viewer's dimensions) in the data frame of the volume."""
        out = []
        for world in worlds:
            full = np.asarray(self.viewer.dims.point, float).copy()
            full[len(full) - len(world) :] = world
            out.append(np.asarray(layer.world_to_data(full), float)[-3:])
        return np.array(out)

    def _view_corners(self, layer: Any) -> np.ndarray:
        """The corners of what the canvas shows of ``layer`` (full-resolution pixels)."""
        viewer = self.viewer
        if viewer.dims.ndisplay != 2:
            raise InputError("the view on screen is a region in the 2D view: switch to 2D")
        if list(viewer.dims.displayed) != [viewer.dims.ndim - 2, viewer.dims.ndim - 1]:
            raise InputError("the view on screen is a region when the slices (y, x) are shown")
        # napari's inclusive indices of the first and last visible pixel, at the level shown.
        corners = np.asarray(layer.corner_pixels, float)[:, -3:]
        corners[1] += 1  # exclusive ends, then to full resolution
        if getattr(layer, "multiscale", False):
            corners = corners * np.asarray(layer.downsample_factors[layer.data_level])[-3:]
        if not np.all(corners[1, 1:] > corners[0, 1:]):
            raise InputError("the image is not on screen: bring it into view first")
        return corners

    def _rectangle(self, layer: Any) -> np.ndarray:
        shapes = self.shapes.value
        if shapes is None:
            raise InputError("no Shapes layer: draw a rectangle on the image first")
        kinds = list(shapes.shape_type)
        candidates = [i for i, k in enumerate(kinds) if k in ("rectangle", "polygon")]
        selected = [i for i in sorted(shapes.selected_data) if i in candidates]
        if not candidates:
            raise InputError(f"'{shapes.name}' has no rectangle: draw one on the image")
        index = selected[-1] if selected else candidates[-1]
        worlds = [np.asarray(shapes.data_to_world(v), float) for v in shapes.data[index]]
        return self._data_points(layer, worlds)
