"""The bundled real EM sample (File > Open Sample in napari; ``segment --sample`` in the CLI).

A 16 x 512 x 512 uint8 crop of the EPFL Lucchi FIB-SEM training volume (mouse hippocampus
CA1, ~5 nm isotropic voxels), slices 140-155, y 192-703, x 512-1023: inside the slab that the
bundled model never saw in training. Lucchi et al., IEEE TMI 2012 (research use with citation).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np

SAMPLE_NAME = "Lucchi FIB-SEM sample"
#: Voxel size of the sample in nanometres (z, y, x).
SAMPLE_SCALE_NM = (5.0, 5.0, 5.0)


def sample_path() -> Path:
    """Path of the bundled sample TIFF inside the installed package."""
    return Path(str(files("empanada_napari") / "data" / "lucchi_sample.tif"))


def load_sample() -> np.ndarray:
    """The bundled sample as a (16, 512, 512) uint8 array."""
    import tifffile

    return tifffile.imread(sample_path())


def make_sample_data() -> list[tuple]:
    """napari sample-data contribution: one image layer with its physical scale (nm)."""
    meta = {"name": SAMPLE_NAME, "scale": SAMPLE_SCALE_NM, "units": ("nanometer",) * 3}
    return [(load_sample(), meta, "image")]
