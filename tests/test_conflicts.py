"""One conflict scenario under each policy, against the example backend, on every dialect."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.orm import sessionmaker

from examples.server.run import BackendServer
from sqla_sync import (
    Conflict,
    Conflicts,
    Cursor,
    Errors,
    Offset,
    Pull,
    Push,
    Request,
    Routes,
    Schedule,
    SyncConfig,
    SyncEngine,
    define_routes,
    start_sync,
    track,
    untrack,
)
from sqla_sync.outbox import pending_ops
from tests.conftest import FakeClock
from tests.models import Article


def routes(if_match: bool = False) -> Any:
    return define_routes({"articles": Routes(
        fields={"updated_at": "updatedAt"},
        push=Push(create=Request("POST", "/api/posts"),
                  update=Request("PUT", "/api/posts/{id}", if_match=if_match),
                  delete=Request("DELETE", "/api/posts/{id}", if_match=if_match)),
        pull=Pull("GET", "/api/posts", map_response=lambda b: b["data"],
                  cursor=Cursor(field="updatedAt", param="updated_after"), paginate=Offset(),
                  deleted=lambda row: row.get("deleted", False)))})


@pytest.fixture
def server() -> Iterator[BackendServer]:
    with BackendServer() as srv:
        yield srv


class World:
    """A synced row "a", then edits on both sides."""

    def __init__(self, engine: Engine, server: BackendServer, conflicts: Conflicts,
                 local_clock: float | None = None, if_match: bool = False) -> None:
        self.engine, self.server = engine, server
        self.maker = sessionmaker(engine, expire_on_commit=False)
        track(self.maker, clock=FakeClock(local_clock) if local_clock else time.time)
        self.clock = FakeClock()
        self.sync: SyncEngine = start_sync(engine, SyncConfig(
            base_url=server.url, routes=routes(if_match), conflicts=conflicts,
            sync=Schedule(push_concurrency=1), clock=self.clock,
            errors=Errors(retry_delay=lambda attempt: 1.0)))
        self.events: list[Conflict] = []
        self.sync.on("conflict", self.events.append)
        server.store.seed("posts", [{"id": "a", "title": "base", "body": "base"}])
        self.sync.pull()

    def local_edit(self, **fields: Any) -> None:
        with self.maker() as s:
            row = s.get(Article, "a")
            assert row is not None
            for k, v in fields.items():
                setattr(row, k, v)
            s.commit()

    def server_edit(self, **fields: Any) -> None:
        self.server.store.admin_patch("posts", "a", fields)

    def local(self) -> tuple[str, str | None]:
        with self.maker() as s:
            row = s.get(Article, "a")
            assert row is not None
            return row.title, row.body

    def remote(self) -> tuple[str, str]:
        row = next(r for r in self.server.store.rows("posts") if r["id"] == "a")
        return row["title"], row["body"]

    def close(self) -> None:
        self.sync.stop()
        untrack(self.maker)


def test_server_wins(engine: Engine, server: BackendServer) -> None:
    world = World(engine, server, Conflicts(policy="server-wins"))
    world.local_edit(title="local")
    world.server_edit(title="server")
    result = world.sync.sync()
    assert result.conflicts == 1 and result.pushed == 0
    assert world.local() == world.remote() == ("server", "base")
    assert [e.resolution for e in world.events] == ["remote"]
    assert world.events[0].local is not None and world.events[0].local["title"] == "local"
    with engine.connect() as conn:
        assert pending_ops(conn) == []
    world.close()


def test_client_wins(engine: Engine, server: BackendServer) -> None:
    world = World(engine, server, Conflicts(policy="client-wins"))
    world.local_edit(title="local")
    world.server_edit(title="server")
    result = world.sync.sync()
    assert (result.conflicts, result.pushed) == (1, 1)
    assert world.local() == world.remote() == ("local", "base")
    assert [e.resolution for e in world.events] == ["local"]
    world.close()


@pytest.mark.parametrize(("local_is_newer", "winner"), [(True, "local"), (False, "server")])
def test_last_writer_wins(engine: Engine, server: BackendServer, local_is_newer: bool,
                          winner: str) -> None:
    # The server's clock is real time; the local change is an hour after or before it.
    local_time = time.time() + (3600 if local_is_newer else -3600)
    world = World(engine, server, Conflicts(policy="lww"), local_clock=local_time)
    world.local_edit(title="local")
    world.server_edit(title="server")
    world.sync.sync()
    assert world.local() == world.remote() == (winner, "base")
    world.close()


def test_last_writer_wins_tie_goes_to_the_server_every_time(engine: Engine,
                                                            server: BackendServer) -> None:
    stamp_ms = 1_800_000_000_000
    world = World(engine, server, Conflicts(policy="lww"), local_clock=stamp_ms / 1000)
    world.local_edit(title="local")
    server.store.freeze_clock(stamp_ms)
    world.server_edit(title="server")
    world.sync.sync()
    assert world.local() == world.remote() == ("server", "base")
    world.close()


def test_merge_keeps_the_local_title_and_the_remote_body(engine: Engine,
                                                         server: BackendServer) -> None:
    world = World(engine, server, Conflicts(policy="merge"))
    world.local_edit(title="local title")
    world.server_edit(body="server body")
    result = world.sync.sync()
    assert (result.conflicts, result.pushed) == (1, 1)
    assert world.local() == world.remote() == ("local title", "server body")
    assert [e.resolution for e in world.events] == ["merged"]
    world.close()


def test_merge_falls_back_for_a_field_both_sides_changed(engine: Engine,
                                                         server: BackendServer) -> None:
    world = World(engine, server, Conflicts(policy="merge", merge_fallback="server-wins"))
    world.local_edit(title="local title", body="local body")
    world.server_edit(title="server title")
    world.sync.sync()
    assert world.local() == world.remote() == ("server title", "local body")
    world.close()


def test_custom_resolver_returns_a_merged_row(engine: Engine, server: BackendServer) -> None:
    def resolve(conflict: Conflict) -> Any:
        assert conflict.table == "articles" and conflict.key == "a"
        assert conflict.base is not None and conflict.base["title"] == "base"
        assert conflict.local is not None and conflict.remote is not None
        return {**conflict.remote, "title": f"{conflict.local['title']} + "
                                            f"{conflict.remote['title']}"}

    world = World(engine, server, Conflicts(policy="custom", resolve=resolve))
    world.local_edit(title="local")
    world.server_edit(title="server")
    world.sync.sync()
    assert world.local() == world.remote() == ("local + server", "base")
    world.close()


def test_a_remote_delete_against_a_local_edit(engine: Engine, server: BackendServer) -> None:
    world = World(engine, server, Conflicts(policy="server-wins"))
    world.local_edit(title="local")
    server.store.admin_delete("posts", "a")
    world.sync.sync()
    with world.maker() as s:
        assert s.get(Article, "a") is None
    assert world.events[0].remote is None
    world.close()


@pytest.mark.parametrize(("policy", "expected"), [("server-wins", "server"),
                                                  ("client-wins", "local")])
def test_if_match_412_on_push_goes_to_the_policy(engine: Engine, server: BackendServer,
                                                  policy: Any, expected: str) -> None:
    world = World(engine, server, Conflicts(policy=policy), if_match=True)
    world.local_edit(title="local")
    world.server_edit(title="server")  # after our pull: only If-Match can catch it
    first = world.sync.push()
    assert first.conflicts == 1
    assert [r["status"] for r in server.store.requests("PUT")] == [412]
    world.clock.advance(60)
    world.sync.push()
    assert world.remote()[0] == expected and world.local()[0] == expected
    world.close()


def test_an_edit_committed_while_a_pull_settles_a_conflict_is_kept(
        engine: Engine, server: BackendServer) -> None:
    """Server-wins settles a conflict by dropping the row's ops and writing the
    server's row; the user commits another edit of that row at that very moment.
    The edit must either be part of the decision or wait for the pull's commit and
    become a new op -- never be dropped or overwritten.  (Without row locks on
    PostgreSQL and MariaDB, and without a real transaction on SQLite, the edit
    landed in between and was lost.)  The pull waits up to 2 s for the edit; with
    the locks the edit waits for the pull instead."""
    world = World(engine, server, Conflicts(policy="server-wins"))
    world.local_edit(title="mine")
    world.server_edit(title="theirs")
    pulling = threading.current_thread()
    edits: list[threading.Thread] = []

    def edit_later() -> None:
        world.local_edit(title="mine, later")

    def meanwhile(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The pull has decided to drop the op; before it writes, the user edits.
        if (threading.current_thread() is pulling and not edits
                and statement.startswith("DELETE FROM sqla_sync_outbox")):
            edits.append(threading.Thread(target=edit_later))
            edits[0].start()
            edits[0].join(2.0)

    event.listen(engine, "before_cursor_execute", meanwhile)
    try:
        assert world.sync.pull().conflicts == 1
    finally:
        event.remove(engine, "before_cursor_execute", meanwhile)
    assert edits
    edits[0].join(30)
    world.sync.sync()
    assert world.local() == world.remote() == ("mine, later", "base")
    world.close()
