"""The one place that uses napari's private Labels API (tested with napari 0.9.2).

Proofreading needs two things napari offers no public API for:

* **Following edits made outside the plugin** (painting, filling, undo, redo), so that the
  label index stays right. napari emits ``layer.events.paint`` when a new step enters the
  undo history, but nothing on undo or redo, so the undo stack (``_undo_history``) is
  compared with the one seen last. Without it (a future napari), :func:`undo_items` returns
  None and callers rebuild their index instead of updating it.
* **Writing a box of a zarr or dask layer as one undo step.** The public ``data_setitem``
  needs n-d fancy indexing, which dask lacks and zarr does slowly, so a masked atom (the
  box, the changed voxels, their values before and after) goes through ``_save_history``:
  napari replays it with basic slicing, as it does its own paint atoms. numpy layers use
  ``data_setitem``.

It also hides one public API that moved, the viewer's camera (:func:`camera`), and the
main window's Qt widget (:func:`main_window`: private in napari, needed by the tests, the
benchmarks and the screenshot scripts to size the window as a laptop screen).

napari stores history atoms in two formats: ``_MaskedPaintAtom`` (paint, fill, polygon:
``slice_key``, ``mask``, ``old_values``, ``new_value``) and a 3-tuple ``(indices, old, new)``
(``data_setitem``: index arrays; ours: slices). :func:`atom_box` reads both.
``tests/widgets/test_proofread_widgets.py::test_napari_history_format`` fails loudly if any of this
changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import EmpanadaError

if TYPE_CHECKING:
    import napari

Box = tuple[slice, ...]


def camera(viewer: napari.viewer.Viewer) -> Any:
    """The viewer's camera: ``viewer.scene.camera`` since napari 0.9 (``viewer.camera`` is
    deprecated there), ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def main_window(viewer: napari.viewer.Viewer) -> Any:
    """The Qt main window of ``viewer`` (``viewer.window._qt_window``; no public API)."""
    return viewer.window._qt_window


def undo_items(layer: napari.layers.Labels) -> list[Any] | None:
    """The layer's undo steps (oldest first), or None when napari no longer exposes them."""
    history = getattr(layer, "_undo_history", None)
    return None if history is None else list(history)


def history_marker(layer: napari.layers.Labels) -> tuple[Any, ...]:
    """A snapshot of the layer's undo/redo state, for :func:`history_changed`."""
    undo = getattr(layer, "_undo_history", None) or ()
    redo = getattr(layer, "_redo_history", None) or ()
    return (len(undo), len(redo), undo[-1] if undo else None, layer.data)


def history_changed(layer: napari.layers.Labels, marker: tuple[Any, ...]) -> bool:
    """True when the layer was edited, undone, redone or given new data since ``marker``."""
    now = history_marker(layer)
    return now[:2] != marker[:2] or now[2] is not marker[2] or now[3] is not marker[3]


def atom_box(atom: Any) -> Box | None:
    """Bounding box of one history atom (masked paint atom or (indices, old, new))."""
    key = getattr(atom, "slice_key", None)
    if key is None:
        try:
            key = atom[0]
        except (TypeError, IndexError, KeyError):
            return None
    out = []
    for k in key:
        if isinstance(k, slice):
            out.append(slice(k.start or 0, k.stop))
        else:
            k = np.asarray(k)
            if k.size == 0:
                return None
            out.append(slice(int(k.min()), int(k.max()) + 1))
    return tuple(out)


def item_boxes(item: Any) -> list[Box]:
    """Boxes of the atoms of one undo step (a list of atoms)."""
    return [b for b in map(atom_box, item) if b is not None]


def record_edit(
    layer: napari.layers.Labels,
    box: Box,
    old: np.ndarray,
    new: np.ndarray,
    changed: np.ndarray | None = None,
) -> None:
    """Write ``new`` into ``layer.data[box]`` as one undo step (``old`` is what is there;
    ``changed``, ``old != new``, when the caller has it)."""
    changed = old != new if changed is None else changed
    if not changed.any():
        return
    if isinstance(layer.data, np.ndarray):
        where = np.nonzero(changed)
        indices = tuple(w + s.start for w, s in zip(where, box, strict=True))
        layer.data_setitem(indices, new[where])
        return
    save = getattr(layer, "_save_history", None)
    if save is None:
        raise EmpanadaError(
            "this napari version cannot record edits of zarr or dask labels for undo: "
            "load the labels into memory (numpy) to proofread them"
        )
    try:
        _write_changed(layer.data, box, new, changed)
    except Exception as err:  # a read-only store: said in the dock, nothing recorded
        raise EmpanadaError(
            f"could not write into '{layer.name}' ({type(err).__name__}: {err}); nothing "
            "changed. Open the labels writable (or load them into memory) to edit them."
        ) from err
    save(_atom(box, old, new, changed))
    layer.refresh()


def _atom(box: Box, old: np.ndarray, new: np.ndarray, changed: np.ndarray) -> Any:
    """The undo step of a box edit, as compact as napari replays it: a masked atom holding
    the changed voxels only (a delete on a big volume keeps a bit per voxel of the box and
    the deleted values, not two copies of the box); ``(box, old, new)`` where napari has no
    masked atoms. napari replays a masked atom with basic slicing, also on zarr and dask."""
    from napari.layers.labels import labels as module

    masked = getattr(module, "_MaskedPaintAtom", None)
    if masked is None:
        return (box, old, new)
    if changed.all():
        return masked(box, None, old, new)
    # ``new_value`` is one label for napari's own paint; an array of the changed voxels'
    # values replays the same (``region[mask] = new_value``).
    return masked(box, changed, old[changed], new[changed])


def _write_changed(data: Any, box: Box, new: np.ndarray, changed: np.ndarray) -> None:
    """Write ``new`` into ``data[box]``, skipping the storage chunks where nothing changes
    (each chunk written is read, merged and compressed again by zarr)."""
    chunks = getattr(data, "chunks", None)
    if not isinstance(chunks, tuple) or not all(isinstance(c, int) for c in chunks):
        data[box] = new  # dask's chunks are tuples of tuples: one write
        return
    edges = []
    for s, c in zip(box, chunks, strict=True):
        inner = list(range((s.start // c + 1) * c, s.stop, c))
        edges.append(list(zip([s.start, *inner], [*inner, s.stop], strict=True)))
    for piece in np.ndindex(*(len(e) for e in edges)):
        sub = tuple(slice(*edges[a][i]) for a, i in enumerate(piece))
        local = tuple(
            slice(p.start - b.start, p.stop - b.start) for p, b in zip(sub, box, strict=True)
        )
        if changed[local].any():
            data[sub] = new[local]
