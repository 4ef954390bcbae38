"""Keep freed memory in the process while a model runs (glibc only; issue 19).

A forward pass of the bundled model on two 768 x 1024 slices allocates and frees about
300 MB of temporaries. With glibc's default thresholds much of it is handed back to the
kernel after every call and faulted in (zeroed) again on the next one: about 50-70 thousand
page faults per call, a quarter of the CPU forward time on 2 cores (docs/benchmarks.md).
Inside :func:`reuse_freed_memory` buffers up to 32 MiB come from the heap and freed memory
stays there (up to 1 GiB); when the last job leaves, the free memory is returned to the kernel
(``malloc_trim``) and the thresholds are left where glibc's own adaptive rule takes them for
big buffers (mmap 32 MiB, trim 64 MiB): any ``mallopt`` call ends that adaptation for the
process, so restoring glibc's initial 128 KiB would make every later big buffer fault (that
made post-processing outside jobs 1.7x slower when tried: 122 thousand faults per 16
slices). Results are bit-identical: only where buffers live changes. Elsewhere than glibc
(macOS, Windows, musl) it does nothing.

:func:`check_fits` is the one check of what a job's arrays need against this computer's
memory, made before the work starts.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from .errors import InputError

#: mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: The trim threshold between jobs: twice the mmap threshold, as glibc's adaptive rule sets,
#: unless the environment sets one (dask's nannies set ``MALLOC_TRIM_THRESHOLD_=65536``).
IDLE_TRIM_THRESHOLD = 2 * 32 * 1024 * 1024
#: Set to 0 to leave glibc's allocator alone.
ENV_SWITCH = "EMPANADA_NAPARI_KEEP_FREED_MEMORY"
#: The largest mmap threshold glibc accepts on 64-bit (its own adaptive ceiling).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory kept at the top of the heap during a job.
TRIM_THRESHOLD = 1024 * 1024 * 1024

_lock = threading.Lock()
_active = 0
_libc = None


def _glibc():
    """The C library when it is glibc (with mallopt and malloc_trim) and the setting is not
    switched off (``EMPANADA_NAPARI_KEEP_FREED_MEMORY=0``), else None."""
    global _libc
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if _libc is None:
        _libc = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                lib = ctypes.CDLL(None)  # the process's own symbols: glibc's malloc
                lib.mallopt, lib.malloc_trim  # noqa: B018 - both must exist
                _libc = lib
            except (OSError, AttributeError):
                pass
    return _libc or None


@contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Run a job with freed memory kept for reuse; yields whether that is in effect.

    Nested and concurrent jobs share one setting: it starts with the first job and ends
    with the last (then the kept memory is returned to the kernel)."""
    global _active
    lib = _glibc()
    if lib is None:
        yield False
        return
    with _lock:
        _active += 1
        if _active == 1:
            lib.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            lib.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    try:
        yield True
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                lib.mallopt(_M_TRIM_THRESHOLD, _idle_trim_threshold())
                lib.malloc_trim(0)


def return_free_memory() -> None:
    """Hand the heap's free memory back to the kernel now (glibc; elsewhere nothing), unless
    a job is keeping it for reuse. An edit of a big labels layer frees boxes of tens of MB
    that glibc may keep in the heap between holes: without this, resident memory rose about
    0.3 GB per delete on a 256 x 768 x 1024 result although nothing was kept."""
    lib = _glibc()
    if lib is not None and _active == 0:
        lib.malloc_trim(0)


def _idle_trim_threshold() -> int:
    """``MALLOC_TRIM_THRESHOLD_`` from the environment when set (glibc read it at start),
    else :data:`IDLE_TRIM_THRESHOLD`."""
    try:
        return int(os.environ["MALLOC_TRIM_THRESHOLD_"])
    except (KeyError, ValueError):
        return IDLE_TRIM_THRESHOLD


def zeros(shape, dtype) -> np.ndarray:
    """``np.zeros(shape, dtype)`` for large arrays written bit by bit (label volumes).

    numpy asks Linux for transparent huge pages for large ``np.empty`` buffers but not for
    ``np.zeros`` (calloc), so every 4 KiB page of a zeros volume faults on its first write,
    and a fault is expensive in a virtual machine: writing a 165 x 768 x 1024 uint32 volume
    slice by slice took 1.75 s from ``np.zeros`` against 0.46 s from this (docs/benchmarks.md).
    Same values; where the kernel gives no huge pages, the same cost as ``np.zeros``."""
    out = np.empty(shape, dtype)
    out.fill(0)
    return out


def total_memory() -> int:
    """Physical memory of this machine in bytes (0 when unknown: then blocks by size only).

    Total, not available, memory: the default blocks must not change between a run and its
    resume, which checks that the blocks are the same."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return 0


def gib(nbytes: float) -> str:
    """``nbytes`` in words: ``"149 GiB"``, ``"11,921 GiB"``, ``"0.5 GiB"``."""
    value = nbytes / 2**30
    return f"{value:,.0f} GiB" if value >= 10 else f"{value:.2g} GiB"


def check_fits(nbytes: int, what: str, advice: str) -> None:
    """Refuse, before any work, a job whose arrays alone need more than this computer's
    memory: one sentence with the estimate and ``advice``, instead of numpy's "Unable to
    allocate" minutes into the run. ``what`` starts the sentence (``"Segmenting ..."``)."""
    total = total_memory()
    if total and nbytes > total:
        raise InputError(
            f"{what} needs at least {gib(nbytes)} of memory, more than this computer's "
            f"{gib(total)}: {advice}."
        )
