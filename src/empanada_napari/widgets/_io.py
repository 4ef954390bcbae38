"""napari reader and writer for the plugin's zarr outputs, and the exporters they share.

The plugin's zarr outputs are zarr arrays with attributes under the key ``empanada`` (the
chunked 3D driver records its parameters and status there; the exporter records the layer's
kind, name, scale and translate). The reader opens them lazily as Labels layers (or Image
layers for exported images), keeping their dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ATTR = "empanada"


def _open_array(path: Path):
    """The zarr array at ``path`` if it is one of ours, else None."""
    try:
        import zarr

        node = zarr.open(str(path), mode="r")
    except Exception:  # noqa: BLE001 - not a zarr store: not ours to read
        return None
    if not hasattr(node, "shape") or ATTR not in node.attrs:
        return None
    return node


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """npe2 reader: a function for a plugin-written ``.zarr`` array, None for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    if path.suffix.lower() != ".zarr" or _open_array(path) is None:
        return None
    return read_zarr


def read_zarr(path: str | list[str]) -> list[tuple]:
    """Layer data for a plugin-written zarr array (lazy, dtype kept)."""
    paths = [path] if isinstance(path, str | Path) else path
    layers = []
    for p in paths:
        array = _open_array(Path(p))
        if array is None:
            continue
        meta = dict(array.attrs[ATTR])
        kind = "image" if meta.get("kind") == "image" else "labels"
        kwargs: dict[str, Any] = {"name": meta.get("name") or Path(p).stem}
        for key in ("scale", "translate"):
            if meta.get(key) is not None and len(meta[key]) == array.ndim:
                kwargs[key] = tuple(meta[key])
        layers.append((array, kwargs, kind))
    return layers


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "layer"


def _metadata(kind: str, name: str, meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind, "name": name}
    for key in ("scale", "translate"):
        if meta.get(key) is not None:
            out[key] = [float(v) for v in meta[key]]
    return out


def _slices(data) -> int:
    return int(data.shape[0]) if data.ndim >= 3 else 1


def export_array(
    data,
    path: Path,
    fmt: str,
    *,
    kind: str = "labels",
    name: str = "",
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    cancel: Any = None,
) -> Path:
    """Write ``data`` (numpy / dask / zarr) slice by slice to ``path``; keep its dtype.

    ``fmt``: ``"tiff"`` (one multi-page file), ``"tiff-slices"`` (a folder with one file per
    slice) or ``"zarr"``. ``progress(k)`` is called after each slice; ``cancel`` (an Event or
    callable) is checked between slices and raises ``Cancelled``.
    """
    import tifffile

    from ..core.errors import Cancelled, InputError
    from ..core.io import create_zarr_labels
    from ..core.jobs import is_cancelled

    meta = meta or {}
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; tick overwrite or choose another folder.")
    n = _slices(data)

    def step(k: int) -> None:
        if progress is not None:
            progress(k)
        if k < n and is_cancelled(cancel):
            raise Cancelled(f"Export cancelled after {k} of {n} slices.")

    def plane(k: int) -> np.ndarray:
        return np.asarray(data[k] if data.ndim >= 3 else data)

    if fmt == "zarr":
        import shutil

        if path.exists():
            shutil.rmtree(path)
        chunks = (1,) * (data.ndim - 2) + tuple(min(s, 1024) for s in data.shape[-2:])
        out = create_zarr_labels(path, tuple(data.shape), data.dtype, chunks, overwrite=True)
        for k in range(n):
            if data.ndim >= 3:
                out[k] = plane(k)
            else:
                out[...] = plane(k)
            step(k + 1)
        out.attrs[ATTR] = _metadata(kind, name, meta)
        return path
    if fmt == "tiff-slices":
        path.mkdir(parents=True, exist_ok=True)
        digits = max(4, len(str(n - 1)))
        for k in range(n):
            tifffile.imwrite(path / f"{path.name}_{k:0{digits}d}.tif", plane(k), compression="zlib")
            step(k + 1)
        return path
    if fmt == "tiff":
        from ..core.io import atomic_file

        def pages():
            for k in range(n):
                yield plane(k)
                step(k + 1)

        # Pages streamed from an iterator: one multi-page stack, one slice in memory.
        # minisblack: a last axis of 3 or 4 is image width, not RGB(A) samples.
        with atomic_file(path) as handle:
            tifffile.imwrite(
                handle,
                pages(),
                shape=tuple(data.shape),
                dtype=data.dtype,
                compression="zlib",
                photometric="minisblack",
            )
        return path
    raise InputError(f"Unknown export format {fmt!r}: use tiff, tiff-slices or zarr.")


def write_labels_zarr(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: save one Labels layer as a zarr array the reader opens again."""
    target = Path(path)
    if target.suffix.lower() != ".zarr":
        target = target.with_suffix(".zarr")
    name = meta.get("name") or target.stem
    export_array(data, target, "zarr", kind="labels", name=name, meta=meta, overwrite=True)
    return [str(target)]
