"""Reading images and writing labels: TIFF, PNG and zarr / OME-Zarr.

Large inputs stay lazy: TIFFs are memory-mapped when their layout allows it and zarr arrays
are returned as zarr arrays, so the engine reads one batch of slices at a time. Outputs are
written to a temporary name and renamed on success, so a failed or cancelled run never leaves
a half-written file in place of a good one (zarr outputs are written chunk by chunk in place,
which keeps every finished chunk).
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import EmpanadaError, InputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".zarr")
LABEL_SUFFIXES = (".tif", ".tiff", ".zarr")


def _is_zarr(path: Path) -> bool:
    return (
        path.suffix.lower() == ".zarr"
        or (path / ".zarray").exists()
        or (path / "zarr.json").exists()
    )


def read_image(path: str | Path, key: str | None = None):
    """Open an image as a numpy, memory-mapped or zarr array (not read into memory if lazy).

    ``key`` selects an array inside a zarr group (e.g. ``"0"``); for an OME-Zarr multiscale
    group the first (full-resolution) level is used by default.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"Input {path} does not exist.")
    suffix = path.suffix.lower()
    try:
        if _is_zarr(path):
            return _open_zarr(path, key)
        if suffix in (".tif", ".tiff"):
            import tifffile

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
        raise InputError(f"Could not read {path}: {type(err).__name__}: {err}") from err
    raise InputError(f"Unsupported input {path.name}: expected one of {', '.join(IMAGE_SUFFIXES)}.")


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


def _disk_error(err: OSError, path: Path) -> EmpanadaError:
    if err.errno == errno.ENOSPC:
        return EmpanadaError(f"No space left on the device while writing {path}; nothing kept.")
    return EmpanadaError(f"Could not write {path}: {err}")


def write_labels(path: str | Path, labels, *, overwrite: bool = False) -> Path:
    """Write a label array to ``.tif``/``.tiff`` (zlib) or ``.zarr``, keeping its dtype.

    The file appears only once it is complete (temporary name, then rename).
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise InputError(
            f"Unsupported output {path.name}: expected one of {', '.join(LABEL_SUFFIXES)}."
        )
    if path.exists() and not overwrite:
        raise InputError(f"Output {path} exists; choose another name or allow overwriting.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".zarr":
        out = create_zarr_labels(path, tuple(labels.shape), labels.dtype, overwrite=overwrite)
        out[...] = np.asarray(labels)
        return path
    import tifffile

    with atomic_file(path) as handle:
        # minisblack: a last axis of 3 or 4 is image width, not RGB(A) samples.
        tifffile.imwrite(handle, np.asarray(labels), compression="zlib", photometric="minisblack")
    return path


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a new hidden file beside ``path`` to write; rename it to ``path`` on success.

    On any error the partial file is removed and ``path`` is left as it was. The file is
    created with ``open(..., "xb")`` rather than ``tempfile.mkstemp`` so that its permissions
    follow the user's umask (mkstemp always creates 0600, unreadable to the user's group).
    """
    path = Path(path)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        try:
            handle = open(tmp, "xb")  # noqa: SIM115 - closed below, before the rename
        except FileExistsError:
            continue
        except OSError as err:
            raise _disk_error(err, path) from err
        break
    else:
        raise EmpanadaError(f"Could not create a temporary file beside {path}.")
    try:
        with handle:
            yield handle
        os.replace(tmp, path)
    except OSError as err:
        raise _disk_error(err, path) from err
    finally:
        tmp.unlink(missing_ok=True)


def create_zarr_labels(
    path: str | Path,
    shape: tuple[int, ...],
    dtype=np.uint32,
    chunks: tuple[int, ...] | None = None,
    *,
    overwrite: bool = False,
):
    """Create an empty (zero-filled) zarr label array to be written chunk by chunk."""
    import zarr

    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise InputError(f"Output {path} exists; choose another name or allow overwriting.")
    if chunks is None:
        # One slice (up to 1024 x 1024) per chunk: the 2D engine writes slice batches.
        base = (1,) * (len(shape) - 2) + (1024, 1024)
        chunks = tuple(min(s, c) for s, c in zip(shape, base, strict=True))
    try:
        return zarr.open_array(
            str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0
        )
    except OSError as err:
        raise _disk_error(err, path) from err
