"""The sync engine: what :func:`start_sync` returns.

It ties the outbox, the routes and the transport together: :meth:`SyncEngine.push`
sends pending ops, :meth:`SyncEngine.dead_letters` and
:meth:`SyncEngine.retry_dead_letter` manage the ops given up on, and
:meth:`SyncEngine.on` subscribes to its events under the original names.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, inspect
from sqlalchemy.orm import sessionmaker

from . import outbox as ob
from .config import SyncConfig
from .errors import ConfigurationError, SyncError
from .mixin import synced_models
from .outbox import DeadLetter
from .pull import Puller, PullResult
from .push import Pusher, PushResult
from .signals import signal_for
from .tables import metadata
from .transport import Transport

__all__ = ["SyncEngine", "SyncResult", "start_sync"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SyncResult:
    """The outcome of :meth:`SyncEngine.sync`: the pull's and the push's, with totals."""

    pull: PullResult
    push: PushResult

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


def _merge_pull(a: PullResult, b: PullResult) -> PullResult:
    tables = dict(a.tables)
    tables.update(b.tables)
    return PullResult(pulled=a.pulled + b.pulled, deleted=a.deleted + b.deleted,
                      conflicts=a.conflicts + b.conflicts, pages=a.pages + b.pages,
                      duration=a.duration + b.duration, tables=tables)


class SyncEngine:
    """Pushes one database's outbox to one server (see :func:`start_sync`)."""

    def __init__(self, db: Engine, config: SyncConfig) -> None:
        self.db = db
        self.config = config
        self.routes = config.route_table()
        self.clock = config.clock
        self.rng = random.Random(config.seed)  # jitter only; seeded for reproducible runs
        schedule = config.sync
        self.transport = Transport(
            config.base_url,
            auth=config.auth,
            timeout=config.timeout,
            max_response_bytes=config.max_response_bytes,
            pool_size=schedule.push_concurrency,
            session=config.http,
        )
        self._pusher = Pusher(
            db,
            self.routes,
            self.transport,
            errors=config.errors,
            batch_size=schedule.push_batch_size,
            concurrency=schedule.push_concurrency,
            clock=self.clock,
            rng=self.rng,
            emit=self._emit,
            conflicts=config.conflicts,
        )
        self._puller = Puller(
            db,
            self.routes,
            self.transport,
            conflicts=config.conflicts,
            page_size=schedule.pull_page_size,
            max_pages=schedule.pull_max_pages,
            clock=self.clock,
            emit=self._emit,
        )
        for table in self.routes.values():
            table.info.read_only = table.read_only
        self._push_lock = threading.RLock()
        self._receivers: list[tuple[str, Callable[..., Any]]] = []
        self._auth_required = False
        unrouted = sorted(i.table_name for i in synced_models() if i.table_name not in self.routes)
        if unrouted:
            log.warning("Syncable tables without routes keep their ops pending: %s",
                        ", ".join(unrouted))

    # -- events ----------------------------------------------------------------

    def _emit(self, name: str, **payload: Any) -> None:
        signal_for(name).send(self, **payload)

    def on(self, event: str, fn: Callable[..., Any]) -> Callable[[], None]:
        """Call ``fn(payload)`` on ``event`` (``"sync-complete"``, ``"conflict"``, ...).

        ``fn`` gets the event's payload (a result, error, conflict, ...) or no
        argument for events without one.  Returns a function that unsubscribes.
        """
        signal = signal_for(event)

        def receiver(sender: Any, **payload: Any) -> None:
            fn(*payload.values())

        signal.connect(receiver, sender=self, weak=False)
        self._receivers.append((event, receiver))

        def off() -> None:
            signal.disconnect(receiver, sender=self)

        return off

    # -- push --------------------------------------------------------------------

    def push(self) -> PushResult:
        """Send every pending op that is due; one pass, then return the counts.

        Failed ops are rescheduled (see :class:`~sqla_sync.Errors`); a 401 that
        refreshing does not cure stops the pass with ``auth_required`` set.
        """
        with self._push_lock:
            self._emit("push-start")
            try:
                result = self._pusher.push()
            except SyncError as exc:
                self._emit("push-error", error=exc)
                raise
            except Exception as exc:
                self._emit("push-error", error=exc)
                raise
            self._auth_required = result.auth_required
            self._emit("push-complete", result=result)
            return result

    def pull(self) -> PullResult:
        """Fetch the server's changes of every table with a pull route, page by page.

        Each page is applied with its checkpoint in one transaction; a table
        that fails raises :class:`~sqla_sync.SyncError` after the others ran.
        """
        with self._push_lock:
            self._emit("pull-start")
            try:
                result = self._puller.pull()
            except Exception as exc:
                self._emit("pull-error", error=exc)
                raise
            self._emit("pull-complete", result=result)
            return result

    def sync(self) -> SyncResult:
        """Pull, then push: a server change made since the last pull meets a
        pending local op as a conflict before the op can overwrite it."""
        with self._push_lock:
            self._emit("sync-start")
            try:
                pulled = self._puller.pull()
                self._emit("pull-complete", result=pulled)
                pushed = self._pusher.push()
                self._emit("push-complete", result=pushed)
                if self._pusher.needs_pull:
                    names, self._pusher.needs_pull = set(self._pusher.needs_pull), set()
                    extra = self._puller.pull(names)
                    pulled = _merge_pull(pulled, extra)
            except Exception as exc:
                self._emit("sync-error", error=exc)
                raise
            result = SyncResult(pull=pulled, push=pushed)
            self._emit("sync-complete", result=result)
            return result

    def sync_table(self, name: str) -> SyncResult:
        """Pull one table, then push every due op (ops are ordered across tables)."""
        if name not in self.routes:
            raise ConfigurationError(f"no routes for table {name!r}; tables: {sorted(self.routes)}")
        with self._push_lock:
            pulled = self._puller.pull([name])
            pushed = self._pusher.push()
            return SyncResult(pull=pulled, push=pushed)

    # -- queue -------------------------------------------------------------------

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
            if not ob.revive(conn, id):
                raise SyncError(f"no dead letter with id {id}; see dead_letters()")

    # -- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        """Stop sending and close connections; pending ops stay in the outbox."""
        for event, receiver in self._receivers:
            signal_for(event).disconnect(receiver, sender=self)
        self._receivers.clear()
        self._pusher.close()
        self.transport.close()

    def __enter__(self) -> SyncEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sync(db: Engine | sessionmaker[Any], config: SyncConfig) -> SyncEngine:
    """Check ``config`` and return the :class:`SyncEngine` of database ``db``.

    ``db`` is the application's engine, or a sessionmaker bound to one.
    Configuration mistakes (routes naming unknown tables, a bad base_url,
    missing sync tables) raise :class:`~sqla_sync.ConfigurationError` here.
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
