"""The todo app's local database: one synced model, ``Todo``, in a SQLite file.

A todo's id is made on the device (:func:`new_id`, eight hex digits of a
UUID4), so a todo written offline already has the id it keeps on the server.
The backend's ``posts`` resource has only ``title`` and ``body``: ``title``
holds the text and ``body`` holds :data:`DONE` once the todo is done (empty
otherwise).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import Engine, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_sync import Syncable, create_tables, track

__all__ = ["DONE", "Base", "Todo", "new_id", "open_db"]

#: The ``body`` of a done todo.
DONE = "done"


class Base(DeclarativeBase):
    """Declarative base of the todo app's tables."""


class Todo(Syncable, Base):
    """A todo; mapped to the server's ``posts`` by :func:`examples.todo.sync.routes`."""

    __tablename__ = "todos"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    title: Mapped[str] = mapped_column(String(500))
    body: Mapped[str | None] = mapped_column(String(40), default="")
    #: Set from the server's ``updatedAt`` and ``version`` by push and pull.
    updated_at: Mapped[str | None] = mapped_column(String(40), default=None)
    version: Mapped[int | None] = mapped_column(default=None)

    @property
    def done(self) -> bool:
        """Whether the todo is marked done."""
        return self.body == DONE


def new_id() -> str:
    """A short id made on the device: eight hex digits of a random UUID."""
    return uuid.uuid4().hex[:8]


def open_db(path: str | Path) -> tuple[Engine, sessionmaker[Session]]:
    """The engine of the SQLite file ``path`` and a tracked sessionmaker.

    Creates the file, the ``todos`` table and the sync tables when they do not
    exist yet (an application with alembic would migrate instead; see
    ``examples/alembic_app``).
    """
    engine = create_engine(f"sqlite:///{Path(path)}")
    Base.metadata.create_all(engine)
    create_tables(engine)
    return engine, track(sessionmaker(engine, expire_on_commit=False))
