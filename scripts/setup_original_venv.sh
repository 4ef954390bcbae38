#!/usr/bin/env bash
# Build a separate virtual environment with the original empanada-napari 1.2.4 from the package
# index and a CPU torch, for benchmarks/compare_original.py. Not used by tests or CI unless it
# exists. Usage: bash scripts/setup_original_venv.sh [VENV]   (default /work/venv-orig)
#
# Only 1.2.4's headless inference path is installed (--no-deps on the plugin): its napari
# widgets are not driven (benchmarks/original_driver.py imports its inference module without the
# package's widget imports and stubs napari.qt.threading), so napari <= 0.6.6, Qt, mlflow,
# albumentations and torchvision are left out. That path imports torch, numpy, scipy,
# scikit-image, numba, zarr, dask, joblib, networkx, cztile, opencv, pyyaml, requests and tqdm
# (not the optional cc3d: 1.2.4 does not require it, so its fragments use skimage.measure.label).
set -euo pipefail
VENV="${1:-/work/venv-orig}"
PY="${PYTHON:-python3.11}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# The same torch as the project's environment, CPU build (a local wheel on the dev machine).
TORCH_VERSION="${TORCH_VERSION:-$(python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || echo 2.13.0)}"
"$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
"$VENV/bin/python" -m pip install -q --no-deps "empanada-napari==1.2.4"
"$VENV/bin/python" -m pip install -q numpy scipy scikit-image numba "zarr>=2.12" dask joblib networkx "cztile>=2.0.0" \
    opencv-python-headless pyyaml requests tqdm tifffile imagecodecs
HERE="$(cd "$(dirname "$0")/.." && pwd)"
"$VENV/bin/python" "$HERE/benchmarks/original_driver.py" --check
echo "venv ready: $VENV"
