"""Outputs that never destroy an input or a previous result, and say how far a run got.

Rules every writer in the package follows (the CLI, the 3D driver and the widgets):

* An output that is, contains or lies inside an input is refused before anything is written
  (real paths are compared, so links and ``..`` do not hide it; a zarr group and its arrays
  count as one store).
* Where the output must be a folder (zarr) or a file (TIFF), a read-only or missing parent
  folder, or a file where a folder is needed, is reported before any segmentation starts.
* ``overwrite`` never deletes the old result first: the new one is written beside it (a hidden
  ``.<name>.new`` store) and swapped into place only once it is complete, as TIFF outputs are
  written to a temporary file and renamed.
* A zarr output is an OME-Zarr labels group (:mod:`.ngff`) whose ``empanada`` record holds
  ``status`` (``running`` / ``complete``) and a ``fingerprint`` of the job (input and
  settings), so a killed run never looks finished and ``resume`` continues only the same job
  (outputs of earlier versions, plain arrays with the record, resume the same way).
* One run at a time per output: a second one gets a clear "in use" error (a lock file beside
  the output, through the ``filelock`` package).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EmpanadaError, InputError
from .io import check_replaceable, disk_error
from .ngff import create_labels, open_labels, read_meta, update_meta

#: Regions read to fingerprint an input's content (a few small ones, wherever it lives).
_SAMPLES = 9


def real_path(path: str | os.PathLike) -> Path:
    """``path`` with ``~``, links and ``..`` resolved (it need not exist)."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as err:  # Python < 3.13 raises RuntimeError on a loop
        raise InputError(f"{path} is a link that leads back to itself.") from err


def source_path(array: Any) -> Path | None:
    """The file or zarr store an array was read from, when it can be told; else None."""
    filename = getattr(array, "filename", None)  # numpy memmap (memory-mapped TIFF)
    if isinstance(filename, str | os.PathLike) and filename:
        return real_path(filename)
    store = getattr(array, "store", None)
    root = getattr(store, "root", None) or getattr(store, "path", None)  # zarr 3 / zarr 2
    if isinstance(root, str | os.PathLike) and str(root):
        return real_path(root)
    return None


def _zarr_root(path: Path) -> Path:
    """The outermost ``.zarr`` folder ``path`` lies in (a group and its arrays are one)."""
    for candidate in [path, *path.parents]:
        if candidate.suffix.lower() == ".zarr":
            root = candidate
            for parent in candidate.parents:
                if parent.suffix.lower() == ".zarr":
                    root = parent
            return root
    return path


def check_not_input(output: str | os.PathLike, inputs: list[Any]) -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs`` (paths or arrays)."""
    out = _zarr_root(real_path(output))
    for item in inputs:
        src = source_path(item) if not isinstance(item, str | os.PathLike) else real_path(item)
        if src is None:
            continue
        src = _zarr_root(src)
        if out == src or out in src.parents or src in out.parents:
            raise InputError(
                f"The output {output} is the input {src} or overlaps it: writing it would "
                "destroy the image being segmented. Choose another output path."
            )


def check_writable(output: str | os.PathLike, *, folder: bool) -> None:
    """Refuse, before any work, an output that cannot be written where it is asked to go."""
    path = Path(output).expanduser()
    if path.exists() and folder and not path.is_dir():
        raise InputError(f"The output {path} is a file; a .zarr output must be a folder.")
    if path.exists() and not folder and path.is_dir():
        raise InputError(f"The output {path} is a folder; choose a file name.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"The output folder {parent} does not exist; create it first.")
    if not parent.is_dir():
        raise InputError(f"{parent} is not a folder; the output cannot be written inside it.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"The output folder {parent} is not writable (permissions).")


def input_fingerprint(image: Any, path: str | os.PathLike | None = None) -> dict:
    """What identifies an input: shape, dtype, the file's path, size and modification time
    (when known), and a hash of a few small regions sampled across the volume."""
    info: dict[str, Any] = {"shape": list(image.shape), "dtype": str(np.dtype(image.dtype))}
    src = real_path(path) if path is not None else source_path(image)
    if src is not None:
        info["path"] = str(src)
        try:
            stat = src.stat()
            info["bytes"], info["mtime"] = stat.st_size, stat.st_mtime
        except OSError:
            pass
    digest = hashlib.sha256()
    shape = image.shape
    for k in range(_SAMPLES):
        # Small regions along the volume's diagonal: cheap on any store, different for any
        # two real volumes of one shape.
        t = k / max(1, _SAMPLES - 1)
        region = tuple(
            slice(int((s - min(s, 32)) * t), int((s - min(s, 32)) * t) + min(s, 32)) for s in shape
        )
        digest.update(np.ascontiguousarray(np.asarray(image[region])).tobytes())
    info["sample_sha256"] = digest.hexdigest()
    return info


def output_lock(path: str | os.PathLike):
    """A lock held while a run writes ``path``; a second run fails with a clear message."""
    from filelock import FileLock

    path = real_path(path)
    return _Lock(FileLock(str(path.parent / f".{path.name}.lock")), path)


class _Lock:
    def __init__(self, lock, path: Path) -> None:
        self._lock, self._path = lock, path

    def __enter__(self) -> _Lock:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise InputError(
                f"The output {self._path} is in use by another run; wait for it to finish "
                "(or stop it) before starting or resuming this one."
            ) from None
        except OSError as err:
            raise disk_error(err, self._path) from err
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()
        Path(self._lock.lock_file).unlink(missing_ok=True)


def staging_path(path: Path) -> Path:
    """Where an overwrite writes before it swaps the new result into ``path``."""
    return path.with_name(f".{path.name}.new")


def recorded_fingerprint(path: str | os.PathLike) -> dict | None:
    """The job fingerprint a (possibly interrupted) run recorded at ``path``, or in the
    staging store of an interrupted overwrite; None when there is none to read."""
    path = Path(path).expanduser()
    for candidate in (staging_path(path), path):
        try:
            meta = read_meta(candidate)
        except Exception:  # noqa: BLE001 - absent or not a zarr store: nothing recorded
            continue
        if isinstance(meta.get("fingerprint"), dict):
            return meta["fingerprint"]
    return None


class ZarrOutput:
    """A zarr labels output written in place, or beside an old result and swapped at the end.

    >>> out = ZarrOutput(path, shape, chunks, fingerprint, resume=False, overwrite=True)
    >>> array = out.open()        # doctest: +SKIP  (refuses, resumes or creates)
    >>> ... write ...; out.finish(objects=12)                       # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shape: tuple[int, ...],
        chunks: tuple[int, ...] | None,
        fingerprint: dict,
        *,
        resume: bool = False,
        overwrite: bool = False,
        dtype=np.uint32,
    ) -> None:
        self.path = Path(path).expanduser()
        self.shape, self.chunks, self.dtype = tuple(shape), chunks, dtype
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.resume, self.overwrite = resume, overwrite
        self.staging = staging_path(self.path)
        #: where this run writes: the path itself, or the staging store before the swap
        self.target = self.path

    # -- opening
    def open(self):
        """The array to write into (zeros where not written yet); see the class docstring."""
        if self.resume:
            for candidate in (self.staging, self.path):
                if candidate.exists():
                    array = self._reopen_same_job(candidate)
                    self.target = candidate
                    return array
            raise InputError(f"Nothing to resume at {self.path}: it does not exist.")
        if self.path.exists() and not self.overwrite:
            raise InputError(
                f"Output {self.path} exists; resume an interrupted run or overwrite it."
            )
        check_replaceable(self.path)
        self.target = self.staging if self.path.exists() else self.path
        if self.target.exists():  # a staging store left by an abandoned overwrite
            shutil.rmtree(self.target)
        try:
            return create_labels(
                self.target,
                self.shape,
                self.dtype,
                self.chunks,
                name=self.path.stem,
                record={"status": "running", "fingerprint": self.fingerprint},
            )
        except OSError as err:
            raise disk_error(err, self.target) from err

    def _reopen_same_job(self, store: Path):
        try:
            array = open_labels(store, mode="r+")
            previous = read_meta(store).get("fingerprint") or {}
        except Exception as err:
            raise InputError(f"{store} is not a zarr store from an earlier run: {err}") from err
        if previous != self.fingerprint:
            changed = sorted(
                k
                for k in set(self.fingerprint) | set(previous)
                if self.fingerprint.get(k) != previous.get(k)
            )
            raise InputError(
                f"{self.path} was written from a different input or with different settings "
                f"(changed: {', '.join(changed)}); resume with the same input and settings, "
                "or overwrite it."
            )
        return array

    @property
    def complete(self) -> bool:
        """Whether the store being written already records a finished run."""
        try:
            meta = read_meta(self.target)
        except Exception:  # noqa: BLE001 - not there or unreadable: not complete
            return False
        return meta.get("status") == "complete"

    def update(self, **meta: Any) -> None:
        """Record progress details (e.g. slices done) in the store's attributes."""
        try:
            update_meta(self.target, **meta)
        except OSError as err:
            raise disk_error(err, self.target) from err

    # -- finishing
    def finish(self, **meta: Any):
        """Mark the run complete and, after an overwrite, swap the new store into place;
        returns the labels array, read-only."""
        self.update(status="complete", **meta)
        if self.target != self.path:
            trash = self.path.with_name(f".{self.path.name}.old-{uuid.uuid4().hex[:8]}")
            try:
                os.replace(self.path, trash)
                os.replace(self.target, self.path)
            except OSError as err:
                raise EmpanadaError(
                    f"The new result is complete in {self.target} but could not replace "
                    f"{self.path} ({err}); move it into place by hand."
                ) from err
            shutil.rmtree(trash, ignore_errors=True)
            self.target = self.path
        return open_labels(self.path)
