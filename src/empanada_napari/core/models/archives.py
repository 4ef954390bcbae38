"""``.empanada`` model archives: a zip of the config YAML plus ``<name>.pth`` (and
``<name>_quantized.pth``), the format of the original empanada-napari.

An archive is untrusted input. Import reads the YAML first and extracts only the model files
it names, refuses members that could write outside the staging folder (absolute paths,
``..``, links), and bounds what is written: the named members may not claim more than
:data:`MAX_EXPANSION` times the archive's size, and no member may write more than it declares.
"""

from __future__ import annotations

import copy
import os
import posixpath
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, TYPE_CHECKING, Any

from ..errors import InputError, ModelError, ModelFileError
from ._files import new_temp_dir, new_temp_file
from .config import MAX_CONFIG_BYTES, MODEL_KEYS, dump_yaml, is_url, parse_yaml, url_scheme
from .download import sha256_of

if TYPE_CHECKING:
    from .config import ModelEntry
    from .store import ModelRegistry

__all__ = [
    "ARCHIVE_SUFFIX",
    "MAX_EXPANSION",
    "archive_model_name",
    "export_archive",
    "import_archive",
]

ARCHIVE_SUFFIX = ".empanada"
#: The model files named by an archive's YAML may declare at most this many times the
#: archive's size (TorchScript files are zips already and barely compress), plus 1 MiB.
MAX_EXPANSION = 10
_SLACK = 1 << 20
_MAX_YAML = MAX_CONFIG_BYTES  # the bound of every config, read before parse_yaml checks it


def _check_member(member: zipfile.ZipInfo, archive: Path) -> None:
    """Refuse archive members that could write outside the extraction folder."""
    name = member.filename
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    mode = member.external_attr >> 16
    problem = None
    if posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith("\\"):
        problem = "an absolute path"
    elif ".." in posix.parts or ".." in windows.parts:
        problem = "a '..' component"
    elif (mode & 0o170000) == 0o120000:
        problem = "a symbolic link"
    elif "\x00" in name:
        problem = "a NUL character"
    if problem:
        raise ModelError(f"refusing archive {archive}: member {name!r} has {problem}")


def _open(path: Path) -> tuple[zipfile.ZipFile, zipfile.ZipInfo]:
    """Open an archive, check every member's name, and find its one YAML config."""
    if not path.is_file():
        raise ModelFileError(f"model archive not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a model archive (not a zip file)")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable model archive: {exc}") from exc
    try:
        for member in zf.infolist():
            _check_member(member, path)
        yamls = [
            m
            for m in zf.infolist()
            if not m.is_dir() and m.filename.lower().endswith((".yaml", ".yml"))
        ]
        if len(yamls) != 1:
            raise ModelError(f"{path} must contain exactly one .yaml config, found {len(yamls)}")
    except BaseException:
        zf.close()
        raise
    return zf, yamls[0]


def _read_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo, limit: int, archive: Path) -> bytes:
    if member.file_size > limit:
        raise ModelError(f"{archive}: {member.filename} is too large for a config")
    try:
        with zf.open(member) as src:
            return src.read(limit + 1)[: limit + 1]
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise ModelFileError(f"{archive} is a corrupt archive: {exc}") from exc


def _read_config(zf: zipfile.ZipFile, member: zipfile.ZipInfo, archive: Path) -> dict[str, Any]:
    return parse_yaml(_read_member(zf, member, _MAX_YAML, archive), f"{archive}:{member.filename}")


def archive_model_name(path: str | Path) -> str:
    """The name an archive's model is imported under by default (its YAML's stem)."""
    zf, member = _open(Path(path).expanduser())
    with zf:
        return PurePosixPath(member.filename).stem


def _named_members(
    zf: zipfile.ZipFile, yaml_member: zipfile.ZipInfo, config: dict, archive: Path
) -> dict[str, zipfile.ZipInfo]:
    """config key -> archive member of every model file the YAML names inside the archive."""
    members = {m.filename: m for m in zf.infolist() if not m.is_dir()}
    base = posixpath.dirname(yaml_member.filename)
    named = {}
    for key, _, _ in MODEL_KEYS.values():
        source = config.get(key)
        # A missing or odd value is reported by the config validation.
        if not isinstance(source, str) or not source.strip():
            continue
        source = source.strip()
        if is_url(source):
            # Only files inside the archive or https URLs: an archive must not pull in
            # arbitrary files from this computer.
            if url_scheme(source) != "https":
                raise ModelError(
                    f"{archive}: key '{key}' may only be a file inside the archive or an https URL"
                )
            continue
        inside = posixpath.normpath(posixpath.join(base, source.replace("\\", "/")))
        if inside not in members:
            raise ModelError(
                f"{archive}: key '{key}' must name a file inside the archive (got {source!r})"
            )
        named[key] = members[inside]
    return named


def _copy_bounded(src: IO[bytes], target: Path, limit: int) -> int:
    """Copy at most ``limit`` bytes; raise ModelError (file removed) if there are more."""
    written = 0
    with open(target, "wb") as dst:
        while True:
            block = src.read(min(1 << 20, limit - written + 1))
            if not block:
                return written
            written += len(block)
            if written > limit:
                dst.close()
                target.unlink(missing_ok=True)
                raise ModelError(f"{target.name} holds more than the {limit} bytes it declares")
            dst.write(block)


def import_archive(
    registry: ModelRegistry, path: str | Path, *, name: str | None = None, overwrite: bool = False
) -> ModelEntry:
    """Register the model in a ``.empanada`` archive, under ``name`` or its YAML's name."""
    path = Path(path).expanduser()
    zf, yaml_member = _open(path)
    with zf:
        config = _read_config(zf, yaml_member, path)
        named = _named_members(zf, yaml_member, config, path)
        declared = sum(m.file_size for m in named.values())
        allowed = MAX_EXPANSION * path.stat().st_size + _SLACK
        if declared > allowed:
            raise ModelError(
                f"refusing archive {path}: its model files claim {declared / 1e6:.1f} MB from a "
                f"{path.stat().st_size / 1e6:.1f} MB archive (more than {MAX_EXPANSION}x; a "
                "compression bomb?)"
            )
        staging = new_temp_dir(registry.user_models_dir, ".import-")
        try:
            for key, member in named.items():
                target = staging / ("quantized.pth" if key == "model_quantized" else "model.pth")
                try:
                    with zf.open(member) as src:
                        _copy_bounded(src, target, member.file_size)
                except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
                    raise ModelFileError(f"{path} is a corrupt archive: {exc}") from exc
                except RuntimeError as exc:  # encrypted members
                    raise ModelFileError(
                        f"{path}: {member.filename} cannot be read: {exc}"
                    ) from exc
                config[key] = target.name
            entry = registry.register(
                name or PurePosixPath(yaml_member.filename).stem,
                config,
                base_dir=staging,
                overwrite=overwrite,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return entry


def export_archive(
    registry: ModelRegistry, name: str, path: str | Path, *, overwrite: bool = False
) -> Path:
    """Write model ``name`` (config + model files) to a ``.empanada`` zip; return its path.

    URL models are downloaded first. A folder ``path`` gets ``<name>.empanada`` inside it.
    An existing archive is only replaced with ``overwrite=True``.
    """
    entry = registry.get(name)
    dest = Path(path).expanduser()
    if dest.is_dir():
        dest = dest / f"{entry.name}{ARCHIVE_SUFFIX}"
    elif dest.suffix.lower() != ARCHIVE_SUFFIX:
        dest = dest.with_name(dest.name + ARCHIVE_SUFFIX)
    if dest.exists() and not overwrite:
        raise InputError(f"{dest} exists; pass overwrite=True (--overwrite) to replace it")
    files = {False: registry.fetch(entry, progress=False)}
    if entry.quantized_source:
        files[True] = registry.fetch(entry, quantized=True, progress=False)
    config = copy.deepcopy(entry.config)
    members = {}
    for quantized, file in files.items():
        key, sha_key, _ = MODEL_KEYS[quantized]
        member = f"{entry.name}_quantized.pth" if quantized else f"{entry.name}.pth"
        config[key] = member
        # Carry a checksum so that the import can tell a damaged archive.
        config[sha_key] = sha256_of(file)
        members[member] = file
    tmp = new_temp_file(dest.parent, f".{dest.name}.")
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            zf.writestr(f"{entry.name}.yaml", dump_yaml(config), zipfile.ZIP_DEFLATED)
            for member, file in members.items():
                # TorchScript files are zips already: storing them is much faster.
                zf.write(file, member, zipfile.ZIP_STORED)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest.resolve()
