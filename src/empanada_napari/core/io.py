"""Reading images and writing labels: TIFF, PNG and zarr / OME-Zarr.

Large inputs stay lazy: TIFFs are memory-mapped when their layout allows it and zarr arrays
are returned as zarr arrays, so the engine reads one batch of slices at a time. Outputs are
written to a temporary name and renamed on success, so a failed or cancelled run never leaves
a half-written file in place of a good one (zarr outputs are written chunk by chunk in place,
which keeps every finished chunk).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Cancelled, EmpanadaError, InputError
from .jobs import CancelFlag, Progress, is_cancelled, report
from .ngff import ATTR, ngff_group, ngff_multiscales, plugin_record

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".zarr")
LABEL_SUFFIXES = (".tif", ".tiff", ".zarr")


def _is_zarr(path: Path) -> bool:
    return (
        path.suffix.lower() == ".zarr"
        or (path / ".zarray").exists()
        or (path / "zarr.json").exists()
    )


_HOLD = threading.local()


class _HoldFilter(logging.Filter):
    """Keeps back tifffile's records in a thread inside :func:`_tifffile_log_held`."""

    def filter(self, record: logging.LogRecord) -> bool:
        held = getattr(_HOLD, "records", None)
        if held is None:
            return True
        held.append(record)
        return False


# Installed once; it holds nothing outside _tifffile_log_held (tifffile need not be imported).
logging.getLogger("tifffile").addFilter(_HoldFilter())


@contextmanager
def _tifffile_log_held() -> Iterator[None]:
    """Hold back what tifffile logs while this thread reads a file: a corrupt file makes it
    log a cryptic line before raising, which the one-line error then repeats in words. A
    read that succeeds passes the held records on, so warnings about valid files still show.
    Per thread: other threads' reads log as usual."""
    outer, held = getattr(_HOLD, "records", None), []
    _HOLD.records = held
    try:
        yield
    finally:
        _HOLD.records = outer
    log = logging.getLogger("tifffile")
    for record in held:  # only reached when the read succeeded
        log.handle(record)


def check_input_path(path: str | Path) -> Path:
    """``path`` if it can be read as an input: a regular file or a folder (a zarr store).

    A missing file, a link that points to itself and anything that is not a regular file (a
    pipe would block the read forever, a device never ends) are refused in one sentence.
    """
    path = Path(path).expanduser()
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"Input {path} does not exist.") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(f"Input {path} is a link that leads back to itself.") from None
        raise InputError(f"Input {path} cannot be opened: {err.strerror}.") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise InputError(
            f"Input {path} is not a regular file (a pipe, socket or device); give an image "
            "file or a .zarr folder."
        )
    return path


def read_region(source, region: tuple, what: str, *, in_task: bool = False) -> np.ndarray:
    """``source[region]`` as a numpy array; a part of the input that cannot be read (a
    corrupt or missing chunk, a truncated file) is an InputError naming ``what`` instead of
    a decompressor's traceback. ``in_task``: a dask source is computed in this thread (a
    task of a chunked run must not start threads of its own)."""
    try:
        data = source[region]
        if in_task and hasattr(data, "compute"):
            data = data.compute(scheduler="sync")
        return np.asarray(data)
    except (EmpanadaError, MemoryError):
        raise
    except Exception as err:
        raise InputError(
            f"Could not read {what} of the input (a corrupt or missing chunk?): "
            f"{type(err).__name__}: {err}"
        ) from err


def read_image(path: str | Path, key: str | None = None):
    """Open an image as a numpy, memory-mapped or zarr array (not read into memory if lazy).

    ``key`` selects an array inside a zarr group (e.g. ``"0"``); for an OME-Zarr multiscale
    group the first (full-resolution) level is used by default.
    """
    path = check_input_path(path)
    suffix = path.suffix.lower()
    if key is not None and not _is_zarr(path):
        raise InputError(f"{path.name} is not a zarr store; a key selects an array inside one.")
    try:
        if _is_zarr(path):
            return _open_zarr(path, key)
        if suffix in (".tif", ".tiff"):
            import tifffile

            with _tifffile_log_held():
                try:
                    return tifffile.memmap(str(path), mode="r")
                except (ValueError, OSError):  # compressed or tiled TIFF: read it
                    return tifffile.imread(str(path))
        if suffix == ".png":
            from skimage.io import imread

            image = imread(str(path))
            if image.ndim == 3 and image.shape[-1] in (3, 4):
                raise InputError(
                    f"{path} is an RGB(A) PNG; EM images must be greyscale. Convert it first."
                )
            return image
    except EmpanadaError:
        raise
    except Exception as err:
        kind = "zarr store" if _is_zarr(path) else f"{suffix.lstrip('.').upper()} file"
        raise InputError(
            f"Could not read {path}: it is not a readable {kind} (truncated, corrupt or "
            f"another format under this name?). Details: {type(err).__name__}: {err}"
        ) from err
    raise InputError(f"Unsupported input {path.name}: expected one of {', '.join(IMAGE_SUFFIXES)}.")


def read_points(path: str | Path) -> np.ndarray:
    """Point coordinates (N, D) from a CSV file: one point per line (z,y,x or y,x), after an
    optional header line; a CSV that napari saved from a Points layer (``index,axis-0,...``)
    is read by its ``axis-`` columns. Anything else is an InputError naming the line."""
    import csv

    path = check_input_path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"Could not read points from {path}: {err}") from None
    rows = [(k, row) for k, row in enumerate(csv.reader(lines), start=1) if "".join(row).strip()]
    columns = None
    if rows and not all(_is_number(cell) for cell in rows[0][1]):  # a header line
        names = [cell.strip().lower() for cell in rows[0][1]]
        columns = [i for i, name in enumerate(names) if name.startswith("axis-")] or None
        rows = rows[1:]
    points = []
    for k, row in rows:
        cells = [row[i] for i in columns if i < len(row)] if columns else row
        if (
            not cells
            or not all(_is_number(cell) for cell in cells)
            or (points and len(cells) != len(points[0]))
        ):
            raise InputError(
                f"Line {k} of {path} is not a point like the others ({','.join(row)!r}): "
                "expected one point per line, as finite numbers z,y,x or y,x."
            )
        points.append([float(cell) for cell in cells])
    if not points:
        raise InputError(f"{path} holds no points (one per line: z,y,x or y,x).")
    return np.array(points)


def _is_number(text: str) -> bool:
    """Whether ``text`` is a finite number."""
    try:
        return bool(np.isfinite(float(text)))
    except ValueError:
        return False


def _open_zarr(path: Path, key: str | None):
    import zarr

    node = zarr.open(str(path), mode="r")
    if key is not None:
        node = node[key]
    if isinstance(node, zarr.Array):
        return node
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if multiscales:
        return node[multiscales[0]["datasets"][0]["path"]]
    arrays = sorted(name for name, _ in node.arrays())
    if len(arrays) == 1:
        return node[arrays[0]]
    raise InputError(
        f"{path} is a zarr group with arrays {arrays}; choose one with key=... (--key)."
    )


def disk_error(err: OSError, path: Path) -> EmpanadaError:
    if err.errno == errno.ENOSPC:
        return EmpanadaError(f"No space left on the device while writing {path}; nothing kept.")
    return EmpanadaError(f"Could not write {path}: {err}")


#: Written into every TIFF this package saves, so an overwrite can tell its own files.
TIFF_MARK = "empanada-napari"
#: Integer types of label images; a TIFF of another type is someone's image, not labels.
_LABEL_DTYPES = ("uint32", "int32", "uint64", "int64")


def _zarr_attrs(path: Path) -> dict | None:
    """The attributes of the zarr array or group at ``path``; None when it is not one."""
    if not ((path / ".zarray").exists() or (path / ".zgroup").exists()
            or (path / "zarr.json").exists()):  # fmt: skip
        return None
    import zarr

    try:
        return dict(zarr.open(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - a folder that only looks like a store
        return None


def _own_tiff(path: Path) -> bool:
    """Whether ``path`` is a TIFF this package wrote, or a labels TIFF (32/64-bit ids)."""
    import tifffile

    try:
        with _tifffile_log_held(), tifffile.TiffFile(str(path)) as tif:
            page = tif.pages.first
            if TIFF_MARK in (page.description or "") or TIFF_MARK in str(tif.shaped_metadata):
                return True
            return str(page.dtype) in _LABEL_DTYPES
    except Exception:  # noqa: BLE001 - not a readable TIFF: not ours
        return False


def check_replaceable(path: str | Path) -> None:
    """Refuse to overwrite anything but a result this package could have written.

    ``overwrite`` replaces a zarr store that records the package's attribute (a segmentation
    or an export), a folder of slices from the Export dock, an empty folder, or a labels
    TIFF (written by the package, or of a 32/64-bit integer type); a folder of the user's
    files, an image, or anything else is refused with the reason, before any work is done.
    """
    path = Path(path).expanduser()
    if not path.exists() and not path.is_symlink():
        return
    why = None
    if path.is_dir():
        attrs = _zarr_attrs(path)
        entries = sorted(p.name for p in path.iterdir())
        slices = [n for n in entries if n.startswith(f"{path.name}_") and n.endswith(".tif")]
        if attrs is not None and ATTR in attrs:
            return
        if not entries or (len(slices) == len(entries) and all(
            (path / n).is_file() and _own_tiff(path / n) for n in slices
        )):  # fmt: skip
            return
        kind = "a zarr store" if attrs is not None else "a folder"
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        why = f"it is {kind} this tool did not write ({len(entries)} entries: {shown})"
    elif not path.is_file():
        why = "it is not a regular file"
    elif path.suffix.lower() not in (".tif", ".tiff") or not _own_tiff(path):
        why = "it is not a labels file this tool wrote (an image or another kind of file)"
    if why:
        raise InputError(
            f"Will not overwrite {path}: {why}. Overwriting only replaces a result of "
            "empanada-napari; move or delete it yourself, or choose another output name."
        )


def _check_array(value: Any, function: str, argument: str) -> None:
    """A TypeError naming ``argument`` of ``function`` unless ``value`` is an array."""
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(
            f"{function}: '{argument}' must be an array (numpy, dask or zarr), not "
            f"{type(value).__name__}."
        )


def write_labels(path: str | Path, labels, *, overwrite: bool = False) -> Path:
    """Write a label array to ``.tif``/``.tiff`` (zlib) or ``.zarr``, keeping its dtype.

    The output appears only once it is complete, and an old one is replaced only then
    (see :func:`export_array`).
    """
    _check_array(labels, "write_labels", "labels")
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise InputError(
            f"Unsupported output {path.name}: expected one of {', '.join(LABEL_SUFFIXES)}."
        )
    if path.exists() and not overwrite:
        raise InputError(f"Output {path} exists; choose another name or allow overwriting.")
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_array(labels, path, "zarr" if suffix == ".zarr" else "tiff", overwrite=True)


# --------------------------------------------------------------------------- export


def slice_count(data) -> int:
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
    progress: Progress | None = None,
    cancel: CancelFlag = None,
) -> Path:
    """Write ``data`` (numpy / dask / zarr) slice by slice to ``path``; keep its dtype.

    ``fmt``: ``"tiff"`` (one multi-page file), ``"tiff-slices"`` (a folder with one file per
    slice) or ``"zarr"`` (OME-Zarr with the layer's ``scale``, ``translate`` and ``units``
    from ``meta``). ``progress(done, total)`` counts slices; ``cancel`` (an Event or
    callable) is checked between slices and raises ``Cancelled``. The Export widget, the
    napari writer and the CLI all write through this function.
    """
    import tifffile

    _check_array(data, "export_array", "data")
    path = Path(path)
    meta = meta or {}
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; tick overwrite or choose another folder.")
    check_replaceable(path)
    n = slice_count(data)

    def step(k: int) -> None:
        report(progress, k, n)
        if k < n and is_cancelled(cancel):
            raise Cancelled(f"Export cancelled after {k} of {n} slices.")

    def plane(k: int) -> np.ndarray:
        return np.asarray(data[k] if data.ndim >= 3 else data)

    if fmt not in ("zarr", "tiff", "tiff-slices"):
        raise InputError(f"Unknown export format {fmt!r}: use tiff, tiff-slices or zarr.")
    # Written under a hidden name beside the target and moved into place when complete, so
    # a failure (full disk, cancel) never leaves half a file or destroys an old one.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        if fmt == "zarr":
            # OME-Zarr: a group with the full-resolution array "0" and NGFF metadata (scale,
            # translation, units), read by this plugin and every OME-Zarr reader alike.
            chunks = (1,) * (data.ndim - 2) + tuple(min(s, 1024) for s in data.shape[-2:])
            group, out = ngff_group(tmp, tuple(data.shape), chunks, data.dtype)
            for k in range(n):
                if data.ndim >= 3:
                    out[k] = plane(k)
                else:
                    out[...] = plane(k)
                step(k + 1)
            group.attrs["multiscales"] = ngff_multiscales(name, meta, data.ndim)
            group.attrs[ATTR] = plugin_record(kind, name, meta)
            if kind == "labels":
                group.attrs["image-label"] = {"version": "0.4"}
        elif fmt == "tiff-slices":
            tmp.mkdir()
            digits = max(4, len(str(n - 1)))
            for k in range(n):
                name_k = f"{path.name}_{k:0{digits}d}.tif"
                tifffile.imwrite(
                    tmp / name_k,
                    plane(k),
                    compression="zlib",
                    photometric="minisblack",
                    metadata={TIFF_MARK: kind},
                )
                step(k + 1)
        else:

            def pages():
                for k in range(n):
                    yield plane(k)
                    step(k + 1)

            # Pages streamed from an iterator: one multi-page stack, one slice in memory.
            # minisblack: a last axis of 3 or 4 is image width, not RGB(A) samples.
            tifffile.imwrite(
                tmp,
                pages(),
                shape=tuple(data.shape),
                dtype=data.dtype,
                compression="zlib",
                photometric="minisblack",
                metadata={TIFF_MARK: kind},
            )
        _replace(tmp, path)
    except OSError as err:
        raise disk_error(err, path) from err
    finally:
        _remove(tmp)
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _replace(new: Path, path: Path) -> None:
    """Move a finished ``new`` file or folder to ``path``, replacing what was there."""
    if path.exists() and (path.is_dir() or new.is_dir()):
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(path, old)
        os.replace(new, path)
        _remove(old)
    else:
        os.replace(new, path)
