"""``sqla-sync demo``: a one-minute tour of offline-first sync, on your machine.

It starts the reference backend on 127.0.0.1, keeps a local SQLite database in
a temporary folder, writes while the backend is down (the queue grows), brings
the backend up and syncs, provokes a conflict and shows how the merge policy
settled it, pulls a change made on the server, and ends with status and
metrics.  Nothing is left running or on disk afterwards.
"""

from __future__ import annotations

import importlib
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

__all__ = ["run_demo"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_demo() -> int:
    """Run the tour; returns the exit code (0 when every step did what it says)."""
    try:
        # Mapped from examples/server by pyproject.toml; needs Flask.
        BackendServer = importlib.import_module("sqla_sync.example_server").BackendServer
    except ImportError as exc:  # Flask is in the "demo" extra
        print(f"sqla-sync demo needs the demo extra: pip install 'sqla_sync[demo]' ({exc})",
              file=sys.stderr)
        return 1
    from . import (
        Conflicts,
        Cursor,
        Offset,
        Pull,
        Push,
        Request,
        Routes,
        Schedule,
        Syncable,
        SyncConfig,
        create_tables,
        define_routes,
        start_sync,
        track,
    )

    class Base(DeclarativeBase):
        pass

    class Note(Syncable, Base):
        __tablename__ = "demo_notes"
        id: Mapped[str] = mapped_column(String(40), primary_key=True)
        title: Mapped[str] = mapped_column(String(200))
        body: Mapped[str | None] = mapped_column(String(2000))
        updated_at: Mapped[str | None] = mapped_column(String(40))
        version: Mapped[int | None]

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sqla-sync-demo-") as folder:
        db_path = Path(folder) / "notes.db"
        engine = create_engine(f"sqlite:///{db_path}")
        Base.metadata.create_all(engine)
        create_tables(engine)
        Session = track(sessionmaker(engine, expire_on_commit=False))
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        routes = define_routes({"demo_notes": Routes(
            fields={"updated_at": "updatedAt"},
            push=Push(create=Request("POST", "/api/posts"),
                      update=Request("PUT", "/api/posts/{id}"),
                      delete=Request("DELETE", "/api/posts/{id}")),
            pull=Pull("GET", "/api/posts", map_response=lambda body: body["data"],
                      cursor=Cursor(field="updatedAt", param="updated_after"),
                      paginate=Offset(), deleted=lambda row: row.get("deleted", False)),
        )})
        sync = start_sync(engine, SyncConfig(
            base_url=url, routes=routes, conflicts=Conflicts(policy="merge"),
            sync=Schedule(interval=0, push_concurrency=2), timeout=(1.0, 5.0)))
        conflicts: list[Any] = []
        sync.on("conflict", conflicts.append)
        server = None
        try:
            _say(f"sqla_sync demo -- local database {db_path.name} in a temporary folder")
            _say(f"1. The backend at {url} is down; the app keeps working offline.")
            for i, title in enumerate(["Buy milk", "Call Ada", "Write the report"], 1):
                with Session() as s:
                    s.add(Note(id=f"note-{i}", title=title, body=""))
                    s.commit()
                _say(f"   wrote {title!r:<20} queue depth: {sync.queue_depth()}")
            try:
                sync.sync()
            except Exception as exc:
                _say(f"   sync while offline: {type(exc).__name__} -- nothing lost, "
                     f"{sync.queue_depth()} changes wait")
            _say("2. The backend comes up; one sync pushes the queue.")
            server = BackendServer(port=port)
            result = sync.sync()
            _say(f"   pushed {result.pushed}, queue depth now {sync.queue_depth()}, "
                 f"server holds {len(server.store.rows('posts'))} notes")
            _say("3. Both sides edit note-1: you change the title, someone else the body.")
            with Session() as s:
                note = s.get(Note, "note-1")
                assert note is not None
                note.title = "Buy oat milk"
                s.commit()
            server.store.admin_patch("posts", "note-1", {"body": "the 1 l carton"})
            result = sync.sync()
            for conflict in conflicts:
                _say(f"   conflict on {conflict.table} {conflict.key!r}: "
                     f"policy merge -> {conflict.resolution}")
            row = next(r for r in server.store.rows("posts") if r["id"] == "note-1")
            _say(f"   server now: title={row['title']!r} body={row['body']!r}")
            _say("4. A note created on the server arrives with the next pull.")
            server.store.seed("posts", [{"id": "note-9", "title": "From the web app",
                                         "body": ""}])
            result = sync.sync()
            with Session() as s:
                pulled = s.get(Note, "note-9")
            _say(f"   pulled {result.pulled}: {pulled.title if pulled else None!r}")
            status = sync.get_status()
            metrics = sync.metrics()
            _say("5. Status and metrics")
            _say(f"   online={status.online} leader={status.leader} "
                 f"queue={status.queue_depth} health={sync.health_check().status}")
            _say(f"   pushed={metrics.pushed} pulled={metrics.pulled} "
                 f"conflicts={dict(metrics.conflicts)} requests={dict(metrics.requests)}")
            ok = (sync.queue_depth() == 0 and pulled is not None and len(conflicts) == 1
                  and row["title"] == "Buy oat milk" and row["body"] == "the 1 l carton")
        finally:
            sync.stop()
            if server is not None:
                server.stop()
            engine.dispose()
    _say(f"done in {time.monotonic() - started:.1f} s -- "
         f"{'every step did what it says' if ok else 'a step went wrong'}")
    return 0 if ok else 1
