"""Small file helpers of the registry: atomic writes and temporary names that follow the umask.

``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 entries on purpose; files the registry keeps
(archives, copied models, downloads, its folders) should instead get the permissions the user
chose with their umask, like any other file they write.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

_UMASK_LOCK = threading.Lock()
# Locks shared by every registry in the process, keyed by an absolute path, so that two
# widgets fetching the same file (or registering in the same home) wait for each other.
_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


def lock_for(key: Path | str) -> threading.RLock:
    """The process-wide lock of a path."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(key), threading.RLock())


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:  # Linux >= 4.7 reports it; no need to set it
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # Elsewhere os.umask is the only way to read it: set a stricter mask for an instant,
    # so that a file another thread creates meanwhile is at worst more private, never less.
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def follow_umask(path: Path, *, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it."""
    base = 0o777 if directory else 0o666
    try:
        os.chmod(path, base & ~current_umask())
    except OSError:
        pass  # e.g. a file system without POSIX modes


def new_temp_file(folder: Path, prefix: str, suffix: str = ".tmp") -> Path:
    """Create an empty, uniquely named file in ``folder`` (mode from the umask)."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        path = folder / f"{prefix}{uuid.uuid4().hex[:12]}{suffix}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path


def new_temp_dir(folder: Path, prefix: str) -> Path:
    """Create a uniquely named folder in ``folder`` (mode from the umask)."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        path = folder / f"{prefix}{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half."""
    tmp = new_temp_file(path.parent, f".{path.name}.")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
