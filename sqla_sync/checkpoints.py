"""Checkpoints: named JSON values, written in the transaction of the rows they cover."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from .codec import dumps, loads
from .tables import checkpoints

__all__ = ["get_checkpoint", "set_checkpoint"]


def get_checkpoint(conn: Connection, name: str) -> Any:
    """The value stored under ``name``, or None."""
    text = conn.execute(
        select(checkpoints.c.value).where(checkpoints.c.name == name)
    ).scalar_one_or_none()
    return None if text is None else loads(text)


def set_checkpoint(conn: Connection, name: str, value: Any, now: float) -> None:
    """Store ``value`` (JSON-ready) under ``name`` on ``conn``'s transaction; None deletes."""
    conn.execute(delete(checkpoints).where(checkpoints.c.name == name))
    if value is not None:
        conn.execute(insert(checkpoints).values(name=name, value=dumps(value), updated_at=now))
