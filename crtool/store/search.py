"""The owner's search box: a case-insensitive substring test that treats `%` and `_` as text."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func


def contains(column: Any, text: str) -> ColumnElement[bool]:
    """`column` holds `text` anywhere, ignoring case, on SQLite and PostgreSQL alike."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(column).like(f"%{escaped}%", escape="\\")
