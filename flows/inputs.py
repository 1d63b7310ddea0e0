"""The checks every flow makes of its parameters before anything happens: one place, so a
component list, a per-component mapping or a number means the same in every flow. Each failure
is a BadInput that says what to pass instead; nothing has been read or written yet."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from blocks.names import object_name_problem
from tasks.components.registry import SPECS, ComponentName
from tasks.errors import BadInput
from tasks.models import KIND_LABEL, kind_label


def component_names(components: list[ComponentName] | list[str] | None) -> list[str]:
    """The listed components, or all when None. An empty list is a mistake, never "all"."""
    if components is None:
        return list(SPECS)
    if not components:
        raise BadInput("components=[] names no component: leave it out (None) for all, or name some")
    unknown = [str(getattr(c, "value", c)) for c in components if getattr(c, "value", c) not in SPECS]
    if unknown:
        raise BadInput(f"unknown components {unknown}: choose from {', '.join(SPECS)}")
    return [ComponentName(c).value for c in components]


def per_component(name: str, mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    """A component -> value parameter (targets, options, RPO targets): every key a component's
    name, so a typo ('postgress') is refused, never silently ignored. Keys of components a run
    does not include are allowed (a deployment's defaults may cover every component)."""
    given = dict(mapping or {})
    unknown = sorted(k for k in given if k not in SPECS)
    if unknown:
        raise BadInput(
            f"{name} names unknown components {unknown}: the keys are component names ({', '.join(SPECS)})"
        )
    return given


def count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadInput(f"{name} must be a whole number >= {minimum}, not {value!r}")
    return value


# the longest duration a parameter may name (about 114 years): beyond it is a typo, and
# Python's timedelta overflows (OverflowError) near 2.7e10 hours
MAX_HOURS = 1_000_000


def number(name: str, value: object, minimum: float, why: str = "", maximum: float = MAX_HOURS) -> float:
    """A finite number in [minimum, maximum] (NaN and infinities refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInput(f"{name} must be a finite number >= {minimum}, not {value!r}")
    if value < minimum:
        raise BadInput(f"{name} must be >= {minimum}{why}, not {value!r}")
    if value > maximum:
        raise BadInput(f"{name} must be at most {maximum:g}, not {value!r}: is it a typo?")
    return float(value)


def positive(name: str, value: object, maximum: float = MAX_HOURS) -> float:
    """A finite number in (0, maximum] (NaN and infinities refused)."""
    finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not finite or value <= 0:
        raise BadInput(f"{name} must be a finite number > 0, not {value!r}")
    if value > maximum:
        raise BadInput(f"{name} must be at most {maximum:g}, not {value!r}: is it a typo?")
    return float(value)


# labels only the system sets: a caller's `recovery_point` would make a lone backup look like a
# member of the newest recovery point (retention protects those, and stops protecting the real one)
SYSTEM_LABELS = ("recovery_point", "flow_run_id", "batch")


def user_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """A caller's labels for a backup's manifest: no system label, a known `kind`."""
    given = dict(labels or {})
    reserved = sorted(k for k in given if k in SYSTEM_LABELS)
    if reserved:
        raise BadInput(
            f"labels {reserved} are set by the system ({', '.join(SYSTEM_LABELS)}): drop them; "
            "a recovery point is made by backup-all"
        )
    if KIND_LABEL in given:
        given[KIND_LABEL] = kind_label(given[KIND_LABEL])
    return given


def object_names(name: str, values: list[str] | None) -> list[str] | None:
    """Names of a backup's objects, as its manifest lists them: each one checked, none empty."""
    if values is None:
        return None
    for value in values:
        if not isinstance(value, str) or (problem := object_name_problem(value)):
            raise BadInput(
                f"{name}: {value!r} cannot be an object of a backup ({problem or 'not text'}); "
                "pass the names its manifest lists (klb backups describe ID)"
            )
    return list(values)
