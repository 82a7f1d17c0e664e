"""The sync engine: what :func:`start_sync` returns.

It ties capture, push and pull together and, once :meth:`SyncEngine.start`
ran, syncs on its own in a background thread:

* every ``Schedule.interval`` seconds, a sync (pull, then push);
* shortly after a committed local change (``on_commit``), a push;
* when the next retry of a failed op falls due, a push;
* while the server does not answer, probes with backoff; when it answers
  again, ``online`` is emitted and a sync runs (``on_online``).

Only the leader syncs: a lease in the database with a TTL, renewed every
TTL/3 (during a sync too, by a heartbeat), and a fencing token checked on
every write of sync state; on SQLite each of those writes is one
``BEGIN IMMEDIATE`` transaction (see :mod:`sqla_sync.transactions`).  Followers
keep capturing; their ops are pushed by the leader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, Literal

from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from . import outbox as ob
from .checkpoints import get_checkpoint, set_checkpoint
from .config import SyncConfig
from .errors import ConfigurationError, SyncError
from .leader import Heartbeat, Lease, LeaseLost
from .metrics import Metrics, MetricsRecorder
from .mixin import synced_models
from .outbox import DeadLetter
from .pull import Puller, PullResult
from .push import Pusher, PushResult
from .signals import outbox_committed, signal_for
from .tables import STATUS_PENDING, metadata, outbox
from .transactions import begin_write
from .transport import Transport

__all__ = ["LAST_SYNC_CHECKPOINT", "Health", "Status", "SyncEngine", "SyncResult", "start_sync"]

log = logging.getLogger(__name__)

#: Seconds a commit trigger waits for more commits before it pushes.
COMMIT_DEBOUNCE = 0.25

#: The checkpoint that records when the last sync of this database succeeded.
LAST_SYNC_CHECKPOINT = "sqla_sync:last_sync"


@dataclasses.dataclass(frozen=True)
class SyncResult:
    """The outcome of :meth:`SyncEngine.sync`: the pull's and the push's, with totals.

    :ivar leader: False when this engine is a follower and did not sync.
    """

    pull: PullResult
    push: PushResult
    leader: bool = True

    @property
    def pushed(self) -> int:
        """Ops the server applied."""
        return self.push.pushed

    @property
    def pulled(self) -> int:
        """Rows written locally from the server."""
        return self.pull.pulled

    @property
    def conflicts(self) -> int:
        """Conflicts met in the pull and in the push."""
        return self.pull.conflicts + self.push.conflicts

    @property
    def failed(self) -> int:
        """Ops rescheduled for a retry."""
        return self.push.failed

    @property
    def dead_lettered(self) -> int:
        """Ops given up on in this sync."""
        return self.push.dead_lettered

    @property
    def duration(self) -> float:
        """Seconds the pull and the push took."""
        return self.pull.duration + self.push.duration


@dataclasses.dataclass(frozen=True)
class Status:
    """What :meth:`SyncEngine.get_status` reports."""

    running: bool
    paused: bool
    online: bool | None
    syncing: bool
    leader: bool
    auth_required: bool
    queue_depth: int
    last_sync_at: float | None
    last_error: str | None


@dataclasses.dataclass(frozen=True)
class Health:
    """``status`` is "healthy", "degraded" or "unhealthy"; ``reasons`` say why."""

    status: Literal["healthy", "degraded", "unhealthy"]
    reasons: tuple[str, ...]
    details: dict[str, Any]


def _merge_pull(a: PullResult, b: PullResult) -> PullResult:
    tables = dict(a.tables)
    tables.update(b.tables)
    return PullResult(pulled=a.pulled + b.pulled, deleted=a.deleted + b.deleted,
                      conflicts=a.conflicts + b.conflicts, pages=a.pages + b.pages,
                      duration=a.duration + b.duration, tables=tables)


class SyncEngine:
    """Syncs one database with one server (see :func:`start_sync`)."""

    def __init__(self, db: Engine, config: SyncConfig) -> None:
        self.db = db
        self.config = config
        self.routes = config.route_table()
        self.clock = config.clock
        self.rng = random.Random(config.seed)  # jitter only; seeded for reproducible runs
        schedule = config.sync
        self._metrics = MetricsRecorder()
        self.transport = Transport(
            config.base_url,
            auth=config.auth,
            timeout=config.timeout,
            deadline=config.deadline,
            max_response_bytes=config.max_response_bytes,
            pool_size=schedule.push_concurrency,
            session=config.http,
            on_answer=self._metrics.request,
        )
        self.lease: Lease | None = (
            Lease(db, name=config.leader.name, ttl=config.leader.ttl, clock=self.clock)
            if config.leader.enabled else None
        )
        # Every transaction that writes sync state starts with _begin_write: a real
        # write transaction on SQLite (BEGIN IMMEDIATE), then the lease fence.
        sqlite = db.dialect.name == "sqlite"
        fence = self._begin_write if (self.lease is not None or sqlite) else None
        self._pusher = Pusher(
            db, self.routes, self.transport, errors=config.errors,
            batch_size=schedule.push_batch_size, concurrency=schedule.push_concurrency,
            clock=self.clock, rng=self.rng, emit=self._emit, fence=fence,
            conflicts=config.conflicts,
        )
        self._puller = Puller(
            db, self.routes, self.transport, conflicts=config.conflicts,
            page_size=schedule.pull_page_size, max_pages=schedule.pull_max_pages,
            clock=self.clock, emit=self._emit, fence=fence,
        )
        for table in self.routes.values():
            table.info.read_only = table.read_only
        self._work = threading.RLock()
        self._beat: Heartbeat | None = None
        self._cond = threading.Condition()
        self._current: Future[SyncResult] | None = None
        self._receivers: list[tuple[str, Callable[..., Any]]] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._paused = False
        self._syncing = False
        self._online: bool | None = None
        self._auth_required = False
        self._last_sync_at: float | None = None
        self._last_error: str | None = None
        self._commit_at: float | None = None
        self._retry_at: float | None = None
        self._started_at: float | None = None
        with db.connect() as conn:
            last = get_checkpoint(conn, LAST_SYNC_CHECKPOINT)
        self._last_sync_at = float(last) if isinstance(last, (int, float)) else None
        unrouted = sorted(i.table_name for i in synced_models() if i.table_name not in self.routes)
        if unrouted:
            log.warning("Syncable tables without routes keep their ops pending: %s",
                        ", ".join(unrouted))

    # -- events ---------------------------------------------------------------------

    def _emit(self, name: str, **payload: Any) -> None:
        if name == "conflict":
            self._metrics.conflict(payload["conflict"].resolution)
        signal_for(name).send(self, **payload)

    def on(self, event: str, fn: Callable[..., Any]) -> Callable[[], None]:
        """Call ``fn(payload)`` on ``event`` (``"sync-complete"``, ``"conflict"``, ...).

        ``fn`` gets the event's payload (a result, error, conflict, metrics
        snapshot, dead letter) or no argument for events without one.  Returns
        a function that unsubscribes.
        """
        signal = signal_for(event)

        def receiver(sender: Any, **payload: Any) -> None:
            fn(*payload.values())

        signal.connect(receiver, sender=self, weak=False)
        self._receivers.append((event, receiver))

        def off() -> None:
            signal.disconnect(receiver, sender=self)

        return off

    # -- leadership -------------------------------------------------------------------

    def is_leader(self) -> bool:
        """Whether this engine holds the leader lease (always True without one)."""
        return self.lease is None or self.lease.held

    def _begin_write(self, conn: Connection) -> None:
        """First statement of each transaction that writes sync state: see
        :mod:`sqla_sync.transactions`; then the fencing token is checked."""
        begin_write(conn)
        if self.lease is not None:
            self.lease.fence(conn)

    @contextlib.contextmanager
    def _leading(self) -> Iterator[bool]:
        """One unit of work: the work lock, and the lease taken or renewed; yields
        whether this engine leads.  While the work runs, a :class:`Heartbeat`
        renews the lease every TTL/3 -- a sync may outlast the TTL."""
        with self._work:
            if not self._lead():
                yield False
                return
            if self.lease is None:
                yield True
                return
            with Heartbeat(self.lease) as beat:
                outer, self._beat = self._beat, beat
                try:
                    yield True
                finally:
                    self._beat = outer

    def _still_leading(self) -> bool:
        """Between steps of a sync: whether the lease is still ours (renewing it
        here when the pool allows no heartbeat thread)."""
        if self.lease is None:
            return True
        if self._beat is not None:
            return self._beat.beat()
        return self.lease.token is not None

    def _halted(self) -> bool:
        """For the sending threads, before each request (no I/O): whether the
        engine stops or the lease is known to be lost."""
        return self._stopping or (self.lease is not None and self.lease.token is None)

    def _lead(self) -> bool:
        if self.lease is None:
            return True
        try:
            return self.lease.acquire()
        except Exception as exc:  # the database is unreachable: not leader for now
            log.warning("leader lease could not be renewed: %s", exc)
            return False

    # -- the work ---------------------------------------------------------------------

    def _track_online(self) -> None:
        reachable = self.transport.reachable
        if reachable is None or reachable == self._online:
            return
        previous, self._online = self._online, reachable
        if reachable and previous is False:
            self._emit("online")
        elif not reachable:
            self._emit("offline", error=self._last_error)

    def _do_push(self) -> PushResult:
        result = self._pusher.push(
            should_stop=lambda: self._stopping or not self._still_leading(),
            halted=self._halted)
        if not self._still_leading():  # lost mid-push: its waves stopped; so does the sync
            raise LeaseLost(f"the leader lease {self.config.leader.name!r} was lost during "
                            "a push; this engine stops syncing until it leads again")
        self._auth_required = result.auth_required
        self._retry_at = self._pusher.retry_at
        if result.pushed and self.db.dialect.name != "sqlite":
            self._fold_counters()
        self._metrics.add(pushed=result.pushed, retries=result.failed,
                          dead_letters=result.dead_lettered)
        ok = [t for t, c in result.tables.items() if not (c.failed or c.dead_lettered)]
        self._metrics.success(ok, self.clock())
        return result

    def _fold_counters(self) -> None:
        # The queue depth sums one counter row per database session that wrote
        # the outbox; fold past sessions' rows so the sum stays a handful.
        try:
            with self.db.connect() as conn:
                # READ COMMITTED: on MySQL/MariaDB no gap lock that would make a
                # new connection's first counter row wait for the fold.
                conn.execution_options(isolation_level="READ COMMITTED")
                with conn.begin():
                    ob.fold_counters(conn)
        except Exception as exc:  # only a cost, never a loss: try again next push
            log.warning("queue-depth counters could not be folded: %s", exc)

    def _do_pull(self, names: Iterable[str] | None = None) -> PullResult:
        result = self._puller.pull(names)
        self._metrics.add(pulled=result.pulled)
        self._metrics.success(result.tables, self.clock())
        return result

    def push(self) -> PushResult:
        """Send every pending op that is due; one pass, then return the counts.

        Failed ops are rescheduled (see :class:`~sqla_sync.Errors`); a 401 that
        refreshing does not cure stops the pass with ``auth_required`` set.  A
        follower pushes nothing.
        """
        with self._leading() as leading:
            if not leading:
                return PushResult()
            self._emit("push-start")
            try:
                result = self._do_push()
            except LeaseLost:
                return PushResult()
            except Exception as exc:
                self._last_error = str(exc)
                self._emit("push-error", error=exc)
                raise
            finally:
                self._track_online()
            self._emit("push-complete", result=result)
            return result

    def pull(self) -> PullResult:
        """Fetch the server's changes of every table with a pull route, page by page.

        Each page is applied with its checkpoint in one transaction; a table
        that fails raises :class:`~sqla_sync.SyncError` after the others ran.
        """
        with self._leading() as leading:
            if not leading:
                return PullResult()
            self._emit("pull-start")
            try:
                result = self._do_pull()
            except LeaseLost:
                return PullResult()
            except Exception as exc:
                self._last_error = str(exc)
                self._emit("pull-error", error=exc)
                raise
            finally:
                self._track_online()
            self._emit("pull-complete", result=result)
            return result

    def sync(self) -> SyncResult:
        """Pull, then push: a server change made since the last pull meets a
        pending local op as a conflict before the op can overwrite it.

        A call while another sync runs waits for that one and returns its result.
        """
        with self._cond:
            running = self._current
            if running is None:
                mine: Future[SyncResult] = Future()
                self._current = mine
        if running is not None:
            return running.result()
        try:
            result = self._sync_once()
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        else:
            mine.set_result(result)
            return result
        finally:
            with self._cond:
                self._current = None

    def _sync_once(self) -> SyncResult:
        with self._leading() as leading:
            if not leading:
                return SyncResult(PullResult(), PushResult(), leader=False)
            self._syncing = True
            self._emit("sync-start")
            try:
                pulled = self._do_pull()
                self._emit("pull-complete", result=pulled)
                pushed = self._do_push()
                self._emit("push-complete", result=pushed)
                if self._pusher.needs_pull:
                    names, self._pusher.needs_pull = set(self._pusher.needs_pull), set()
                    pulled = _merge_pull(pulled, self._do_pull(names))
            except LeaseLost:
                return SyncResult(PullResult(), PushResult(), leader=False)
            except Exception as exc:
                self._last_error = str(exc)
                self._emit("sync-error", error=exc)
                raise
            finally:
                self._syncing = False
                self._track_online()
            self._last_sync_at = self.clock()
            self._last_error = None
            with self.db.begin() as conn:
                begin_write(conn)
                set_checkpoint(conn, LAST_SYNC_CHECKPOINT, self._last_sync_at,
                               self._last_sync_at)
            result = SyncResult(pull=pulled, push=pushed)
            self._emit("sync-complete", result=result)
            return result

    def sync_table(self, name: str) -> SyncResult:
        """Pull one table, then push every due op (ops are ordered across tables)."""
        if name not in self.routes:
            raise ConfigurationError(f"no routes for table {name!r}; tables: {sorted(self.routes)}")
        with self._leading() as leading:
            if not leading:
                return SyncResult(PullResult(), PushResult(), leader=False)
            try:
                pulled = self._do_pull([name])
                pushed = self._do_push()
            except LeaseLost:
                return SyncResult(PullResult(), PushResult(), leader=False)
            finally:
                self._track_online()
            return SyncResult(pull=pulled, push=pushed)

    # -- the background thread --------------------------------------------------------

    def start(self) -> SyncEngine:
        """Start syncing in a background thread (a sync runs at once)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stopping = False
        self._started_at = time.monotonic()
        outbox_committed.connect(self._on_commit, weak=False)
        with self.db.connect() as conn:
            self._retry_at = conn.execute(
                select(func.min(outbox.c.next_attempt_at)).where(
                    outbox.c.status == STATUS_PENDING, outbox.c.attempts > 0)
            ).scalar()
        self._thread = threading.Thread(target=self._run, name="sqla-sync", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background thread, release the lease and close connections.

        A push in progress stops after its current wave; an op whose answer was
        not recorded stays claimed and is sent again, with the same
        Idempotency-Key, by the next leader.  Pending ops stay in the outbox.
        """
        self._stopping = True
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        outbox_committed.disconnect(self._on_commit)
        for event, receiver in self._receivers:
            signal_for(event).disconnect(receiver, sender=self)
        self._receivers.clear()
        if self.lease is not None:
            try:
                with self._work:
                    self.lease.release()
            except Exception as exc:
                log.warning("leader lease not released: %s", exc)
        self._pusher.close()
        self.transport.close()

    def pause(self) -> None:
        """Stop syncing on the schedule until :meth:`resume` (manual calls still work)."""
        self._paused = True

    def resume(self) -> None:
        """Sync on the schedule again; clears a paused auth-required state."""
        self._paused = False
        self._auth_required = False
        with self._cond:
            self._cond.notify_all()

    def _on_commit(self, session: Any, **payload: Any) -> None:
        if not self.config.sync.on_commit or not isinstance(session, Session):
            return
        try:
            bind = session.get_bind()
        except Exception:
            return
        if getattr(bind, "engine", bind) is not self.db and \
                str(getattr(bind, "url", "")) != str(self.db.url):
            return
        with self._cond:
            if self._commit_at is None:
                self._commit_at = time.monotonic() + COMMIT_DEBOUNCE
            self._cond.notify_all()

    def _run(self) -> None:
        schedule = self.config.sync
        obs = self.config.observability
        now = time.monotonic()
        next_sync = now
        next_metrics = now + obs.metrics_interval
        probe = 1.0
        renew_every = self.lease.ttl / 3 if self.lease is not None else None
        next_renew = now
        while not self._stopping:
            now = time.monotonic()
            if renew_every is not None and now >= next_renew:
                with self._work:
                    self._lead()
                next_renew = now + renew_every
            if obs.enabled and obs.metrics_interval > 0 and now >= next_metrics:
                next_metrics = now + obs.metrics_interval
                self._report_metrics()
            wall = self.clock()
            retry_due = self._retry_at is not None and wall >= self._retry_at
            commit_due = self._commit_at is not None and now >= self._commit_at
            active = not self._paused and not self._auth_required and self.is_leader_or_free()
            if active and (now >= next_sync or commit_due or retry_due):
                full = now >= next_sync
                if commit_due:
                    with self._cond:
                        self._commit_at = None
                if retry_due:
                    self._retry_at = None
                was_online = self._online
                try:
                    if full:
                        self.sync()
                    else:
                        self.push()
                except Exception as exc:
                    log.info("background sync failed: %s", exc)
                if self._online is False:
                    next_sync = time.monotonic() + probe  # probe with backoff while offline
                    probe = min(probe * 2, max(schedule.interval, 1.0), 60.0)
                else:
                    probe = 1.0
                    if was_online is False and schedule.on_online and not full:
                        next_sync = time.monotonic()
                    elif full:
                        next_sync = (time.monotonic() + schedule.interval
                                     if schedule.interval > 0 else float("inf"))
                    if was_online is False and schedule.on_online and full:
                        next_sync = time.monotonic()  # back online: sync again at once
                        was_online = True
                continue
            deadlines = [next_sync, next_metrics if obs.enabled else float("inf")]
            if renew_every is not None:
                deadlines.append(next_renew)
            if self._commit_at is not None:
                deadlines.append(self._commit_at)
            if self._retry_at is not None:
                deadlines.append(now + max(0.0, self._retry_at - wall))
            with self._cond:
                if self._stopping:
                    break
                self._cond.wait(timeout=max(0.01, min(min(deadlines) - now, 5.0)))

    def is_leader_or_free(self) -> bool:
        """Whether this engine may sync now (it leads, or there is no lease)."""
        return self.lease is None or self.lease.token is not None

    def _report_metrics(self) -> None:
        try:
            snapshot = self.metrics()
        except Exception as exc:
            log.warning("metrics not reported: %s", exc)
            return
        callback = self.config.observability.on_metrics
        if callback is not None:
            callback(snapshot)
        self._emit("metrics", metrics=snapshot)

    # -- status ------------------------------------------------------------------------

    def is_online(self) -> bool:
        """Whether the server answered the last request (True before any request)."""
        return self._online is not False

    def is_syncing(self) -> bool:
        """Whether a sync runs right now."""
        return self._syncing

    def get_status(self) -> Status:
        """Running, paused, online, syncing, leader, queue depth, last sync and error."""
        return Status(
            running=self._thread is not None and self._thread.is_alive(),
            paused=self._paused, online=self._online, syncing=self._syncing,
            leader=self.is_leader(), auth_required=self._auth_required,
            queue_depth=self.queue_depth(), last_sync_at=self._last_sync_at,
            last_error=self._last_error,
        )

    def metrics(self) -> Metrics:
        """A snapshot of the counters, with the queue depth and oldest pending age."""
        with self.db.connect() as conn:
            depth = ob.queue_depth(conn)
            age = ob.oldest_pending_age(conn, self.clock())
        return self._metrics.snapshot(queue_depth=depth, oldest_pending_age=age,
                                      auth_refreshes=self.transport.auth_refreshes)

    def health_check(self, *, max_pending_age: float | None = None,
                     max_since_success: float | None = None) -> Health:
        """"healthy", "degraded" or "unhealthy", with the reasons.

        :param max_pending_age: older pending changes degrade health
            (default: 10 sync intervals, at least 5 minutes).
        :param max_since_success: a running engine whose last sync is older
            degrades health (default: 3 sync intervals, at least a minute).
        """
        interval = self.config.sync.interval or 60.0
        max_pending_age = max_pending_age or max(10 * interval, 300.0)
        max_since_success = max_since_success or max(3 * interval, 60.0)
        now = self.clock()
        reasons: list[str] = []
        worst = 0
        details: dict[str, Any] = {}

        def flag(level: int, reason: str) -> None:
            nonlocal worst
            worst = max(worst, level)
            reasons.append(reason)

        with self.db.connect() as conn:
            depth = ob.queue_depth(conn)
            dead = ob.dead_letter_count(conn)
            age = ob.oldest_pending_age(conn, now)
        details.update(queue_depth=depth, dead_letters=dead, oldest_pending_age=age,
                       online=self._online, last_sync_at=self._last_sync_at)
        if self._auth_required:
            flag(2, "the server refuses the credentials (auth-required); push is paused")
        if self._online is False:
            flag(1, "offline: the server does not answer")
        if dead:
            flag(1, f"{dead} dead letter(s) wait for retry_dead_letter()")
        if age is not None and age > max_pending_age:
            flag(1, f"the oldest pending change is {age:.0f} s old")
        if self.lease is not None:
            owner, token, expires = self.lease.current()
            details.update(leader=owner, token=token)
            if owner is None or expires is None or expires < now:
                flag(2, "no leader holds the lease: nobody syncs")
        running = self._thread is not None and self._thread.is_alive()
        if running and self.is_leader():
            last = self._last_sync_at
            started = self._started_at
            if last is None and started is not None \
                    and time.monotonic() - started > max_since_success:
                flag(1, "no successful sync since the engine started")
            elif last is not None and now - last > max_since_success:
                flag(1, f"the last successful sync was {now - last:.0f} s ago")
        status: Literal["healthy", "degraded", "unhealthy"] = (
            "healthy", "degraded", "unhealthy")[worst]
        return Health(status=status, reasons=tuple(reasons), details=details)

    # -- queue ---------------------------------------------------------------------------

    def queue_depth(self) -> int:
        """Pending ops (dead letters not counted)."""
        with self.db.connect() as conn:
            return ob.queue_depth(conn)

    def dead_letters(self) -> list[DeadLetter]:
        """Ops given up on, oldest first; each has an ``id`` for :meth:`retry_dead_letter`."""
        with self.db.connect() as conn:
            return ob.dead_letters(conn)

    def retry_dead_letter(self, id: int) -> None:
        """Put a dead letter back in the queue with fresh retries.

        Raises :class:`~sqla_sync.SyncError` when there is no dead letter ``id``.
        """
        with self.db.begin() as conn:
            begin_write(conn)
            if not ob.revive(conn, id):
                raise SyncError(f"no dead letter with id {id}; see dead_letters()")
        self._retry_at = self.clock()
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> SyncEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sync(db: Engine | sessionmaker[Any], config: SyncConfig) -> SyncEngine:
    """Check ``config`` and return the :class:`SyncEngine` of database ``db``.

    ``db`` is the application's engine, or a sessionmaker bound to one.
    Configuration mistakes (routes naming unknown tables, a bad base_url,
    missing sync tables) raise :class:`~sqla_sync.ConfigurationError` here.
    Call :meth:`SyncEngine.start` to sync in the background, or drive it
    with :meth:`~SyncEngine.sync`.
    """
    if isinstance(db, sessionmaker):
        bind = db.kw.get("bind")
        if not isinstance(bind, Engine):
            raise ConfigurationError(
                "start_sync(sessionmaker) needs a sessionmaker bound to an Engine"
            )
        db = bind
    if not isinstance(db, Engine):
        raise ConfigurationError(
            f"start_sync() takes an Engine or sessionmaker, not {type(db).__name__}"
        )
    missing = [t.name for t in metadata.sorted_tables if not inspect(db).has_table(t.name)]
    if missing:
        raise ConfigurationError(
            f"the sync tables {', '.join(missing)} do not exist; run the alembic branch "
            "sqla_sync (alembic upgrade sqla_sync@head) or sqla_sync.create_tables(engine)"
        )
    return SyncEngine(db, config)
