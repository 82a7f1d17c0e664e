"""Declared routes: how each synced table maps onto the server's REST API.

Routes are values (frozen dataclasses), checked when they are defined and
again at :func:`~sqla_sync.start_sync`.  Field names in routes are the
server's; ``Routes(fields={"updated_at": "updatedAt"})`` renames columns to
server fields and back.  ``body=``, ``url=``, ``query=`` and ``headers=``
take a value or a callable of the item (a JSON-ready dict with server field
names, never a live ORM object).
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeAlias, TypeVar
from urllib.parse import quote

from .errors import ConfigurationError, RouteError
from .mixin import ModelInfo, synced_models

__all__ = [
    "DEFAULT_BODY",
    "BodyCursor",
    "Cursor",
    "NextLink",
    "Offset",
    "PageNumber",
    "Pull",
    "Push",
    "Request",
    "RouteTable",
    "Routes",
    "define_routes",
    "render_path",
]

T = TypeVar("T")
Item = dict[str, Any]
#: A route value: the value itself, or a callable of the item that returns it.
ValueOr: TypeAlias = T | Callable[[Item], T]

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_PLACEHOLDER = re.compile(r"{([^{}]*)}")


class _DefaultBody:
    """The default body: the row as JSON, with server field names."""

    def __repr__(self) -> str:
        return "DEFAULT_BODY"


#: Sentinel for ``Request.body``: send the row as JSON.
DEFAULT_BODY: Any = _DefaultBody()


def _default_conflict(status: int, body: Any) -> bool:
    return status in (409, 412)


@dataclasses.dataclass(frozen=True)
class Request:
    """One HTTP request of a push route.

    :param method: GET, POST, PUT, PATCH or DELETE.
    :param url: a path template relative to ``base_url`` (``"/api/posts/{id}"``;
        each ``{field}`` is percent-encoded, ``/`` included) or a callable of
        the item returning the path.
    :param body: JSON body; by default the row as JSON (DELETE sends none);
        ``None`` sends no body; a callable of the item builds it.
    :param headers: extra headers, or a callable of the item returning them.
    :param query: query parameters, or a callable of the item returning them.
    :param map_response: unwraps the parsed response body before it is written
        back to the row (``lambda body: body["data"]``).
    :param if_match: send ``If-Match`` with the ETag or version the shadow holds.
    :param conflict_when: ``(status, body) -> bool``: which answers mean
        "conflict"; by default 409 and 412.
    """

    method: str
    url: ValueOr[str]
    body: Any = DEFAULT_BODY
    headers: ValueOr[Mapping[str, str]] | None = None
    query: ValueOr[Mapping[str, Any]] | None = None
    map_response: Callable[[Any], Any] | None = None
    if_match: bool = False
    conflict_when: Callable[[int, Any], bool] = _default_conflict

    def __post_init__(self) -> None:
        method = str(self.method).upper()
        if method not in _METHODS:
            raise ConfigurationError(
                f"Request method {self.method!r} is not one of {', '.join(sorted(_METHODS))}"
            )
        object.__setattr__(self, "method", method)
        if not (isinstance(self.url, str) or callable(self.url)):
            raise ConfigurationError(
                f"Request url must be a string or a callable, not {self.url!r}"
            )

    def placeholders(self) -> list[str]:
        """The ``{field}`` names of a string url template."""
        if not isinstance(self.url, str):
            return []
        return [name for _, name, _, _ in string.Formatter().parse(self.url) if name is not None]


@dataclasses.dataclass(frozen=True)
class Push:
    """The requests that send local creates, updates and deletes of one table."""

    create: Request | None = None
    update: Request | None = None
    delete: Request | None = None


# -- pull shapes (applied by sqla_sync.pull) ---------------------------------


@dataclasses.dataclass(frozen=True)
class Position:
    """The last applied row of a cursor: its cursor value and key (server values)."""

    value: Any
    key: Any


@dataclasses.dataclass(frozen=True)
class Cursor:
    """A library-kept checkpoint on a server field (``updatedAt``).

    :param field: the server field the server filters and orders by.
    :param param: the query parameter that carries the bound.
    :param inclusive: True when the server compares with ``>=``, False for ``>``.
    :param key: the server field that breaks ties between equal values.
    :param format: turns the value into the parameter's text.
    :param query: builds a compound keyset filter from the last applied
        :class:`Position` (None before the first row) instead of ``param``.
    :param size_param: page by the cursor itself with this page-size parameter.
    """

    field: str
    param: str | None = None
    inclusive: bool = False
    key: str = "id"
    format: Callable[[Any], str] | None = None
    query: Callable[[Position | None], Mapping[str, Any]] | None = None
    size_param: str | None = None

    def __post_init__(self) -> None:
        if self.param is None and self.query is None:
            raise ConfigurationError(
                f"Cursor(field={self.field!r}) needs param= (the query parameter of the "
                "bound) or query= (a callable building the filter)"
            )


@dataclasses.dataclass(frozen=True)
class PageNumber:
    """Pages numbered from ``start``: ``?page=2&limit=100``."""

    param: str = "page"
    size_param: str | None = "limit"
    start: int = 1


@dataclasses.dataclass(frozen=True)
class Offset:
    """Pages by row offset: ``?offset=200&limit=100``."""

    param: str = "offset"
    size_param: str | None = "limit"


@dataclasses.dataclass(frozen=True)
class BodyCursor:
    """An opaque cursor read from the body (``body=lambda b: b["next_cursor"]``)."""

    body: Callable[[Any], Any]
    param: str = "cursor"
    size_param: str | None = "limit"


@dataclasses.dataclass(frozen=True)
class NextLink:
    """The next page's URL: a ``Link`` header (rel="next"), a header holding the
    URL (``header="Next-Page"``), or a callable reading it from the body."""

    header: str | None = "Link"
    body: Callable[[Any], Any] | None = None
    size_param: str | None = "limit"


Paginator: TypeAlias = PageNumber | Offset | BodyCursor | NextLink


@dataclasses.dataclass(frozen=True)
class Pull:
    """How to list the server's changes of one table.

    :param query: query parameters, or a callable of the pull context.
    :param map_response: the list of rows in the parsed body (default: the body).
    :param on_complete: ``(body, ctx)`` after each page is applied.
    :param map_row: server row -> column values, after field renames.
    :param deleted: ``row -> bool``: tombstones, deleted locally.
    :param reconcile: list the whole collection without the cursor on the
        first sync and then every ``reconcile_interval`` seconds, deleting local
        rows it no longer lists that have no pending op.
    """

    method: str = "GET"
    url: str = ""
    query: Any = None
    headers: Any = None
    map_response: Callable[[Any], Any] | None = None
    on_complete: Callable[[Any, Any], Any] | None = None
    map_row: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    cursor: Cursor | None = None
    paginate: Paginator | None = None
    deleted: Callable[[dict[str, Any]], bool] | None = None
    reconcile: bool = False
    reconcile_interval: float = 3600.0
    key: Callable[[dict[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        if str(self.method).upper() != "GET":
            raise ConfigurationError(f"Pull method must be GET, not {self.method!r}")
        if not self.url:
            raise ConfigurationError("Pull needs a url, e.g. Pull('GET', '/api/posts')")


@dataclasses.dataclass(frozen=True)
class Routes:
    """Everything the library needs to sync one table.

    :param fields: column key -> server field renames, used both ways.
    :param push: requests for local changes; without it the table is read-only.
    :param pull: how to list server changes.
    :param deletions: a separate feed of deleted keys.
    :param version_field: the server field holding the row version, if any
        (an ``ETag`` header takes precedence).
    :param model: the Syncable model of the table, needed only when two models
        in the process share the table name (two declarative bases, say).
    """

    push: Push | None = None
    pull: Pull | None = None
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    deletions: Pull | None = None
    version_field: str | None = "version"
    model: type[Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", dict(self.fields))


@dataclasses.dataclass(frozen=True)
class TableRoutes:
    """The routes of one table bound to its model: renames precomputed."""

    name: str
    routes: Routes
    info: ModelInfo
    to_server: dict[str, str]
    to_local: dict[str, str]

    @property
    def read_only(self) -> bool:
        """A table that pulls and never pushes; local writes are refused."""
        return self.routes.push is None

    def item(self, row: Mapping[str, Any]) -> Item:
        """The JSON-ready item of a row (column values), with server field names."""
        encoded = self.info.encode_row(row)
        names = self.to_server
        return {names.get(k, k): v for k, v in encoded.items()}

    def columns_of(self, server_row: Mapping[str, Any]) -> dict[str, Any]:
        """Column values of a server row: renamed, decoded, unknown fields dropped."""
        names = self.to_local
        renamed = {names.get(k, k): v for k, v in server_row.items()}
        return self.info.decode_row(renamed)

    def server_field(self, column_key: str) -> str:
        """The server's name of a column."""
        return self.to_server.get(column_key, column_key)


class RouteTable(Mapping[str, TableRoutes]):
    """The validated routes of every synced table, by table name."""

    def __init__(self, tables: Mapping[str, TableRoutes]) -> None:
        self._tables = dict(tables)

    def __getitem__(self, name: str) -> TableRoutes:
        return self._tables[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    def __repr__(self) -> str:
        return f"RouteTable({sorted(self._tables)!r})"


def define_routes(routes: Mapping[str, Routes]) -> RouteTable:
    """Check and bind route declarations to the Syncable models they name.

    Raises :class:`~sqla_sync.ConfigurationError` for an unknown table, a
    placeholder that names no column or field, a push without a create,
    update or delete request, or a rename of an unknown column.
    """
    models: dict[str, list[ModelInfo]] = {}
    for found in synced_models():
        models.setdefault(found.table_name, []).append(found)
    bound: dict[str, TableRoutes] = {}
    for name, table_routes in routes.items():
        if not isinstance(table_routes, Routes):
            raise ConfigurationError(
                f"routes[{name!r}] must be a Routes(...), not {type(table_routes).__name__}"
            )
        candidates = models.get(name, [])
        if table_routes.model is not None:
            candidates = [c for c in candidates if c.mapper.class_ is table_routes.model]
        if not candidates:
            known = ", ".join(sorted(models)) or "none defined yet"
            raise ConfigurationError(
                f"routes name table {name!r}, but no Syncable model has that __tablename__ "
                f"(synced tables: {known}); define the model before define_routes()"
            )
        if len(candidates) > 1:
            names = ", ".join(sorted(f"{c.mapper.class_.__module__}.{c.mapper.class_.__name__}"
                                     for c in candidates))
            raise ConfigurationError(
                f"routes name table {name!r}, which several Syncable models map ({names}); "
                f"say which with Routes(model=...)"
            )
        info = candidates[0]
        unknown = [col for col in table_routes.fields if col not in info.keys]
        if unknown:
            raise ConfigurationError(
                f"routes[{name!r}].fields renames {', '.join(map(repr, unknown))}, which "
                f"{'is not a column' if len(unknown) == 1 else 'are not columns'} of "
                f"{info.mapper.class_.__name__} (columns: {', '.join(info.keys)})"
            )
        to_server = {k: table_routes.fields.get(k, k) for k in info.keys}
        to_local = {v: k for k, v in to_server.items()}
        push = table_routes.push
        if push is None and table_routes.pull is None:
            raise ConfigurationError(f"routes[{name!r}] has neither push nor pull")
        if push is not None:
            for op in ("create", "update", "delete"):
                request = getattr(push, op)
                if request is None:
                    raise ConfigurationError(
                        f"routes[{name!r}].push has no {op} request, so a local {op} could "
                        f"never reach the server; add {op}=Request(...), or drop push= to "
                        "make the table read-only"
                    )
                for placeholder in request.placeholders():
                    if placeholder not in to_local and placeholder not in info.keys:
                        raise ConfigurationError(
                            f"routes[{name!r}].push.{op} url {request.url!r}: placeholder "
                            f"{{{placeholder}}} is no field of {info.mapper.class_.__name__} "
                            f"(fields: {', '.join(sorted(to_local))})"
                        )
        bound[name] = TableRoutes(name, table_routes, info, to_server, to_local)
    return RouteTable(bound)


def render_path(template: str, item: Mapping[str, Any], local: Mapping[str, Any]) -> str:
    """Fill ``{field}`` placeholders, percent-encoding each value (``/`` too).

    Values ``.``, ``..`` and empty are refused: they would address another
    resource.  ``local`` (column keys) is the fallback when the item (server
    field names) lacks a placeholder.
    """

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in item:
            value = item[name]
        elif name in local:
            value = local[name]
        else:
            raise RouteError(f"url {template!r}: the row has no field {name!r}")
        text = "" if value is None else str(value)
        if text in ("", ".", ".."):
            raise RouteError(
                f"url {template!r}: {name}={text!r} would address another resource; "
                "refusing to send it"
            )
        return quote(text, safe="")

    return _PLACEHOLDER.sub(fill, template)


