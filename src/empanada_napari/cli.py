"""Command-line interface: ``empanada-napari segment | models | evaluate | finetune | train |
patches``.

Every command runs headless over :mod:`empanada_napari.core`. Errors the user can fix are
printed as one line (exit status 2); progress bars go to stderr; results (JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

#: Which settings each segment mode uses (the CLI shows them in groups of these names).
_SETTINGS_GROUPS = (
    ("inference", "2D inference (every mode)"),
    ("stack", "3D stack and ortho modes"),
    ("ortho", "ortho mode"),
    ("blocks", "volumes larger than memory (stack and ortho modes)"),
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none."""

    def _get_help_string(self, action):
        if action.default is None or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _add_settings(parser, name: str, title: str) -> None:
    """One option per field of a settings class that has a CLI flag (core/settings.py)."""
    from .core.settings import SETTINGS_CLASSES, TUNED_FIELDS, cli_flag, setting_fields

    group = parser.add_argument_group(title)
    for f in setting_fields(SETTINGS_CLASSES[name]):
        flag = cli_flag(f)
        if flag is None:
            continue
        kind = str(f.type)
        kwargs: dict = {"dest": f.name, "default": f.default, "help": f.metadata["help"]}
        tuned = name == "inference" and f.name in TUNED_FIELDS
        if tuned:  # None = not given: the model's tuned value, else the default
            kwargs["default"] = None
            kwargs["help"] += f" (default: {f.default}, or the value tuned for the model)"
        if kind == "bool":
            # A setting on by default is turned off with --no-<flag>.
            on = f.default or tuned
            kwargs["action"] = argparse.BooleanOptionalAction if on else "store_true"
        else:
            if "tuple" in kind:
                kwargs["type"], kwargs["metavar"] = _int_triple, "Z,Y,X"
            elif "int" in kind:
                kwargs["type"], kwargs["metavar"] = int, "N"
            elif "float" in kind:
                kwargs["type"], kwargs["metavar"] = float, "X"
            choices = f.metadata.get("choices")
            if choices and kind == "str":
                kwargs["choices"] = choices
                kwargs.pop("metavar", None)
            elif choices:  # numbers: the settings check them, in one sentence
                kwargs["help"] += f" One of {', '.join(map(str, choices))}."
        group.add_argument(flag, **kwargs)


def _add_segment(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment an image or volume",
        description="Segment every mitochondrion in INPUT (tif/tiff/png/zarr) and write "
        "uint32 labels to OUTPUT (.tif or .zarr).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("input", nargs="?", help="image file (.tif, .tiff, .png) or .zarr")
    p.add_argument(
        "--sample",
        action="store_true",
        help="segment the bundled real EM sample (16 x 512 x 512 FIB-SEM) instead",
    )
    p.add_argument("-o", "--output", required=True, help="labels output (.tif/.tiff/.zarr)")
    p.add_argument("--key", help="array inside a zarr group (default: level 0 / the only one)")
    p.add_argument(
        "--model",
        default="default",
        help=_MODEL_HELP + "; 'auto': the registered model that fits this image best (the "
        "agreement of its flipped views, see 'models check'; a few seconds per model)",
    )
    p.add_argument(
        "--mode",
        choices=["2d", "stack", "ortho"],
        default="2d",
        help="2d: each slice on its own; stack: 3D objects linked slice to slice along "
        "--axis; ortho: stacks along xy, xz and yz, then a vote",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--quantized", action="store_true", help="use the quantized (CPU) variant")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument(
        "--resume",
        action="store_true",
        help="with a .zarr OUTPUT: finish an interrupted run of the same input and settings, "
        "skipping the slices (2d) or blocks (stack/ortho) already done",
    )
    p.add_argument(
        "--scheduler",
        help="stack/ortho: dask.distributed scheduler address (tcp://host:8786) to run blocks on",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="stack/ortho: run blocks on a local dask cluster of this many processes",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, title in _SETTINGS_GROUPS:
        _add_settings(p, name, title)


def _settings_from_args(args) -> dict:
    """The settings objects of a parsed ``segment`` command line."""
    from .core.settings import SETTINGS_CLASSES, cli_flag, setting_fields

    out = {}
    for name, cls in SETTINGS_CLASSES.items():
        values = {
            f.name: getattr(args, f.name) for f in setting_fields(cls) if cli_flag(f) is not None
        }
        out[name] = cls(**{k: v for k, v in values.items() if v is not None})
    return out


def _postprocessing(engine) -> dict:
    """The post-processing values a run used (the model's tuned ones where not given)."""
    from .core.settings import TUNED_FIELDS

    return {k: getattr(engine.settings, k) for k in TUNED_FIELDS}


def _with_model_settings(settings, args, config: dict):
    """``settings`` with the model's tuned values for the options not given on the line."""
    from .core.settings import TUNED_FIELDS, settings_for_model

    given = [k for k in TUNED_FIELDS if getattr(args, k) is not None]
    return settings_for_model(config, settings, given)


def _int_triple(text: str) -> tuple[int, int, int] | int:
    parts = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    if len(parts) == 1:
        return parts[0]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X or one number, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


_MODEL_HELP = "registry name ('default': the default model), model file (.pth) or config (.yaml)"


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list, inspect, register, import or export models")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="list registered models (a table; details with 'models info')")
    q = msub.add_parser("info", help="show one model's config and where its file is")
    q.add_argument("name", help="model name ('default': the default model)")
    q = msub.add_parser("register", help="register a model from a config YAML")
    q.add_argument("name", help="name to register the model under")
    q.add_argument("config", help="model config YAML (original empanada-napari format)")
    q.add_argument("--file", help="TorchScript file or https URL (overrides the YAML's 'model')")
    q.add_argument("--quantized-file", help="quantized TorchScript file or https URL")
    q.add_argument("--overwrite", action="store_true", help="replace a user model of that name")
    q = msub.add_parser("import", help="import a .empanada archive")
    q.add_argument("archive")
    q.add_argument("--name", help="register under this name (default: the archive's)")
    q.add_argument("--overwrite", action="store_true", help="replace a user model of that name")
    q = msub.add_parser("export", help="export a model as a .empanada archive")
    q.add_argument("name", help="model name ('default': the default model)")
    q.add_argument("path", help="archive file, or a folder to write NAME.empanada into")
    q.add_argument("--overwrite", action="store_true", help="replace an existing archive")
    q = msub.add_parser("remove", help="remove a user model")
    q.add_argument("name")
    q = msub.add_parser(
        "check",
        help="how well each model fits an image, without ground truth",
        description="Score every registered model whose file is on this computer (or "
        "--models) on IMAGE by how much its four flipped views agree (0-1; higher fits "
        "better), a few sampled slices, no labels needed. Prints a table and the model "
        "'--model auto' would use; warns when even the best is unsure.",
    )
    q.add_argument("image", help="image or volume (.tif, .tiff, .png, .zarr)")
    q.add_argument("--key", help="array inside a zarr group")
    q.add_argument("--models", help="comma-separated model names (default: all local ones)")
    q.add_argument("--device", default="auto")
    q = msub.add_parser("fetch", help="download a model into the cache now")
    q.add_argument("name", help="model name ('default': the default model)")
    q.add_argument("--quantized", action="store_true", help="the quantized (CPU) variant")


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predicted labels against ground truth (JSON)",
        description="Print semantic IoU, F1, precision/recall, PQ and AP as JSON.",
    )
    p.add_argument("pred")
    p.add_argument("gt")
    p.add_argument("--per-slice", action="store_true", help="score each z-slice in 2D")
    p.add_argument(
        "--cc",
        action="store_true",
        help="take connected components of both first (for binary ground truth)",
    )
    p.add_argument("--thresholds", default="0.5,0.75", help="IoU thresholds, comma separated")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="empanada-napari",
        description="Panoptic segmentation of mitochondria in EM with MitoNet-family models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_segment(sub)
    _add_models(sub)
    _add_evaluate(sub)
    from .cli_patches import add_patches
    from .cli_training import add_training

    add_training(sub, _MODEL_HELP)
    add_patches(sub)
    return parser


def _progress_bar(total: int, desc: str, disable: bool, unit: str = "slice"):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable)

    def update(done: int, _total: int, info=None) -> None:
        bar.update(done - bar.n)

    return bar, update


def _segment(args) -> int:
    from .core.errors import InputError
    from .core.inference.engine import Engine2D
    from .core.inference.slices import segment_slices_to
    from .core.io import check_input_path, check_replaceable, read_image
    from .core.models import load_model
    from .core.output import check_not_input, check_writable
    from .core.preprocess import check_image

    if args.sample:
        if args.input is not None:
            raise InputError("Give either INPUT or --sample, not both.")
        from ._sample_data import sample_path

        args.input = str(sample_path())
    if args.input is None:
        raise InputError("Give an INPUT image (or --sample for the bundled one).")
    output = Path(args.output)
    if output.suffix.lower() not in (".tif", ".tiff", ".zarr"):
        raise InputError(f"OUTPUT must end in .tif, .tiff or .zarr, got {output.name}.")
    _check_mode_options(args)
    if args.resume and output.suffix.lower() != ".zarr":
        raise InputError("--resume needs a .zarr OUTPUT (it is written as the run goes).")
    if output.exists() and not args.overwrite and not args.resume:
        raise InputError(f"Output {output} exists; pass --overwrite to replace it.")
    # Everything that can be checked before the model runs is checked first: a bad output
    # must not cost a whole segmentation, and must never touch the input.
    check_input_path(args.input)
    check_not_input(output, [args.input])
    check_writable(output, folder=output.suffix.lower() == ".zarr")
    if args.overwrite and not args.resume:
        check_replaceable(output)
    settings = _settings_from_args(args)
    image = read_image(args.input, args.key)
    check_image(image, ndim=(2, 3))
    if args.model == "auto":  # the model whose flipped views agree most on this image
        from .core.quality import choose_model, summary_line

        args.model, estimates = choose_model(image, device=args.device)
        print(summary_line(estimates, args.model), file=sys.stderr)
    model = load_model(args.model, args.device, quantized=args.quantized)
    settings["inference"] = _with_model_settings(settings["inference"], args, model.config)
    engine = Engine2D(model, settings=settings["inference"])
    if args.mode in ("stack", "ortho"):
        return _segment_3d(args, image, engine, output, settings)
    n = image.shape[0] if image.ndim == 3 else 1
    bar, update = _progress_bar(n, "segment", args.no_progress)
    try:
        summary = segment_slices_to(
            output,
            engine,
            image,
            resume=args.resume,
            overwrite=args.overwrite,
            source=args.input,
            progress=update,
        )
    finally:
        bar.close()
    _record_placement(args, output, image.ndim)
    print(
        json.dumps(
            {
                "output": str(output),
                "model": engine.model.name,
                "mode": "2d",
                # 2D ids restart in every slice: objects are counted per slice, and the file
                # holds as many ids as the most crowded slice has objects.
                "objects": summary["objects"],
                "label_ids": summary["label_ids"],
                "device": str(engine.device),
                "postprocessing": _postprocessing(engine),
                "shape": list(image.shape),
            }
        )
    )
    if args.sample:  # first run from the README: say how to look at the result
        print(f"open it with: napari {shlex.join([args.input, str(output)])}", file=sys.stderr)
    return 0


def _record_placement(args, output: Path, ndim: int) -> None:
    """Give a zarr output the input's voxel size (OME-Zarr, ImageJ TIFF), so that the
    plugin's reader places the result on its image."""
    if output.suffix.lower() != ".zarr":
        return
    from .core.placement import read_placement, record_placement

    placement = read_placement(args.input, ndim, args.key)
    if placement:
        record_placement(output, placement)


def _check_mode_options(args) -> None:
    """Refuse options the chosen mode would ignore: a setting that silently does nothing
    (--axis xz in 2d mode) is worse than an error."""
    from .core.errors import InputError
    from .core.settings import SETTINGS_CLASSES, cli_flag, setting_fields

    if args.mode == "2d":
        chunked = (args.chunks, args.halo, args.scheduler, args.workers) != (None,) * 4
        if chunked:
            raise InputError(
                "--chunks, --halo, --scheduler and --workers are for --mode stack or ortho."
            )
    used = {"2d": ("inference",), "stack": ("inference", "stack", "blocks")}
    groups = used.get(args.mode, tuple(SETTINGS_CLASSES))
    ignored = [
        cli_flag(f)
        for name, cls in SETTINGS_CLASSES.items()
        if name not in groups
        for f in setting_fields(cls)
        if cli_flag(f) is not None and getattr(args, f.name) != f.default
    ]
    if args.mode == "ortho" and args.axis != "xy":
        ignored.append("--axis")  # ortho slices along all three axes
    if ignored:
        verb, them = ("does", "it") if len(ignored) == 1 else ("do", "them")
        raise InputError(
            f"{', '.join(ignored)} {verb} nothing in --mode {args.mode}; leave {them} out or "
            f"choose the mode that uses {them} (see --help)."
        )


def _segment_3d(args, image, engine, output: Path, settings: dict) -> int:
    from .core.errors import InputError
    from .core.inference.chunked import segment_volume
    from .core.io import write_labels

    if image.ndim != 3:
        raise InputError(f"--mode {args.mode} needs a 3D volume; got shape {tuple(image.shape)}.")
    to_zarr = output.suffix.lower() == ".zarr"
    axis = settings["stack"].axis
    desc = f"stack {axis}" if args.mode == "stack" else "ortho xy+xz+yz"
    bar, update = _progress_bar(0, desc, args.no_progress, unit="slice")

    def progress(done: int, total: int, info=None) -> None:
        bar.total = total
        update(done, total)

    try:
        labels = segment_volume(
            image,
            engine.model,
            mode=args.mode,
            out=output if to_zarr else None,
            resume=args.resume,
            overwrite=args.overwrite,
            scheduler=args.scheduler,
            workers=args.workers,
            device=args.device,
            progress=progress,
            **settings,
        )
    finally:
        bar.close()
    if to_zarr:
        from .core.ngff import read_meta

        objects = int(read_meta(output)["objects"])
        _record_placement(args, output, image.ndim)
    else:
        write_labels(output, labels, overwrite=args.overwrite)
        objects = int(labels.max())
    print(
        json.dumps(
            {
                "output": str(output),
                "model": engine.model.name,
                "mode": args.mode,
                "axis": axis if args.mode == "stack" else "xy+xz+yz",
                "objects": objects,
                "device": str(engine.device),
                "postprocessing": _postprocessing(engine),
                "shape": list(image.shape),
            }
        )
    )
    return 0


_TABLE_WIDTH = 100


def _models_table(registry) -> list[str]:
    """``models list``: one line per model, at most 100 columns (details: ``models info``)."""
    default = registry.default_name()
    rows = [
        (
            entry.name + (" *" if entry.name == default else ""),
            "built-in" if entry.builtin else "user",
            registry.file_status(entry),
            entry.summary,
        )
        for entry in registry.entries()
    ]
    head = ("NAME", "KIND", "FILE", "DESCRIPTION")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    room = max(10, _TABLE_WIDTH - sum(widths) - 2 * len(widths))
    lines = []
    for row in [head, *rows]:
        text = row[3] if len(row[3]) <= room else row[3][: room - 3].rstrip() + "..."
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + text
        )
    lines.append("* the default model ('default'); details: empanada-napari models info NAME")
    return [line.rstrip() for line in lines]


def _models(args) -> int:
    from .core.models import get_registry

    registry = get_registry()
    cmd = args.models_cmd
    if cmd == "list":
        print("\n".join(_models_table(registry)))
    elif cmd == "info":
        import yaml

        entry = registry.get(args.name)
        kind = "built-in" if entry.builtin else "user"
        star = ", the default model" if entry.name == registry.default_name() else ""
        where = registry.local_file(entry) or registry.cache_path(entry)
        print(f"# {entry.name} ({kind}{star}); file: {registry.file_status(entry)} ({where})")
        from .core.settings import settings_for_model

        used = settings_for_model(entry.config)
        print(
            f"# segment uses: label divisor {used.label_divisor} (2D ids class x "
            f"{used.label_divisor} + k), confidence {used.confidence_thr}; the FINETUNE "
            "block below is the training recipe, not these"
        )
        print(yaml.safe_dump(entry.to_yaml_dict(), sort_keys=False).rstrip())
    elif cmd == "register":
        entry = registry.register(
            args.name,
            args.config,
            args.file,
            quantized_model=args.quantized_file,
            overwrite=args.overwrite,
        )
        print(f"registered {entry.name}")
    elif cmd == "import":
        entry = registry.import_archive(args.archive, name=args.name, overwrite=args.overwrite)
        print(f"imported {entry.name}")
    elif cmd == "export":
        print(registry.export_archive(args.name, args.path, overwrite=args.overwrite))
    elif cmd == "remove":
        entry = registry.get(args.name)
        registry.remove(entry.name)
        print(f"removed {entry.name}")
    elif cmd == "fetch":
        print(registry.fetch(args.name, quantized=args.quantized))
    elif cmd == "check":
        from .core.io import read_image
        from .core.quality import choose_model, summary_line

        image = read_image(args.image, args.key)
        names = [m.strip() for m in args.models.split(",")] if args.models else None
        chosen, estimates = choose_model(image, names, device=args.device)
        for e in estimates:
            print(f"{e.model:30s} {e.agreement:.3f}  ({len(e.slices)} slices, {e.seconds:.1f} s)")
        print(summary_line(estimates, chosen))
    return 0


def _evaluate(args) -> int:
    import numpy as np

    from .core.errors import InputError
    from .core.io import read_image
    from .core.metrics import as_instances, evaluate

    pred = np.asarray(read_image(args.pred))
    gt = np.asarray(read_image(args.gt))
    try:
        thresholds = tuple(float(t) for t in args.thresholds.split(","))
    except ValueError as err:
        raise InputError(f"Bad --thresholds {args.thresholds!r}.") from err
    if args.cc and not args.per_slice:
        pred, gt = as_instances(pred), as_instances(gt)
    result = evaluate(
        pred,
        gt,
        per_slice=args.per_slice,
        thresholds=thresholds,
        relabel_2d_cc=args.cc and args.per_slice,
    )
    print(json.dumps(result, indent=2))
    return 0


def _patches(args) -> int:
    from .cli_patches import run_patches

    return run_patches(args)


def _finetune(args) -> int:
    from .cli_training import run_finetune

    return run_finetune(args)


def _train(args) -> int:
    from .cli_training import run_train

    return run_train(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``empanada-napari`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .core.errors import Cancelled, EmpanadaError

    handlers = {
        "segment": _segment,
        "models": _models,
        "evaluate": _evaluate,
        "finetune": _finetune,
        "train": _train,
        "patches": _patches,
    }
    try:
        return handlers[args.command](args)
    except Cancelled as err:
        print(f"cancelled: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: finished chunks of a .zarr output are kept", file=sys.stderr)
        return 130
    except EmpanadaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
