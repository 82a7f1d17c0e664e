"""The todo commands: ``add``, ``list``, ``done``, ``rm``, ``sync`` and ``status``.

``add``, ``list``, ``done`` and ``rm`` only touch the local database, so they
work with the server down: every change waits in sqla_sync's outbox.  ``sync``
pulls the server's changes, then pushes the waiting ones; ``status`` shows the
queue, the dead letters, the last successful sync and whether the server
answers.  Exit codes: 0 success, 1 failure, 2 wrong usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from sqla_sync import SyncEngine, SyncError
from sqla_sync.checkpoints import get_checkpoint
from sqla_sync.engine import LAST_SYNC_CHECKPOINT

from .models import DONE, Todo, new_id, open_db
from .sync import make_sync

__all__ = ["build_parser", "main"]

OK, FAILED, USAGE = 0, 1, 2


class CommandError(Exception):
    """A command failed in a way the user can act on; the message says how."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m examples.todo``."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.todo",
        description="An offline-first todo list synced with a REST backend by sqla_sync.",
    )
    parser.add_argument("--db", default=os.environ.get("TODO_DB", "todo.db"),
                        help="the local SQLite file (default: $TODO_DB or todo.db)")
    parser.add_argument("--server", default=os.environ.get("TODO_SERVER"),
                        help="the backend's base URL, e.g. http://127.0.0.1:8000 "
                             "(default: $TODO_SERVER); needed by sync")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = sub.add_parser("add", help="add a todo")
    add.add_argument("text", help="what to do")
    listing = sub.add_parser("list", help="list the todos")
    listing.add_argument("--open", action="store_true", help="only the todos not done")
    done = sub.add_parser("done", help="mark a todo done")
    done.add_argument("id", help="the todo's id or a unique prefix of it")
    rm = sub.add_parser("rm", help="delete a todo")
    rm.add_argument("id", help="the todo's id or a unique prefix of it")
    sub.add_parser("sync", help="pull the server's changes, then push the local ones")
    sub.add_parser("status", help="queue, dead letters, last sync and online state")
    return parser


# -- helpers ---------------------------------------------------------------------------


def _find(session: Session, ref: str) -> Todo:
    """The todo whose id is ``ref`` or starts with it (it must be unique)."""
    todo = session.get(Todo, ref)
    if todo is not None:
        return todo
    found = session.scalars(
        select(Todo).where(Todo.id.startswith(ref, autoescape=True)).limit(2)
    ).all()
    if not found:
        raise CommandError(f"no todo with id {ref!r}; 'list' shows the ids")
    if len(found) > 1:
        raise CommandError(f"{ref!r} matches more than one todo; give more of the id")
    return found[0]


#: Base URL of a sync engine used only to read the queue; it is never contacted.
_UNUSED_URL = "http://127.0.0.1:9"


def _pending(engine: Engine, server: str | None) -> tuple[int, int]:
    """Queue depth and dead-letter count (no server is contacted)."""
    sync = make_sync(engine, server or _UNUSED_URL)
    try:
        return sync.queue_depth(), len(sync.dead_letters())
    finally:
        sync.stop()


def _waiting(engine: Engine) -> str:
    depth, _ = _pending(engine, None)
    return f"{depth} change(s) waiting to sync"


def _last_sync(engine: Engine) -> str:
    with engine.connect() as conn:
        when = get_checkpoint(conn, LAST_SYNC_CHECKPOINT)
    if when is None:
        return "never"
    return dt.datetime.fromtimestamp(float(when)).isoformat(sep=" ", timespec="seconds")


def _online(server: str) -> bool:
    """Whether the server answers at all (any HTTP status counts)."""
    try:
        with urllib.request.urlopen(f"{server.rstrip('/')}/api/posts?limit=1", timeout=2.0):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


# -- commands --------------------------------------------------------------------------


def cmd_add(engine: Engine, maker: sessionmaker[Session], text: str) -> int:
    """Add a todo; prints its id."""
    if not text.strip():
        raise CommandError("a todo needs some text")
    todo = Todo(id=new_id(), title=text, body="")
    with maker() as session:
        session.add(todo)
        session.commit()
    print(f"added {todo.id}  {text}  ({_waiting(engine)})")
    return OK


def cmd_list(maker: sessionmaker[Session], only_open: bool) -> int:
    """Print the todos by text; ``[x]`` marks the done ones."""
    with maker() as session:
        todos = session.scalars(select(Todo).order_by(Todo.title, Todo.id)).all()
    shown = [t for t in todos if not (only_open and t.done)]
    if not shown:
        print("no todos")
    for todo in shown:
        print(f"[{'x' if todo.done else ' '}] {todo.id}  {todo.title}")
    return OK


def cmd_done(engine: Engine, maker: sessionmaker[Session], ref: str) -> int:
    """Mark a todo done."""
    with maker() as session:
        todo = _find(session, ref)
        if todo.done:
            print(f"{todo.id} was already done")
            return OK
        todo.body = DONE
        session.commit()
    print(f"done {todo.id}  {todo.title}  ({_waiting(engine)})")
    return OK


def cmd_rm(engine: Engine, maker: sessionmaker[Session], ref: str) -> int:
    """Delete a todo."""
    with maker() as session:
        todo = _find(session, ref)
        session.delete(todo)
        session.commit()
    print(f"removed {todo.id}  {todo.title}  ({_waiting(engine)})")
    return OK


def cmd_sync(engine: Engine, server: str) -> int:
    """Pull, then push; prints the counts.  Exit 1 when anything is left undone."""
    sync: SyncEngine = make_sync(engine, server)
    try:
        try:
            result = sync.sync()
        except SyncError as exc:
            depth = sync.queue_depth()
            reason = (f"the server at {server} does not answer" if not sync.is_online()
                      else f"{type(exc).__name__}: {exc}")
            print(f"sync failed: {reason}; {depth} change(s) kept in the queue, "
                  "run sync again later", file=sys.stderr)
            return FAILED
        if not result.leader:
            print("sync skipped: another process is syncing this database; try again "
                  "in a few seconds", file=sys.stderr)
            return FAILED
        depth, dead = sync.queue_depth(), len(sync.dead_letters())
        print(f"pulled {result.pulled}, pushed {result.pushed}, conflicts {result.conflicts}; "
              f"queue {depth}, dead letters {dead}")
        if result.failed or result.dead_lettered:
            print(f"sync incomplete: {result.failed} change(s) failed and wait for the next "
                  f"sync, {result.dead_lettered} became dead letter(s) "
                  "('sqla-sync --url sqlite:///DB dead-letters' lists them)", file=sys.stderr)
            return FAILED
        return OK
    finally:
        sync.stop()


def cmd_status(engine: Engine, server: str | None) -> int:
    """Queue depth, dead letters, last successful sync and whether the server answers."""
    depth, dead = _pending(engine, server)
    if server is None:
        online = "unknown (no --server)"
    else:
        online = f"{'online' if _online(server) else 'offline'} ({server})"
    print(f"queue         {depth}")
    print(f"dead letters  {dead}")
    print(f"last sync     {_last_sync(engine)}")
    print(f"server        {online}")
    return OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for wrong usage
        return int(exc.code) if isinstance(exc.code, int) else USAGE
    if args.command == "sync" and not args.server:
        parser.print_usage(sys.stderr)
        print("error: sync needs --server URL (or $TODO_SERVER)", file=sys.stderr)
        return USAGE
    engine, maker = open_db(args.db)
    try:
        if args.command == "add":
            return cmd_add(engine, maker, args.text)
        if args.command == "list":
            return cmd_list(maker, args.open)
        if args.command == "done":
            return cmd_done(engine, maker, args.id)
        if args.command == "rm":
            return cmd_rm(engine, maker, args.id)
        if args.command == "sync":
            return cmd_sync(engine, args.server)
        return cmd_status(engine, args.server)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return FAILED
    finally:
        engine.dispose()
