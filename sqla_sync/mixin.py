"""The :class:`Syncable` mixin and the per-model facts capture needs.

Marking a declarative model with ``Syncable`` is all a model needs::

    class Post(Syncable, Base):
        __tablename__ = "posts"
        id: Mapped[str] = mapped_column(primary_key=True)
        title: Mapped[str]

When the model's mapper is constructed, a :class:`ModelInfo` is computed once
(column keys, primary key, a bit per column for change masks, a JSON codec per
column) so that no flush ever has to inspect the mapper again.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from json.encoder import encode_basestring
from typing import Any, ClassVar

from sqlalchemy import event, inspect
from sqlalchemy.orm import Mapper
from sqlalchemy.sql.schema import Column, Table

from .codec import Codec, codec_for, dumps, loads
from .errors import ConfigurationError, ReadOnlyTableError, UntrackedSessionError

__all__ = ["ModelInfo", "Syncable", "model_info", "synced_models"]

#: Bits 0..61 name one column each; bit 62 stands for every column past the 62nd.
_MAX_BITS = 62

_MODEL_ATTR = "__sqla_sync_model__"
#: The synced models (their ModelInfo) that are read-only now (see
#: ``ModelInfo.read_only``): while it is empty a tracked session's flush
#: guard returns at once.
READ_ONLY_MODELS: set[Any] = set()
TRACKED_ATTR = "_sqla_sync_tracked"
TRACKED_KEY = "sqla_sync.tracked"
SUPPRESS_KEY = "sqla_sync.suppress"


class ModelInfo:
    """What capture, push and pull need to know about one synced model.

    :ivar table_name: the key of the model in routes and in the outbox.
    :ivar keys: attribute keys of the synced columns, in mapper order.
    :ivar pk_keys: attribute keys of the primary key columns.
    :ivar codecs: JSON codec per attribute key.
    :ivar bits: change-mask bit per attribute key.
    """

    __slots__ = (
        "_depth",
        "_parents",
        "_read_only",
        "all_bits",
        "bits",
        "codecs",
        "column_names",
        "columns",
        "impls",
        "keys",
        "mapper",
        "pk_bits",
        "pk_codecs",
        "pk_keys",
        "table",
        "table_name",
    )

    def __init__(self, mapper: Mapper[Any]) -> None:
        table = mapper.local_table
        if not isinstance(table, Table):
            raise ConfigurationError(
                f"{mapper.class_.__name__} is Syncable but is not mapped to a Table; "
                "map synced models to a plain table"
            )
        self.mapper = mapper
        self.table = table
        # A plain str: drivers adapt str subclasses (quoted_name) slowly, per parameter.
        self.table_name: str = str(table.name)
        keys: list[str] = []
        columns: dict[str, Column[Any]] = {}
        # Mapper.columns is keyed by attribute name and, unlike column_attrs,
        # does not configure the registry (relationships may not resolve yet).
        for key, column in mapper.columns.items():
            if isinstance(column, Column) and column.table is table and key not in columns:
                keys.append(key)
                columns[key] = column
        self.keys: tuple[str, ...] = tuple(keys)
        self.columns = columns
        self.column_names = {key: col.name for key, col in columns.items()}
        self.codecs: dict[str, Codec] = {key: codec_for(col) for key, col in columns.items()}
        self.bits: dict[str, int] = {
            key: 1 << min(index, _MAX_BITS) for index, key in enumerate(keys)
        }
        self.all_bits = 0
        for bit in self.bits.values():
            self.all_bits |= bit
        by_column: dict[Any, str] = {col: key for key, col in columns.items()}
        pk_keys = [by_column[col] for col in mapper.primary_key if col in by_column]
        if not pk_keys:
            raise ConfigurationError(f"{mapper.class_.__name__} has no primary key")
        self.pk_keys: tuple[str, ...] = tuple(pk_keys)
        self.pk_codecs: tuple[Codec, ...] = tuple(self.codecs[k] for k in pk_keys)
        self.pk_bits = 0
        for key in pk_keys:
            self.pk_bits |= self.bits[key]
        # Attribute implementations exist once the registry is configured; they
        # are looked up on first use (see :meth:`impl_for`).
        self.impls: dict[str, Any] = {}
        self._depth: int | None = None
        self._read_only = False
        self._parents: list[tuple[str, tuple[str, ...]]] | None = None

    @property
    def read_only(self) -> bool:
        """Set by start_sync for a table with a pull route and no push route:
        local writes are refused at flush."""
        return self._read_only

    @read_only.setter
    def read_only(self, value: bool) -> None:
        self._read_only = value
        if value:
            READ_ONLY_MODELS.add(self)
        else:
            READ_ONLY_MODELS.discard(self)

    @property
    def depth(self) -> int:
        """Length of the longest foreign-key path to a parent table.

        Parents are captured and pushed before children.  Computed on first use,
        when every referenced table is defined.
        """
        if self._depth is None:
            self._depth = _depth(self.table, set())
        return self._depth

    @property
    def parents(self) -> list[tuple[str, tuple[str, ...]]]:
        """Foreign keys to other tables' primary keys: ``(parent table, local keys)``.

        The local attribute keys are in the order of the parent's primary key,
        so ``parent_info.encode_key(row[k] for k in keys)`` is the parent's row key.
        """
        if self._parents is None:
            by_column = {col: key for key, col in self.columns.items()}
            parents = []
            for fk in self.table.foreign_key_constraints:
                referred = fk.referred_table
                pk = list(referred.primary_key.columns)
                pairs = {elem.column: elem.parent for elem in fk.elements}
                if set(pairs) != set(pk) or not all(pairs[c] in by_column for c in pk):
                    continue
                parents.append((referred.name, tuple(by_column[pairs[c]] for c in pk)))
            self._parents = parents
        return self._parents

    def impl_for(self, key: str) -> Any:
        """The attribute implementation of ``key`` (its ``is_equal`` compares values)."""
        impl = self.impls.get(key)
        if impl is None:
            impl = self.impls[key] = self.mapper.class_manager[key].impl
        return impl

    def encode_key(self, values: Iterable[Any]) -> str:
        """The outbox/shadow text of a primary key: a JSON array of its encoded values."""
        encoded = [codec.encode(v) for codec, v in zip(self.pk_codecs, values)]
        if len(encoded) == 1:
            # The common single string or integer key, as dumps() would write it.
            only = encoded[0]
            if type(only) is str:
                return "[" + encode_basestring(only) + "]"
            if type(only) is int:
                return f"[{only}]"
        return dumps(encoded)

    def decode_key(self, text: str) -> tuple[Any, ...]:
        """The primary key values of a key text written by :meth:`encode_key`."""
        return tuple(codec.decode(v) for codec, v in zip(self.pk_codecs, loads(text)))

    def encode_row(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON-ready dict of the synced column values present in ``values``."""
        codecs = self.codecs
        return {key: codecs[key].encode(values[key]) for key in self.keys if key in values}

    def decode_row(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Column values from a JSON dict; unknown keys are ignored."""
        codecs = self.codecs
        return {key: codecs[key].decode(data[key]) for key in self.keys if key in data}

    def changed_keys(self, mask: int) -> list[str]:
        """The attribute keys a change mask names."""
        return [key for key in self.keys if mask & self.bits[key]]

    def __repr__(self) -> str:
        return f"<ModelInfo {self.table_name} keys={self.keys!r}>"


def _depth(table: Table, seen: set[Table]) -> int:
    seen = seen | {table}
    parents = {fk.column.table for fk in table.foreign_keys if fk.column.table not in seen}
    return 1 + max((_depth(p, seen) for p in parents if isinstance(p, Table)), default=-1)


def model_info(cls: type[Any]) -> ModelInfo | None:
    """The :class:`ModelInfo` of a synced mapped class, or None for any other class."""
    info = cls.__dict__.get(_MODEL_ATTR)
    return info if isinstance(info, ModelInfo) else None


def synced_models() -> Iterator[ModelInfo]:
    """Every mapped Syncable model defined so far, subclasses included."""
    seen: set[type[Any]] = set()
    stack = list(Syncable.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
        info = model_info(cls)
        if info is not None:
            yield info


def _configure(mapper: Mapper[Any], class_: type[Any]) -> None:
    setattr(class_, _MODEL_ATTR, ModelInfo(mapper))


class Syncable:
    """Mixin for declarative models whose rows are synced with a server.

    Every insert, update and delete of such a model made through a session
    given to :func:`sqla_sync.track` is recorded in the outbox in the same
    transaction.  A write through a session that is *not* tracked raises
    :class:`~sqla_sync.UntrackedSessionError` at flush: a change is never
    silently left out.
    """

    __sqla_sync_model__: ClassVar[ModelInfo | None] = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        mapper = inspect(cls, raiseerr=False)
        if isinstance(mapper, Mapper) and mapper.class_ is cls:
            _configure(mapper, cls)
        else:
            event.listen(cls, "after_mapper_constructed", _configure)
        _install_bulk_guard()


def is_tracked(session: Any) -> bool:
    """Whether ``session`` (a sync Session) has capture listeners installed."""
    return bool(session.info.get(TRACKED_KEY) or getattr(type(session), TRACKED_ATTR, False))


def refuse_read_only(info: ModelInfo) -> None:
    """Raise :class:`ReadOnlyTableError` for a local write to a pull-only table."""
    raise ReadOnlyTableError(
        f"{info.mapper.class_.__name__} (table {info.table_name!r}) is read-only: its "
        "routes pull from the server and have no push, so a local change could never be "
        "sent; add push=Push(...) to its routes or write it on the server"
    )


def _refuse_untracked(cls: type[Any]) -> None:
    raise UntrackedSessionError(
        f"{cls.__name__} is Syncable but was written through a session that "
        "sqla_sync does not track, so the change would never be synced; call "
        "sqla_sync.track() on that session, its sessionmaker or its class first"
    )


def _before_flush_guard(session: Any, flush_context: Any, instances: Any) -> None:
    # One class-level before_flush listener on Session, so that nothing is
    # written yet when it raises (an AUTOCOMMIT connection would keep it): a
    # synced row inserted, deleted or with a changed column, in a session that
    # is not tracked or of a read-only model.  A tracked session returns after
    # one lookup while no model is read-only; per-object mapper events would
    # cost a call per row in every flush instead.
    if session.info.get(SUPPRESS_KEY):
        return
    tracked = is_tracked(session)
    if tracked and not READ_ONLY_MODELS:
        return
    for group, changed_only in ((session.new, False), (session.deleted, False),
                                (session.dirty, True)):
        for obj in group:
            info = type(obj).__dict__.get(_MODEL_ATTR)
            if info is None or (tracked and not info.read_only):
                continue
            if changed_only and not session.is_modified(obj, include_collections=False):
                continue  # only a relationship collection changed: no row of it is written
            if info.read_only:
                refuse_read_only(info)
            _refuse_untracked(type(obj))


def _after_flush_guard(session: Any, flush_context: Any) -> None:
    # The same check on what was flushed, for objects another before_flush
    # listener added after ours ran: the flush then rolls back.
    if session.info.get(SUPPRESS_KEY) or is_tracked(session):
        return
    for state, (isdelete, listonly) in flush_context.states.items():
        if listonly:
            continue
        info = state.class_.__dict__.get(_MODEL_ATTR)
        if info is None:
            continue
        if isdelete or state.key is None or any(k in info.bits for k in state.committed_state):
            if info.read_only:
                refuse_read_only(info)
            _refuse_untracked(state.class_)


def _install_bulk_guard() -> None:
    # ORM bulk statements do not go through flushes; one class-level
    # do_orm_execute listener, installed once the first synced model exists,
    # refuses them in untracked sessions.  It returns after one attribute
    # check for anything but INSERT/UPDATE/DELETE.
    from sqlalchemy.orm import Session

    from .capture import LEGACY_BULK_METHODS, bulk_guard

    if not event.contains(Session, "do_orm_execute", bulk_guard):
        event.listen(Session, "do_orm_execute", bulk_guard)
    if not event.contains(Session, "before_flush", _before_flush_guard):
        event.listen(Session, "before_flush", _before_flush_guard)
        event.listen(Session, "after_flush", _after_flush_guard)
    # The legacy bulk methods emit no event at all: the only place to see
    # them is the method itself, wrapped once on Session (subclasses and
    # sessionmakers inherit it); the wrapper passes anything else through.
    for name in LEGACY_BULK_METHODS:
        method = getattr(Session, name)
        if not getattr(method, _GUARDED_ATTR, False):
            setattr(Session, name, _guarded_bulk(name, method))


_GUARDED_ATTR = "_sqla_sync_guarded"


def _guarded_bulk(name: str, method: Any) -> Any:
    from .capture import legacy_bulk_guard

    if name == "bulk_save_objects":

        @functools.wraps(method)
        def save(self: Any, objects: Iterable[Any], *args: Any, **kw: Any) -> Any:
            objects = list(objects)  # may be a generator: read it once
            legacy_bulk_guard(self, name, objects)
            return method(self, objects, *args, **kw)

        setattr(save, _GUARDED_ATTR, True)
        return save

    @functools.wraps(method)
    def mappings(self: Any, mapper: Any, *args: Any, **kw: Any) -> Any:
        legacy_bulk_guard(self, name, mapper)
        return method(self, mapper, *args, **kw)

    setattr(mappings, _GUARDED_ATTR, True)
    return mappings
