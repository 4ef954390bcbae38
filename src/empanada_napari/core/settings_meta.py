"""The metadata every user-facing setting carries, and the checks settings share.

:func:`setting` declares a dataclass field with its help, CLI flag, widget label, limits and
choices; :mod:`.settings` declares the inference and training settings with it, and the CLI
and the widgets build their options from it (:func:`setting_fields`, :func:`cli_flag`,
:func:`widget_label`, :func:`tooltip`). The ``check*`` helpers raise
:class:`~.errors.InputError` naming the setting.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, asdict, field, fields, replace
from typing import Any, TypeVar

from .errors import InputError

T = TypeVar("T")


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = "",
    label: str = "",
    minimum: float | None = None,
    maximum: float | None = None,
    step: float | None = None,
    choices: tuple | None = None,
    advanced: bool = False,
) -> Any:
    """A dataclass field with the metadata the CLI and the widgets present it with.

    ``flag``: the CLI option (``""``: derived from the field name; ``None``: no CLI option).
    ``label``: the widget label (default: the field name in words). ``advanced``: shown in
    the widgets' collapsible "advanced" section.
    """
    meta = {
        "help": help,
        "flag": flag,
        "label": label,
        "minimum": minimum,
        "maximum": maximum,
        "step": step,
        "choices": choices,
        "advanced": advanced,
    }
    return field(default=default, metadata=meta)


def setting_fields(cls_or_obj) -> list[Field]:
    """The fields of a settings class (or object) that carry :func:`setting` metadata."""
    return [f for f in fields(cls_or_obj) if "help" in f.metadata]


def cli_flag(f: Field) -> str | None:
    """The CLI option of field ``f`` (``--min-size``), or None when it has none."""
    flag = f.metadata.get("flag", "")
    if flag is None:
        return None
    return flag or "--" + f.name.replace("_", "-")


def widget_label(f: Field) -> str:
    """The widget label of field ``f``."""
    return f.metadata.get("label") or f.name.replace("_", " ")


def in_labels(message: str, *classes: Any) -> str:
    """``message`` (a settings check's, naming fields) with every field of ``classes`` named
    by its widget label instead: what a dock shows names the controls on screen
    (``median_slices must be odd`` -> ``median slices must be odd``)."""
    import re

    for cls in classes:
        for f in setting_fields(cls):
            message = re.sub(rf"\b{re.escape(f.name)}\b", widget_label(f), message)
    return message


def tooltip(f: Field, default: Any = MISSING) -> str:
    """Help text with the default (the field's, or ``default``: a preset's), for tooltips
    and ``--help``."""
    if default is MISSING:
        default = f.default if f.default is not MISSING else None
    shown = "none" if default is None else default
    return f"{f.metadata['help']} Default: {shown}."


def check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def is_finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def check_fraction(obj: Any, name: str, *, low_open: bool = False) -> None:
    value = getattr(obj, name)
    ok = is_finite(value) and (0 < value <= 1 if low_open else 0 <= value <= 1)
    check(ok, f"{name} must be a number in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")


def check_integer(obj: Any, name: str, minimum: int, maximum: int | None = None) -> None:
    if maximum is None:  # the field's own bound (the widgets' too): a config's 2**40 is refused
        maximum = next(f.metadata.get("maximum") for f in fields(obj) if f.name == name)
    value = getattr(obj, name)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if maximum is not None:
        ok = ok and value <= maximum
    bound = f">= {minimum}" if maximum is None else f"{minimum}..{maximum}"
    check(ok, f"{name} must be an integer {bound}, got {value!r}")


class SettingsBase:
    """Shared helpers of the settings dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for JSON, fingerprints and layer metadata)."""
        return asdict(self)  # type: ignore[call-overload]

    def updated(self: T, **changes: Any) -> T:
        """A copy with ``changes`` applied (validated)."""
        return replace(self, **changes)  # type: ignore[type-var]

    def _check_booleans(self) -> None:
        """Every on/off setting is a bool (numpy's too): a config's ``tta: "no"`` would
        otherwise count as on."""
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if str(f.type) == "bool" and type(value).__name__ not in ("bool", "bool_"):
                raise InputError(f"{f.name} must be true or false, got {value!r}")
