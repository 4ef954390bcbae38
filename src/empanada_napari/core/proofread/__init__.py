"""Proofreading of instance labels: merge, split, delete, morph, filter, measure.

Everything here works on the bounding box of the labels concerned, found in a
:class:`LabelIndex` (per-label bounding boxes and voxel counts, built once with a chunked pass
and updated incrementally from the edited box only), so an edit on a 512 x 1024 x 1024 volume
costs what the object costs, not what the volume costs. ``labels`` may be a numpy array or any
array-like that supports basic slicing (zarr, dask): only boxes are ever read.

Editing functions never mutate their inputs: they return an :class:`Edit` (the box, the old and
the new values in it). :meth:`Edit.apply` and :meth:`Edit.revert` are the explicit in-place
writes of that box, and :meth:`LabelIndex.update` brings the index up to date afterwards.

``fixed`` arguments restrict an edit to a plane (or a time point): a mapping ``{axis: index}``
of axes held at one index, e.g. ``{0: z}`` for the current plane of a z, y, x volume, or
``{0: t}`` for one time point of a t, z, y, x stack.

Work that reads a whole volume (building the index, measuring, filtering, morphing every
label) takes ``progress`` and ``cancel`` as described in :mod:`empanada_napari.core.jobs`.

Modules: ``index`` (the label index), ``edits`` (the Edit record, merge, delete), ``split``,
``morph``, ``picking`` (points and lines to labels), ``prompts`` (the model draws the
object under a click or in a box), ``filtering``, ``measure``.
"""

from __future__ import annotations

from ._boxes import BLOCK_VOXELS, Box
from .edits import Edit, apply_edit, delete_labels, merge_labels
from .filtering import filter_labels
from .index import LabelIndex
from .measure import class_counts, column_titles, measure_labels, table_to_csv
from .morph import MORPH_OPERATIONS, morph_labels
from .picking import label_location, labels_at, path_coordinates
from .prompts import Prompted, Prompter, segment_at, segment_in_box
from .split import split_label

__all__ = [
    "BLOCK_VOXELS",
    "MORPH_OPERATIONS",
    "Prompted",
    "Prompter",
    "Box",
    "Edit",
    "LabelIndex",
    "apply_edit",
    "class_counts",
    "column_titles",
    "delete_labels",
    "filter_labels",
    "label_location",
    "labels_at",
    "measure_labels",
    "merge_labels",
    "morph_labels",
    "path_coordinates",
    "segment_at",
    "segment_in_box",
    "split_label",
    "table_to_csv",
]
