"""Job control shared by every long core function: one progress shape, one cancel flag.

Long work in :mod:`empanada_napari.core` (inference, training, export, proofreading indexes)
takes two optional arguments and nothing else for job control:

* ``progress(done, total, info=None)``: called from the working thread after each unit of
  work (a batch of slices, a block, an iteration). ``info`` is an optional mapping with
  details (a training iteration's losses, the phase of a chunked run); a callback that does
  not care may accept only ``(done, total)``: :func:`report` passes ``info`` only when there
  is some and the callback takes a third argument.
* ``cancel``: a :class:`threading.Event` or a callable returning ``True`` when the user asked
  to stop. Work checks it between units and raises :class:`Cancelled`.

The napari widgets and the CLI plug their progress bars and Cancel buttons in here; nothing in
this module imports torch, napari or Qt.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .errors import Cancelled

__all__ = [
    "CancelFlag",
    "Cancelled",
    "Progress",
    "check_cancelled",
    "is_cancelled",
    "part_progress",
    "report",
]


class Progress(Protocol):
    """The one progress shape: ``progress(done, total, info=None)``."""

    def __call__(self, done: int, total: int, info: Mapping[str, Any] | None = None) -> None: ...


#: What every long core function accepts as ``cancel``.
CancelFlag = Callable[[], bool] | threading.Event | None


def is_cancelled(cancel: CancelFlag) -> bool:
    """True when ``cancel`` (an Event or a callable returning bool) asks to stop."""
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def check_cancelled(cancel: CancelFlag, message: str = "Cancelled.") -> None:
    """Raise :class:`Cancelled` with ``message`` when ``cancel`` asks to stop."""
    if is_cancelled(cancel):
        raise Cancelled(message)


def report(
    progress: Callable[..., Any] | None,
    done: int,
    total: int,
    info: Mapping[str, Any] | None = None,
) -> None:
    """Call ``progress(done, total[, info])`` if there is a callback: ``info`` only if there
    is some and the callback takes a third argument (a user's ``lambda done, total: ...``
    keeps working on runs that send details)."""
    if progress is None:
        return
    if info is None or not _takes_info(progress):
        progress(int(done), int(total))
    else:
        progress(int(done), int(total), info)


def _takes_info(progress: Callable[..., Any]) -> bool:
    """Whether ``progress`` accepts ``(done, total, info)`` (True when it cannot be told)."""
    try:
        inspect.signature(progress).bind(0, 0, None)
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): assume the documented shape
        return True
    return True


def part_progress(
    progress: Callable[..., Any] | None, offset: int, total: int
) -> Callable[..., None] | None:
    """A callback for one part of a job: its ``(done, _)`` becomes ``(offset + done, total)``.

    Used where a job runs several sub-jobs in turn (the three views of ortho-plane, the
    slices inside the blocks of a chunked run) and the user should see one bar.
    """
    if progress is None:
        return None

    def forward(done: int, _total: int, info: Mapping[str, Any] | None = None) -> None:
        report(progress, offset + done, total, info)

    return forward
