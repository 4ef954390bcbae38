"""``empanada-napari patches pick | check``: training patches from the command line.

``pick`` cuts patches (most uncertain, random or at points), prefills their masks with the
model's prediction and appends them to a dataset folder, to be corrected in any label editor;
``check`` checks dataset folders in words (the check finetuning runs first).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_patches(sub) -> None:
    """The ``patches pick | check`` sub-commands."""
    p = sub.add_parser("patches", help="pick training patches into a dataset, or check one")
    psub = p.add_subparsers(dest="patches_cmd", required=True)
    q = psub.add_parser(
        "pick",
        help="pick patches prefilled with the model's prediction into a dataset folder",
        description="Cut patches from INPUT (random, at points, or where the model doubts "
        "most), prefill their masks with the model's prediction and append them to DATASET "
        "(correct the masks in any label editor before finetuning).",
    )
    q.add_argument("input", help="image file (.tif, .tiff, .png) or .zarr")
    q.add_argument("dataset", help="dataset folder (created, or appended to)")
    q.add_argument("--strategy", choices=["uncertain", "random", "points"], default="uncertain")
    q.add_argument("--points", help="CSV of point coordinates (z,y,x or y,x) for 'points'")
    q.add_argument("-n", "--number", type=int, default=16, help="number of patches")
    q.add_argument("--patch-size", type=int, default=256)
    q.add_argument("--depth", type=int, default=1, help="flipbook slices (odd; 1: 2D)")
    q.add_argument("--axis", type=int, default=0, help="slices along this axis of a volume")
    q.add_argument("--model", default="default", help="registry name or model file")
    q.add_argument("--device", default="auto")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--source", help="group name in the dataset (default: the input's name)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q = psub.add_parser("check", help="check a dataset folder and summarise it")
    q.add_argument("dataset", nargs="+")


def run_patches(args) -> int:
    """Run ``patches pick`` or ``patches check``."""
    from tqdm import tqdm

    from .core.io import read_image, read_points
    from .core.training import check_dataset, pick_patches, save_patches

    if args.patches_cmd == "check":
        summary = check_dataset(args.dataset, min_pairs=1)
        print(
            json.dumps(
                {
                    "patches": len(summary.pairs),
                    "objects": summary.objects,
                    "without_objects": summary.empty,
                }
            )
        )
        return 0
    image = read_image(args.input)
    points = read_points(args.points) if args.points else None
    source = args.source or Path(args.input).stem.replace(".", "_")
    bar = tqdm(total=0, desc="pick", unit="step", file=sys.stderr, disable=args.no_progress)

    def progress(done: int, total: int, info=None) -> None:
        bar.total, bar.n = total, done
        bar.set_description((info or {}).get("phase", "pick"), refresh=False)
        bar.refresh()

    try:
        patches = pick_patches(
            image,
            args.number,
            args.patch_size,
            strategy=args.strategy,
            points=points,
            depth=args.depth,
            axis=args.axis,
            model=args.model,
            device=args.device,
            seed=args.seed,
            source=source,
            progress=progress,
        )
    finally:
        bar.close()
    _say_what_differs(args, patches)
    written = save_patches(
        args.dataset,
        [p.image for p in patches],
        [p.labels for p in patches],
        source=source,
        infos=[p.info() for p in patches],
        prefilled_by=str(args.model),
        allow_empty=True,
    )
    print(json.dumps({"dataset": str(args.dataset), "written": [str(w) for w in written]}))
    return 0


def _say_what_differs(args, patches) -> None:
    """Warn, on stderr, where the patches are not what was asked for: fewer of them (random
    places that do not overlap ran out), or smaller (the image's planes are)."""
    if patches and max(patches[0].labels.shape) < args.patch_size:
        shape = " x ".join(map(str, patches[0].labels.shape))
        print(
            f"warning: the patches are {shape} pixels, the size of the image's planes "
            f"(--patch-size {args.patch_size} is larger)",
            file=sys.stderr,
        )
    if args.strategy != "points" and len(patches) < args.number:
        print(
            f"warning: {len(patches)} of the {args.number} patches asked for were picked: no "
            "other places that do not overlap them (or earlier picks) were found",
            file=sys.stderr,
        )
