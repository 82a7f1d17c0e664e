"""How the todo app syncs: routes to the backend's ``posts`` and the engine's settings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from sqla_sync import (
    Cursor,
    Errors,
    Offset,
    Pull,
    Push,
    Request,
    Routes,
    RouteTable,
    Schedule,
    SyncConfig,
    SyncEngine,
    define_routes,
    start_sync,
)

__all__ = ["make_sync", "routes"]


def _rows(body: Any) -> Any:
    return body["data"]


def _is_tombstone(row: Any) -> bool:
    return bool(row.get("deleted", False))


def routes() -> RouteTable:
    """Local ``todos`` <-> the server's ``/api/posts``, pulled by ``updatedAt``."""
    return define_routes({
        "todos": Routes(
            fields={"updated_at": "updatedAt"},
            push=Push(
                create=Request("POST", "/api/posts"),
                update=Request("PUT", "/api/posts/{id}"),
                delete=Request("DELETE", "/api/posts/{id}"),
            ),
            pull=Pull("GET", "/api/posts", map_response=_rows,
                      cursor=Cursor(field="updatedAt", param="updated_after"),
                      paginate=Offset(), deleted=_is_tombstone),
        ),
    })


def _no_backoff(attempt: int) -> float:
    # The command line syncs when the user says so: a change that failed is due
    # again at the next ``sync`` instead of after a backoff delay that would
    # make that ``sync`` skip it.  (A long-running app keeps the default.)
    return 0.0


def make_sync(engine: Engine, server: str) -> SyncEngine:
    """The sync engine of the todo database; driven by hand, no background thread."""
    return start_sync(engine, SyncConfig(
        base_url=server,
        routes=routes(),
        sync=Schedule(interval=0, on_commit=False),
        errors=Errors(retry_delay=_no_backoff),
        timeout=(2.0, 10.0),
    ))
