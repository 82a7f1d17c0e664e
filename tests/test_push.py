"""Push against the example backend on 127.0.0.1, over real connections, on every dialect."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from examples.server.run import BackendServer
from sqla_sync import (
    Auth,
    ConfigurationError,
    Errors,
    Push,
    Request,
    Routes,
    Schedule,
    Syncable,
    SyncConfig,
    SyncEngine,
    SyncError,
    define_routes,
    start_sync,
    track,
    untrack,
)
from sqla_sync.outbox import pending_ops
from sqla_sync.push import Pusher
from sqla_sync.signals import EVENT_NAMES, signal_for
from sqla_sync.tables import outbox, shadow
from sqla_sync.transport import Transport
from tests.backend import article_routes
from tests.conftest import FakeClock
from tests.models import Article, Entry, Ledger, Remark


@pytest.fixture
def server() -> Iterator[BackendServer]:
    srv = BackendServer()
    yield srv
    srv.stop()


@pytest.fixture
def Sess(engine: Engine) -> Iterator[sessionmaker[Session]]:
    maker = track(sessionmaker(engine, expire_on_commit=False))
    yield maker
    untrack(maker)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_engine(engine: Engine, server: BackendServer, clock: FakeClock, **kw: Any) -> SyncEngine:
    schedule = kw.pop("sync", Schedule(push_batch_size=10, push_concurrency=1))
    config = SyncConfig(base_url=server.url, routes=kw.pop("routes", article_routes()),
                        sync=schedule, clock=clock, seed=7, **kw)
    return start_sync(engine, config)


def server_rows(server: BackendServer, resource: str = "posts") -> dict[Any, dict[str, Any]]:
    return {row["id"]: row for row in server.store.rows(resource)}


def api_requests(server: BackendServer, method: str | None = None) -> list[dict[str, Any]]:
    return [r for r in server.store.requests() if method is None or r["method"] == method]


def test_create_update_delete_reach_the_server(engine: Engine, server: BackendServer,
                                               Sess: sessionmaker[Session],
                                               clock: FakeClock) -> None:
    with Sess() as s:
        s.add(Article(id="a1", title="Hello", body="first"))
        s.commit()
    with make_engine(engine, server, clock) as sync:
        result = sync.push()
        assert (result.pushed, result.failed, result.dead_lettered) == (1, 0, 0)
        row = server_rows(server)["a1"]
        assert (row["title"], row["body"], row["version"]) == ("Hello", "first", 1)
        # The answer is written back to the row, and that write is not captured.
        with Sess() as s:
            local = s.get(Article, "a1")
            assert local is not None
            assert (local.updated_at, local.version) == (row["updatedAt"], 1)
            assert sync.queue_depth() == 0
            local.title = "Hello again"
            s.commit()
        assert sync.push().pushed == 1
        assert server_rows(server)["a1"]["title"] == "Hello again"
        with engine.connect() as conn:
            assert conn.execute(select(shadow.c.version).where(
                shadow.c.row_key == '["a1"]')).scalar_one() == '"2"'
        with Sess() as s:
            s.delete(s.get(Article, "a1"))
            s.commit()
        assert sync.push().pushed == 1
        assert server_rows(server)["a1"]["deleted"] is True
        assert sync.queue_depth() == 0
        with engine.connect() as conn:
            assert conn.execute(select(shadow)).all() == []


def test_parents_before_children_and_deletes_children_first(
    engine: Engine, server: BackendServer, Sess: sessionmaker[Session], clock: FakeClock
) -> None:
    with Sess() as s:
        # The child is captured in a later transaction, but pointing at a
        # parent that is itself re-created later must still wait for it.
        s.add(Article(id="p", title="parent"))
        s.flush()
        s.add(Remark(id="c", article_id="p", content="child"))
        s.commit()
    with make_engine(engine, server, clock,
                     sync=Schedule(push_batch_size=10, push_concurrency=3)) as sync:
        assert sync.push().pushed == 2
        with Sess() as s:
            s.delete(s.get(Remark, "c"))
            s.delete(s.get(Article, "p"))
            s.commit()
        assert sync.push().pushed == 2
    order = [(r["method"], r["resource"]) for r in api_requests(server)]
    assert order == [("POST", "posts"), ("POST", "comments"),
                     ("DELETE", "comments"), ("DELETE", "posts")]


def test_server_assigned_ids_reach_children(engine: Engine, server: BackendServer,
                                            Sess: sessionmaker[Session],
                                            clock: FakeClock) -> None:
    server.stop()
    server = BackendServer(id_mode="server")
    try:
        server.store.seed("posts", [{"id": 1, "title": "someone else's"}])
        with Sess() as s:  # offline: temporary negative ids
            s.add(Ledger(id=-1, title="mine"))
            s.flush()
            s.add_all([Entry(id=-1, ledger_id=-1, content="first"),
                       Entry(id=-2, ledger_id=-1, content="second")])
            s.commit()
            s.get(Entry, -2).content = "second, edited"  # type: ignore[union-attr]
            s.commit()
        with make_engine(engine, server, clock,
                         sync=Schedule(push_batch_size=10, push_concurrency=2)) as sync:
            result = sync.push()
            assert (result.pushed, result.held_back, result.dead_lettered) == (3, 0, 0)
        posts = server_rows(server)
        comments = server_rows(server, "comments")
        assert posts[2]["title"] == "mine"
        assert {c["content"]: c["postId"] for c in comments.values()} == {
            "first": 2, "second, edited": 2}
        with Sess() as s:
            ledger = s.execute(select(Ledger)).scalar_one()
            entries = s.execute(select(Entry).order_by(Entry.id)).scalars().all()
            assert (ledger.id, ledger.version) == (2, 1)
            assert [(e.id, e.ledger_id) for e in entries] == sorted(
                (cid, 2) for cid in comments)
        with engine.connect() as conn:
            keys = {(t, k) for t, k in conn.execute(select(shadow.c.table_name,
                                                           shadow.c.row_key))}
            assert keys == {("ledgers", "[2]")} | {("entries", f"[{cid}]") for cid in comments}
    finally:
        server.stop()


def test_lost_response_after_commit_makes_no_duplicate(engine: Engine, server: BackendServer,
                                                      Sess: sessionmaker[Session],
                                                      clock: FakeClock) -> None:
    server.faults.add(method="POST", path="/api/posts", action="drop_after_commit")
    with Sess() as s:
        s.add(Article(id="a1", title="once"))
        s.commit()
    with make_engine(engine, server, clock) as sync:
        first = sync.push()
        assert (first.pushed, first.failed) == (0, 1)
        assert len(server_rows(server)) == 1  # the server did commit
        clock.advance(120)
        assert sync.push().pushed == 1
    posts = api_requests(server, "POST")
    assert len(posts) == 2
    keys = {p["headers"]["Idempotency-Key"] for p in posts}
    assert len(keys) == 1
    assert posts[1]["replayed"] is True
    assert len(server_rows(server)) == 1


def test_retry_after_is_honoured_with_an_injected_clock(engine: Engine, server: BackendServer,
                                                       Sess: sessionmaker[Session],
                                                       clock: FakeClock) -> None:
    server.faults.add(method="POST", path="/api/posts", action="status", status=503,
                      headers={"Retry-After": "2"})
    with Sess() as s:
        s.add(Article(id="a1", title="later"))
        s.commit()
    # A tiny backoff, so that only Retry-After can explain the wait.
    with make_engine(engine, server, clock, errors=Errors(retry_delay=lambda a: 0.01)) as sync:
        assert sync.push().failed == 1
        with engine.connect() as conn:
            [op] = pending_ops(conn)
        assert op.attempts == 1 and op.next_attempt_at - clock.now >= 2.0
        assert "503" in (op.last_error or "")
        clock.advance(1.99)
        assert sync.push().pushed == 0
        assert len(api_requests(server)) == 1  # nothing sent before 2 s
        clock.advance(0.01)
        assert sync.push().pushed == 1
    assert len(api_requests(server)) == 2


def test_a_restarted_engine_continues_the_schedule(engine: Engine, server: BackendServer,
                                                   Sess: sessionmaker[Session],
                                                   clock: FakeClock) -> None:
    server.faults.add(method="POST", path="/api/posts", action="status", status=500)
    with Sess() as s:
        s.add(Article(id="a1", title="t"))
        s.commit()
    with make_engine(engine, server, clock, errors=Errors(jitter=False)) as sync:
        sync.push()
    with engine.connect() as conn:
        [op] = pending_ops(conn)
    assert (op.attempts, op.next_attempt_at) == (1, clock.now + 2.0)
    with make_engine(engine, server, clock, errors=Errors(jitter=False)) as restarted:
        assert restarted.push().pushed == 0
        clock.advance(2.0)
        assert restarted.push().pushed == 1
    keys = [r["headers"]["Idempotency-Key"] for r in api_requests(server, "POST")]
    assert len(keys) == 2 and keys[0] == keys[1] == op.idempotency_key


def test_out_of_retries_becomes_a_dead_letter(engine: Engine, server: BackendServer,
                                              Sess: sessionmaker[Session],
                                              clock: FakeClock) -> None:
    server.faults.add(method="POST", path="/api/posts", action="status", status=502, times=-1)
    with Sess() as s:
        s.add(Article(id="a1", title="t"))
        s.commit()
    with make_engine(engine, server, clock, errors=Errors(max_retries=2)) as sync:
        for _ in range(3):
            sync.push()
            clock.advance(3600)
        [letter] = sync.dead_letters()
        assert (letter.status, letter.attempts, letter.method) == (502, 3, "POST")
        assert sync.queue_depth() == 0
    assert len(api_requests(server)) == 3


def editing_during_create(Sess: sessionmaker[Session], title: str) -> Any:
    """The article routes with a create body hook that, after the op was
    claimed and before the request goes out, sets article a1's title: the
    user editing the row while its create is in flight."""
    def body(item: dict[str, Any]) -> dict[str, Any]:
        with Sess() as s:
            s.get(Article, "a1").title = title  # type: ignore[union-attr]
            s.commit()
        return item

    push = article_routes()["articles"].routes.push
    assert push is not None
    return define_routes({"articles": Routes(
        fields={"updated_at": "updatedAt"},
        push=Push(create=Request("POST", "/api/posts", body=body), update=push.update,
                  delete=push.delete))})


def test_a_row_out_of_retries_holds_back_its_later_op_in_the_same_push(
    engine: Engine, server: BackendServer, Sess: sessionmaker[Session], clock: FakeClock
) -> None:
    """An op that runs out of retries becomes a dead letter at once, and the
    row's later op (captured while the last attempt was in flight) waits
    behind it in that same push too, not only in the next one."""
    server.faults.add(method="POST", path="/api/posts", action="status", status=502, times=-1)
    with Sess() as s:
        s.add(Article(id="a1", title="t"))
        s.commit()

    patched = editing_during_create(Sess, "edited")
    with make_engine(engine, server, clock, routes=patched,
                     errors=Errors(max_retries=0)) as sync:
        result = sync.push()
        assert (result.pushed, result.dead_lettered) == (0, 1)
        assert sync.queue_depth() == 1  # the edit waits behind the dead letter
    assert [r["method"] for r in api_requests(server)] == ["POST"]


def test_a_400_dead_letters_while_unrelated_ops_arrive(engine: Engine, server: BackendServer,
                                                       Sess: sessionmaker[Session],
                                                       clock: FakeClock) -> None:
    server.faults.add(method="POST", path="/api/posts", action="status", status=400,
                      body={"error": "title too long"})
    with Sess() as s:
        s.add(Article(id="poison", title="bad"))
        s.flush()
        s.add(Remark(id="child-of-poison", article_id="poison", content="waits"))
        s.flush()
        s.add_all([Article(id=f"a{i:02}", title=str(i)) for i in range(50)])
        s.commit()
    letters: list[Any] = []
    with make_engine(engine, server, clock) as sync:
        sync.on("dead-letter", letters.append)
        result = sync.push()
        assert (result.pushed, result.dead_lettered) == (50, 1)
        assert result.held_back >= 1  # the child waits for its dead parent
        [letter] = sync.dead_letters()
        assert letters == [letter]
        assert (letter.table_name, letter.op, letter.status) == ("articles", "insert", 400)
        assert letter.url == "/api/posts" and "title too long" in letter.error
        # A later change of the dead row waits behind it, as does its child.
        with Sess() as s:
            s.get(Article, "poison").title = "fixed"  # type: ignore[union-attr]
            s.commit()
        assert sync.push().pushed == 0
        assert "poison" not in server_rows(server)
        assert sync.queue_depth() == 2  # the update and the child; not the dead letter
        sync.retry_dead_letter(letter.id)
        assert sync.push().pushed == 3
        assert sync.dead_letters() == []
        with pytest.raises(SyncError, match="no dead letter"):
            sync.retry_dead_letter(letter.id)
    assert server_rows(server)["poison"]["title"] == "fixed"
    assert server_rows(server, "comments")["child-of-poison"]["postId"] == "poison"
    assert len(server_rows(server)) == 51


def test_ids_are_percent_encoded_in_paths(engine: Engine, server: BackendServer,
                                          Sess: sessionmaker[Session], clock: FakeClock) -> None:
    with Sess() as s:
        s.add(Article(id="../admin/x?y=1", title="t"))
        s.commit()
    with make_engine(engine, server, clock) as sync:
        sync.push()
        with Sess() as s:
            s.get(Article, "../admin/x?y=1").title = "u"  # type: ignore[union-attr]
            s.commit()
        assert sync.push().pushed == 1
    [put] = api_requests(server, "PUT")
    assert put["target"] == "/api/posts/..%2Fadmin%2Fx%3Fy%3D1"
    assert server_rows(server)["../admin/x?y=1"]["title"] == "u"


@pytest.mark.parametrize("bad_id", ["..", "."])
def test_dot_ids_are_refused(engine: Engine, server: BackendServer, Sess: sessionmaker[Session],
                             clock: FakeClock, bad_id: str) -> None:
    with Sess() as s:
        s.add(Article(id=bad_id, title="t"))
        s.commit()
    with make_engine(engine, server, clock) as sync:
        sync.push()
        with Sess() as s:
            s.get(Article, bad_id).title = "u"  # type: ignore[union-attr]
            s.commit()
        result = sync.push()
        assert result.dead_lettered == 1
        [letter] = sync.dead_letters()
        assert "another resource" in letter.error
    assert api_requests(server, "PUT") == []


def test_concurrent_push_uses_several_connections(engine: Engine, server: BackendServer,
                                                  Sess: sessionmaker[Session],
                                                  clock: FakeClock) -> None:
    with Sess() as s:
        s.add_all([Article(id=f"a{i:02}", title=str(i)) for i in range(30)])
        s.commit()
    server.store.delay_ms = 20  # a nearby network, so requests overlap
    with make_engine(engine, server, clock,
                     sync=Schedule(push_batch_size=10, push_concurrency=4)) as sync:
        assert sync.push().pushed == 30
    assert len(server_rows(server)) == 30
    assert len({r["remote"] for r in api_requests(server)}) >= 2


def test_a_change_during_the_request_is_not_folded_or_overwritten(
    engine: Engine, server: BackendServer, Sess: sessionmaker[Session], clock: FakeClock
) -> None:
    with Sess() as s:
        s.add(Article(id="a1", title="sent"))
        s.commit()

    patched = editing_during_create(Sess, "edited while in flight")
    with make_engine(engine, server, clock, routes=patched) as sync:
        # The edit became an op of its own, sent after the create's answer.
        assert sync.push().pushed == 2
    sent = [(r["method"], r["body"]["title"]) for r in api_requests(server)]
    assert sent == [("POST", "sent"), ("PUT", "edited while in flight")]
    with Sess() as s:
        local = s.get(Article, "a1")
        assert local is not None
        # The create's answer ("sent") did not overwrite the edit.
        assert local.title == "edited while in flight"
        assert local.version == 2
    assert server_rows(server)["a1"]["title"] == "edited while in flight"


def test_waves_overlap_yet_a_row_waits_for_its_earlier_op(
    engine: Engine, server: BackendServer, Sess: sessionmaker[Session], clock: FakeClock
) -> None:
    """The next wave is claimed while one is sent; an op in flight still holds
    back the later op of its row, which goes once its answer is recorded."""
    with Sess() as s:
        s.add_all([Article(id=f"a{i}", title="sent") for i in range(6)])
        s.commit()
    with engine.connect() as conn:
        order = [json.loads(op.row_key)[0] for op in pending_ops(conn)]  # capture order
    first, last, *_ = order
    overlapped: list[bool] = []

    def claimed(ids: list[str]) -> bool:
        with engine.connect() as conn:
            return all(op.claimed_at is not None for op in pending_ops(conn)
                       if json.loads(op.row_key)[0] in ids)

    def body(item: dict[str, Any]) -> dict[str, Any]:
        if item["id"] == first:  # the user edits a row whose create is in flight
            with Sess() as s:
                s.get(Article, first).title = "edited"  # type: ignore[union-attr]
                s.commit()
        if item["id"] == last:  # wave 1's last request: wave 2 is claimed meanwhile
            for _ in range(200):
                if claimed(order[2:4]):
                    break
                time.sleep(0.05)
            overlapped.append(claimed(order[2:4]))
        return item

    routes = article_routes()
    push = routes["articles"].routes.push
    assert push is not None
    patched = define_routes({"articles": Routes(
        fields={"updated_at": "updatedAt"},
        push=Push(create=Request("POST", "/api/posts", body=body), update=push.update,
                  delete=push.delete))})
    with make_engine(engine, server, clock, routes=patched,
                     sync=Schedule(push_batch_size=2, push_concurrency=1)) as sync:
        assert sync.push().pushed == 7
        assert sync.queue_depth() == 0
    assert overlapped == [True]
    sent = [(r["method"], r["body"]["id"], r["body"]["title"]) for r in api_requests(server)]
    assert sent == [("POST", key, "sent") for key in order] + [("PUT", first, "edited")]
    assert len({r["remote"] for r in api_requests(server)}) == 1  # one keep-alive connection
    with Sess() as s:
        assert s.get(Article, first).title == "edited"  # type: ignore[union-attr]


@pytest.mark.parametrize("change", ["delete", "delete-created"])
def test_a_change_folded_in_between_choosing_and_claiming_is_not_lost(
    engine: Engine, server: BackendServer, Sess: sessionmaker[Session], clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """The application commits between the moment a wave is chosen and its
    claim, folding a delete into a chosen op: the claim reads the op again,
    so the delete is sent (not taken for an update of a vanished row) and a
    create cancelled meanwhile sends nothing."""
    with Sess() as s:
        s.add_all([Article(id="a1", title="t"), Article(id="a2", title="t")])
        s.commit()
    with make_engine(engine, server, clock) as sync:
        if change == "delete":
            assert sync.push().pushed == 2
            with Sess() as s:
                s.get(Article, "a1").title = "edited"  # type: ignore[union-attr]
                s.commit()
        chosen = Pusher._next_wave

        def next_wave(self: Pusher, *args: Any) -> Any:
            wave, held = chosen(self, *args)
            with Sess() as s:
                row = s.get(Article, "a1")
                if row is not None and any(op.row_key == '["a1"]' for op in wave):
                    s.delete(row)  # update + delete -> delete; insert + delete -> nothing
                    s.commit()
            return wave, held

        monkeypatch.setattr(Pusher, "_next_wave", next_wave)
        sync.push()
        assert sync.queue_depth() == 0 and sync.dead_letters() == []
    rows = server_rows(server)
    if change == "delete":
        assert rows["a1"]["deleted"] is True
        assert [r["method"] for r in api_requests(server) if "a1" in r["path"]] == ["DELETE"]
    else:
        assert "a1" not in rows and rows["a2"]["title"] == "t"


def test_a_child_moved_to_a_new_parent_between_choosing_and_claiming_waits_for_it(
    engine: Engine, server: BackendServer, Sess: sessionmaker[Session], clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The application commits between the moment a wave is chosen and its
    claim: a chosen child's update now points at a parent created meanwhile.
    The claim sees the new parent, leaves the child for the next wave, and
    the parent is created on the server before the child refers to it."""
    with Sess() as s:
        s.add(Article(id="p1", title="old parent"))
        s.flush()
        s.add(Remark(id="c", article_id="p1", content="child"))
        s.commit()
    with make_engine(engine, server, clock) as sync:
        assert sync.push().pushed == 2
        with Sess() as s:
            s.get(Remark, "c").content = "edited"  # type: ignore[union-attr]
            s.commit()
        chosen = Pusher._next_wave
        moved = []

        def next_wave(self: Pusher, *args: Any) -> Any:
            wave, held = chosen(self, *args)
            if not moved and [op.row_key for op in wave] == ['["c"]']:
                with Sess() as s:
                    s.add(Article(id="p2", title="new parent"))
                    s.flush()
                    s.get(Remark, "c").article_id = "p2"  # type: ignore[union-attr]
                    s.commit()
                moved.append(True)
            return wave, held

        monkeypatch.setattr(Pusher, "_next_wave", next_wave)
        result = sync.push()
        assert (result.pushed, result.dead_lettered) == (2, 0)
        assert sync.queue_depth() == 0
    assert moved == [True]
    later = [(r["method"], r["resource"]) for r in api_requests(server)][2:]
    assert later == [("POST", "posts"), ("PUT", "comments")]
    child = server_rows(server, "comments")["c"]
    assert (child["postId"], child["content"]) == ("p2", "edited")


def test_a_child_waits_for_a_new_parent_queued_beyond_the_window(
    engine: Engine, server: BackendServer, Sess: sessionmaker[Session], clock: FakeClock
) -> None:
    """A child's pending update, re-pointed at a parent created later, waits
    for that parent's insert even when the insert stands beyond the window of
    ops a wave is chosen from (500 by default; 2 here, instead of queueing 500
    other ops in between)."""
    with Sess() as s:
        s.add(Article(id="p1", title="old parent"))
        s.flush()
        s.add(Remark(id="c", article_id="p1", content="child"))
        s.commit()
    with make_engine(engine, server, clock,
                     sync=Schedule(push_batch_size=2, push_concurrency=1)) as sync:
        assert sync.push().pushed == 2
        with Sess() as s:
            s.get(Remark, "c").content = "edited"  # type: ignore[union-attr]
            s.commit()
            s.add_all([Article(id=f"a{i}", title="other") for i in range(4)])
            s.commit()
            s.add(Article(id="p2", title="new parent"))
            s.flush()
            s.get(Remark, "c").article_id = "p2"  # type: ignore[union-attr]
            s.commit()
        sync._pusher.window = 2
        result = sync.push()
        assert (result.pushed, result.dead_lettered) == (6, 0)
        assert sync.queue_depth() == 0
    later = [(r["method"], r["resource"], r["body"]["id"]) for r in api_requests(server)][2:]
    assert later.index(("POST", "posts", "p2")) < later.index(("PUT", "comments", "c"))
    assert server_rows(server, "comments")["c"]["postId"] == "p2"


def test_the_environment_is_read_once_for_base_url(
    engine: Engine, server: BackendServer, Sess: sessionmaker[Session], clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proxies from the environment still apply (read once, not per request), and
    so does NO_PROXY; a session the application passes in is left alone."""
    with Sess() as s:
        s.add(Article(id="a1", title="t"))
        s.commit()
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.delenv("no_proxy", raising=False)
    with make_engine(engine, server, clock) as sync:
        assert sync.push().failed == 1
    with engine.connect() as conn:
        [op] = pending_ops(conn)
    assert "ProxyError" in (op.last_error or ""), op.last_error
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    clock.advance(3600)
    with make_engine(engine, server, clock) as sync:
        assert sync.push().pushed == 1
    own = requests.Session()
    transport = Transport(server.url, session=own)
    assert own.trust_env is True and transport.verify is True
    own.close()


def test_one_refresh_for_a_burst_of_401s(engine: Engine, server: BackendServer,
                                         Sess: sessionmaker[Session], clock: FakeClock) -> None:
    server.store.set_token("fresh-token")
    token = {"value": "expired-token"}
    refreshes: list[Any] = []

    def refresh(failure: Any) -> None:
        refreshes.append(failure)
        token["value"] = "fresh-token"

    auth = Auth(get_headers=lambda: {"Authorization": f"Bearer {token['value']}"},
                on_auth_error=refresh)
    with Sess() as s:
        s.add_all([Article(id=f"a{i:02}", title=str(i)) for i in range(20)])
        s.commit()
    with make_engine(engine, server, clock, auth=auth,
                     sync=Schedule(push_batch_size=20, push_concurrency=20)) as sync:
        assert sync.push().pushed == 20
    assert len(refreshes) == 1 and refreshes[0].status == 401
    assert len(server_rows(server)) == 20


def test_refused_credentials_pause_push_without_dead_letters(
    engine: Engine, server: BackendServer, Sess: sessionmaker[Session], clock: FakeClock
) -> None:
    server.store.set_token("the-real-one")
    events: list[Any] = []
    auth = Auth(get_headers=lambda: {"Authorization": "Bearer wrong"},
                on_auth_error=lambda failure: None, max_auth_retries=2)
    with Sess() as s:
        s.add_all([Article(id="a1", title="1"), Article(id="a2", title="2")])
        s.commit()
    with make_engine(engine, server, clock, auth=auth) as sync:
        sync.on("auth-required", events.append)
        result = sync.push()
        assert result.auth_required and result.pushed == 0
        assert sync.dead_letters() == [] and sync.queue_depth() == 2
        assert len(events) == 1 and "401" in events[0]
    assert len(api_requests(server)) == 3  # one request, two refreshed retries, then pause
    with engine.connect() as conn:
        assert all(op.attempts == 0 and op.claimed_at is None for op in pending_ops(conn))


def test_the_token_never_leaks(engine: Engine, server: BackendServer, Sess: sessionmaker[Session],
                               clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    canary = "canary-7f3a9c21e5"
    server.store.set_token(canary)
    server.faults.add(method="POST", path="/api/posts", action="status", status=400,
                      body={"error": f"bad request from Bearer {canary}"})
    server.faults.add(method="POST", path="/api/posts", action="drop_before", skip=1)
    seen: list[Any] = []
    receivers = []
    for name in EVENT_NAMES:
        def receiver(sender: Any, _name: str = name, **payload: Any) -> None:
            seen.append((_name, payload))
        receivers.append(receiver)
        signal_for(name).connect(receiver)
    caplog.set_level(logging.DEBUG, logger="sqla_sync")
    auth = Auth(get_headers=lambda: {"Authorization": f"Bearer {canary}"})
    with Sess() as s:
        s.add_all([Article(id="a1", title="1"), Article(id="a2", title="2"),
                   Article(id="a3", title="3")])
        s.commit()
    try:
        with make_engine(engine, server, clock, auth=auth) as sync:
            result = sync.push()
            assert (result.dead_lettered, result.failed, result.pushed) == (1, 1, 1)
            letters = sync.dead_letters()
    finally:
        for name, receiver in zip(EVENT_NAMES, receivers):
            signal_for(name).disconnect(receiver)
    with engine.connect() as conn:
        stored = [str(v) for row in conn.execute(select(outbox)) for v in row]
    everything = " ".join([caplog.text, repr(seen), repr(letters), repr(result), *stored])
    assert canary not in everything
    assert "[REDACTED]" in letters[0].error
    assert server_rows(server)  # the token did work


def test_read_timeouts_are_retried(engine: Engine, server: BackendServer,
                                   Sess: sessionmaker[Session], clock: FakeClock) -> None:
    server.faults.add(method="POST", path="/api/posts", action="delay", ms=600)
    with Sess() as s:
        s.add(Article(id="a1", title="slow"))
        s.commit()
    with make_engine(engine, server, clock, timeout=(2.0, 0.2)) as sync:
        result = sync.push()
        assert result.failed == 1
        with engine.connect() as conn:
            [op] = pending_ops(conn)
        assert "Timeout" in (op.last_error or "")
        clock.advance(120)
        assert sync.push().pushed == 1


def test_garbage_answers_are_retried(engine: Engine, server: BackendServer,
                                     Sess: sessionmaker[Session], clock: FakeClock) -> None:
    server.faults.add(method="POST", path="/api/posts", action="malformed")
    server.faults.add(method="POST", path="/api/posts", action="wrong_type")
    with Sess() as s:
        s.add(Article(id="a1", title="t"))
        s.commit()
    with make_engine(engine, server, clock) as sync:
        assert sync.push().failed == 1
        clock.advance(3600)
        assert sync.push().failed == 1
        clock.advance(3600)
        assert sync.push().pushed == 1
    assert len(server_rows(server)) == 1


# -- route validation ----------------------------------------------------------


def test_routes_for_an_unknown_table_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="'artcles', but no Syncable model"):
        define_routes({"artcles": Routes(push=Push(
            create=Request("POST", "/a"), update=Request("PUT", "/a/{id}"),
            delete=Request("DELETE", "/a/{id}")))})


def test_a_placeholder_that_is_no_field_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"placeholder \{uid\}"):
        define_routes({"articles": Routes(push=Push(
            create=Request("POST", "/a"), update=Request("PUT", "/a/{uid}"),
            delete=Request("DELETE", "/a/{id}")))})


def test_a_push_without_a_delete_route_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no delete request"):
        define_routes({"articles": Routes(push=Push(
            create=Request("POST", "/a"), update=Request("PUT", "/a/{id}")))})


def test_a_bad_method_and_base_url_are_refused(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="method 'FETCH'"):
        Request("FETCH", "/a")
    with pytest.raises(ConfigurationError, match="absolute http"):
        start_sync(engine, SyncConfig(base_url="api.example.com", routes=article_routes()))


def test_two_models_of_one_table_name_must_be_told_apart() -> None:
    class BaseA(DeclarativeBase):
        pass

    class BaseB(DeclarativeBase):
        pass

    class DupA(Syncable, BaseA):
        __tablename__ = "dup_rows"
        id: Mapped[str] = mapped_column(String(10), primary_key=True)

    class DupB(Syncable, BaseB):
        __tablename__ = "dup_rows"
        id: Mapped[str] = mapped_column(String(10), primary_key=True)
        body: Mapped[str] = mapped_column(String(10))

    push = Push(create=Request("POST", "/a"), update=Request("PUT", "/a/{id}"),
                delete=Request("DELETE", "/a/{id}"))
    with pytest.raises(ConfigurationError, match=r"several Syncable models.*Routes\(model="):
        define_routes({"dup_rows": Routes(push=push)})
    chosen = define_routes({"dup_rows": Routes(push=push, model=DupB)})
    assert chosen["dup_rows"].info.mapper.class_ is DupB
