"""Server-side data and the REST contract's data rules, independent of any web framework.

The reference backend stands in for "an existing REST API" that sqla_sync pushes its
outbox to and pulls changes from. :class:`Store` owns everything that API remembers:

* the ``posts`` and ``comments`` rows (SQLAlchemy 2 typed models on SQLite; in memory by
  default), with ``updatedAt`` as integer milliseconds, an integer ``version`` bumped on
  every write, and an optional tombstone flag;
* a deletions log, so the ``/deleted`` feed works whether deletes are soft or hard;
* the server clock (real time, strictly increasing, freezable by tests);
* the accepted bearer token, the Idempotency-Key response cache and the request log;
* the :class:`~examples.server.faults.Faults` switch (so one ``reset`` clears all).

Every public method takes ``self.lock`` (re-entrant), so the HTTP layer may also hold the
lock across several calls to make "check idempotency key, do the work, remember the
answer" atomic. Rows go in and out as JSON-ready dicts in the wire shape
(``{"id", "title", "body", "updatedAt", "version", "deleted"}``), with ``updatedAt`` in
the configured timestamp format.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Index,
    Integer,
    String,
    Text,
    and_,
    create_engine,
    delete,
    func,
    or_,
    select,
    true,
)
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from .faults import Faults

IdMode = Literal["client", "server"]
FilterMode = Literal["strict", "inclusive"]
TsFormat = Literal["iso", "epoch_s", "epoch_ms"]
#: A row id as the API shows it: a string in client-id mode, an int in server-id mode.
RowId = str | int
#: A stored response for Idempotency-Key replay: (status, headers, body).
StoredResponse = tuple[int, list[tuple[str, str]], bytes]
#: A row (or log entry) in wire shape. Aliases keep ``Store.list`` from shadowing
#: the builtin inside the class's annotations.
JsonObject = dict[str, Any]
JsonObjects = list[JsonObject]
JsonKeys = list[str]

RESOURCES: tuple[str, ...] = ("posts", "comments")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


# --------------------------------------------------------------------------- errors


class StoreError(Exception):
    """A contract-level failure that maps to one HTTP status and JSON body."""

    status = 500

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload.get("error", "error"))
        self.payload = payload


class NotFound(StoreError):
    """The row does not exist, or is a tombstone (404)."""

    status = 404

    def __init__(self) -> None:
        super().__init__({"error": "not found"})


class Exists(StoreError):
    """A create named a client id that is already taken (409)."""

    status = 409

    def __init__(self) -> None:
        super().__init__({"error": "exists"})


class PreconditionFailed(StoreError):
    """``If-Match`` named another version than the current one (412)."""

    status = 412

    def __init__(self, current: dict[str, Any]) -> None:
        super().__init__({"error": "precondition failed", "current": current})
        self.current = current


class Invalid(StoreError):
    """The request's data breaks the contract (400)."""

    status = 400

    def __init__(self, detail: str, field: str | None = None) -> None:
        payload: dict[str, Any] = {"error": "invalid", "detail": detail}
        if field is not None:
            payload["field"] = field
        super().__init__(payload)


# --------------------------------------------------------------------------- models


class Base(DeclarativeBase):
    """Declarative base of the backend's own tables (not the library's)."""


class SyncRow(Base):
    """Columns every synced resource has.

    ``id`` is the primary key as text in both id modes; ``id_num`` holds the integer id
    in server-id mode so ordering and keyset comparisons are numeric there.
    """

    __abstract__ = True

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    id_num: Mapped[int | None] = mapped_column(BigInteger, default=None)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer, default=1)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class PostRow(SyncRow):
    """A ``posts`` row."""

    __tablename__ = "posts"
    __table_args__ = (Index("ix_posts_sync_order", "updated_at", "id_num", "id"),)

    title: Mapped[str | None] = mapped_column(Text, default=None)
    body: Mapped[str | None] = mapped_column(Text, default=None)


class CommentRow(SyncRow):
    """A ``comments`` row; ``post_id`` is stored as text and shown per id mode."""

    __tablename__ = "comments"
    __table_args__ = (Index("ix_comments_sync_order", "updated_at", "id_num", "id"),)

    post_id: Mapped[str | None] = mapped_column(String(255), default=None)
    content: Mapped[str | None] = mapped_column(Text, default=None)


class DeletionRow(Base):
    """One entry of the deletions log behind ``GET /api/R/deleted``."""

    __tablename__ = "deletions"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource: Mapped[str] = mapped_column(String(32), index=True)
    row_id: Mapped[str] = mapped_column(String(255))
    row_id_num: Mapped[int | None] = mapped_column(BigInteger, default=None)
    deleted_at: Mapped[int] = mapped_column(BigInteger)


@dataclass(frozen=True)
class FieldSpec:
    """One client-writable field: its JSON name, model attribute and kind."""

    json_name: str
    attr: str
    kind: Literal["text", "ref"]


@dataclass(frozen=True)
class ResourceSpec:
    """A resource's model and client-writable fields."""

    name: str
    model: type[SyncRow]
    fields: tuple[FieldSpec, ...]


SPECS: dict[str, ResourceSpec] = {
    "posts": ResourceSpec(
        "posts",
        PostRow,
        (FieldSpec("title", "title", "text"), FieldSpec("body", "body", "text")),
    ),
    "comments": ResourceSpec(
        "comments",
        CommentRow,
        (FieldSpec("postId", "post_id", "ref"), FieldSpec("content", "content", "text")),
    ),
}


@dataclass(frozen=True)
class ListResult:
    """One page of a listing.

    ``last`` is the (updatedAt ms, id) position of the page's last row, used to build
    the next cursor/keyset link; ``total`` counts every row matching ``updated_after``.
    """

    rows: list[dict[str, Any]]
    total: int
    has_more: bool
    last: tuple[int, RowId] | None


# --------------------------------------------------------------------------- store


class Store:
    """All server state and the contract's data operations; thread-safe.

    Options (the same as ``create_app``/``BackendServer`` keyword arguments):

    * ``id_mode``: ``"client"`` (POST carries a string ``id``) or ``"server"`` (ids 1,2,3…).
    * ``filter``: ``"strict"`` (``updatedAt > updated_after``) or ``"inclusive"`` (``>=``).
    * ``ts``: ``"iso"``, ``"epoch_s"`` or ``"epoch_ms"`` — how timestamps go over the wire.
    * ``tombstones``: soft deletes that keep listing the row with ``deleted: true``
      (True) or hard deletes (False).
    * ``token``: bearer token required on ``/api`` (None = no auth).
    * ``delay_ms``: latency added to every ``/api`` answer (read by the HTTP layer).
    * ``database_url``: SQLAlchemy URL; default is a private in-memory SQLite database.
    """

    def __init__(
        self,
        *,
        id_mode: IdMode = "client",
        filter: FilterMode = "strict",
        ts: TsFormat = "iso",
        tombstones: bool = True,
        token: str | None = None,
        delay_ms: float = 0,
        database_url: str = "sqlite://",
    ) -> None:
        if id_mode not in ("client", "server"):
            raise ValueError(f"id_mode must be 'client' or 'server', not {id_mode!r}")
        if filter not in ("strict", "inclusive"):
            raise ValueError(f"filter must be 'strict' or 'inclusive', not {filter!r}")
        if ts not in ("iso", "epoch_s", "epoch_ms"):
            raise ValueError(f"ts must be 'iso', 'epoch_s' or 'epoch_ms', not {ts!r}")
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        self.id_mode: IdMode = id_mode
        self.filter_mode: FilterMode = filter
        self.ts_format: TsFormat = ts
        self.tombstones = bool(tombstones)
        self.delay_ms = float(delay_ms)
        self.faults = Faults()
        self.lock = threading.RLock()
        self._token = token
        if database_url.startswith("sqlite"):
            self._engine = create_engine(
                database_url,
                poolclass=StaticPool,
                connect_args={"check_same_thread": False},
            )
        else:
            self._engine = create_engine(database_url)
        Base.metadata.create_all(self._engine)
        self._frozen: int | None = None
        self._last_tick = 0
        self._next_id = dict.fromkeys(RESOURCES, 1)
        self._idempotency: dict[str, StoredResponse] = {}
        self._requests: JsonObjects = []

    @property
    def options(self) -> dict[str, Any]:
        """The options this store runs with (token excluded)."""
        return {
            "id_mode": self.id_mode,
            "filter": self.filter_mode,
            "ts": self.ts_format,
            "tombstones": self.tombstones,
            "delay_ms": self.delay_ms,
        }

    # ------------------------------------------------------------------ lifecycle

    def reset(self) -> None:
        """Empty rows, deletions log, idempotency cache, request log and faults.

        Also unfreezes the clock and restarts server ids at 1, so tests that reset
        between cases do not leak a frozen clock. The token and options are kept.
        """
        with self.lock:
            with Session(self._engine) as s, s.begin():
                for spec in SPECS.values():
                    s.execute(delete(spec.model))
                s.execute(delete(DeletionRow))
            self._idempotency.clear()
            self._requests.clear()
            self._next_id = dict.fromkeys(RESOURCES, 1)
            self._frozen = None
            self.faults.clear()

    def close(self) -> None:
        """Release the database engine."""
        self._engine.dispose()

    # ------------------------------------------------------------------ clock

    def now_ms(self) -> int:
        """Current server time in ms without consuming a tick."""
        with self.lock:
            if self._frozen is not None:
                return self._frozen
            return max(time.time_ns() // 1_000_000, self._last_tick)

    def _tick(self) -> int:
        """Timestamp for one write: the frozen value, else strictly increasing real ms."""
        if self._frozen is not None:
            return self._frozen
        now = time.time_ns() // 1_000_000
        if now <= self._last_tick:
            now = self._last_tick + 1
        self._last_tick = now
        return now

    def freeze_clock(self, ms: int | None) -> None:
        """Freeze the clock at ``ms`` (every write gets that timestamp); None unfreezes.

        After unfreezing the clock resumes at max(real time, last value issued + 1), so
        it never goes backwards past a frozen value.
        """
        with self.lock:
            if ms is None:
                if self._frozen is not None:
                    self._last_tick = max(self._last_tick, self._frozen)
                self._frozen = None
            else:
                self._frozen = int(ms)

    def advance_clock(self, ms: int) -> int:
        """Move a frozen clock forward by ``ms`` and return the new value."""
        with self.lock:
            if self._frozen is None:
                raise ValueError("the clock is not frozen")
            self._frozen += int(ms)
            return self._frozen

    def clock_state(self) -> dict[str, Any]:
        """``{"now": ms, "frozen": bool, "now_wire": <now in the ts format>}``."""
        with self.lock:
            now = self.now_ms()
            return {"now": now, "frozen": self._frozen is not None,
                    "now_wire": self.format_ts(now)}

    # ------------------------------------------------------------------ timestamps

    def format_ts(self, ms: int) -> str | int | float:
        """Render integer ms in the configured wire format."""
        if self.ts_format == "epoch_ms":
            return ms
        if self.ts_format == "epoch_s":
            return ms / 1000
        moment = _EPOCH + timedelta(milliseconds=ms)
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"

    def parse_ts(self, value: Any, name: str = "timestamp") -> int:
        """Parse a wire timestamp to integer ms; raises :class:`Invalid`.

        Accepts the configured format; in ``iso`` mode any ISO 8601 string (naive means
        UTC) and also a bare number, read as epoch ms (what ``new Date(n)`` means).
        """
        if isinstance(value, bool):
            raise Invalid(f"{name} must be a timestamp", name)
        if isinstance(value, (int, float)):
            number: float = value
        elif isinstance(value, str) and _NUMBER.match(value.strip()):
            number = float(value)
        elif isinstance(value, str) and self.ts_format == "iso":
            return self._parse_iso(value, name)
        else:
            raise Invalid(f"{name} is not a valid {self.ts_format} timestamp", name)
        if self.ts_format == "epoch_s":
            return round(number * 1000)
        return round(number)

    @staticmethod
    def _parse_iso(value: str, name: str) -> int:
        """ISO 8601 string to ms, flooring sub-millisecond digits."""
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise Invalid(f"{name} is not a valid ISO 8601 timestamp", name) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        delta = moment - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000

    # ------------------------------------------------------------------ ids

    def normalize_id(self, value: Any) -> RowId | None:
        """Turn a path or body id into this mode's id type; None if it cannot be one."""
        if self.id_mode == "client":
            return value if isinstance(value, str) and value != "" else None
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        return None

    def _spec(self, resource: str) -> ResourceSpec:
        try:
            return SPECS[resource]
        except KeyError:
            raise ValueError(f"unknown resource {resource!r}") from None

    def _key_col(self, spec: ResourceSpec) -> InstrumentedAttribute[Any]:
        """Column rows are ordered by after updatedAt: numeric id or text id."""
        model = spec.model
        return cast(
            InstrumentedAttribute[Any], model.id_num if self.id_mode == "server" else model.id
        )

    def _find(self, s: Session, spec: ResourceSpec, row_id: Any) -> SyncRow | None:
        key = self.normalize_id(row_id)
        if key is None:
            return None
        return s.get(spec.model, str(key))

    def _live(self, s: Session, spec: ResourceSpec, row_id: Any) -> SyncRow:
        row = self._find(s, spec, row_id)
        if row is None or row.deleted:
            raise NotFound()
        return row

    # ------------------------------------------------------------------ row <-> json

    def to_json(self, spec: ResourceSpec, row: SyncRow) -> dict[str, Any]:
        """A row in wire shape."""
        out: dict[str, Any] = {"id": row.id_num if self.id_mode == "server" else row.id}
        for f in spec.fields:
            value = getattr(row, f.attr)
            if f.kind == "ref" and value is not None and self.id_mode == "server":
                value = int(value)
            out[f.json_name] = value
        out["updatedAt"] = self.format_ts(row.updated_at)
        out["version"] = row.version
        out["deleted"] = row.deleted
        return out

    def _coerce(self, f: FieldSpec, value: Any) -> str | None:
        """Validate one client-writable field value; storage is text."""
        if value is None:
            return None
        if f.kind == "text":
            if not isinstance(value, str):
                raise Invalid(f"{f.json_name} must be a string or null", f.json_name)
            return value
        key = self.normalize_id(value)
        if key is None:
            kind = "a string" if self.id_mode == "client" else "an integer"
            raise Invalid(f"{f.json_name} must be {kind} or null", f.json_name)
        return str(key)

    def _field_values(
        self, spec: ResourceSpec, body: Mapping[str, Any], *, partial: bool
    ) -> dict[str, str | None]:
        """Values for the model from a body; missing fields become null unless partial."""
        values: dict[str, str | None] = {}
        for f in spec.fields:
            if f.json_name in body:
                values[f.attr] = self._coerce(f, body[f.json_name])
            elif not partial:
                values[f.attr] = None
        return values

    @staticmethod
    def _require_object(body: Any) -> Mapping[str, Any]:
        if not isinstance(body, Mapping):
            raise Invalid("the request body must be a JSON object")
        return body

    @staticmethod
    def if_match_ok(version: int, if_match: str | int | None) -> bool:
        """True when an ``If-Match`` value (``"3"``, ``3``, ``W/"3"``, ``*``, lists) fits."""
        if if_match is None:
            return True
        if isinstance(if_match, int):
            return if_match == version
        for part in if_match.split(","):
            tag = part.strip()
            if tag == "*":
                return True
            if tag.startswith("W/"):
                tag = tag[2:]
            if tag.strip('"') == str(version):
                return True
        return False

    def _check(self, spec: ResourceSpec, row: SyncRow, if_match: str | int | None) -> None:
        if not self.if_match_ok(row.version, if_match):
            raise PreconditionFailed(self.to_json(spec, row))

    def _bump(self, row: SyncRow, values: Mapping[str, Any]) -> int:
        """Apply values as a new write: new updatedAt, version + 1. Returns the tick."""
        for attr, value in values.items():
            setattr(row, attr, value)
        tick = self._tick()
        row.updated_at = tick
        row.version += 1
        return tick

    def _log_deletion(self, s: Session, spec: ResourceSpec, row: SyncRow, at: int) -> None:
        s.add(DeletionRow(resource=spec.name, row_id=row.id, row_id_num=row.id_num,
                          deleted_at=at))

    def _filter_clause(self, spec: ResourceSpec, updated_after: int | None) -> ColumnElement[bool]:
        model = spec.model
        if updated_after is None:
            return true()
        if self.filter_mode == "strict":
            return model.updated_at > updated_after
        return model.updated_at >= updated_after

    # ------------------------------------------------------------------ contract ops

    def list(
        self,
        resource: str,
        *,
        updated_after: int | None = None,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
        after: tuple[int, RowId] | None = None,
    ) -> ListResult:
        """One page of rows (tombstones included) ordered by (updatedAt, id).

        ``updated_after`` (ms) filters strictly or inclusively per the ``filter``
        option; ``after`` = (ms, id) keeps rows strictly after that position;
        ``offset`` skips rows; ``limit`` is clamped to 1..1000.
        """
        spec = self._spec(resource)
        limit = max(1, min(int(limit), MAX_LIMIT))
        model = spec.model
        key_col = self._key_col(spec)
        where = self._filter_clause(spec, updated_after)
        with self.lock, Session(self._engine) as s:
            total = s.scalar(select(func.count()).select_from(model).where(where)) or 0
            query = select(model).where(where)
            if after is not None:
                ts, key = after
                query = query.where(
                    or_(model.updated_at > ts, and_(model.updated_at == ts, key_col > key))
                )
            query = query.order_by(model.updated_at, key_col).offset(max(0, offset))
            found = list(s.scalars(query.limit(limit + 1)))
            has_more = len(found) > limit
            page = found[:limit]
            rows = [self.to_json(spec, r) for r in page]
            last: tuple[int, RowId] | None = None
            if page:
                tail = page[-1]
                tail_id = tail.id_num if self.id_mode == "server" else tail.id
                last = (tail.updated_at, tail_id if tail_id is not None else tail.id)
            return ListResult(rows, total, has_more, last)

    def get(self, resource: str, row_id: Any, *, include_deleted: bool = False
            ) -> dict[str, Any] | None:
        """The row, or None if absent (or a tombstone, unless ``include_deleted``)."""
        spec = self._spec(resource)
        with self.lock, Session(self._engine) as s:
            row = self._find(s, spec, row_id)
            if row is None or (row.deleted and not include_deleted):
                return None
            return self.to_json(spec, row)

    def create(self, resource: str, body: Any) -> dict[str, Any]:
        """Insert a row from a POST body (version 1). Raises Invalid or Exists."""
        spec = self._spec(resource)
        data = self._require_object(body)
        with self.lock, Session(self._engine) as s, s.begin():
            values = self._field_values(spec, data, partial=False)
            if self.id_mode == "client":
                key = self.normalize_id(data.get("id"))
                if key is None:
                    raise Invalid("id must be a non-empty string", "id")
                if s.get(spec.model, str(key)) is not None:
                    raise Exists()
                row = spec.model(id=str(key), id_num=None)
            else:
                number = self._next_id[resource]
                self._next_id[resource] = number + 1
                row = spec.model(id=str(number), id_num=number)
            for attr, value in values.items():
                setattr(row, attr, value)
            row.updated_at = self._tick()
            row.version = 1
            row.deleted = False
            s.add(row)
            s.flush()
            return self.to_json(spec, row)

    def update(self, resource: str, row_id: Any, body: Any, *,
               if_match: str | int | None = None) -> dict[str, Any]:
        """PUT: replace every client-writable field (missing ones become null)."""
        return self._write(resource, row_id, body, if_match=if_match, partial=False)

    def patch(self, resource: str, row_id: Any, body: Any, *,
              if_match: str | int | None = None) -> dict[str, Any]:
        """PATCH: change only the fields present in the body."""
        return self._write(resource, row_id, body, if_match=if_match, partial=True)

    def _write(self, resource: str, row_id: Any, body: Any, *, if_match: str | int | None,
               partial: bool) -> dict[str, Any]:
        spec = self._spec(resource)
        data = self._require_object(body)
        with self.lock, Session(self._engine) as s, s.begin():
            row = self._live(s, spec, row_id)
            self._check(spec, row, if_match)
            self._bump(row, self._field_values(spec, data, partial=partial))
            s.flush()
            return self.to_json(spec, row)

    def delete(self, resource: str, row_id: Any, *, if_match: str | int | None = None) -> None:
        """Tombstone (bump updatedAt/version, ``deleted: true``) or hard-delete; log it."""
        spec = self._spec(resource)
        with self.lock, Session(self._engine) as s, s.begin():
            row = self._live(s, spec, row_id)
            self._check(spec, row, if_match)
            if self.tombstones:
                tick = self._bump(row, {"deleted": True})
            else:
                tick = self._tick()
                s.delete(row)
            self._log_deletion(s, spec, row, tick)

    def deletions(self, resource: str, since: int | None = None) -> JsonObjects:
        """Deletions log entries ``{"id", "deletedAt"}`` strictly after ``since`` (ms)."""
        spec = self._spec(resource)
        query = select(DeletionRow).where(DeletionRow.resource == spec.name)
        if since is not None:
            query = query.where(DeletionRow.deleted_at > since)
        query = query.order_by(DeletionRow.deleted_at, DeletionRow.seq)
        with self.lock, Session(self._engine) as s:
            return [
                {
                    "id": d.row_id_num if self.id_mode == "server" else d.row_id,
                    "deletedAt": self.format_ts(d.deleted_at),
                }
                for d in s.scalars(query)
            ]

    # ------------------------------------------------------------------ admin ops

    def seed(self, resource: str, rows: Iterable[Mapping[str, Any]]) -> JsonObjects:
        """Insert (or overwrite) rows as given, bypassing the write rules.

        Each row may carry ``updatedAt`` (wire format; default: the clock), ``version``
        (default 1) and ``deleted`` (default false; a seeded tombstone also enters the
        deletions log). Client mode needs a string ``id``; server mode takes an
        integer ``id`` or assigns the next one.
        """
        spec = self._spec(resource)
        out: JsonObjects = []
        with self.lock, Session(self._engine) as s, s.begin():
            for raw in rows:
                data = self._require_object(raw)
                if self.id_mode == "client" or data.get("id") is not None:
                    key = self.normalize_id(data.get("id"))
                    if key is None:
                        raise Invalid("seeded rows need a valid id", "id")
                else:
                    key = self._next_id[resource]
                if isinstance(key, int):
                    self._next_id[resource] = max(self._next_id[resource], key + 1)
                row = s.get(spec.model, str(key))
                if row is None:
                    row = spec.model(id=str(key), id_num=key if isinstance(key, int) else None)
                    s.add(row)
                for attr, value in self._field_values(spec, data, partial=False).items():
                    setattr(row, attr, value)
                stamp = data.get("updatedAt")
                row.updated_at = (
                    self._tick() if stamp is None else self.parse_ts(stamp, "updatedAt")
                )
                row.version = int(data.get("version", 1))
                row.deleted = bool(data.get("deleted", False))
                if row.deleted:
                    self._log_deletion(s, spec, row, row.updated_at)
                s.flush()
                out.append(self.to_json(spec, row))
        return out

    def rows(self, resource: str) -> JsonObjects:
        """Every row including tombstones, ordered by id."""
        spec = self._spec(resource)
        with self.lock, Session(self._engine) as s:
            query = select(spec.model).order_by(self._key_col(spec))
            return [self.to_json(spec, r) for r in s.scalars(query)]

    def count(self, resource: str, *, include_deleted: bool = True) -> int:
        """Number of stored rows (optionally without tombstones)."""
        spec = self._spec(resource)
        query = select(func.count()).select_from(spec.model)
        if not include_deleted:
            query = query.where(spec.model.deleted.is_(False))
        with self.lock, Session(self._engine) as s:
            return s.scalar(query) or 0

    def admin_patch(self, resource: str, row_id: Any, fields: Any) -> dict[str, Any]:
        """Edit a row as another client would: given fields change, updatedAt and
        version bump. Works on tombstones too; ``"deleted"`` may be set."""
        spec = self._spec(resource)
        data = self._require_object(fields)
        with self.lock, Session(self._engine) as s, s.begin():
            row = self._find(s, spec, row_id)
            if row is None:
                raise NotFound()
            values: dict[str, Any] = dict(self._field_values(spec, data, partial=True))
            newly_deleted = False
            if "deleted" in data:
                newly_deleted = bool(data["deleted"]) and not row.deleted
                values["deleted"] = bool(data["deleted"])
            tick = self._bump(row, values)
            if newly_deleted:
                self._log_deletion(s, spec, row, tick)
            s.flush()
            return self.to_json(spec, row)

    def admin_delete(self, resource: str, row_id: Any) -> None:
        """Delete as another client would (tombstone or hard, per the mode)."""
        self.delete(resource, row_id)

    # ------------------------------------------------------------------ auth

    @property
    def token(self) -> str | None:
        """The bearer token ``/api`` requires, or None when auth is off."""
        return self._token

    def set_token(self, token: str | None) -> None:
        """Rotate the accepted token (None turns auth off)."""
        with self.lock:
            self._token = token

    def authorized(self, authorization: str | None) -> bool:
        """True when auth is off or the header is ``Bearer <token>``."""
        token = self._token
        if token is None:
            return True
        if not authorization:
            return False
        scheme, _, given = authorization.strip().partition(" ")
        return scheme.lower() == "bearer" and given.strip() == token

    # ------------------------------------------------------------------ idempotency

    def remembered(self, key: str) -> StoredResponse | None:
        """The response stored under an Idempotency-Key, if any."""
        with self.lock:
            return self._idempotency.get(key)

    def remember(self, key: str, response: StoredResponse) -> None:
        """Store the response to replay for a later request with the same key."""
        with self.lock:
            self._idempotency[key] = response

    def idempotency_keys(self) -> JsonKeys:
        """Keys currently remembered."""
        with self.lock:
            return list(self._idempotency)

    # ------------------------------------------------------------------ request log

    def record_request(self, entry: dict[str, Any]) -> None:
        """Append one request to the log, numbering it (``seq`` from 1)."""
        with self.lock:
            entry["seq"] = len(self._requests) + 1
            self._requests.append(entry)

    def requests(self, method: str | None = None, path: str | None = None
                 ) -> JsonObjects:
        """Copies of logged requests, optionally only one method / raw path prefix."""
        with self.lock:
            return [
                copy.deepcopy(e)
                for e in self._requests
                if (method is None or e["method"] == method.upper())
                and (path is None or str(e["path"]).startswith(path))
            ]

    def clear_requests(self) -> None:
        """Forget the request log."""
        with self.lock:
            self._requests.clear()
