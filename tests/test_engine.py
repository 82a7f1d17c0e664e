"""The engine: lifecycle, triggers, events, metrics, health and leadership, in one process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from examples.server.run import BackendServer
from sqla_sync import (
    Auth,
    Cursor,
    Errors,
    Leader,
    Observability,
    Offset,
    Pull,
    Push,
    Request,
    Routes,
    Schedule,
    SyncConfig,
    SyncEngine,
    SyncError,
    define_routes,
    start_sync,
    track,
    untrack,
)
from sqla_sync.leader import LeaseLost
from sqla_sync.tables import counters, leases, outbox
from tests.conftest import FakeClock
from tests.models import Article

WAIT = 20.0  # generous upper bound for background work; tests wait on events, not sleeps


def routes(**pull_kw: Any) -> Any:
    return define_routes({"articles": Routes(
        fields={"updated_at": "updatedAt"},
        push=Push(create=Request("POST", "/api/posts"), update=Request("PUT", "/api/posts/{id}"),
                  delete=Request("DELETE", "/api/posts/{id}")),
        pull=Pull("GET", "/api/posts", map_response=lambda b: b["data"],
                  cursor=Cursor(field="updatedAt", param="updated_after"), paginate=Offset(),
                  deleted=lambda row: row.get("deleted", False), **pull_kw))})


@pytest.fixture
def server() -> Iterator[BackendServer]:
    with BackendServer() as srv:
        yield srv


@pytest.fixture
def Sess(engine: Engine) -> Iterator[sessionmaker[Session]]:
    maker = track(sessionmaker(engine, expire_on_commit=False))
    yield maker
    untrack(maker)


def make(engine: Engine, server: BackendServer, **kw: Any) -> SyncEngine:
    schedule = kw.pop("sync", Schedule(interval=3600.0, push_concurrency=1))
    return start_sync(engine, SyncConfig(base_url=server.url, routes=kw.pop("routes", routes()),
                                         sync=schedule, **kw))


class Waiter:
    """Collects an event's payloads; ``wait(n)`` blocks until n arrived (or fails)."""

    def __init__(self, sync: SyncEngine, event: str, when: Any = None) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()
        self._when = when
        sync.on(event, self._add)

    def _add(self, *payload: Any) -> None:
        with self._cond:
            item = payload[0] if payload else None
            if self._when is None or self._when(item):
                self.items.append(item)
                self._cond.notify_all()

    def wait(self, count: int = 1) -> list[Any]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= count, timeout=WAIT), \
                f"waited {WAIT} s for {count} event(s), got {len(self.items)}"
            return list(self.items)


def add(Sess: sessionmaker[Session], *ids: str) -> None:
    with Sess() as s:
        s.add_all([Article(id=i, title=i) for i in ids])
        s.commit()


def test_sync_pulls_then_pushes_and_reports(engine: Engine, server: BackendServer,
                                            Sess: sessionmaker[Session]) -> None:
    server.store.seed("posts", [{"id": "remote", "title": "from server"}])
    add(Sess, "local")
    with make(engine, server) as sync:
        started = Waiter(sync, "sync-start")
        completed = Waiter(sync, "sync-complete")
        result = sync.sync()
        assert (result.pulled, result.pushed, result.conflicts, result.failed,
                result.dead_lettered) == (1, 1, 0, 0, 0)
        assert result.duration > 0 and result.leader
        assert started.wait() == [None] and completed.wait() == [result]
        assert [r["method"] for r in server.store.requests()] == ["GET", "POST"]
        status = sync.get_status()
        assert (status.running, status.paused, status.leader, status.queue_depth) == (
            False, False, True, 0)
        assert status.last_sync_at is not None and sync.is_online() and not sync.is_syncing()
        assert sync.sync_table("articles").pushed == 0
        with pytest.raises(SyncError, match="no routes for table 'nope'"):
            sync.sync_table("nope")


def test_a_push_folds_the_queue_depth_counters(engine: Engine, server: BackendServer,
                                              Sess: sessionmaker[Session]) -> None:
    # Three sessions at once (one after the other on SQLite, which has one
    # writer): on PostgreSQL and MariaDB, three counter rows.
    sessions = [Sess() for _ in range(3)]
    for i, s in enumerate(sessions):
        s.add(Article(id=f"a{i}", title="t"))
        s.flush()
        if engine.dialect.name == "sqlite":
            s.commit()
    for s in sessions:
        s.commit()
        s.close()
    with make(engine, server) as sync:
        assert sync.queue_depth() == 3
        assert sync.push().pushed == 3
        assert sync.queue_depth() == 0
    with engine.connect() as conn:
        rows = conn.execute(select(counters.c.slot, counters.c.pending)).all()
    # Folded into one row; SQLite counts the outbox and keeps no counters.
    assert rows == ([] if engine.dialect.name == "sqlite" else [(0, 0)])


def test_a_second_sync_joins_the_running_one(engine: Engine, server: BackendServer) -> None:
    server.store.seed("posts", [{"id": "a", "title": "t"}])
    inside, release = threading.Event(), threading.Event()

    def hold(body: Any, ctx: Any) -> None:
        inside.set()
        assert release.wait(WAIT)

    with make(engine, server, routes=routes(on_complete=hold)) as sync:
        results: list[Any] = []
        first = threading.Thread(target=lambda: results.append(sync.sync()))
        first.start()
        assert inside.wait(WAIT)
        second = threading.Thread(target=lambda: results.append(sync.sync()))
        second.start()
        while sync._current is None or not second.is_alive():  # the second is waiting
            time.sleep(0.001)
        release.set()
        first.join(WAIT)
        second.join(WAIT)
    assert len(results) == 2 and results[0] is results[1]
    assert len(server.store.requests("GET")) == 1


def test_a_commit_triggers_a_push(engine: Engine, server: BackendServer,
                                  Sess: sessionmaker[Session]) -> None:
    with make(engine, server) as sync:
        pushes = Waiter(sync, "push-complete", when=lambda r: r.pushed > 0)
        first = Waiter(sync, "sync-complete")
        sync.start()
        first.wait()  # the sync at start
        add(Sess, "a1")
        [result] = pushes.wait()
        assert result.pushed == 1
        assert sync.get_status().running
    assert [r["id"] for r in server.store.rows("posts")] == ["a1"]


def test_the_interval_syncs_again(engine: Engine, server: BackendServer) -> None:
    with make(engine, server, sync=Schedule(interval=0.05)) as sync:
        done = Waiter(sync, "sync-complete")
        sync.start()
        done.wait(3)
        server.store.seed("posts", [{"id": "late", "title": "arrives by itself"}])
        arrived = Waiter(sync, "sync-complete", when=lambda r: r.pulled == 1)
        arrived.wait()
    with engine.connect() as conn:
        assert conn.execute(select(Article.id)).scalars().all() == ["late"]


def test_the_next_retry_wakes_the_engine(engine: Engine, server: BackendServer,
                                         Sess: sessionmaker[Session]) -> None:
    server.faults.add(method="POST", path="/api/posts", action="status", status=503,
                      headers={"Retry-After": "1"})
    with make(engine, server, errors=Errors(retry_delay=lambda a: 0.1)) as sync:
        failed = Waiter(sync, "push-complete", when=lambda r: r.failed == 1)
        pushed = Waiter(sync, "push-complete", when=lambda r: r.pushed == 1)
        add(Sess, "a1")
        sync.start()
        failed.wait()
        pushed.wait()  # no new write: the retry time woke it
    assert len(server.store.requests("POST")) == 2


def test_offline_then_online(engine: Engine, Sess: sessionmaker[Session]) -> None:
    server = BackendServer()
    port = server.port
    add(Sess, "a1")
    with make(engine, server) as sync:
        offline = Waiter(sync, "offline")
        online = Waiter(sync, "online")
        synced = Waiter(sync, "sync-complete", when=lambda r: r.pushed == 1)
        server.stop()
        sync.start()
        offline.wait()
        assert not sync.is_online()
        assert sync.health_check().status == "degraded"
        assert any("offline" in r for r in sync.health_check().reasons)
        server = BackendServer(port=port)  # the server comes back on the same address
        online.wait()
        synced.wait()
        assert sync.is_online()
    assert [r["id"] for r in server.store.rows("posts")] == ["a1"]
    server.stop()


def test_pause_resume_and_stop_are_prompt(engine: Engine, server: BackendServer,
                                          Sess: sessionmaker[Session]) -> None:
    sync = make(engine, server)
    done = Waiter(sync, "sync-complete")
    sync.start()
    done.wait()
    sync.pause()
    assert sync.get_status().paused
    sync.resume()
    assert not sync.get_status().paused
    server.store.delay_ms = 500  # a request is in flight when stop() comes
    add(Sess, *[f"a{i}" for i in range(5)])
    began = time.monotonic()
    sync.stop()
    assert time.monotonic() - began < 10.0
    assert not sync.get_status().running
    with engine.connect() as conn:  # the lease is released for the next process
        assert conn.execute(select(leases.c.expires_at)).scalar_one() == 0.0


def test_every_event_is_emitted(engine: Engine, server: BackendServer,
                                Sess: sessionmaker[Session]) -> None:
    server.faults.add(method="POST", path="/api/posts", action="status", status=400)
    metrics_seen: list[Any] = []
    with make(engine, server, observability=Observability(
            metrics_interval=0.05, on_metrics=metrics_seen.append)) as sync:
        waiters = {name: Waiter(sync, name) for name in (
            "sync-start", "sync-complete", "push-start", "push-complete", "pull-start",
            "pull-complete", "dead-letter", "metrics", "conflict", "pull-error", "push-error",
            "sync-error", "auth-required")}
        add(Sess, "poison")
        sync.sync()
        sync.push()
        sync.pull()
        waiters["dead-letter"].wait()
        sync.start()
        [snapshot] = waiters["metrics"].wait()[:1]
        assert snapshot.dead_letters == 1 and metrics_seen
        # conflict: a local edit meets a server edit
        server.store.seed("posts", [{"id": "c", "title": "base"}])
        sync.pull()
        with Sess() as s:
            s.get(Article, "c").title = "mine"  # type: ignore[union-attr]
            s.commit()
        server.store.admin_patch("posts", "c", {"title": "theirs"})
        sync.sync()
        assert waiters["conflict"].wait()[0].resolution == "remote"
        # errors
        server.faults.add(method="GET", path="/api/posts", action="status", status=500,
                          times=-1)
        with pytest.raises(SyncError):
            sync.pull()
        with pytest.raises(SyncError):
            sync.sync()
        assert waiters["pull-error"].wait() and waiters["sync-error"].wait()
        for name in ("sync-start", "sync-complete", "push-start", "push-complete",
                     "pull-start", "pull-complete"):
            assert waiters[name].items, name


def test_auth_required_event_and_unhealthy(engine: Engine, server: BackendServer,
                                           Sess: sessionmaker[Session]) -> None:
    server.store.set_token("right")
    add(Sess, "a1")
    with make(engine, server, auth=Auth(get_headers=lambda: {"Authorization": "Bearer wrong"},
                                        on_auth_error=lambda f: None,
                                        max_auth_retries=1)) as sync:
        seen = Waiter(sync, "auth-required")
        assert sync.push().auth_required
        assert seen.wait()
        health = sync.health_check()
        assert health.status == "unhealthy"
        assert any("credentials" in r for r in health.reasons)
        assert sync.get_status().auth_required
        sync.resume()
        assert not sync.get_status().auth_required


def test_metrics_snapshot(engine: Engine, server: BackendServer,
                          Sess: sessionmaker[Session]) -> None:
    clock = FakeClock(time.time())
    server.faults.add(method="POST", path="/api/posts", action="status", status=503)
    add(Sess, "a1", "a2")
    with make(engine, server, clock=clock) as sync:
        sync.sync()
        clock.advance(3600)
        sync.sync()
        m = sync.metrics()
    assert (m.pushed, m.retries, m.dead_letters, m.queue_depth) == (2, 1, 0, 0)
    assert m.requests == {"2xx": 4, "5xx": 1}
    assert m.latency_p50 is not None and m.latency_p95 is not None
    assert m.latency_p50 <= m.latency_p95
    assert set(m.last_success) == {"articles"}
    text = m.to_prometheus()
    assert "sqla_sync_pushed_total 2" in text and 'sqla_sync_requests_total{status="5xx"} 1' in text


def test_health_reports_dead_letters_and_old_changes(engine: Engine, server: BackendServer,
                                                     Sess: sessionmaker[Session]) -> None:
    clock = FakeClock(time.time())
    with make(engine, server, clock=clock) as sync:
        sync.sync()
        assert sync.health_check().status == "healthy"
        server.faults.add(method="POST", path="/api/posts", action="status", status=422)
        add(Sess, "bad")
        sync.push()
        health = sync.health_check()
        assert health.status == "degraded" and health.details["dead_letters"] == 1
        [letter] = sync.dead_letters()
        sync.retry_dead_letter(letter.id)
        with engine.begin() as conn:  # a change captured long ago, never pushed
            conn.execute(outbox.update().values(created_at=clock.now - 86400))
        health = sync.health_check()
        assert any("oldest pending change" in r for r in health.reasons)


def test_a_follower_does_not_push_and_takes_over(engine: Engine, server: BackendServer,
                                                 Sess: sessionmaker[Session]) -> None:
    clock = FakeClock(time.time())
    leader = make(engine, server, clock=clock, leader=Leader(ttl=15.0))
    follower = make(engine, server, clock=clock, leader=Leader(ttl=15.0))
    add(Sess, "a1")
    assert leader.sync().leader
    add(Sess, "a2")
    result = follower.sync()
    assert not result.leader and result.pushed == 0 and not follower.is_leader()
    assert [r["id"] for r in server.store.rows("posts")] == ["a1"]
    health = follower.health_check()
    assert health.details["leader"] == leader.lease.owner  # type: ignore[union-attr]
    leader.stop()  # releases the lease: the follower takes over at once
    assert follower.sync().pushed == 1
    follower.stop()


def test_a_stale_leader_is_fenced_off(engine: Engine, server: BackendServer,
                                      Sess: sessionmaker[Session]) -> None:
    clock = FakeClock(time.time())
    old = make(engine, server, clock=clock, leader=Leader(ttl=15.0))
    assert old.sync().leader
    old_token = old.lease.token  # type: ignore[union-attr]
    clock.advance(16)  # the old leader was paused past its TTL
    new = make(engine, server, clock=clock, leader=Leader(ttl=15.0))
    assert new.sync().leader
    assert new.lease.token == old_token + 1  # type: ignore[operator,union-attr]
    add(Sess, "a1")
    # The old leader resumes in the middle of its work, still believing it leads
    # (it does not ask for the lease again); every write of sync state checks
    # the fencing token first, so it sends nothing.
    old.lease.expires_at = clock.now + 100  # type: ignore[union-attr]
    with pytest.raises(LeaseLost):
        old._pusher.push()
    assert server.store.requests("POST") == []
    assert new.push().pushed == 1
    old.stop()
    new.stop()


def test_renewal_extends_only_the_lease_we_hold(engine: Engine, server: BackendServer) -> None:
    """CRASH-5: a sync renews its lease while it runs (Heartbeat -> Lease.renew);
    renewal extends our own lease and never takes one over."""
    clock = FakeClock(time.time())
    first = make(engine, server, clock=clock, leader=Leader(ttl=15.0))
    assert first.sync().leader
    lease = first.lease
    assert lease is not None
    clock.advance(10)
    assert lease.renew() and lease.expires_at == clock.now + 15
    with engine.connect() as conn:
        assert conn.execute(select(leases.c.expires_at)).scalar_one() == clock.now + 15
    clock.advance(16)  # paused past the TTL: another engine takes over
    second = make(engine, server, clock=clock, leader=Leader(ttl=15.0))
    assert second.sync().leader
    assert not lease.renew() and lease.token is None and not first.is_leader()
    assert second.lease is not None and second.lease.renew()
    first.stop()
    second.stop()


def test_a_push_stops_once_its_lease_is_lost(engine: Engine, server: BackendServer,
                                             Sess: sessionmaker[Session]) -> None:
    """CRASH-5: when the heartbeat finds the lease taken over in the middle of a push,
    nothing more is sent or written: the push ends as a follower's."""
    clock = FakeClock(time.time())
    stolen: list[int] = []
    sync: SyncEngine | None = None

    def headers(item: Any) -> dict[str, str]:
        if not stolen:  # while the first wave is sent, another process takes over ...
            stolen.append(1)
            with engine.begin() as conn:
                conn.execute(leases.update().values(owner="another process",
                                                    token=leases.c.token + 1))
            assert sync is not None and sync.lease is not None
            assert not sync.lease.renew()  # ... and the next beat finds it gone
        return {}

    push = Push(create=Request("POST", "/api/posts", headers=headers),
                update=Request("PUT", "/api/posts/{id}"),
                delete=Request("DELETE", "/api/posts/{id}"))
    sync = make(engine, server, clock=clock, leader=Leader(ttl=15.0),
                routes=define_routes({"articles": Routes(fields={"updated_at": "updatedAt"},
                                                         push=push)}),
                sync=Schedule(interval=3600.0, push_concurrency=1, push_batch_size=1))
    add(Sess, "a1", "a2", "a3")
    result = sync.push()
    assert (result.pushed, sync.is_leader()) == (0, False)
    assert len(server.store.requests("POST")) == 1  # the first wave only
    assert sync.queue_depth() == 3  # its answer is not recorded: the new leader resends it
    sync.stop()
