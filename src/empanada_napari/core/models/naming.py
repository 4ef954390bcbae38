"""Names for new models: a trained model never silently replaces a registered one.

One rule for the Finetune / Train Model docks, the ``finetune`` / ``train`` commands and the
library (:func:`~empanada_napari.core.training.loops.check_request`): a name already
registered is refused unless the caller asks to replace it; a built-in model is never
replaced. Each caller names its own controls in the message (the dock's 'new model name',
the command line's ``--name``), and :func:`free_name` proposes a name that is free.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import InputError
from .config import check_name

_TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$")


def _registry(registry: Any = None) -> Any:
    if registry is not None:
        return registry
    from .registry import get_registry

    return get_registry()


def free_name(name: str, registry: Any = None) -> str:
    """``name`` when no model is registered under it, else the next free one: its trailing
    number counted up (``CDeep3M_round1`` -> ``CDeep3M_round2``), or ``_2``, ``_3``...
    appended (``tuned`` -> ``tuned_2``)."""
    taken = set(_registry(registry).names())
    if name not in taken:
        return name
    match = _TRAILING_NUMBER.match(name)
    if match:  # round1 -> round2, run09 -> run10
        stem, number, width = match.group(1), int(match.group(2)) + 1, len(match.group(2))
    else:
        stem, number, width = f"{name}_", 2, 1
    while f"{stem}{number:0{width}d}" in taken:
        number += 1
    return f"{stem}{number:0{width}d}"


def name_problem(
    name: str,
    registry: Any = None,
    *,
    overwrite: bool = False,
    field: str = "name",
    replace_hint: str = "pass overwrite=True",
) -> str | None:
    """Why ``name`` cannot name a new model, or None. ``field`` is the control or option that
    holds the name and ``replace_hint`` says how to allow replacing a registered model, both
    as the caller's user sees them (e.g. "'new model name'" and "tick 'replace ...'")."""
    try:
        check_name(name)
    except InputError as err:
        return str(err)
    reg = _registry(registry)
    if name not in reg:
        return None
    if (reg.builtin_dir / f"{name}.yaml").is_file():
        other = free_name(f"{name}_finetuned", reg)
        return (
            f"'{name}' is a built-in model and is never replaced: change {field} "
            f"(e.g. to '{other}')."
        )
    if overwrite:
        return None
    return (
        f"A model named '{name}' is already registered: change {field} (e.g. to "
        f"'{free_name(name, reg)}'), or {replace_hint} to replace it."
    )
