"""The backend's HTTP contract as plain data in, plain data out — no web framework.

:class:`Api` takes an :class:`ApiRequest` (method, raw request target, headers, body
bytes) and returns an :class:`ApiResponse` (status, headers, body bytes, and an optional
transport directive). The Flask app (``flask_app.py``) and any later FastAPI app only
translate to and from these, so routing, auth, Idempotency-Key replay, If-Match, paging
links, fault injection and the request log behave the same on every framework.

Routing works on the *raw* path so that ids holding encoded slashes
(``/api/posts/..%2Fadmin``) stay one path segment, as a real API must treat them.

Transport directives are what a framework layer must do with the socket:

* ``"drop"``: close the connection without sending anything;
* ``"truncate"``: send the response as given (its Content-Length is larger than its
  body) and close the connection.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from .faults import FaultAction
from .store import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    RESOURCES,
    Invalid,
    NotFound,
    RowId,
    Store,
    StoredResponse,
    StoreError,
)

Transport = Literal["drop", "truncate"]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPE = "application/json"
MALFORMED_BODY = b'{"data": ['
WRONG_TYPE_BODY = (
    b"<!DOCTYPE html>\n<html><head><title>Welcome</title></head>"
    b"<body><h1>Please sign in to the network</h1></body></html>\n"
)
_PAGING_PARAMS = ("page", "offset", "cursor", "after_ts", "after_id")


def dump_json(payload: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class ApiRequest:
    """One HTTP request as the contract sees it.

    ``target`` is the request target exactly as received (raw path with its
    percent-escapes, plus ``?query``); ``base_url`` is ``scheme://host[:port]`` used for
    absolute ``next`` links; ``remote`` is the peer ``host:port`` (shows connection reuse).
    """

    method: str
    target: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    base_url: str = "http://127.0.0.1"
    remote: str | None = None

    def header(self, name: str) -> str | None:
        """First value of a header, case-insensitively."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


@dataclass
class ApiResponse:
    """One HTTP response; ``transport`` tells the framework layer to drop/truncate."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    transport: Transport | None = None

    @classmethod
    def json(cls, status: int, payload: Any,
             headers: Iterable[tuple[str, str]] = ()) -> ApiResponse:
        """A JSON response."""
        return cls(status, [("Content-Type", JSON_TYPE), *headers], dump_json(payload))

    def header(self, name: str) -> str | None:
        """First value of a header, case-insensitively."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def with_header(self, name: str, value: str) -> ApiResponse:
        """Copy with one header replaced (or added)."""
        kept = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        return ApiResponse(self.status, [*kept, (name, value)], self.body, self.transport)


@dataclass(frozen=True)
class _Route:
    """Where an /api path points: a collection, the deletions feed, or one row."""

    resource: str
    kind: Literal["collection", "item"]
    raw_id: str | None = None
    row_id: str | None = None


def split_target(target: str) -> tuple[str, str]:
    """Raw request target → (raw path, raw query). Absolute-form targets lose host."""
    if "://" in target.split("?", 1)[0]:
        parts = urlsplit(target)
        target = parts.path + ("?" + parts.query if parts.query else "")
    path, _, query = target.partition("?")
    return path or "/", query


def _first_params(query: str) -> dict[str, str]:
    """Query string → {name: first value} (blank values kept)."""
    return {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}


def encode_cursor(ts: int, row_id: RowId) -> str:
    """Opaque cursor for the position (updatedAt ms, id)."""
    raw = dump_json([ts, row_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, RowId]:
    """Inverse of :func:`encode_cursor`; raises :class:`Invalid`."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        ts, row_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError, binascii.Error):
        raise Invalid("cursor is not valid", "cursor") from None
    if not isinstance(ts, int) or not isinstance(row_id, (str, int)):
        raise Invalid("cursor is not valid", "cursor")
    return ts, row_id


def _int_param(params: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise Invalid(f"{name} must be an integer", name) from None
    if number < minimum:
        raise Invalid(f"{name} must be >= {minimum}", name)
    return number


class Api:
    """Dispatches requests to the store's contract; see the module docstring."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.faults = store.faults

    # ------------------------------------------------------------------ entry

    def handle(self, request: ApiRequest) -> ApiResponse:
        """Answer one request (``/__admin/...`` or the REST API)."""
        path, query = split_target(request.target)
        if path == "/__admin" or path.startswith("/__admin/"):
            return self._admin(request, path)
        return self._rest(request, path, query)

    # ------------------------------------------------------------------ REST

    def _rest(self, request: ApiRequest, path: str, query: str) -> ApiResponse:
        method = request.method.upper()
        route = self._route(path)
        entry: dict[str, Any] = {
            "seq": None,
            "time": time.time(),
            "method": method,
            "target": request.target,
            "path": path,
            "query": _first_params(query),
            "resource": route.resource if route else None,
            "id": route.row_id if route else None,
            "headers": dict(request.headers),
            "body": self._body_for_log(request.body),
            "status": None,
            "fault": None,
            "replayed": False,
            "remote": request.remote,
        }
        if route is not None and route.row_id is not None:
            normalized = self.store.normalize_id(route.row_id)
            entry["id"] = normalized if normalized is not None else route.row_id
        is_api = path == "/api" or path.startswith("/api/")
        fault = self.faults.pick(method, path) if is_api else None
        if fault is not None:
            entry["fault"] = fault.describe()
            if fault.name == "drop_before":
                self.store.record_request(entry)
                return ApiResponse(0, transport="drop")
            if fault.name == "status":
                response = ApiResponse.json(fault.status, fault.body, fault.headers)
                entry["status"] = response.status
                self.store.record_request(entry)
                return response
            if fault.name == "delay":
                time.sleep(fault.ms / 1000)
        if is_api and self.store.delay_ms:
            time.sleep(self.store.delay_ms / 1000)
        with self.store.lock:
            response, replayed = self._serve(request, method, path, query, route, is_api)
            entry["status"] = response.status
            entry["replayed"] = replayed
            self.store.record_request(entry)
        return self._spoil(response, fault)

    @staticmethod
    def _body_for_log(body: bytes) -> Any:
        """Parsed JSON body, the raw text if it is not JSON, None if empty."""
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return body.decode("utf-8", "replace")

    @staticmethod
    def _route(path: str) -> _Route | None:
        """Match the raw path; the id segment is percent-decoded only after splitting."""
        if not path.startswith("/api/"):
            return None
        resource, sep, tail = path[len("/api/"):].partition("/")
        if resource not in RESOURCES:
            return None
        if not sep or tail == "":
            return _Route(resource, "collection")
        if "/" in tail:
            return None
        return _Route(resource, "item", raw_id=tail, row_id=unquote(tail))

    def _serve(self, request: ApiRequest, method: str, path: str, query: str,
               route: _Route | None, is_api: bool) -> tuple[ApiResponse, bool]:
        """Auth, idempotent replay, then the operation. Caller holds the store lock."""
        if is_api and not self.store.authorized(request.header("Authorization")):
            return ApiResponse.json(
                401, {"error": "unauthorized"}, [("WWW-Authenticate", "Bearer")]
            ), False
        key = request.header("Idempotency-Key") if method in UNSAFE_METHODS else None
        if key:
            stored = self.store.remembered(key)
            if stored is not None:
                status, headers, body = stored
                replay = ApiResponse(status, list(headers), body)
                return replay.with_header("Idempotent-Replayed", "true"), True
        try:
            response = self._operate(request, method, path, query, route)
        except StoreError as err:
            etag: list[tuple[str, str]] = []
            current = err.payload.get("current")
            if isinstance(current, dict):
                etag.append(("ETag", f'"{current["version"]}"'))
            response = ApiResponse.json(err.status, err.payload, etag)
        # Only answers that committed something are remembered: a rejected request
        # changed nothing, so a retry with the same key is judged afresh.
        if key and response.status < 400:
            stored_response: StoredResponse = (response.status, list(response.headers),
                                               response.body)
            self.store.remember(key, stored_response)
        return response, False

    def _operate(self, request: ApiRequest, method: str, path: str, query: str,
                 route: _Route | None) -> ApiResponse:
        if route is None:
            return ApiResponse.json(404, {"error": "not found"})
        resource = route.resource
        if route.kind == "collection":
            if method == "GET":
                return self._list(request, path, query, resource)
            if method == "POST":
                row = self.store.create(resource, self._json_body(request))
                location = f"{request.base_url}/api/{resource}/{quote(str(row['id']), safe='')}"
                return ApiResponse.json(201, row, [("ETag", f'"{row["version"]}"'),
                                                   ("Location", location)])
            return self._not_allowed("GET, POST")
        row_id = route.row_id
        if method == "GET" and route.raw_id == "deleted":
            params = _first_params(query)
            since = params.get("since")
            parsed = None if since in (None, "") else self.store.parse_ts(since, "since")
            return ApiResponse.json(200, {"data": self.store.deletions(resource, parsed)})
        if_match = request.header("If-Match")
        if method == "GET":
            found = self.store.get(resource, row_id)
            if found is None:
                raise NotFound()
            return ApiResponse.json(200, found, [("ETag", f'"{found["version"]}"')])
        if method in ("PUT", "PATCH"):
            body = self._json_body(request)
            if method == "PUT":
                row = self.store.update(resource, row_id, body, if_match=if_match)
            else:
                row = self.store.patch(resource, row_id, body, if_match=if_match)
            return ApiResponse.json(200, row, [("ETag", f'"{row["version"]}"')])
        if method == "DELETE":
            self.store.delete(resource, row_id, if_match=if_match)
            return ApiResponse(204)
        return self._not_allowed("GET, PUT, PATCH, DELETE")

    @staticmethod
    def _not_allowed(allow: str) -> ApiResponse:
        return ApiResponse.json(405, {"error": "method not allowed"}, [("Allow", allow)])

    @staticmethod
    def _json_body(request: ApiRequest) -> Any:
        if not request.body:
            raise Invalid("a JSON body is required")
        try:
            return json.loads(request.body)
        except ValueError:
            raise Invalid("the body is not valid JSON") from None

    def _list(self, request: ApiRequest, path: str, query: str, resource: str) -> ApiResponse:
        """``GET /api/R`` with updated_after and page/offset/cursor/keyset paging."""
        store = self.store
        params = _first_params(query)
        limit = min(_int_param(params, "limit", DEFAULT_LIMIT, 1), MAX_LIMIT)
        raw_after = params.get("updated_after")
        updated_after = (
            None if raw_after in (None, "") else store.parse_ts(raw_after, "updated_after")
        )
        offset = 0
        after: tuple[int, RowId] | None = None
        if params.get("cursor"):
            style = "cursor"
            ts, raw_id = decode_cursor(params["cursor"])
            key = store.normalize_id(raw_id)
            if key is None:
                raise Invalid("cursor is not valid", "cursor")
            after = (ts, key)
        elif params.get("after_ts") or params.get("after_id"):
            style = "keyset"
            if not params.get("after_ts") or not params.get("after_id"):
                raise Invalid("after_ts and after_id go together", "after_id")
            key = store.normalize_id(params["after_id"])
            if key is None:
                raise Invalid("after_id is not a valid id", "after_id")
            after = (store.parse_ts(params["after_ts"], "after_ts"), key)
        elif params.get("offset"):
            style = "offset"
            offset = _int_param(params, "offset", 0, 0)
        elif params.get("page"):
            style = "page"
            offset = (_int_param(params, "page", 1, 1) - 1) * limit
        else:
            style = "none"
        result = store.list(resource, updated_after=updated_after, limit=limit,
                            offset=offset, after=after)
        next_cursor: str | None = None
        next_url: str | None = None
        headers: list[tuple[str, str]] = []
        if result.has_more and result.last is not None:
            last_ts, last_id = result.last
            next_cursor = encode_cursor(last_ts, last_id)
            next_params = {k: v for k, v in params.items() if k not in _PAGING_PARAMS}
            next_params["limit"] = str(limit)
            if style == "keyset":
                next_params["after_ts"] = str(store.format_ts(last_ts))
                next_params["after_id"] = str(last_id)
            elif style == "offset":
                next_params["offset"] = str(offset + limit)
            elif style == "page":
                next_params["page"] = str(offset // limit + 2)
            else:
                next_params["cursor"] = next_cursor
            next_url = f"{request.base_url}{path}?{urlencode(next_params)}"
            headers = [("Link", f'<{next_url}>; rel="next"'), ("Next-Page", next_url)]
        payload = {"data": result.rows, "next_cursor": next_cursor, "next": next_url,
                   "total": result.total}
        return ApiResponse.json(200, payload, headers)

    @staticmethod
    def _spoil(response: ApiResponse, fault: FaultAction | None) -> ApiResponse:
        """Apply an after-the-work fault to a real response."""
        if fault is None or fault.name in ("status", "delay", "drop_before"):
            return response
        status = 200 if response.status == 204 else response.status
        kept = [(k, v) for k, v in response.headers
                if k.lower() not in ("content-type", "content-length")]
        if fault.name == "drop_after_commit":
            return ApiResponse(response.status, transport="drop")
        if fault.name == "malformed":
            return ApiResponse(status, [*kept, ("Content-Type", JSON_TYPE)], MALFORMED_BODY)
        if fault.name == "wrong_type":
            return ApiResponse(status, [*kept, ("Content-Type", "text/html; charset=utf-8")],
                               WRONG_TYPE_BODY)
        # truncated: announce the full length, send half of it, then close.
        full = response.body or b'{"ok":true}'
        headers = [*kept, ("Content-Type", JSON_TYPE),
                   ("Content-Length", str(len(full) + 16))]
        return ApiResponse(status, headers, full[: len(full) // 2], transport="truncate")

    # ------------------------------------------------------------------ admin

    def _admin(self, request: ApiRequest, path: str) -> ApiResponse:
        """``/__admin/...``: no auth, no faults, not in the request log."""
        method = request.method.upper()
        parts = [unquote(p) for p in path[len("/__admin/"):].split("/")] if len(path) > 9 else []
        try:
            return self._admin_route(request, method, parts)
        except StoreError as err:
            return ApiResponse.json(err.status, err.payload)
        except ValueError as err:
            return ApiResponse.json(400, {"error": "invalid", "detail": str(err)})

    def _admin_route(self, request: ApiRequest, method: str, parts: list[str]) -> ApiResponse:
        store = self.store
        head = parts[0] if parts else ""
        ok = ApiResponse.json(200, {"ok": True})
        if head == "health" and method == "GET":
            return ApiResponse.json(200, {"ok": True, "options": store.options})
        if head == "reset" and method == "POST":
            store.reset()
            return ok
        if head == "seed" and len(parts) == 2 and method == "POST":
            rows = self._json_body(request)
            if isinstance(rows, Mapping):
                rows = rows.get("rows", rows.get("data", [rows]))
            if not isinstance(rows, list):
                raise Invalid("seed takes a JSON list of rows")
            return ApiResponse.json(200, {"data": store.seed(self._resource(parts[1]), rows)})
        if head == "rows" and len(parts) == 2 and method == "GET":
            return ApiResponse.json(200, {"data": store.rows(self._resource(parts[1]))})
        if head == "rows" and len(parts) == 3:
            resource = self._resource(parts[1])
            if method == "GET":
                found = store.get(resource, parts[2], include_deleted=True)
                if found is None:
                    raise NotFound()
                return ApiResponse.json(200, found)
            if method == "PATCH":
                return ApiResponse.json(
                    200, store.admin_patch(resource, parts[2], self._json_body(request))
                )
            if method == "DELETE":
                store.admin_delete(resource, parts[2])
                return ApiResponse(204)
        if head == "clock" and method in ("GET", "POST"):
            if method == "POST":
                body = self._json_body(request)
                if not isinstance(body, Mapping):
                    raise Invalid("clock takes a JSON object")
                if "freeze" in body:
                    freeze = body["freeze"]
                    store.freeze_clock(None if freeze is None else int(freeze))
                if "advance" in body:
                    store.advance_clock(int(body["advance"]))
            return ApiResponse.json(200, store.clock_state())
        if head == "token" and method == "POST":
            body = self._json_body(request)
            if not isinstance(body, Mapping):
                raise Invalid("token takes a JSON object")
            token = body.get("token")
            store.set_token(None if token is None else str(token))
            return ok
        if head == "requests" and method == "GET":
            return ApiResponse.json(200, {"data": store.requests()})
        if head == "requests" and method == "DELETE":
            store.clear_requests()
            return ApiResponse(204)
        if head == "faults" and method == "GET":
            return ApiResponse.json(200, {"rules": self.faults.rules(),
                                          "injected": self.faults.injected()})
        if head == "faults" and method == "POST":
            body = self._json_body(request)
            if isinstance(body, list):
                body = {"rules": body}
            if not isinstance(body, Mapping):
                raise Invalid("faults takes {\"rules\": [...]}")
            rules = list(body.get("rules") or [])
            if "random" in body:
                rules.append({"random": body["random"]})
            self.faults.set_rules(rules)
            return ApiResponse.json(200, {"rules": self.faults.rules()})
        if head == "faults" and method == "DELETE":
            self.faults.clear()
            return ApiResponse(204)
        return ApiResponse.json(404, {"error": "not found"})

    @staticmethod
    def _resource(name: str) -> str:
        if name not in RESOURCES:
            raise NotFound()
        return name
