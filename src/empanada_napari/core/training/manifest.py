"""The manifest of a dataset (``<dataset>/manifest.csv``, part of its layout: :mod:`.layout`):
one row per saved patch, where it was cut, which model prefilled it, the loop's round, its
doubt score and what correcting it cost. Rows are only appended; a manifest of an earlier
version (fewer columns) is rewritten once with the new header, its rows kept."""

from __future__ import annotations

import csv
import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .effort import EFFORT_KEYS

MANIFEST = "manifest.csv"
MANIFEST_FIELDS = (
    "name",
    "folder",
    "source",
    "axis",
    "start",
    "stop",
    "date",
    "prefilled_by",
    "corrected_by",
    # The loop's round (the n-th model that prefilled patches of this dataset), the patch's
    # doubt score, and what correcting it cost (objects changed, see .effort).
    "round",
    "doubt",
    "objects",
    *EFFORT_KEYS,
)
#: Fewest pairs a dataset must hold for finetuning or training.


def loop_round(rows: Sequence[dict[str, Any]], prefilled_by: str) -> int:
    """The round of the loop patches prefilled by ``prefilled_by`` belong to: the round of
    that model's earlier patches, else one more than the last round (1 for a new dataset)."""
    rounds = [int(r["round"]) for r in rows if str(r.get("round") or "").isdigit()]
    for row in rows:
        if prefilled_by and row.get("prefilled_by") == prefilled_by and row.get("round"):
            return int(row["round"])
    return max(rounds, default=0) + 1


def append_manifest(root, source, names, infos, prefilled_by, efforts) -> None:
    path = root / MANIFEST
    rows = read_manifest(root)
    today = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    round_ = loop_round(rows, prefilled_by)
    new_rows = []
    for i, name in enumerate(names):
        info = dict(infos[i]) if infos is not None else {}
        effort = dict(efforts[i]) if efforts is not None else {}
        new_rows.append(
            {
                "name": name,
                "folder": source,
                "source": info.get("source", ""),
                "axis": info.get("axis", ""),
                "start": info.get("start", []),
                "stop": info.get("stop", []),
                "date": today,
                "prefilled_by": prefilled_by,
                "corrected_by": "",
                "round": round_,
                "doubt": info.get("doubt", ""),
            }
            | {k: effort.get(k, "") for k in ("objects", *EFFORT_KEYS)}
        )
    header = None
    if path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), None)
    if header is not None and tuple(header) != MANIFEST_FIELDS:
        # A manifest of an earlier version (fewer columns): rewritten once with the new
        # header, its rows kept, so new rows never land under the wrong titles.
        _write_manifest(path, rows + new_rows)
        return
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        if header is None:
            writer.writeheader()
        writer.writerows(_manifest_cells(r) for r in new_rows)


def _manifest_cells(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k, "") for k in MANIFEST_FIELDS}
    for key in ("start", "stop"):
        out[key] = json.dumps(list(row.get(key) or []))
    return out


def _write_manifest(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write the whole manifest beside it, then swap it in (a crash keeps the old one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(_manifest_cells(r) for r in rows)
    os.replace(tmp, path)


def describe_loop(root: str | os.PathLike) -> str:
    """One line on a dataset's rounds of the loop, from its manifest: patches and rounds, the
    last round's patches, and the objects the user changed ("" without a manifest)."""
    rows = read_manifest(root)
    if not rows:
        return ""
    rounds = [int(r["round"]) for r in rows if str(r.get("round") or "").isdigit()]
    last = max(rounds, default=0)
    text = f"{len(rows)} patches"
    if last:
        text += f", round {last} of the loop ({rounds.count(last)} patches from it)"
    counted = [r for r in rows if str(r.get("added") or "").isdigit()]
    changed = [sum(int(r.get(k) or 0) for k in EFFORT_KEYS) for r in counted]
    if changed:
        text += f"; {sum(changed)} objects corrected by hand so far"
    return text


def picked_places(root: str | os.PathLike, source: str) -> list[dict[str, Any]]:
    """Manifest rows of the patches already picked from ``source`` (an image's name), for
    :func:`~.patches.pick_patches`' ``exclude``: the loop never picks a place twice."""
    return [r for r in read_manifest(root) if r.get("source") == source]


def read_manifest(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The manifest rows of a dataset (``start``/``stop`` as lists), [] if it has none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in ("start", "stop"):
            row[key] = json.loads(row[key]) if row.get(key) else []
    return rows
