"""napari dock widgets (thin layers over :mod:`empanada_napari.core`)."""
