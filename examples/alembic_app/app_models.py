"""The application's models: the schema that ``versions/`` migrates.

``Task`` is synced (``Syncable``); its table is created by the application's own
revision, while the ``sqla_sync_*`` tables come from the library's branch.
"""

from __future__ import annotations

from sqlalchemy import Boolean, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqla_sync import Syncable

__all__ = ["Base", "Task"]


class Base(DeclarativeBase):
    """Declarative base of the application's tables (``env.py``'s target metadata)."""


class Task(Syncable, Base):
    """A task, synced with the server's ``/api/tasks``."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[str | None] = mapped_column(String(40), default=None)
    version: Mapped[int | None] = mapped_column(default=None)
