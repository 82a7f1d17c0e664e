"""SQLModel models synced by sqla_sync.

A SQLModel table model is a SQLAlchemy declarative model, so ``Syncable`` marks
it like any other::

    class Note(Syncable, SQLModel, table=True): ...

and ``sqlmodel.Session`` is a ``sqlalchemy.orm.Session`` subclass, so
``track()`` takes it in each of its forms::

    Session = track(sessionmaker(engine, class_=sqlmodel.Session))   # one factory
    track(sqlmodel.Session)                                          # every sqlmodel.Session

Run it (a SQLite file in a temporary folder; its own backend on 127.0.0.1, or
the one ``--server`` names)::

    python examples/sqlmodel_models.py      # or: python -m examples.sqlmodel_models
    python -m examples.sqlmodel_models --server http://127.0.0.1:8000

What works, and the caveats found while writing it (SQLModel 0.0.50,
SQLAlchemy 2.1):

* **Base order does not matter.** ``Syncable, SQLModel`` and ``SQLModel, Syncable``
  both work.  SQLModel's metaclass maps the class only *after*
  ``__init_subclass__`` ran, so ``Syncable`` cannot see the mapper there; it
  waits for the ``after_mapper_constructed`` event instead.  ``Syncable`` may
  also sit on a plain (``table=False``) SQLModel base shared by "read" and
  "create" schemas: only the ``table=True`` subclasses become synced models.
* **Route by table name.** Routes are keyed by ``__tablename__``; SQLModel's
  default is the lower-cased class name (``NoteItem`` -> ``"noteitem"``), so set
  ``__tablename__`` explicitly to keep the routes obvious.
* **Own the primary key.** The backend keys rows by the ``id`` the client sends
  (``id_mode="client"``), so the model makes it on the device
  (``default_factory``).  Do not use SQLModel's usual
  ``id: int | None = Field(default=None, primary_key=True)``: an autoincrement
  key made by the local database collides across devices.  For a server that
  numbers rows itself see ``examples/parent_child.py`` (negative temporary keys).
* **No pydantic validation on table models.** ``table=True`` models do not
  validate on ``__init__`` and sqla_sync writes pulled rows through Core, so
  pulled values are coerced by *column type* (``datetime`` from ISO text, ...),
  not by the pydantic annotations; validators do not see them.
* **Track the session you write with.** ``sqlmodel.Session(engine)`` made
  outside the tracked factory raises ``UntrackedSessionError`` at flush unless
  the class itself was tracked (``track(sqlmodel.Session)``): a change is never
  silently left out.
* **``updated_at``.** Recent SQLModel (0.0.50 here) maps ``datetime`` to its
  ``UTCDateTime`` type (timezone-aware), so the server's ``updatedAt`` arrives
  and reads back as an aware UTC datetime, on SQLite too.
* **Loaded objects are not refreshed.** The write-back after a push (server
  ``version``, ``updatedAt``) and pulled rows are written through Core, so an
  object already loaded in a session that outlives the sync (and
  ``expire_on_commit=False``) keeps its old values until
  ``session.refresh(obj)`` or a new session; the same holds for plain
  SQLAlchemy models.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import sqlmodel
from sqla_sync.example_server import BackendServer  # type: ignore[import-not-found,unused-ignore]
from sqlalchemy.orm import sessionmaker
from sqlmodel import Field, SQLModel, col, select

from sqla_sync import (
    Cursor,
    Offset,
    Pull,
    Push,
    Request,
    Routes,
    RouteTable,
    Schedule,
    Syncable,
    SyncConfig,
    UntrackedSessionError,
    create_tables,
    define_routes,
    start_sync,
    track,
)

__all__ = ["Note", "NoteBase", "NoteRead", "main", "routes", "run"]


def new_id() -> str:
    """A key made on the device: a random UUID as text."""
    return str(uuid.uuid4())


class NoteBase(SQLModel):
    """Fields shared by the table model and the API schemas (not a table)."""

    title: str = Field(max_length=200)
    body: str | None = Field(default=None, max_length=2000)


class Note(Syncable, NoteBase, table=True):
    """A synced note; the server's ``posts`` resource (``updatedAt`` -> ``updated_at``)."""

    __tablename__ = "notes"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=40)
    updated_at: dt.datetime | None = None
    version: int | None = None


class NoteRead(NoteBase):
    """A read schema: a plain pydantic model, not synced and not a table."""

    id: str
    version: int | None = None


def _rows(body: Any) -> Any:
    return body["data"]


def routes() -> RouteTable:
    """``notes`` <-> ``/api/posts``."""
    return define_routes({
        "notes": Routes(
            fields={"updated_at": "updatedAt"},
            push=Push(create=Request("POST", "/api/posts"),
                      update=Request("PUT", "/api/posts/{id}"),
                      delete=Request("DELETE", "/api/posts/{id}")),
            pull=Pull("GET", "/api/posts", map_response=_rows,
                      cursor=Cursor(field="updatedAt", param="updated_after"),
                      paginate=Offset(), deleted=lambda row: bool(row.get("deleted", False))),
        ),
    })


def _api(server: str, method: str, path: str, body: Any = None) -> Any:
    """One JSON request to the backend, as another client (a web app) would send it."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.rstrip('/')}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read() or b"null")


def run(db_path: Path, server: str) -> int:
    """Write notes with SQLModel, sync them with ``server``, pull one written there.

    Returns 0 when the server holds the notes (and the edit) and the local
    database holds the server's note.
    """
    engine = sqlmodel.create_engine(f"sqlite:///{db_path}")
    SQLModel.metadata.create_all(engine)
    create_tables(engine)
    Session = track(sessionmaker(engine, class_=sqlmodel.Session, expire_on_commit=False))

    with Session() as session:  # offline or not: writes go to the local database
        session.add(Note(title="Buy milk"))
        session.add(Note(title="Call Ada", body="about the report"))
        session.commit()
    with sqlmodel.Session(engine) as untracked:  # a session the factory did not make
        untracked.add(Note(title="never captured"))
        try:
            untracked.commit()
        except UntrackedSessionError:
            untracked.rollback()
            print("an untracked sqlmodel.Session is refused: UntrackedSessionError")

    web_id = f"web-{uuid.uuid4().hex[:8]}"
    _api(server, "POST", "/api/posts", {"id": web_id, "title": "Written on the web"})
    sync = start_sync(engine, SyncConfig(base_url=server, routes=routes(),
                                         sync=Schedule(interval=0)))
    try:
        print(f"queue before sync: {sync.queue_depth()}")
        result = sync.sync()
        print(f"sync: pulled {result.pulled}, pushed {result.pushed}, "
              f"queue {sync.queue_depth()}")
        with Session() as session:
            notes = session.exec(select(Note).order_by(col(Note.title))).all()
            for note in notes:
                read = NoteRead.model_validate(note, from_attributes=True)
                print(f"local: {read.model_dump_json()}")
            milk = session.exec(select(Note).where(Note.title == "Buy milk")).one()
            milk.body = "oat"
            session.commit()
        print(f"after an edit: pushed {sync.sync().pushed}")
    finally:
        sync.stop()
        engine.dispose()
    listed = _api(server, "GET", "/api/posts?limit=1000")["data"]
    on_server = {row["id"]: row for row in listed if not row["deleted"]}
    for row in on_server.values():
        print(f"server: {row['id']}  {row['title']!r}  body={row['body']!r}  "
              f"version {row['version']}")
    mine = {n.id: n for n in notes}
    ok = (set(mine) <= set(on_server) and web_id in mine
          and on_server[milk.id]["body"] == "oat")
    print("SQLModel notes synced" if ok else "SOMETHING WENT WRONG")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Run the example in a temporary folder, against ``--server`` or a backend of its own."""
    parser = argparse.ArgumentParser(description="SQLModel models synced by sqla_sync")
    parser.add_argument("--server", help="a running backend (python -m examples.server); "
                                         "default: start one on 127.0.0.1")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sqlmodel-sync-") as folder:
        db_path = Path(folder) / "notes.db"
        if args.server:
            return run(db_path, args.server)
        with BackendServer() as server:
            return run(db_path, server.url)


if __name__ == "__main__":
    sys.exit(main())
