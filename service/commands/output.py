"""How a command prints a row: JSON with UUIDs and times as strings."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    """A row with UUIDs and times as strings, for printing; the reference print (768
    bytes of pixels only reconciliation reads) is left out."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "reference_print":
            continue
        if isinstance(value, UUID):
            out[key] = str(value)
        elif isinstance(value, datetime):
            out[key] = value.isoformat()
        else:
            out[key] = value
    return out
