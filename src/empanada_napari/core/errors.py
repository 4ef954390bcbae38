"""Exceptions raised by the core library.

Every error a user can cause (bad input, a bad model file, a failed download, a cancelled job)
is one of these, so the CLI and the widgets can report the reason instead of a traceback.
"""

from __future__ import annotations


class EmpanadaError(Exception):
    """Base class of all errors the core raises on purpose."""


class InputError(EmpanadaError, ValueError):
    """An image, labels array or parameter that cannot be processed (dtype, shape, NaN...)."""


class ModelError(EmpanadaError):
    """A model that cannot be found, loaded or run."""


class UnknownModelError(ModelError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ModelFileError(ModelError):
    """A model file that is missing, truncated, corrupt or not TorchScript."""


class DownloadError(EmpanadaError):
    """A download that failed (unreachable host, HTTP error, checksum mismatch)."""


class Cancelled(EmpanadaError):
    """A long job stopped because its cancel flag was set."""
