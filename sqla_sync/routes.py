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
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _callable_or_none(owner: str, name: str, value: Any, example: str) -> None:
    """Refuse a callback that is set but cannot be called."""
    if value is not None and not callable(value):
        raise ConfigurationError(
            f"{owner}({name}={value!r}): {name} must be a callable, e.g. {name}={example}"
        )


def _template_fields(owner: str, template: str) -> list[str]:
    """The ``{field}`` names of a url template; malformed templates raise.

    Only plain names are placeholders: a conversion (``{id!r}``) or a format
    spec (``{id:>5}``) is refused, since values are only ever percent-encoded.
    Literal braces are written doubled (``{{`` and ``}}``).
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(
            f"{owner} url {template!r}: {exc}; write placeholders as {{field}} and literal "
            "braces doubled ({{ and }})"
        ) from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if conversion is not None or spec:
            extra = (f"!{conversion}" if conversion is not None else "") + (
                f":{spec}" if spec else "")
            raise ConfigurationError(
                f"{owner} url {template!r}: placeholder {{{name}{extra}}} has a conversion or "
                f"format spec, which the url does not apply (values are only percent-encoded); "
                f"write {{{name}}}, or pass url=lambda item: ... to format the value yourself"
            )
        names.append(name)
    return names


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
        owner = f"Request({method!r}, ...)"
        if isinstance(self.url, str):
            _template_fields(owner, self.url)
        _callable_or_none("Request", "map_response", self.map_response,
                          "lambda body: body['data']")
        _callable_or_none("Request", "conflict_when", self.conflict_when,
                          "lambda status, body: status in (409, 412)")
        if self.conflict_when is None:
            raise ConfigurationError(
                "Request(conflict_when=None): leave it out for the default (409 and 412), or "
                "give a callable (status, body) -> bool"
            )
        if not isinstance(self.if_match, bool):
            raise ConfigurationError(f"Request(if_match={self.if_match!r}) must be True or False")

    def placeholders(self) -> list[str]:
        """The ``{field}`` names of a string url template."""
        if not isinstance(self.url, str):
            return []
        return _template_fields(f"Request({self.method!r}, ...)", self.url)


@dataclasses.dataclass(frozen=True)
class Push:
    """The requests that send local creates, updates and deletes of one table."""

    create: Request | None = None
    update: Request | None = None
    delete: Request | None = None

    def __post_init__(self) -> None:
        for op in ("create", "update", "delete"):
            value = getattr(self, op)
            if value is not None and not isinstance(value, Request):
                raise ConfigurationError(
                    f"Push({op}={value!r}): {op} must be a Request, e.g. "
                    f"{op}=Request({_EXAMPLE_METHOD[op]!r}, {_example_url(op, value)!r})"
                )


_EXAMPLE_METHOD = {"create": "POST", "update": "PUT", "delete": "DELETE"}


def _example_url(op: str, value: Any) -> str:
    if isinstance(value, str) and value.startswith("/"):
        return value
    return "/api/posts" if op == "create" else "/api/posts/{id}"


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
        if not isinstance(self.field, str) or not self.field:
            raise ConfigurationError(
                f"Cursor(field={self.field!r}): field must name the server field the server "
                "filters and orders by, e.g. Cursor(field='updatedAt', param='updated_after')"
            )
        if not isinstance(self.key, str) or not self.key:
            raise ConfigurationError(
                f"Cursor(key={self.key!r}): key must name the server field that breaks ties "
                "(default 'id')"
            )
        _callable_or_none("Cursor", "format", self.format, "lambda v: f'gt.{v}'")
        _callable_or_none("Cursor", "query", self.query,
                          "lambda pos: {'updated_after': pos.value if pos else ''}")
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

    def __post_init__(self) -> None:
        if not callable(self.body):
            raise ConfigurationError(
                f"BodyCursor(body={self.body!r}): body must be a callable reading the next "
                "cursor from the parsed body, e.g. body=lambda b: b['next_cursor']"
            )


@dataclasses.dataclass(frozen=True)
class NextLink:
    """The next page's URL: a ``Link`` header (rel="next"), a header holding the
    URL (``header="Next-Page"``), or a callable reading it from the body."""

    header: str | None = "Link"
    body: Callable[[Any], Any] | None = None
    size_param: str | None = "limit"

    def __post_init__(self) -> None:
        _callable_or_none("NextLink", "body", self.body, "lambda b: b['next']")
        if self.header is None and self.body is None:
            raise ConfigurationError(
                "NextLink(header=None) without body= finds no next page; keep header='Link' "
                "(or the header holding the URL), or give body=lambda b: b['next']"
            )


Paginator: TypeAlias = PageNumber | Offset | BodyCursor | NextLink
_PAGINATORS = (PageNumber, Offset, BodyCursor, NextLink)


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
        if not isinstance(self.url, str):
            raise ConfigurationError(
                f"Pull url must be a path string such as '/api/posts', not {self.url!r}"
            )
        for name, example in (("map_response", "lambda body: body['data']"),
                              ("on_complete", "lambda body, ctx: None"),
                              ("map_row", "lambda row: {...}"),
                              ("deleted", "lambda row: row.get('deleted', False)"),
                              ("key", "lambda row: row['id']")):
            _callable_or_none("Pull", name, getattr(self, name), example)
        if self.cursor is not None and not isinstance(self.cursor, Cursor):
            field = self.cursor if isinstance(self.cursor, str) else "updatedAt"
            raise ConfigurationError(
                f"Pull(cursor={self.cursor!r}): cursor must be a Cursor, e.g. "
                f"cursor=Cursor(field={field!r}, param='updated_after')"
            )
        if self.paginate is not None and not isinstance(self.paginate, _PAGINATORS):
            shown = getattr(self.paginate, "__name__", None)
            hint = (f"an instance, {shown}()" if shown in {p.__name__ for p in _PAGINATORS}
                    else "PageNumber(), Offset(), BodyCursor(body=...) or NextLink()")
            raise ConfigurationError(
                f"Pull(paginate={self.paginate!r}): paginate must be {hint}"
            )
        if not isinstance(self.reconcile, bool):
            raise ConfigurationError(f"Pull(reconcile={self.reconcile!r}) must be True or False")
        if not (isinstance(self.reconcile_interval, (int, float))
                and self.reconcile_interval >= 0):
            raise ConfigurationError(
                f"Pull(reconcile_interval={self.reconcile_interval!r}) must be seconds >= 0"
            )


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
        if self.push is not None and not isinstance(self.push, Push):
            hint = (" (wrap the requests: push=Push(create=Request('POST', ...), "
                    "update=..., delete=...))" if isinstance(self.push, Request) else "")
            raise ConfigurationError(
                f"Routes(push=...): push must be a Push(...), not a "
                f"{type(self.push).__name__}{hint}"
            )
        for name in ("pull", "deletions"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Pull):
                raise ConfigurationError(
                    f"Routes({name}=...): {name} must be a Pull(...), not a "
                    f"{type(value).__name__}; e.g. {name}=Pull('GET', '/api/posts')"
                )
        if not isinstance(self.fields, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) and v
                for k, v in self.fields.items()):
            raise ConfigurationError(
                f"Routes(fields={self.fields!r}) must map column keys to server field names, "
                "e.g. fields={'updated_at': 'updatedAt'}"
            )
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
        """Column values of a server row: renamed, decoded, unknown fields dropped.

        Raises ``ValueError`` naming the column for an integer no database
        column holds (beyond 64 bits): JSON numbers have no size limit.
        """
        names = self.to_local
        renamed = {names.get(k, k): v for k, v in server_row.items()}
        values = self.info.decode_row(renamed)
        for key, value in values.items():
            if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError(
                    f"column {key!r} cannot hold the server's {len(str(abs(value)))}-digit "
                    "integer: beyond 64-bit integers"
                )
        return values

    def server_field(self, column_key: str) -> str:
        """The server's name of a column."""
        return self.to_server.get(column_key, column_key)

    def answer_row(self, body: Any, row_key: str) -> dict[str, Any] | None:
        """The server's row carried by a conflict answer (the body, or its
        ``current``), checked like a pulled row -- or None when it carries none.

        The row must be an object whose fields decode into the columns (and
        ``map_row``, if the pull route has one, must accept it) and whose key
        is ``row_key``, the key of the op that was refused: anything else is
        not that row.  Fields that are no column (and not the version field)
        are dropped, unless ``map_row`` may need them: an error answer carries
        messages, request echoes and the like that must not become the row's
        server state.
        """
        if not isinstance(body, Mapping):
            return None
        candidate = body.get("current", body)
        if not isinstance(candidate, Mapping):
            return None
        info = self.info
        if not all(self.server_field(k) in candidate for k in info.pk_keys):
            return None
        pull = self.routes.pull
        map_row = pull.map_row if pull is not None else None
        if map_row is None:
            keep = set(self.to_local)
            if self.routes.version_field:
                keep.add(self.routes.version_field)
            row = {str(k): v for k, v in candidate.items() if k in keep}
        else:
            row = {str(k): v for k, v in candidate.items()}
        try:
            values = self.columns_of(row)
            if map_row is not None:
                values.update(info.decode_row(map_row(dict(row))))
            pk = [values.get(k) for k in info.pk_keys]
            if any(v is None for v in pk) or info.encode_key(pk) != row_key:
                return None
        except Exception:  # the row does not decode: it is not one of ours
            return None
        return row


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
        if len(to_local) < len(to_server):
            shared = sorted({v for v in to_server.values()
                             if list(to_server.values()).count(v) > 1})
            columns = sorted(k for k, v in to_server.items() if v in shared)
            raise ConfigurationError(
                f"routes[{name!r}].fields: columns {', '.join(map(repr, columns))} would all "
                f"be sent as the server field {', '.join(map(repr, shared))}; each column "
                "needs its own server field (fields renames a column both ways)"
            )
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
    field names) lacks a placeholder.  The template is read the way
    :func:`define_routes` checked it (``string.Formatter``: ``{{`` is a
    literal brace).
    """
    out: list[str] = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
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
        out.append(quote(text, safe=""))
    return "".join(out)
