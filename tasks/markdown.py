"""Markdown for artifacts: tables that Prefect's UI renders."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def cell(value: Any) -> str:
    """One table cell: pipes and newlines would break the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = list(headers)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fields_table(title: str, fields: Mapping[str, Any]) -> str:
    """`# title` and a two-column field/value table."""
    return f"# {title}\n\n" + table(["field", "value"], fields.items())
