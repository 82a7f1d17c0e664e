"""Push: the outbox, in order, to the server through the declared routes.

One push pass repeats a *wave* until nothing is left to send:

1. choose ops: FIFO per row; a row's later op waits for its earlier one, a
   child waits for its parent's pending op, a parent's delete waits for its
   children's ops, and a dead letter holds back its own row and its
   dependents (never unrelated rows); ops not yet due for a retry wait too;
2. claim them in one transaction (each moves to its own lane and gets its
   Idempotency-Key) and read their rows as they are now;
3. send them, ``push_concurrency`` at a time;
4. record every outcome in one transaction: done ops leave the outbox and the
   server's answer is written back to the row (server-assigned ids are
   remapped in the row, the shadow, pending ops and children's foreign keys);
   failed ones are rescheduled with backoff or become dead letters.

The waves overlap: the next one is chosen, claimed and queued while one is
sent, and a sent wave is recorded while the next is on the wire, so the
database work of steps 1, 2 and 4 stays off the sending threads' path.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from sqlalchemy import Engine, and_, delete, exists, insert, select, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from . import outbox as ob
from . import shadow
from .codec import dumps, loads
from .conflicts import Conflict, Conflicts
from .errors import AuthRequiredError, ForbiddenRedirectError, RouteError, TransportError
from .mixin import ModelInfo
from .outbox import DeadLetter, OutboxOp
from .pull import Applier
from .retry import Errors, classify, parse_retry_after, retry_delay
from .routes import DEFAULT_BODY, RouteTable, TableRoutes, render_path
from .tables import OP_DELETE, OP_INSERT, OP_UPDATE, STATUS_PENDING, outbox
from .transport import NO_BODY, Answer, Transport

__all__ = ["PushResult", "Pusher", "TableCounts"]

log = logging.getLogger(__name__)

Emit = Callable[..., None]
Fence = Callable[[Connection], None]
RowKey = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class TableCounts:
    """What one push did to one table."""

    pushed: int = 0
    failed: int = 0
    conflicts: int = 0
    dead_lettered: int = 0


@dataclasses.dataclass(frozen=True)
class PushResult:
    """The outcome of one push pass.

    :ivar pushed: ops the server applied.
    :ivar failed: ops that failed and were rescheduled for a retry.
    :ivar conflicts: ops the server answered with a conflict.
    :ivar dead_lettered: ops given up on in this pass.
    :ivar held_back: pending ops that waited (not due, behind another op or
        a dead letter).
    :ivar auth_required: push stopped because the credentials are refused.
    """

    pushed: int = 0
    failed: int = 0
    conflicts: int = 0
    dead_lettered: int = 0
    held_back: int = 0
    auth_required: bool = False
    duration: float = 0.0
    tables: Mapping[str, TableCounts] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Outcome:
    op: OutboxOp
    # ok | retry | dead | conflict | auth | halted | skip | gone; after recording also
    # resolved (a conflict settled) or settled (nothing left to do)
    kind: str
    answer: Answer | None = None
    error: str = ""
    status: int | None = None
    retry_after: float | None = None
    method: str | None = None
    path: str | None = None
    server_row: Any = None
    sent_item: dict[str, Any] | None = None
    local_row: dict[str, Any] | None = None


class Pusher:
    """Sends the outbox of one database through one transport."""

    def __init__(
        self,
        db: Engine,
        routes: RouteTable,
        transport: Transport,
        *,
        errors: Errors,
        batch_size: int = 10,
        concurrency: int = 1,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        emit: Emit | None = None,
        fence: Fence | None = None,
        window: int = 500,
        conflicts: Conflicts | None = None,
    ) -> None:
        self.db = db
        self.routes = routes
        self.transport = transport
        self.errors = errors
        self.batch_size = max(1, batch_size)
        self.concurrency = max(1, concurrency)
        self.clock = clock
        self.rng = rng or random.Random()
        self.emit: Emit = emit or (lambda name, **payload: None)
        self.fence = fence
        self.window = max(window, self.batch_size)
        self.conflicts = conflicts or Conflicts()
        #: Tables a push conflict left for the next pull to settle.
        self.needs_pull: set[str] = set()
        # The models the routes chose: with two models of one table name in the
        # process (two declarative bases), only the routed one is ours.
        self._infos = {name: table.info for name, table in routes.items()}
        self._children: dict[str, list[tuple[ModelInfo, tuple[str, ...]]]] = {}
        for info in self._infos.values():
            for parent, keys in info.parents:
                self._children.setdefault(parent, []).append((info, keys))
        self._pool: ThreadPoolExecutor | None = None
        # Set by the sending thread that meets refused credentials: the ops
        # queued behind it are not sent (see _submit).
        self._refused = threading.Event()
        self._refused_error = ""
        self.emit_later: list[Conflict] = []
        self._soonest: float | None = None
        # The parent rows each op of the last wave chosen pointed at when
        # _next_wave chose it; _claim compares them with the rows it claims.
        self._chosen_parents: dict[int, tuple[RowKey, ...]] = {}
        #: After a push: when the earliest op held for a retry falls due (wall
        #: clock), or None; the scheduler wakes for it.
        self.retry_at: float | None = None

    def close(self) -> None:
        """Stop the sending threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- one pass --------------------------------------------------------------

    def push(self, *, should_stop: Callable[[], bool] = lambda: False,
             halted: Callable[[], bool] = lambda: False) -> PushResult:
        """Send every op that is due, wave after wave, and report what happened.

        :param should_stop: asked between waves, on this thread: claim no more.
        :param halted: asked by the sending threads before each request (so it
            must be cheap and thread-safe, no I/O): send nothing more; the
            ops not sent are given back untried.

        Two waves are in hand at a time: while one is on the wire, the next is
        claimed and queued behind it, and the one before is recorded.  So the
        sending threads never wait for the database, and a wave's last requests
        overlap the next wave's first.  A row's later op still waits for its
        earlier one: an op in flight stays in the outbox until it is recorded,
        so :meth:`_next_wave` holds back whatever it would hold back behind it.
        """
        started = time.monotonic()
        counts: dict[str, dict[str, int]] = {}
        attempted: set[int] = set()
        auth_required = False
        held = 0
        with self.db.connect() as conn:
            dead = ob.dead_rows(conn)
        self.retry_at = None
        self._refused.clear()
        flight: deque[list[Future[_Outcome]]] = deque()
        try:
            while True:
                if len(flight) < 2 and not self._refused.is_set() and not should_stop():
                    wave, held = self._next_wave(dead, attempted)
                    if wave:
                        wave, keys, rows, versions = self._claim(wave)
                        attempted.update(op.id for op in wave)
                        if wave:
                            flight.append(self._submit(wave, keys, rows, versions, halted))
                        continue
                    if not flight:
                        self.retry_at = self._soonest
                        break
                elif not flight:
                    break
                wait(flight[0])  # one wake-up per wave, not one per request
                outcomes = [future.result() for future in flight.popleft()]
                if self._finish(outcomes, counts, dead) and not auth_required:
                    auth_required = True
                    self.emit("auth-required",
                              error=next(o.error for o in outcomes if o.kind == "auth"))
        finally:
            # Only on an error: nothing more is sent once push returns or raises.
            for futures in flight:
                for future in futures:
                    future.cancel()
            wait([future for futures in flight for future in futures])
        tables = {
            name: TableCounts(
                pushed=c.get("ok", 0) + c.get("skip", 0),
                failed=c.get("retry", 0),
                conflicts=c.get("conflict", 0),
                dead_lettered=c.get("dead", 0) + c.get("buried", 0),
            )
            for name, c in counts.items()
        }
        return PushResult(
            pushed=sum(t.pushed for t in tables.values()),
            failed=sum(t.failed for t in tables.values()),
            conflicts=sum(t.conflicts for t in tables.values()),
            dead_lettered=sum(t.dead_lettered for t in tables.values()),
            held_back=held,
            auth_required=auth_required,
            duration=time.monotonic() - started,
            tables=tables,
        )

    def _claim(
        self, chosen: Sequence[OutboxOp]
    ) -> tuple[list[OutboxOp], dict[int, str], dict[RowKey, dict[str, Any]], dict[RowKey, str]]:
        """Claim ``chosen`` in one transaction: the ops as claimed, their
        Idempotency-Keys, rows and versions.

        The ops are read again first, under the transaction's lock: the
        application may have folded a change into one since it was chosen (an
        update became a delete, an insert vanished, a foreign key now points at
        another parent).  An op whose kind or parents changed is left for the
        next wave to choose again, under the rules for what it is now: a new
        parent's pending insert then goes first.
        """
        now = self.clock()
        with self.db.begin() as conn:
            if self.fence is not None:
                self.fence(conn)
            fresh = ob.current(conn, [op.id for op in chosen])
            wave = [now_op for op in chosen if (now_op := fresh.get(op.id)) is not None
                    and now_op.op == op.op and now_op.status == STATUS_PENDING]
            if not wave:
                return [], {}, {}, {}
            rows = self._read_rows(conn, wave)
            wave = [op for op in wave if self._same_parents(op, rows)]
            if not wave:
                return [], {}, {}, {}
            sent = {op.id: self._infos[op.table_name].encode_row(row)
                    for op in wave if op.op != OP_DELETE
                    and (row := rows.get((op.table_name, op.row_key))) is not None}
            keys = ob.claim(conn, wave, now, sent)
            versions = self._versions(conn, wave)
        return wave, keys, rows, versions

    def _same_parents(self, op: OutboxOp, rows: Mapping[RowKey, dict[str, Any]]) -> bool:
        """Whether ``op``'s row points at the parents it did when it was chosen."""
        info = self._infos[op.table_name]
        if op.op == OP_DELETE or not info.parents:
            return True  # a delete's parents are in its state, which stays as chosen
        row = rows.get((op.table_name, op.row_key))
        now = tuple(self._parents_from(info, row)) if row is not None else ()
        return now == self._chosen_parents.get(op.id, ())

    def _finish(self, outcomes: Sequence[_Outcome], counts: dict[str, dict[str, int]],
                dead: set[RowKey]) -> bool:
        """Record a sent wave, count it, emit its events; whether credentials were refused."""
        dead_letters = self._record(outcomes)
        for outcome in outcomes:
            tally = counts.setdefault(outcome.op.table_name, {})
            kind = "conflict" if outcome.kind == "resolved" else outcome.kind
            tally[kind] = tally.get(kind, 0) + 1
        # Their rows (and dependents) wait for the rest of the pass, as in the next.
        dead.update((d.table_name, d.row_key) for d in dead_letters)
        for letter in dead_letters:
            self.emit("dead-letter", dead_letter=letter)
        conflicts, self.emit_later = self.emit_later, []
        for conflict in conflicts:
            self.emit("conflict", conflict=conflict)
        return any(o.kind == "auth" for o in outcomes)

    # -- choosing ops ------------------------------------------------------------

    def _next_wave(
        self, dead: set[RowKey], attempted: set[int]
    ) -> tuple[list[OutboxOp], int]:
        now = self.clock()
        blocked: set[RowKey] = set(dead)
        referenced: set[RowKey] = set()
        wave: list[OutboxOp] = []
        held = 0
        after = 0
        self._soonest = None
        self._chosen_parents = {}
        with self.db.connect() as conn:
            while len(wave) < self.batch_size:
                window = ob.pending_ops(conn, limit=self.window, after_id=after)
                if not window:
                    break
                after = window[-1].id
                parents_of = self._parent_keys(conn, window)
                # A parent's pending insert holds its children back even when
                # it was captured after them (rows of one table, one flush;
                # a child moved to a new parent), in this window or beyond it.
                creating = {(op.table_name, op.row_key) for op in window if op.op == OP_INSERT}
                beyond = {p for ps in parents_of.values() for p in ps} - creating - blocked
                if beyond:
                    creating |= ob.pending_inserts(conn, beyond)
                for op in window:
                    row = (op.table_name, op.row_key)
                    parents = parents_of.get(op.id, ())
                    table = self.routes.get(op.table_name)
                    ready = (
                        table is not None
                        and table.routes.push is not None
                        and row not in blocked
                        and op.next_attempt_at <= now
                        and op.id not in attempted
                        and not any(p in blocked or (p in creating and p != row)
                                    for p in parents)
                        and not (op.op == OP_DELETE and row in referenced)
                    )
                    if op.next_attempt_at > now and (self._soonest is None
                                                     or op.next_attempt_at < self._soonest):
                        self._soonest = op.next_attempt_at
                    blocked.add(row)
                    referenced.update(parents)
                    if ready and len(wave) < self.batch_size:
                        wave.append(op)
                        self._chosen_parents[op.id] = tuple(parents)
                    elif op.id not in attempted:
                        held += 1
        return wave, held

    def _parent_keys(self, conn: Connection, ops: Sequence[OutboxOp]) -> dict[int, list[RowKey]]:
        """Parent row keys each op's row points at (children wait for parents)."""
        result: dict[int, list[RowKey]] = {}
        need: dict[str, list[OutboxOp]] = {}
        for op in ops:
            info = self._infos.get(op.table_name)
            if info is None or not info.parents:
                continue
            if op.op == OP_DELETE:
                values = info.decode_row(op.state or {})
                result[op.id] = self._parents_from(info, values)
            else:
                need.setdefault(op.table_name, []).append(op)
        for table_name, table_ops in need.items():
            info = self._infos[table_name]
            rows = self._select_rows(conn, info, [op.row_key for op in table_ops])
            for op in table_ops:
                found = rows.get(op.row_key)
                if found is not None:
                    result[op.id] = self._parents_from(info, found)
        return result

    def _parents_from(self, info: ModelInfo, values: Mapping[str, Any]) -> list[RowKey]:
        keys = []
        for parent, fk_keys in info.parents:
            parent_info = self._infos.get(parent)
            fk = [values.get(k) for k in fk_keys]
            if parent_info is not None and all(v is not None for v in fk):
                keys.append((parent, parent_info.encode_key(fk)))
        return keys

    # -- reading rows ------------------------------------------------------------

    def _select_rows(
        self, conn: Connection, info: ModelInfo, keys: Iterable[str], *, lock: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Current local rows by row key (column key -> value); absent rows are missing.

        :param lock: lock the rows (``FOR UPDATE``) until the transaction ends,
            where the database has row locks: a decision made on them then
            cannot miss an application commit made before its writes (SQLite
            needs none: the library's write transactions hold its write lock).
        """
        lock = lock and conn.dialect.name != "sqlite"
        wanted = list(dict.fromkeys(keys))
        cols = [info.columns[k] for k in info.keys]
        pk_cols = [info.columns[k] for k in info.pk_keys]
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), 500):
            chunk = [info.decode_key(k) for k in wanted[start : start + 500]]
            if len(pk_cols) == 1:
                cond = pk_cols[0].in_([k[0] for k in chunk])
            else:
                cond = tuple_(*pk_cols).in_(chunk)
            stmt = select(*cols).where(cond)
            for row in conn.execute(stmt.with_for_update() if lock else stmt):
                values = dict(zip(info.keys, row))
                found[info.encode_key(values[k] for k in info.pk_keys)] = values
        return found

    def _read_rows(self, conn: Connection, ops: Sequence[OutboxOp]) -> dict[RowKey, dict[str, Any]]:
        by_table: dict[str, list[str]] = {}
        for op in ops:
            if op.op != OP_DELETE:
                by_table.setdefault(op.table_name, []).append(op.row_key)
        rows: dict[RowKey, dict[str, Any]] = {}
        for table_name, keys in by_table.items():
            for key, values in self._select_rows(conn, self._infos[table_name], keys).items():
                rows[(table_name, key)] = values
        return rows

    def _versions(self, conn: Connection, ops: Sequence[OutboxOp]) -> dict[RowKey, str]:
        by_table: dict[str, list[str]] = {}
        for op in ops:
            table = self.routes[op.table_name]
            push = table.routes.push
            request = getattr(push, _ROUTE_OF[op.op]) if push is not None else None
            if request is not None and request.if_match:
                by_table.setdefault(op.table_name, []).append(op.row_key)
        versions: dict[RowKey, str] = {}
        for table_name, keys in by_table.items():
            for key, row in shadow.get_many(conn, table_name, keys).items():
                if row.version is not None:
                    versions[(table_name, key)] = row.version
        return versions

    # -- sending -------------------------------------------------------------------

    def _submit(
        self,
        wave: Sequence[OutboxOp],
        keys: Mapping[int, str],
        rows: Mapping[RowKey, dict[str, Any]],
        versions: Mapping[RowKey, str],
        halted: Callable[[], bool],
    ) -> list[Future[_Outcome]]:
        """Queue ``wave`` on the sending threads, ``push_concurrency`` at a time,
        in order.  Once credentials are refused, or ``halted()`` says so (the
        engine stops, the lease is lost), the ops not yet sent stay untried."""
        def one(op: OutboxOp) -> _Outcome:
            if self._refused.is_set():
                return _Outcome(op, "auth", error=self._refused_error)
            if halted():
                return _Outcome(op, "halted")
            outcome = self._send(op, keys[op.id], rows.get((op.table_name, op.row_key)),
                                 versions.get((op.table_name, op.row_key)))
            if outcome.kind == "auth":
                self._refused_error = outcome.error
                self._refused.set()
            return outcome

        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="sqla-sync-push")
        return [self._pool.submit(one, op) for op in wave]

    def _send(
        self, op: OutboxOp, key: str, local: dict[str, Any] | None, version: str | None
    ) -> _Outcome:
        table = self.routes[op.table_name]
        push = table.routes.push
        assert push is not None
        request = getattr(push, _ROUTE_OF[op.op])
        if op.op == OP_DELETE:
            local = table.info.decode_row(op.state or {})
        elif op.state is not None:
            # A retry sends what the first attempt sent, under the same
            # Idempotency-Key: the server may have applied that one.  Changes
            # made since are in a later op of the row.
            local = table.info.decode_row(op.state)
        elif local is None:
            # The row is gone locally; the delete that removed it follows (or
            # pull removed it): nothing to send for this op.  (A create that
            # was sent before is replayed above even then: its answer tells
            # the key the delete must go to, for a server-assigned id.)
            return _Outcome(op, "skip")
        try:
            item = table.item(local)
            method, path, params, body, headers = self._build(table, op, request, item, local)
        except RouteError as exc:
            return _Outcome(op, "dead", error=str(exc))
        except Exception as exc:  # a route callable failed: keep the op, say why
            return _Outcome(op, "dead", error=self.transport.redact(
                f"building the {op.op} request of {op.table_name} {op.row_key} failed: "
                f"{type(exc).__name__}: {exc}"))
        headers["Idempotency-Key"] = key
        if request.if_match and version is not None:
            headers["If-Match"] = version if version.startswith(('"', "W/")) else f'"{version}"'
        base = _Outcome(op, "retry", method=method, path=path, sent_item=item, local_row=local)
        try:
            answer = self.transport.request(method, path, params=params, json_body=body,
                                            headers=headers)
        except AuthRequiredError as exc:
            base.kind, base.error, base.status = "auth", str(exc), 401
            return base
        except ForbiddenRedirectError as exc:
            base.kind, base.error = "dead", str(exc)
            return base
        except TransportError as exc:
            base.kind, base.error, base.status = "retry", str(exc), exc.status
            return base
        base.answer = answer
        base.status = answer.status
        if answer.status in (404, 410):
            if op.op == OP_DELETE:
                base.kind = "ok"  # already gone on the server
                return base
            if op.op == OP_UPDATE:
                base.kind = "gone"  # deleted on the server since the last pull
                return base
        conflict = bool(request.conflict_when(answer.status, answer.body))
        verdict = classify(answer.status, conflict=conflict)
        if verdict == "ok":
            body_out = answer.body
            if request.map_response is not None and body_out is not None:
                try:
                    body_out = request.map_response(body_out)
                except Exception as exc:
                    base.kind = "retry"
                    base.error = self.transport.redact(
                        f"{method} {path}: map_response failed on the answer: "
                        f"{type(exc).__name__}: {exc}")
                    return base
            base.kind, base.server_row = "ok", body_out
            return base
        excerpt = _excerpt(answer.body)
        base.error = self.transport.redact(f"{method} {path} answered {answer.status}{excerpt}")
        if verdict == "retry":
            base.retry_after = parse_retry_after(answer.headers.get("Retry-After"), time.time())
        base.kind = verdict
        return base

    def _build(
        self,
        table: TableRoutes,
        op: OutboxOp,
        request: Any,
        item: dict[str, Any],
        local: Mapping[str, Any],
    ) -> tuple[str, str, Mapping[str, Any] | None, Any, dict[str, str]]:
        url = request.url(item) if callable(request.url) else render_path(
            request.url, item, table.info.encode_row(local))
        body = request.body
        if body is DEFAULT_BODY:
            if request.method == "DELETE":
                body = NO_BODY
            elif request.method == "PATCH" and op.op == OP_UPDATE:
                changed = {table.server_field(k) for k in table.info.changed_keys(op.changed)}
                changed.update(table.server_field(k) for k in table.info.pk_keys)
                body = {k: v for k, v in item.items() if k in changed}
            else:
                body = item
        elif callable(body):
            body = body(item)
        elif body is None:
            body = NO_BODY
        headers = request.headers(item) if callable(request.headers) else request.headers
        params = request.query(item) if callable(request.query) else request.query
        return request.method, url, params, body, dict(headers or {})

    # -- recording outcomes ----------------------------------------------------------

    def _record(self, outcomes: Sequence[_Outcome]) -> list[DeadLetter]:
        now = self.clock()
        done: list[int] = []
        retry: list[dict[str, Any]] = []
        buried: list[dict[str, Any]] = []
        released: list[int] = []
        letters: list[DeadLetter] = []
        with self.db.begin() as conn:
            if self.fence is not None:
                self.fence(conn)
            successes = [o for o in outcomes if o.kind == "ok"]
            self._write_back(conn, successes, now)
            for o in outcomes:
                if o.kind == "conflict":
                    self._push_conflict(conn, o, now)
                elif o.kind == "gone":
                    self._push_gone(conn, o, now)
            for o in outcomes:
                op = o.op
                if o.kind in ("resolved", "settled"):
                    continue
                if o.kind in ("ok", "skip"):
                    done.append(op.id)
                elif o.kind in ("auth", "halted"):
                    released.append(op.id)
                elif o.kind in ("retry", "conflict"):
                    attempts = op.attempts + 1
                    record = ob.error_record(o.error, status=o.status, method=o.method,
                                             url=o.path)
                    if attempts > self.errors.max_retries:
                        o.kind = "buried"
                        buried.append({"op_id": op.id, "attempts": attempts,
                                       "last_error": record})
                    else:
                        delay = retry_delay(self.errors, attempts, self.rng, o.retry_after)
                        retry.append({"op_id": op.id, "attempts": attempts,
                                      "next_attempt_at": now + delay, "last_error": record})

                else:  # dead
                    buried.append({"op_id": op.id, "attempts": op.attempts + 1,
                                   "last_error": ob.error_record(
                                       o.error, status=o.status, method=o.method, url=o.path)})
            ob.complete(conn, done)
            ob.reschedule(conn, retry)
            ob.bury(conn, buried)
            ob.release(conn, released)
        for row in buried:
            o = next(x for x in outcomes if x.op.id == row["op_id"])
            letters.append(DeadLetter(
                id=o.op.id, table_name=o.op.table_name, row_key=o.op.row_key, op=o.op.op,
                error=o.error, status=o.status, method=o.method, url=o.path,
                attempts=row["attempts"], changed_at=o.op.changed_at))
            log.warning("dead letter %s %s %s: %s", o.op.op, o.op.table_name, o.op.row_key,
                        o.error)
        return letters

    def _push_conflict(self, conn: Connection, o: _Outcome, now: float) -> None:
        """Settle a conflict answer (409/412 or ``conflict_when``) by the policy.

        When the answer carries the server's row (the body, or its ``current``),
        the conflict is decided like a pulled one.  Without it, server-wins
        drops the op and leaves the row to the next pull; the other policies
        retry the op (and dead-letter it if the server keeps refusing).
        """
        table = self.routes[o.op.table_name]
        body = o.answer.body if o.answer is not None else None
        remote = table.answer_row(body, o.op.row_key)  # checked like a pulled row
        if remote is None:
            known = shadow.get_many(conn, table.name, [o.op.row_key]).get(o.op.row_key)
            if o.op.op == OP_INSERT and known is not None and known.state is None:
                # The create revives a row the server deleted (a policy kept
                # the local side) and the server refuses: its delete stands.
                self._settle_gone(conn, o, table, known, now, refused=True)
                return
            # The next pull brings the server's row: a conflict the policy
            # settles there (a kept create becomes an update of that row).
            self.needs_pull.add(table.name)
            if self.conflicts.policy == "server-wins":
                conn.execute(delete(outbox).where(outbox.c.id == o.op.id))
                o.kind = "resolved"
                decoded = table.info.decode_key(o.op.row_key)
                self.emit_later.append(Conflict(
                    table=table.name, key=decoded[0] if len(decoded) == 1 else decoded,
                    local=o.sent_item, remote=None,
                    base=None, local_changed_at=o.op.changed_at, resolution="remote"))
            return
        applier = Applier(table, self.conflicts, self.clock, None)
        # The row (locked) before its ops: see _select_rows.
        local = self._select_rows(conn, table.info, [o.op.row_key], lock=True).get(o.op.row_key)
        ops = [op for op in applier.pending(conn, [o.op.row_key]).get(o.op.row_key, [])]
        known = shadow.get_many(conn, table.name, [o.op.row_key]).get(o.op.row_key)
        values = applier.columns(remote)
        conflict, outcome = applier._resolve(conn, o.op.row_key, values, remote, local,
                                             ops or [o.op], known, now)
        if outcome == "remote":
            applier._write_row(conn, o.op.row_key, {**(local or {}), **values}, local)
        shadow.upsert_many(conn, [applier._shadow(o.op.row_key, remote, now)])
        self.emit_later.append(conflict)
        if outcome != "local":
            o.kind = "resolved"

    def _push_gone(self, conn: Connection, o: _Outcome, now: float) -> None:
        """An update answered 404 or 410: the row was deleted on the server
        since the last pull.  A conflict with a deleted remote, settled by the
        policy like one a pull meets."""
        table = self.routes[o.op.table_name]
        known = shadow.get_many(conn, table.name, [o.op.row_key]).get(o.op.row_key)
        self._settle_gone(conn, o, table, known, now, refused=False)

    def _settle_gone(self, conn: Connection, o: _Outcome, table: TableRoutes,
                     known: shadow.ShadowRow | None, now: float, *, refused: bool) -> None:
        key = o.op.row_key
        applier = Applier(table, self.conflicts, self.clock, None)
        local = self._select_rows(conn, table.info, [key], lock=True).get(key)
        ops = applier.pending(conn, [key]).get(key) or [o.op]
        if ops[-1].op == OP_DELETE:
            # Deleted locally since: gone on both sides, nothing to decide.
            applier._drop_ops(conn, key)
            shadow.delete_many(conn, table.name, [key])
            o.kind = "settled"
            return
        if refused:
            conflict, outcome = applier.conflict(key, None, local, ops, known), "remote"
            applier._drop_ops(conn, key)
            conflict = dataclasses.replace(conflict, resolution=outcome)
            log.warning("%s %s: the server refuses to re-create a row it deleted; "
                        "its delete stands", table.name, key)
        else:
            conflict, outcome = applier._resolve(conn, key, {}, None, local, ops, known, now)
        if outcome == "remote":
            applier._delete_row(conn, key)
            shadow.delete_many(conn, table.name, [key])
        else:
            shadow.write_many(conn, [applier.deleted_shadow(key, now)])
        self.emit_later.append(conflict)
        o.kind = "resolved"

    def _write_back(self, conn: Connection, successes: Sequence[_Outcome], now: float) -> None:
        """Write the server's answers to the rows and the shadow, without capture."""
        shadows: list[dict[str, Any]] = []
        gone: dict[str, list[str]] = {}
        by_table: dict[str, list[_Outcome]] = {}
        for o in successes:
            by_table.setdefault(o.op.table_name, []).append(o)
        for table_name, outs in by_table.items():
            table = self.routes[table_name]
            info = table.info
            # The rows first, then their pending ops: the order the
            # application's flush takes its locks in.
            if conn.dialect.name != "sqlite":
                self._select_rows(conn, info, [o.op.row_key for o in outs], lock=True)
            masks = ob.pending_masks(conn, table_name, [o.op.row_key for o in outs],
                                     [o.op.id for o in outs])
            for o in outs:
                op = o.op
                if op.op == OP_DELETE:
                    gone.setdefault(table_name, []).append(op.row_key)
                    continue
                server_row = o.server_row if isinstance(o.server_row, dict) else None
                key = op.row_key
                state: Any = server_row if server_row is not None else o.sent_item
                version = None
                if o.answer is not None:
                    version = o.answer.headers.get("ETag")
                vf = table.routes.version_field
                if version is None and server_row is not None and vf and vf in server_row:
                    version = str(server_row[vf])
                if server_row is not None:
                    try:
                        values = table.columns_of(server_row)
                    except (TypeError, ValueError) as exc:
                        log.warning("%s %s: answer not written back: %s", table_name, key, exc)
                        values = {}
                    local = o.local_row or {}
                    new_pk = tuple(values.get(k, local.get(k)) for k in info.pk_keys)
                    new_key = info.encode_key(new_pk)
                    mask = masks.get(op.row_key, 0)
                    if new_key != key and all(v is not None for v in new_pk):
                        if self._remap(conn, table, key, new_key):
                            # Merged into the pulled copy: protect what the
                            # copy's own pending ops changed too.
                            local = {}
                            mask |= ob.pending_masks(conn, table_name, [new_key],
                                                     [op.id]).get(new_key, 0)
                        key = new_key
                    changes = {
                        k: v for k, v in values.items()
                        if k not in info.pk_keys and not (mask & info.bits[k])
                        and local.get(k) != v
                    }
                    if changes:
                        pk_cols = [info.columns[k] for k in info.pk_keys]
                        try:
                            # A savepoint: an answer the database refuses (a NULL in
                            # a NOT NULL column, say) must not undo the other ops.
                            with conn.begin_nested():
                                conn.execute(
                                    update(info.table)
                                    .where(and_(*(c == v for c, v in zip(
                                        pk_cols, info.decode_key(key)))))
                                    .values({info.columns[k].name: v
                                             for k, v in changes.items()})
                                )
                        except SQLAlchemyError as exc:
                            log.warning("%s %s: the server's answer was not written back: %s",
                                        table_name, key, exc)
                shadows.append({"table_name": table_name, "row_key": key, "server_key": key,
                                "version": version, "state": state, "synced_at": now})
        # One shadow per row: two outcomes of one wave may name one row (a
        # create whose answer was lost and an edit of its pulled copy).
        shadow.upsert_many(conn, list({(r["table_name"], r["row_key"]): r
                                       for r in shadows}.values()))
        for table_name, keys in gone.items():
            shadow.delete_many(conn, table_name, keys)

    def _remap(self, conn: Connection, table: TableRoutes, old: str, new: str) -> bool:
        """Give a row the key the server assigned: in the row, its children's
        foreign keys, its pending ops and the shadow.

        When a pull already brought the server's copy of the row in under the
        new key (the create's first answer was lost), the two become one: the
        copy keeps the columns the offline row's later ops did not change,
        the offline row's edits win, and the two rows' pending ops are folded.

        :return: whether the new key was taken by such a copy.
        """
        info = table.info
        old_pk = info.decode_key(old)
        new_pk = info.decode_key(new)
        pk_cols = [info.columns[k] for k in info.pk_keys]

        def where(values: Sequence[Any]) -> Any:
            return and_(*(c == v for c, v in zip(pk_cols, values)))

        children = self._children.get(info.table_name, [])
        taken = bool(conn.execute(select(exists().where(where(new_pk)))).scalar())
        ops = conn.execute(
            select(outbox).where(outbox.c.table_name == info.table_name,
                                 outbox.c.row_key == old, outbox.c.status == STATUS_PENDING)
            .order_by(outbox.c.id)
        ).all()
        referenced = any(
            conn.execute(select(exists().where(and_(
                *(child.columns[k] == v for k, v in zip(keys, old_pk)))))).scalar()
            for child, keys in children
        )
        row = conn.execute(select(info.table).where(where(old_pk))).mappings().first()
        open_op = conn.execute(
            select(outbox).where(outbox.c.table_name == info.table_name,
                                 outbox.c.row_key == new, outbox.c.lane == 0,
                                 outbox.c.status == STATUS_PENDING)
        ).first()
        if open_op is not None and open_op.op == OP_DELETE:
            # The user deleted the server's copy of this row: the row goes.
            taken = True
            row = None
        if taken:
            # Columns edited on the offline row win, unless the copy's own
            # pending ops changed them later.
            edited, edited_at = 0, 0.0
            for op_row in ops:
                if op_row.op == OP_UPDATE:
                    edited |= op_row.changed
                    edited_at = max(edited_at, op_row.changed_at)
            copy_ops = conn.execute(
                select(outbox.c.op, outbox.c.changed, outbox.c.changed_at).where(
                    outbox.c.table_name == info.table_name, outbox.c.row_key == new,
                    outbox.c.status == STATUS_PENDING)).all()
            for op_row in copy_ops:
                if op_row.changed_at > edited_at:
                    edited &= ~(op_row.changed if op_row.op == OP_UPDATE else -1)
            deleted = [op_row for op_row in ops if op_row.op == OP_DELETE and op_row.lane == 0]
            if row is None and deleted and all(
                    deleted[0].changed_at >= c.changed_at for c in copy_ops):
                # The user deleted the offline row (and did not touch the copy
                # since): the copy goes too; the delete follows to the server.
                conn.execute(delete(info.table).where(where(new_pk)))
            elif row is None and deleted:
                # The copy was edited after the offline row was deleted: the
                # later change wins, the delete is dropped.
                conn.execute(delete(outbox).where(outbox.c.id == deleted[0].id))
                ops = [op_row for op_row in ops if op_row.id != deleted[0].id]
            if row is not None and edited:
                conn.execute(update(info.table).where(where(new_pk)).values(
                    {info.columns[k].name: row[info.columns[k].name]
                     for k in info.changed_keys(edited) if k not in info.pk_keys}))
        elif row is not None and referenced:
            # Copy, re-point the children, delete: works with foreign keys
            # enforced and without ON UPDATE CASCADE.
            copy = dict(row)
            for col, value in zip(pk_cols, new_pk):
                copy[col.name] = value
            conn.execute(insert(info.table).values(copy))
        if taken or referenced:
            for child, keys in children:
                conn.execute(
                    update(child.table)
                    .where(and_(*(child.columns[k] == v for k, v in zip(keys, old_pk))))
                    .values({child.columns[k].name: v for k, v in zip(keys, new_pk)})
                )
            conn.execute(delete(info.table).where(where(old_pk)))
        elif row is not None:
            conn.execute(
                update(info.table).where(where(old_pk))
                .values({c.name: v for c, v in zip(pk_cols, new_pk)})
            )
        # Later ops of the row follow it; a stored state gets the new key.
        for op_row in ops:
            values: dict[str, Any] = {"row_key": new}
            if op_row.state is not None:
                state = loads(op_row.state)
                state.update(info.encode_row(dict(zip(info.pk_keys, new_pk))))
                values["state"] = dumps(state)
            if open_op is not None and op_row.lane == 0:
                # Both rows have an open op: fold them into the copy's, as
                # capture would have folded the changes of one row.
                self._fold(conn, info, open_op, op_row, values.get("state"), new_pk)
                continue
            conn.execute(update(outbox).where(outbox.c.id == op_row.id).values(values))
        shadow.rekey(conn, info.table_name, old, new)
        log.info("%s %s is %s on the server", info.table_name, old, new)
        return taken

    def _fold(self, conn: Connection, info: ModelInfo, into: Any, op_row: Any,
              state: str | None, pk: Sequence[Any]) -> None:
        """Fold the open op ``op_row`` of an offline row into ``into``, the open
        op of the server's copy of the same row; a delete on either side wins."""
        conn.execute(delete(outbox).where(outbox.c.id == op_row.id))
        if into.op == OP_DELETE:
            return
        if op_row.op == OP_DELETE:
            conn.execute(update(outbox).where(outbox.c.id == into.id).values(
                op=OP_DELETE, state=state, changed=0,
                changed_at=max(into.changed_at, op_row.changed_at)))
            pk_cols = [info.columns[k] for k in info.pk_keys]
            conn.execute(delete(info.table).where(and_(*(c == v for c, v in zip(pk_cols, pk)))))
            return
        conn.execute(update(outbox).where(outbox.c.id == into.id).values(
            changed=into.changed | op_row.changed if into.op == OP_UPDATE else into.changed,
            changed_at=max(into.changed_at, op_row.changed_at)))


_ROUTE_OF = {OP_INSERT: "create", OP_UPDATE: "update", OP_DELETE: "delete"}


def _excerpt(body: Any) -> str:
    if body is None:
        return ""
    text = body if isinstance(body, str) else repr(body)
    return ": " + (text[:300] + "..." if len(text) > 300 else text)
