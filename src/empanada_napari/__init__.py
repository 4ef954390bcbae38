"""empanada-napari: panoptic segmentation of mitochondria in EM with MitoNet-family models.

Importing the package is cheap (no torch, no Qt): the napari manifest and the library's
heavy parts are loaded on first use.
"""

try:
    from importlib.metadata import version as _version

    __version__ = _version("empanada-napari")
except Exception:  # noqa: BLE001 - running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
