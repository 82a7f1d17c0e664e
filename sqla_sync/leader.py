"""Leader election: one lease row per name, with a TTL and a fencing token.

The lease is taken or renewed with one atomic ``UPDATE ... WHERE expired OR
mine`` (the row is created on first use), so it works across processes on
one SQLite file and across machines on PostgreSQL or MariaDB.  Each new
holder increments the fencing token.  :meth:`Lease.fence` is called at the
start of every transaction that writes sync state: it reads the lease row
with a shared lock and raises :class:`LeaseLost` when another holder (a
higher token) has taken over, so a stale leader -- one paused past its TTL,
say -- cannot write.  A takeover waits for a fenced transaction in progress.

A sync can outlast the TTL (a backlog after a restart, a slow server, one
request waiting out its deadline): while one runs, a :class:`Heartbeat`
renews the lease every TTL/3 with :meth:`Lease.renew`, which extends only
the lease we hold under our token and never takes one over.  When renewal
finds the lease gone, :attr:`Lease.token` becomes None: the next fenced
write raises :class:`LeaseLost` and the engine stops.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Engine, case, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import SingletonThreadPool, StaticPool

from .errors import SyncError
from .tables import leases

__all__ = ["Heartbeat", "Lease", "LeaseLost", "holder"]

log = logging.getLogger(__name__)


class LeaseLost(SyncError):
    """This engine is no longer the leader: another process holds a newer lease."""


def holder() -> str:
    """An owner id unique to this engine instance: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """The leader lease of one name, held (or wanted) by one engine."""

    def __init__(self, db: Engine, *, name: str = "default", ttl: float = 15.0,
                 clock: Callable[[], float] = time.time, owner: str | None = None) -> None:
        self.db = db
        self.name = name
        self.ttl = ttl
        self.clock = clock
        self.owner = owner or holder()
        #: The fencing token of our lease, or None when we do not hold it.
        self.token: int | None = None
        self.expires_at = 0.0

    @property
    def held(self) -> bool:
        """Whether we hold an unexpired lease (by our clock)."""
        return self.token is not None and self.clock() < self.expires_at

    def acquire(self) -> bool:
        """Take the lease if it is free or expired, renew it if it is ours.

        :return: whether we are the leader now.
        """
        now = self.clock()
        expires = now + self.ttl
        c = leases.c
        with self.db.begin() as conn:
            result = conn.execute(
                update(leases)
                .where(c.name == self.name, (c.expires_at < now) | (c.owner == self.owner))
                # Token first: MySQL assigns left to right, and the CASE reads owner.
                .ordered_values(
                    (c.token, case((c.owner == self.owner, c.token), else_=c.token + 1)),
                    (c.owner, self.owner),
                    (c.expires_at, expires),
                )
            )
            if result.rowcount == 0:
                exists = conn.execute(select(c.owner).where(c.name == self.name)).first()
                if exists is not None:
                    self.token = None
                    return False
        if result.rowcount == 0:
            try:
                with self.db.begin() as conn:
                    conn.execute(insert(leases).values(
                        name=self.name, owner=self.owner, expires_at=expires, token=1))
            except IntegrityError:
                self.token = None
                return False  # another process created it first
        with self.db.connect() as conn:
            row = conn.execute(select(c.owner, c.token).where(c.name == self.name)).one()
        if row.owner != self.owner:
            self.token = None
            return False
        if self.token != row.token:
            log.info("leader lease %r taken by %s with token %s", self.name, self.owner,
                     row.token)
        self.token = int(row.token)
        self.expires_at = expires
        return True

    def renew(self) -> bool:
        """Extend the lease we hold by ``ttl`` from now -- only while the row
        still names us with our token: renewal never takes a lease over.

        :return: whether we still lead; False also clears :attr:`token`.
        """
        token = self.token
        if token is None:
            return False
        expires = self.clock() + self.ttl
        c = leases.c
        with self.db.begin() as conn:
            result = conn.execute(
                update(leases)
                .where(c.name == self.name, c.owner == self.owner, c.token == token)
                .values(expires_at=expires)
            )
        if result.rowcount != 1:
            if self.token == token:
                self.token = None
            log.warning("leader lease %r lost: another process holds it now", self.name)
            return False
        self.expires_at = expires
        return True

    def fence(self, conn: Connection) -> None:
        """Raise :class:`LeaseLost` unless we still hold the lease, on ``conn``'s
        transaction, with a shared lock on the lease row until it ends.

        On SQLite ``FOR SHARE`` does not exist: there the engine begins the
        transaction with ``BEGIN IMMEDIATE`` first (:mod:`sqla_sync.transactions`),
        whose write lock keeps a takeover out until it ends."""
        c = leases.c
        row = conn.execute(
            select(c.owner, c.token).where(c.name == self.name).with_for_update(read=True)
        ).first()
        if self.token is None or row is None or row.owner != self.owner \
                or int(row.token) != self.token:
            self.token = None
            raise LeaseLost(
                f"the leader lease {self.name!r} is held by another process (token "
                f"{None if row is None else row.token}); this engine stops syncing until it "
                "becomes leader again"
            )

    def release(self) -> None:
        """Give the lease up so that another process can take it at once."""
        if self.token is None:
            return
        c = leases.c
        with self.db.begin() as conn:
            conn.execute(update(leases).where(c.name == self.name, c.owner == self.owner)
                         .values(expires_at=0.0))
        self.token = None

    def current(self) -> tuple[str | None, int | None, float | None]:
        """(owner, token, expires_at) of the lease row, whoever holds it."""
        c = leases.c
        with self.db.connect() as conn:
            row = conn.execute(select(c.owner, c.token, c.expires_at)
                               .where(c.name == self.name)).first()
        if row is None:
            return None, None, None
        return row.owner, int(row.token), float(row.expires_at)


class Heartbeat:
    """Renews a :class:`Lease` every ``interval`` seconds (TTL/3) in a thread, for
    as long as the ``with`` block -- a sync -- runs.

    A failed renewal (the database busy or unreachable) is logged and tried
    again at the next beat; a lease found taken over ends the heartbeat with
    :attr:`Lease.token` cleared.  Pools that hand every thread the same
    connection (``StaticPool``) or a connection of its own to a private
    database (``SingletonThreadPool``: in-memory SQLite) cannot serve a second
    thread; there :attr:`threaded` is False and the owner renews by calling
    :meth:`beat` between steps of its work.
    """

    def __init__(self, lease: Lease, interval: float | None = None) -> None:
        self.lease = lease
        self.interval = interval if interval is not None else lease.ttl / 3
        self.threaded = not isinstance(lease.db.pool, (StaticPool, SingletonThreadPool))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next = time.monotonic() + self.interval

    def __enter__(self) -> Heartbeat:
        if self.threaded and self.lease.token is not None:
            self._thread = threading.Thread(target=self._run, name="sqla-sync-lease",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def beat(self) -> bool:
        """Renew now if a beat is due (for pools without a heartbeat thread).

        :return: whether the lease is still ours.
        """
        if self.threaded or time.monotonic() < self._next:
            return self.lease.token is not None
        self._next = time.monotonic() + self.interval
        return self._renew()

    def _renew(self) -> bool:
        try:
            return self.lease.renew()
        except Exception as exc:  # busy or unreachable: the next beat tries again
            log.warning("leader lease %r not renewed: %s", self.lease.name, exc)
            return self.lease.token is not None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._renew():
                return
