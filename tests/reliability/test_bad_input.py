"""Bad input: hostile server answers and mistaken route definitions.

A server (or something pretending to be one) can answer anything: wrong
types, missing keys, ``null`` everywhere, lists where objects are expected,
numbers as ids, bodies nested a hundred thousand levels deep, non-JSON, wrong
content types, broken framing.  The contract checked here:

* ``push()`` / ``pull()`` / ``sync()`` either return or raise a
  :class:`sqla_sync.SyncError` subclass -- never another exception type;
* the local database is not corrupted: local rows that were not part of the
  bad answer are unchanged, and the outbox never loses an op (an op leaves the
  outbox only after a 2xx, a conflict answer settled by the policy, or a 404
  to a DELETE);
* every bad answer becomes a retry, a dead letter or a clear error, and the
  engine is not wedged: once the server answers sanely again, the pending ops
  go through and the pull works.

Answers come from :class:`HostileServer`, a tiny threaded stdlib HTTP/1.1
server in this file that writes whatever status line, headers and bytes a
test sets (keep-alive, close-delimited or chunked bodies).

Defects found while writing this suite are pinned by the ``BUG-n`` tests below
(``xfail(strict=True)``: they start failing -- XPASS -- when the library is
fixed; then drop the marker).  The property tests recognise exactly those
defects by exception type and message, count them under their id and go on
exploring; anything else fails them.  Figures: ``pytest -s`` prints them;
``SQLA_SYNC_RELIABILITY_FIGURES=DIR`` also writes them as JSON to DIR.
Profiles: the fast one by default, ``SQLA_SYNC_RELIABILITY_LONG=1`` for many
more examples.  See reliability/input_load_security.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote_plus

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, Table, create_engine, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from sqla_sync import (
    BodyCursor,
    ConfigurationError,
    Cursor,
    Errors,
    NextLink,
    Offset,
    PageNumber,
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
from sqla_sync.tables import checkpoints, outbox
from tests.conftest import FakeClock, reset_schema
from tests.models import Article, Base, Ledger

pytestmark = pytest.mark.reliability

LONG = os.environ.get("SQLA_SYNC_RELIABILITY_LONG", "") == "1"
PUSH_EXAMPLES = 1500 if LONG else 70
PULL_EXAMPLES = 1500 if LONG else 70

PROFILE = settings(
    max_examples=PUSH_EXAMPLES,
    deadline=None,
    derandomize=not LONG,           # the fast profile is reproducible run to run
    database=None,
    suppress_health_check=list(HealthCheck),
    # The fast profile reports a failing example as found: shrinking one can take minutes.
    phases=list(Phase) if LONG else [Phase.explicit, Phase.reuse, Phase.generate],
)

#: Per-module figures (printed with -s, written as JSON with SQLA_SYNC_RELIABILITY_FIGURES).
FIGURES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_figures() -> Iterator[None]:
    yield
    write_figures("bad_input", FIGURES)


def write_figures(name: str, figures: Counter[str]) -> None:
    """Print the figures and, with SQLA_SYNC_RELIABILITY_FIGURES=DIR, save them as JSON."""
    print(f"\n[reliability:{name}] " + ", ".join(f"{k}={v}" for k, v in sorted(figures.items())))
    target = os.environ.get("SQLA_SYNC_RELIABILITY_FIGURES")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / f"{name}.json").write_text(json.dumps(dict(figures), indent=2,
                                                              sort_keys=True))


# -- known defects ---------------------------------------------------------------------

#: Defects this suite found (see the BUG-n tests and the report).  The property
#: tests count them instead of stopping at the first; anything else fails.
KNOWN_BUGS: dict[str, tuple[type[BaseException], str]] = {
    # BUG-1 (deep JSON -> RecursionError), BUG-2 (NaN/Infinity -> ValueError), BUG-3
    # (huge integers -> OverflowError), BUG-4 (Retry-After "²" -> ValueError), BUG-5
    # (cursor at year 1 -> OverflowError) and BUG-6 (malformed URL -> ValueError) are
    # fixed: any of them now fails the property tests like any other escape.
}


ERROR_KINDS = [
    ("malformed or non-JSON body", r"malformed JSON|non-JSON body"),
    ("non-2xx status", r"answered \d+"),
    ("401 refused", r"refused with 401"),
    ("other origin refused", r"refusing "),
    ("response over the cap", r"exceeds the cap"),
    ("answer cut short / broken connection", r"cut short|ConnectionError|ProtocolError|"
                                              r"ChunkedEncodingError|ContentDecodingError|"
                                              r"BadStatusLine|RemoteDisconnected"),
    ("timeout", r"Timeout"),
    ("too many redirects", r"too many redirects"),
    ("redirect changes the method", r"redirect would change the method"),
    ("map_response failed", r"map_response failed"),
    ("rows not a list", r"not a list of rows"),
    ("row not an object", r"not an object"),
    ("row without primary key", r"has no id|\(its primary key\)"),
    ("row without cursor field", r"has no 'updatedAt'"),
    ("row value unreadable", r"could not be read"),
    ("page not applied (database refused it)", r"was not applied"),
    ("paginator failed", r"paginat|next|cursor"),
]


def error_kind(exc: BaseException) -> str:
    """A short label of a SyncError's message, for the figures."""
    for label, pattern in ERROR_KINDS:
        if re.search(pattern, str(exc)):
            return label
    return "other: " + str(exc)[:60]


#: A message that names the request it is about ("GET /api/posts ...").
REQUEST_NAMED = r"\b(GET|POST|PUT|PATCH|DELETE) /"


def known_bug(exc: BaseException) -> str | None:
    """The id of a known defect ``exc`` is an instance of, or None."""
    for name, (kind, pattern) in KNOWN_BUGS.items():
        if type(exc) is kind and re.search(pattern, str(exc)):
            return name.split(" ", 1)[0]
    return None  # BUG-14 (a conflict answer's row decoded and written unchecked) is fixed


# -- a server that answers anything ----------------------------------------------------------


@dataclass
class Reply:
    """One answer: status line, headers and raw body bytes, and how it is framed.

    :ivar framing: "length" (Content-Length), "close" (no length; the body ends
        when the connection closes), "chunked", or "short" (a Content-Length
        smaller than the body: the rest desynchronises a kept-alive connection).
    """

    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    framing: str = "length"
    reason: str = "Whatever"

    def describe(self) -> str:
        return (f"{self.status} {self.framing} {self.headers!r} "
                f"{self.body[:120]!r}{'...' if len(self.body) > 120 else ''} ({len(self.body)} B)")


@dataclass
class Seen:
    """A request as the hostile server received it, and the status it was given."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    status: int = 0

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


Script = Callable[[Seen], Reply]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        seen = Seen(self.command, self.path, dict(self.headers.items()), body)
        owner = self.server.owner
        with owner.lock:
            owner.requests.append(seen)
            if owner.replies:
                reply = owner.replies.pop(0)
            else:
                reply = owner.script(seen) if owner.script is not None else owner.default
        seen.status = reply.status
        lines = [f"HTTP/1.1 {reply.status} {reply.reason}"]
        lines += [f"{name}: {value}" for name, value in reply.headers]
        payload = reply.body
        if reply.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
            step = 65536
            payload = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + step]), payload[i:i + step])
                               for i in range(0, len(payload), step)) + b"0\r\n\r\n"
        elif reply.framing == "length":
            lines.append(f"Content-Length: {len(payload)}")
        elif reply.framing == "short":
            lines.append(f"Content-Length: {len(payload) // 2}")
        if reply.framing == "close":
            lines.append("Connection: close")
            self.close_connection = True
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head + payload)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: HostileServer

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.owner.lock:
            self.owner.connections.add(conn)
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up early is no news here."""


SANE_PAGE = Reply(200, b'{"data": [], "next": null, "next_cursor": null}',
                  [("Content-Type", "application/json")])


class HostileServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that answers what the test says.

    Answers come from ``replies`` (a queue, first in first out), then from
    ``script(seen)`` if set, else ``default``.  ``requests`` records every
    request with the status it got.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.replies: list[Reply] = []
        self.script: Script | None = None
        self.default = SANE_PAGE
        self.requests: list[Seen] = []
        self.connections: set[socket.socket] = set()
        self._httpd = _Server((host, 0), _Handler)
        self._httpd.owner = self
        self.port = int(self._httpd.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def reset(self, *replies: Reply, script: Script | None = None,
              default: Reply | None = None) -> None:
        with self.lock:
            self.replies = list(replies)
            self.script = script
            self.default = default if default is not None else SANE_PAGE
            self.requests = []

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        with self.lock:
            connections = list(self.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


JSON_TYPE = [("Content-Type", "application/json")]


def json_reply(status: int, value: Any, headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(status, json.dumps(value).encode(), JSON_TYPE + (headers or []))


def sane_script(seen: Seen) -> Reply:
    """What a well-behaved server answers: the row back, 204 to a delete, empty pages."""
    if seen.method in ("POST", "PUT", "PATCH"):
        body = seen.json()
        return json_reply(201 if seen.method == "POST" else 200,
                          body if isinstance(body, dict) else {})
    if seen.method == "DELETE":
        return Reply(204)
    return json_reply(200, {"data": [], "next": None, "next_cursor": None})


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


# -- local databases ----------------------------------------------------------------------------


class Template:
    """One SQLite file with the schema, copied for every example (cheaper than DDL)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sqla-sync-bad-input-")
        self.path = Path(self.dir) / "template.db"
        engine = create_engine(f"sqlite:///{self.path}")
        reset_schema(engine, Base.metadata)
        engine.dispose()
        self.count = 0

    def fresh(self) -> tuple[Engine, Path]:
        self.count += 1
        path = Path(self.dir) / f"db-{self.count}.db"
        shutil.copyfile(self.path, path)
        return create_engine(f"sqlite:///{path}"), path

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def template() -> Iterator[Template]:
    tpl = Template()
    yield tpl
    tpl.close()


def article_rows(engine: Engine) -> dict[str, tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(select(Article.id, Article.title, Article.body, Article.updated_at,
                                   Article.version))
        return {r[0]: tuple(r[1:]) for r in rows}


def outbox_rows(engine: Engine) -> dict[int, dict[str, Any]]:
    with engine.connect() as conn:
        return {r["id"]: dict(r) for r in conn.execute(select(outbox)).mappings()}


def integrity_ok(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"


ARTICLES = cast(Table, Article.__table__)

PUSH_ROUTES = {
    "articles": Routes(
        fields={"updated_at": "updatedAt"},
        push=Push(create=Request("POST", "/api/posts"),
                  update=Request("PUT", "/api/posts/{id}"),
                  delete=Request("DELETE", "/api/posts/{id}")),
    ),
    "ledgers": Routes(
        push=Push(create=Request("POST", "/api/ledgers"),
                  update=Request("PUT", "/api/ledgers/{id}"),
                  delete=Request("DELETE", "/api/ledgers/{id}")),
    ),
}


# -- strategies -----------------------------------------------------------------------------------

NASTY_TEXT = [
    "", ".", "..", "../x", "a/b", "?x=1", "#frag", "%2e%2e", "null", "None", "NaN", "0",
    "-1", "1e309", "true", "\u0000", "\u202e", "\ud7ff", "日本語", "x" * 300,
    "0001-01-01T00:00:00", "9999-12-31T23:59:59.999999Z", "2024-02-30T25:61:61", "1970",
    "http://127.0.0.2:9/x", "//127.0.0.2:9/x", "/api/posts?offset=1",
]

# Ids never start with "keep": rows named keep-* are never part of a bad answer.
texts = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=20)).filter(
    lambda s: not s.startswith("keep"))
scalars = st.one_of(
    st.none(), st.booleans(), texts,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**63, 2**64, 10**30, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "title", "data", "updatedAt", "version", "error", "current",
                         "next", ""]) | texts, inner, max_size=4),
    max_leaves=12,
)
row_like = st.fixed_dictionaries({}, optional={
    "id": json_values, "title": json_values, "body": json_values, "updatedAt": json_values,
    "version": json_values, "deleted": json_values, "current": json_values,
    "unknownField": json_values,
})
ids = st.one_of(texts, texts, st.integers(-5, 10**6), st.sampled_from([10**400, 2**63, -0.0]),
                st.floats(allow_nan=True, allow_infinity=True), st.none(), st.booleans(),
                st.lists(scalars, max_size=2))
cursor_values = st.one_of(
    st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01T00:00:00.123+05:00",
                     "2024-01-01 00:00:00", "0001-01-01T00:00:00", "0001-01-01T00:00:00+14:00",
                     "9999-12-31T23:59:59.999999Z", "2024-13-45T99:99:99", "yesterday", ""]),
    st.integers(0, 2**42), st.sampled_from([10**400, -1, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True), json_values)
#: Rows that look right at a glance: an id, a cursor value and a title, of any type.
plausible_row = st.fixed_dictionaries(
    {"id": ids, "updatedAt": cursor_values, "title": st.one_of(texts, json_values)},
    optional={"body": json_values, "version": json_values, "deleted": json_values,
              "unknownField": json_values})
CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8",
                 "application/problem+json", "text/html", "text/plain",
                 "application/octet-stream", "application/json; charset=utf-16", "*/*"]
RETRY_AFTER = ["0", "1", "-1", "1.5", "1e9", "9" * 40, "\u00b2", "\u00b3\u00b9", "soon", "",
               "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT",
               "Mon, 01 Jan 0001 00:00:00 +2359"]
LOCATIONS = ["/api/posts", "/elsewhere", "http://127.0.0.2:9/api/posts", "//127.0.0.2:9/x",
             "https://127.0.0.1/", "", "http://[::1/x", "javascript:alert(1)", "?page=2",
             "http://user@127.0.0.2:9/"]


def _big_body(kind: str) -> bytes:
    """Bodies too big to draw byte by byte: built from a drawn label."""
    if kind == "deep-list":
        return b"[" * 100_000 + b"]" * 100_000
    if kind == "deep-data":
        return b'{"data": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    if kind == "deep-dict":
        return b'{"a":' * 3_000 + b"1" + b"}" * 3_000
    if kind == "nested-ok":
        return b'{"data": [' + b"[" * 200 + b"]" * 200 + b"]}"
    if kind == "wide":
        return json.dumps({"data": [{"id": f"wide-{i}", "title": i} for i in range(5000)],
                           "next": None, "next_cursor": None}).encode()
    if kind == "long-string":
        return json.dumps({"id": "long", "title": "x" * 1_000_000}).encode()
    if kind == "many-keys":
        return json.dumps({f"k{i}": None for i in range(50_000)}).encode()
    raise AssertionError(kind)


BIG_KINDS = ["deep-list", "nested-ok", "nested-ok", "wide", "long-string", "many-keys",
             "deep-data", "deep-dict"]


@st.composite
def bodies(draw: st.DrawFn, shape: st.SearchStrategy[Any]) -> bytes:
    kind = draw(st.sampled_from(["shape"] * 12 + ["json", "json", "raw", "raw", "truncated",
                                                  "empty", "big"]))
    if kind == "shape":
        return json.dumps(draw(shape)).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "raw":
        return draw(st.one_of(st.binary(max_size=64), st.sampled_from([
            b"<html><body>500</body></html>", b"\xff\xfe{\x00}\x00", b"\xef\xbb\xbf{}",
            b"{'single': 'quotes'}", b"[1,2,", b"NaN", b"Infinity", b"-Infinity", b"1e999",
            b"\x00" * 16, b'{"a":1}{"b":2}', b"   \r\n\t  "])))
    if kind == "truncated":
        text_ = json.dumps(draw(shape)).encode()
        return text_[: draw(st.integers(0, max(0, len(text_) - 1)))]
    if kind == "empty":
        return b""
    return _big_body(draw(st.sampled_from(BIG_KINDS)))


@st.composite
def replies(draw: st.DrawFn, shape: st.SearchStrategy[Any], *, pull: bool = False) -> Reply:
    status = draw(st.one_of(
        st.sampled_from([200, 201, 202, 203, 204, 205, 206, 299, 300, 301, 302, 303, 304, 307,
                         308, 400, 401, 403, 404, 405, 408, 409, 410, 412, 418, 422, 425, 429,
                         500, 502, 503, 504, 599]),
        st.integers(101, 999).filter(lambda s: s != 100),
    ))
    if draw(st.integers(0, 3)) < (3 if pull else 2):
        status = 200 if pull else draw(st.sampled_from([200, 201, 202]))  # "successful" answers
    headers: list[tuple[str, str]] = []
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    if ctype is not None:
        headers.append(("Content-Type", ctype))
    if draw(st.integers(0, 3)) == 0:
        headers.append(("Retry-After", draw(st.sampled_from(RETRY_AFTER))))
    if draw(st.integers(0, 3)) == 0:
        etags = ['"v1"', 'W/"x"', "", "\u00e9", "1" * 300]
        headers.append(("ETag", draw(st.sampled_from(etags))))
    if 300 <= status < 400 and draw(st.booleans()):
        headers.append(("Location", draw(st.sampled_from(LOCATIONS))))
    if pull and draw(st.integers(0, 3)) == 0:
        link = draw(st.sampled_from(LOCATIONS))
        headers.append(("Link", f"<{link}>; rel=\"next\""))
    if draw(st.integers(0, 9)) == 0:
        headers.append(("Content-Encoding", draw(st.sampled_from(["gzip", "deflate", "br", "x"]))))
    framing = draw(st.sampled_from(["length"] * 5 + ["close", "chunked", "short"]))
    if pull and draw(st.booleans()):
        # Half the pages are clean HTTP (200, JSON, framed): only their content is hostile.
        return Reply(200, json.dumps(draw(shape)).encode(), JSON_TYPE)
    return Reply(status, draw(bodies(shape)), headers, framing)


#: Rows of the right types, with nasty text in them.
typed_row = st.fixed_dictionaries(
    {"id": texts, "title": texts, "updatedAt": st.one_of(
        st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01T00:00:00.500Z", "2024-06-01"]),
        st.integers(0, 2**41))},
    optional={"body": st.one_of(st.none(), texts), "version": st.integers(-(2**63), 2**63 - 1),
              "deleted": st.booleans()})
#: A page whose envelope is right; its rows are plausible (any types) or typed (nasty text).
good_page = st.fixed_dictionaries({"data": st.lists(st.one_of(plausible_row, typed_row,
                                                              typed_row), max_size=4)}, optional={
    "next": st.one_of(st.none(), st.sampled_from(LOCATIONS)),
    "next_cursor": st.one_of(st.none(), json_values)})
page_shape = st.fixed_dictionaries({}, optional={
    "data": st.one_of(
        st.lists(st.one_of(plausible_row, plausible_row, plausible_row, row_like, json_values),
                 max_size=4),
        st.lists(st.one_of(plausible_row, plausible_row, plausible_row, row_like, json_values),
                 max_size=4),
        json_values),
    "next": st.one_of(st.sampled_from(LOCATIONS), json_values),
    "next_cursor": json_values,
})


# -- push ---------------------------------------------------------------------------------------


@dataclass
class PushCase:
    """The local database of one push example: three pending ops, two bystander rows."""

    engine: Engine
    path: Path
    maker: sessionmaker[Session]
    bystanders: dict[str, tuple[Any, ...]]
    ops: dict[int, dict[str, Any]]


def push_case(template: Template) -> PushCase:
    engine, path = template.fresh()
    with engine.begin() as conn:  # Core: not captured, so these rows have no ops
        conn.execute(insert(ARTICLES), [
            {"id": "keep-1", "title": "bystander one", "body": "b", "updated_at": "u",
             "version": 3},
            {"id": "keep-2", "title": "bystander two", "body": None, "updated_at": None,
             "version": None},
            {"id": "d1", "title": "to delete", "body": None, "updated_at": None,
             "version": 1},
        ])
    maker = track(sessionmaker(engine, expire_on_commit=False))
    with maker() as s:
        s.add(Article(id="a1", title="created offline", body="x"))
        s.add(Ledger(id=-1, title="temporary key"))
        s.delete(s.get(Article, "d1"))
        s.commit()
    bystanders = {k: v for k, v in article_rows(engine).items() if k.startswith("keep")}
    return PushCase(engine, path, maker, bystanders, outbox_rows(engine))


def op_of(seen: Seen) -> str | None:
    """Which of the three ops a request belongs to (a1, -1 or d1)."""
    if seen.method == "DELETE":
        return "d1" if seen.target.endswith("/d1") else None
    body = seen.json()
    if isinstance(body, dict) and "id" in body:
        return {"a1": "a1", -1: "-1"}.get(body["id"])
    return None


def row_of(op: dict[str, Any]) -> str:
    key = json.loads(op["row_key"])[0]
    return str(key)


REMOVING = set(range(200, 300)) | {409, 412}


def _decoded_ids(answers: Any) -> set[str]:
    """The ids, as the String column would hold them, of the objects in these answers."""
    found: set[str] = set()
    for reply in answers:
        try:
            _ids_in(json.loads(reply.body), found)
        except (ValueError, RecursionError):
            pass
    return found


@PROFILE
@given(answers=st.lists(replies(st.one_of(plausible_row, row_like, good_page)), min_size=1,
                        max_size=4),
       via=st.sampled_from(["push", "push", "sync"]),
       concurrency=st.sampled_from([1, 3]), max_retries=st.sampled_from([0, 2]))
def test_push_survives_hostile_answers(hostile: HostileServer, template: Template,
                                       answers: list[Reply], via: str, concurrency: int,
                                       max_retries: int) -> None:
    """push() -- or sync(), whose pull meets the first answers -- against anything."""
    for reply in answers:
        note(reply.describe())
    case = push_case(template)
    hostile.reset(*answers, default=answers[-1])
    clock = FakeClock()
    table = PUSH_ROUTES if via == "push" else {**PUSH_ROUTES, "articles": Routes(
        fields={"updated_at": "updatedAt"}, push=PUSH_ROUTES["articles"].push,
        pull=PULL_VARIANTS["cursor-strict-offset"])}
    config = SyncConfig(
        base_url=hostile.url, routes=define_routes(table), clock=clock, seed=3,
        sync=Schedule(push_batch_size=10, push_concurrency=concurrency),
        errors=Errors(max_retries=max_retries), timeout=(2.0, 1.0),
        max_response_bytes=4 * 2**20)
    sync: SyncEngine | None = None
    try:
        sync = start_sync(case.engine, config)
        try:
            result = sync.push() if via == "push" else sync.sync().push
            FIGURES[f"{via}:examples-returned"] += 1
            FIGURES["push:ops-pushed"] += result.pushed
            FIGURES["push:ops-retried"] += result.failed
            FIGURES["push:ops-dead-lettered"] += result.dead_lettered
            FIGURES["push:ops-conflict"] += result.conflicts
        except SyncError as exc:
            FIGURES[f"{via}:raised-{type(exc).__name__}"] += 1
            FIGURES[f"{via}:error-kind:{error_kind(exc)}"] += 1
            assert str(exc), "a SyncError must say what went wrong"
        except Exception as exc:
            bug = known_bug(exc)
            if bug is None:
                raise AssertionError(f"{via}() raised {type(exc).__name__}, not a SyncError: "
                                     f"{exc}") from exc
            FIGURES[f"{via}:{bug}"] += 1
        answered: dict[str, set[int]] = {}
        for seen in hostile.requests:
            owner = op_of(seen)
            if owner is not None:
                answered.setdefault(owner, set()).add(seen.status)
        FIGURES["push:requests"] += len(hostile.requests)

        # The bystanders are untouched; no row appeared or vanished.
        after = article_rows(case.engine)
        for key, values in case.bystanders.items():
            assert after.get(key) == values, f"bystander {key} changed: {after.get(key)}"
        rekeyed = _decoded_ids(a for a in answers if 200 <= a.status < 300)
        strangers = set(after) - {"keep-1", "keep-2", "a1", "d1"} - rekeyed
        assert not strangers, f"rows no answer explains: {sorted(strangers)} in {sorted(after)}"
        if "d1" in after:  # restored: server-wins on a conflict answer, or a listed d1
            assert answered.get("d1", set()) & {409, 412} or "d1" in rekeyed, (
                f"d1 came back: {sorted(after)}")
        if via == "push":  # (a pulled page may add rows, or delete a1 by a tombstone)
            assert 3 <= len(after) <= 4, f"articles: {sorted(after)}"
        with case.engine.connect() as conn:
            assert conn.execute(select(Ledger.id)).all() != [], "the ledger row vanished"

        # No op lost: an op leaves the outbox only after an answer that allows it.
        now = outbox_rows(case.engine)
        for op_id, op in case.ops.items():
            row = row_of(op)
            if op_id in now:
                assert now[op_id]["status"] in ("pending", "dead"), now[op_id]
                continue
            statuses = answered.get(row, set())
            allowed = bool(statuses & REMOVING) or (op["op"] == "delete"
                                                    and statuses & {404, 410}) \
                or row in rekeyed  # listed by a page: a conflict settled by server-wins
            assert allowed, f"op {op['op']} {row} left the outbox after answers {statuses}"
        assert set(now) <= set(case.ops), "pushing created ops"
        for op in now.values():
            json.loads(op["state"]) if op["state"] is not None else None
            if op["last_error"] is not None:
                json.loads(op["last_error"])
        for letter in sync.dead_letters():
            assert isinstance(letter.error, str) and letter.error, letter
        assert integrity_ok(case.engine)

        # Not wedged: a sane server gets every pending op.
        hostile.reset(script=sane_script)
        for _ in range(3):
            clock.advance(86_400 * 2)
            try:
                sync.push()
            except Exception as exc:
                bug = known_bug(exc)
                if bug is None:
                    raise AssertionError(
                        f"push() against a sane server raised {type(exc).__name__}: {exc}"
                    ) from exc
                FIGURES[f"push:recovery-{bug}"] += 1
                break
            if sync.queue_depth() == 0:
                break
        else:
            raise AssertionError(f"{sync.queue_depth()} op(s) still pending against a sane "
                                 f"server: {outbox_rows(case.engine)}")
        FIGURES["push:examples"] += 1
    finally:
        if sync is not None:
            sync.stop()
        untrack(case.maker)
        case.engine.dispose()
        case.path.unlink(missing_ok=True)


# -- pull ---------------------------------------------------------------------------------------


def _pull(**kw: Any) -> Pull:
    return Pull("GET", "/api/posts", map_response=lambda body: body["data"],
                deleted=lambda row: row.get("deleted", False), **kw)


PULL_VARIANTS: dict[str, Pull] = {
    "cursor-strict-offset": _pull(cursor=Cursor(field="updatedAt", param="updated_after"),
                                  paginate=Offset()),
    "cursor-inclusive-page": _pull(cursor=Cursor(field="updatedAt", param="since",
                                                 inclusive=True), paginate=PageNumber()),
    "cursor-link-header": _pull(cursor=Cursor(field="updatedAt", param="updated_after"),
                                paginate=NextLink(header="Link")),
    "next-in-body": _pull(paginate=NextLink(header=None, body=lambda body: body["next"])),
    "body-cursor": _pull(paginate=BodyCursor(body=lambda body: body["next_cursor"])),
    "reconcile": _pull(paginate=Offset(), reconcile=True, reconcile_interval=0.0),
}


def _ids_in(value: Any, found: set[str]) -> None:
    """Every ``id`` of every object in a parsed body, as the String column would hold it."""
    if isinstance(value, dict):
        if "id" in value and value["id"] is not None:
            found.add(value["id"] if isinstance(value["id"], str) else str(value["id"]))
        for v in value.values():
            _ids_in(v, found)
    elif isinstance(value, list):
        for v in value:
            _ids_in(v, found)


@settings(PROFILE, max_examples=PULL_EXAMPLES)
@given(variant=st.sampled_from(sorted(PULL_VARIANTS)),
       pages=st.lists(replies(st.one_of(good_page, good_page, good_page, page_shape), pull=True),
                      min_size=1, max_size=3))
def test_pull_survives_hostile_pages(hostile: HostileServer, template: Template, variant: str,
                                     pages: list[Reply]) -> None:
    for reply in pages:
        note(reply.describe())
    engine, path = template.fresh()
    maker = track(sessionmaker(engine, expire_on_commit=False))
    sync: SyncEngine | None = None
    try:
        with engine.begin() as conn:
            conn.execute(insert(ARTICLES), [
                {"id": "keep-1", "title": "mine", "body": "b", "updated_at": "u", "version": 1},
                {"id": "keep-2", "title": "theirs", "body": None, "updated_at": None,
                 "version": None},
            ])
        with maker() as s:  # a pending local edit that a bad page must not touch
            row = s.get(Article, "keep-1")
            assert row is not None
            row.title = "edited offline"
            s.commit()
        before_rows = article_rows(engine)
        before_ops = outbox_rows(engine)
        hostile.reset(*pages)
        routes = define_routes({"articles": Routes(fields={"updated_at": "updatedAt"},
                                                   push=PUSH_ROUTES["articles"].push,
                                                   pull=PULL_VARIANTS[variant])})
        sync = start_sync(engine, SyncConfig(
            base_url=hostile.url, routes=routes, clock=FakeClock(), timeout=(2.0, 1.0),
            sync=Schedule(pull_page_size=2, pull_max_pages=4),
            max_response_bytes=4 * 2**20))
        try:
            result = sync.pull()
            FIGURES["pull:examples-returned"] += 1
            FIGURES["pull:rows-written"] += result.pulled
            FIGURES["pull:rows-deleted"] += result.deleted
        except SyncError as exc:
            FIGURES[f"pull:raised-{type(exc).__name__}"] += 1
            FIGURES[f"pull:error-kind:{error_kind(exc)}"] += 1
            assert "articles" in str(exc) or re.search(REQUEST_NAMED, str(exc)), (
                f"the error names neither the table nor the request: {exc}")
        except Exception as exc:
            bug = known_bug(exc)
            if bug is None:
                raise AssertionError(f"pull() raised {type(exc).__name__}, not a SyncError: "
                                     f"{exc}") from exc
            FIGURES[f"pull:{bug}"] += 1
        FIGURES["pull:requests"] += len(hostile.requests)

        after = article_rows(engine)
        if variant == "reconcile" and "keep-2" not in after:
            # A complete listing (even an empty one) that lacks keep-2, which has no
            # pending op, deletes it -- that is what reconcile is for, and it may
            # happen before a later page of the same pull fails.
            before_rows.pop("keep-2")
            FIGURES["pull:reconcile-deleted-unlisted-row"] += 1
        for key, values in before_rows.items():
            assert after.get(key) == values, f"{key} changed: {values} -> {after.get(key)}"
        listed = _decoded_ids(pages)
        strangers = set(after) - set(before_rows) - listed
        assert not strangers, f"rows no page listed: {strangers}"
        assert outbox_rows(engine) == before_ops, "a bad page changed the outbox"
        with engine.connect() as conn:
            for value in conn.execute(select(checkpoints.c.value)).scalars():
                json.loads(value)
        assert integrity_ok(engine)

        # Not wedged: the next pulls against a sane server work.
        hostile.reset()
        for _ in range(2):
            try:
                sync.pull()
            except Exception as exc:
                bug = known_bug(exc)
                if bug is None:
                    raise AssertionError(f"pull() against a sane server raised "
                                         f"{type(exc).__name__}: {exc}") from exc
                FIGURES[f"pull:recovery-{bug}"] += 1
                break
        assert outbox_rows(engine) == before_ops
        FIGURES["pull:examples"] += 1
    finally:
        if sync is not None:
            sync.stop()
        untrack(maker)
        engine.dispose()
        path.unlink(missing_ok=True)


# -- big but legal ---------------------------------------------------------------------------------


def test_a_big_page_under_the_cap_is_applied(hostile: HostileServer, template: Template) -> None:
    """5000 rows and ~2.6 MB in one page: applied in one go, nothing lost."""
    rows = [{"id": f"big-{i:05}", "title": "t" * 500, "updatedAt": f"2024-01-01T00:00:{i % 60:02}Z"}
            for i in range(5000)]
    hostile.reset(json_reply(200, {"data": rows}))
    engine, path = template.fresh()
    routes = define_routes({"articles": Routes(fields={"updated_at": "updatedAt"},
                                               push=PUSH_ROUTES["articles"].push,
                                               pull=_pull(paginate=Offset()))})
    try:
        with start_sync(engine, SyncConfig(base_url=hostile.url, routes=routes,
                                           clock=FakeClock(),
                                           sync=Schedule(pull_page_size=10_000))) as sync:
            assert sync.pull().pulled == 5000
        assert len(article_rows(engine)) == 5000
    finally:
        engine.dispose()
        path.unlink(missing_ok=True)


# -- the defects, one by one ----------------------------------------------------------------------


def _one_push(hostile: HostileServer, template: Template, *answers: Reply,
              **config: Any) -> tuple[PushCase, SyncEngine, FakeClock]:
    case = push_case(template)
    hostile.reset(*answers, default=answers[-1])
    clock = FakeClock()
    sync = start_sync(case.engine, SyncConfig(
        base_url=hostile.url, routes=define_routes(PUSH_ROUTES), clock=clock, seed=1,
        sync=Schedule(push_concurrency=1), **config))
    return case, sync, clock


def _push_must_not_escape(hostile: HostileServer, template: Template, reply: Reply) -> None:
    case, sync, _ = _one_push(hostile, template, reply)
    try:
        try:
            sync.push()
        except SyncError:
            pass
    finally:
        sync.stop()
        untrack(case.maker)
        case.engine.dispose()


def _pull_must_not_escape(hostile: HostileServer, template: Template, *pages: Reply,
                          pull: Pull | None = None, times: int = 1) -> None:
    hostile.reset(*pages)
    engine, _ = template.fresh()
    routes = define_routes({"articles": Routes(
        fields={"updated_at": "updatedAt"}, push=PUSH_ROUTES["articles"].push,
        pull=pull or PULL_VARIANTS["cursor-strict-offset"])})
    try:
        with start_sync(engine, SyncConfig(base_url=hostile.url, routes=routes,
                                           clock=FakeClock())) as sync:
            for _ in range(times):
                try:
                    sync.pull()
                except SyncError:
                    pass
    finally:
        engine.dispose()


BUG = pytest.mark.xfail  # alias: every BUG-n test is xfail(strict=True)


def test_bug1_deeply_nested_push_answer(hostile: HostileServer, template: Template) -> None:
    """BUG-1 (fixed) and the next ones: each answer is now a retry, a dead letter or a
    SyncError; no other exception escapes push() or pull()."""
    _push_must_not_escape(hostile, template,
                          Reply(201, b"[" * 100_000 + b"]" * 100_000, JSON_TYPE))


def test_bug1_deeply_nested_page(hostile: HostileServer, template: Template) -> None:
    _pull_must_not_escape(hostile, template,
                          Reply(200, b'{"data":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                JSON_TYPE))


def test_bug2_nan_in_a_push_answer(hostile: HostileServer, template: Template) -> None:
    _push_must_not_escape(hostile, template,
                          Reply(201, b'{"id": "a1", "title": NaN}', JSON_TYPE))


def test_bug2_a_poisoned_answer_stalls_its_wave(hostile: HostileServer,
                                                template: Template) -> None:
    """BUG-2 (fixed): an answer with Infinity is refused as malformed JSON before any
    write-back, so it is the poisoned op alone that is retried -- its attempts grow,
    and it becomes a dead letter once out of retries -- while the healthy ops of its
    wave complete in the first pass."""
    def script(seen: Seen) -> Reply:
        if op_of(seen) == "a1":
            return Reply(201, b'{"id": "a1", "version": Infinity}', JSON_TYPE)
        return sane_script(seen)

    case, sync, clock = _one_push(hostile, template, Reply(500))
    hostile.reset(script=script)
    try:
        escaped = []
        attempts: list[list[int]] = []
        depths = []
        for _ in range(7):  # Errors() default: 5 retries, so the 6th failure buries it
            clock.advance(3600)
            try:
                sync.push()
            except Exception as exc:
                escaped.append(type(exc).__name__)
            depths.append(sync.queue_depth())
            with case.engine.connect() as conn:
                attempts.append(list(conn.execute(select(outbox.c.attempts)).scalars()))
        letters = sync.dead_letters()
        assert escaped == [], escaped
        assert depths[0] == 1, f"the healthy ops of the wave did not complete: {depths}"
        assert attempts[:3] == [[1], [2], [3]], attempts
        assert depths[-1] == 0 and len(letters) == 1, (depths, attempts, letters)
        assert "Infinity" in letters[0].error, letters[0].error
    finally:
        sync.stop()
        untrack(case.maker)
        case.engine.dispose()


def test_bug3_huge_integer_in_a_push_answer(hostile: HostileServer, template: Template) -> None:
    _push_must_not_escape(hostile, template,
                          Reply(201, b'{"id": "a1", "version": 1' + b"0" * 40 + b"}", JSON_TYPE))


def test_bug3_huge_integer_cursor(hostile: HostileServer, template: Template) -> None:
    _pull_must_not_escape(hostile, template, Reply(
        200, b'{"data": [{"id": "x", "title": "t", "updatedAt": 1' + b"0" * 400 + b"}]}",
        JSON_TYPE))


def test_bug4_retry_after_superscript(hostile: HostileServer, template: Template) -> None:
    _push_must_not_escape(hostile, template, Reply(503, b"busy", [("Retry-After", "\u00b2")]))


def test_bug5_cursor_at_year_one_poisons_every_later_pull(hostile: HostileServer,
                                                          template: Template) -> None:
    """BUG-5 (fixed): a page whose cursor value is year 1 (nothing lies one unit below
    it) is applied, and every later pull still works: it asks with the value itself."""
    for value in ("0001-01-01T00:00:00", "0001-01-01T00:00:00+14:00"):
        hostile.reset(json_reply(200, {"data": [{"id": "x", "title": "t", "updatedAt": value}]}))
        engine, _ = template.fresh()
        routes = define_routes({"articles": Routes(
            fields={"updated_at": "updatedAt"}, push=PUSH_ROUTES["articles"].push,
            pull=PULL_VARIANTS["cursor-strict-offset"])})
        try:
            with start_sync(engine, SyncConfig(base_url=hostile.url, routes=routes,
                                               clock=FakeClock())) as sync:
                assert sync.pull().pulled == 1
                sync.pull()
                sync.pull()
            assert f"updated_after={quote_plus(value)}&" in hostile.requests[-1].target, (
                hostile.requests[-1].target)
        finally:
            engine.dispose()


def test_bug6_malformed_next_link(hostile: HostileServer, template: Template) -> None:
    _pull_must_not_escape(hostile, template,
                          json_reply(200, {"data": [{"id": "a", "title": "t"}],
                                           "next": "http://[::1/x"}),
                          pull=PULL_VARIANTS["next-in-body"])


def test_bug6_malformed_redirect(hostile: HostileServer, template: Template) -> None:
    _push_must_not_escape(hostile, template, Reply(307, b"", [("Location", "http://[::1/x")]))


def test_bug11_lists_and_objects_are_not_coerced_to_text(hostile: HostileServer,
                                                         template: Template) -> None:
    hostile.reset(json_reply(200, {"data": [
        {"id": [1], "title": "t", "updatedAt": "2024-01-01T00:00:00Z"},
        {"id": "ok", "title": {"a": 1}, "updatedAt": "2024-01-01T00:00:01Z"}]}))
    engine, _ = template.fresh()
    routes = define_routes({"articles": Routes(fields={"updated_at": "updatedAt"},
                                               push=PUSH_ROUTES["articles"].push,
                                               pull=PULL_VARIANTS["cursor-strict-offset"])})
    try:
        with start_sync(engine, SyncConfig(base_url=hostile.url, routes=routes,
                                           clock=FakeClock())) as sync:
            try:
                sync.pull()
            except SyncError:
                pass
        stored = article_rows(engine)
        assert "[1]" not in stored and "{'a': 1}" not in [v[0] for v in stored.values()], stored
    finally:
        engine.dispose()


def _conflict_on_delete(body: Any) -> Script:
    def script(seen: Seen) -> Reply:
        if seen.method == "DELETE":
            return json_reply(409, body)
        return sane_script(seen)
    return script


def test_bug14_a_conflict_answer_with_an_undecodable_key(hostile: HostileServer,
                                                         template: Template) -> None:
    _push_must_not_escape(hostile, template, json_reply(409, {"id": [], "title": "x"}))


def test_bug14_a_conflict_answer_with_another_key_inserts_a_stranger(
        hostile: HostileServer, template: Template) -> None:
    case, sync, _ = _one_push(hostile, template, Reply(500))
    hostile.reset(script=_conflict_on_delete({"id": "zzz", "title": "someone else's"}))
    try:
        result = sync.push()
        assert result.conflicts == 1
        rows = article_rows(case.engine)
        assert "zzz" not in rows, f"local rows after the conflict: {sorted(rows)}"
    finally:
        sync.stop()
        untrack(case.maker)
        case.engine.dispose()


def test_bug14_a_conflict_answer_with_a_null_key(hostile: HostileServer,
                                                 template: Template) -> None:
    case, sync, _ = _one_push(hostile, template, Reply(500))
    hostile.reset(script=_conflict_on_delete({"id": None, "title": "t"}))
    try:
        try:
            sync.push()
        except SyncError:
            pass
    finally:
        sync.stop()
        untrack(case.maker)
        case.engine.dispose()


@pytest.mark.parametrize("page", [
    json_reply(200, {"data": [{"id": "x", "title": "no cursor field"}]}),
    Reply(302, b"", [("Location", "http://127.0.0.2:9/api/posts")]),
], ids=["row-without-cursor-field", "redirect-to-another-origin"])
def test_bug8_every_pull_error_names_its_table(hostile: HostileServer, template: Template,
                                               page: Reply) -> None:
    hostile.reset(page)
    engine, _ = template.fresh()
    routes = define_routes({"articles": Routes(fields={"updated_at": "updatedAt"},
                                               push=PUSH_ROUTES["articles"].push,
                                               pull=PULL_VARIANTS["cursor-strict-offset"])})
    try:
        with start_sync(engine, SyncConfig(base_url=hostile.url, routes=routes,
                                           clock=FakeClock())) as sync:
            with pytest.raises(SyncError) as caught:
                sync.pull()
        assert "articles" in str(caught.value), str(caught.value)
        assert re.search(REQUEST_NAMED, str(caught.value)), str(caught.value)
    finally:
        engine.dispose()


# -- route definitions ----------------------------------------------------------------------------

_OK_PUSH = {"create": Request("POST", "/api/posts"),
            "update": Request("PUT", "/api/posts/{id}"),
            "delete": Request("DELETE", "/api/posts/{id}")}


def _push_with(**changes: Any) -> Push:
    return Push(**{**_OK_PUSH, **changes})


DEFINITION_MISTAKES: list[tuple[str, Callable[[], Any], list[str]]] = [
    ("unknown table", lambda: define_routes({"artcles": Routes(push=_push_with())}),
     ["'artcles'", "no Syncable model", "articles"]),
    ("placeholder naming no field",
     lambda: define_routes({"articles": Routes(push=_push_with(
         update=Request("PUT", "/api/posts/{uuid}")))}),
     ["{uuid}", "update", "no field", "id"]),
    ("empty placeholder",
     lambda: define_routes({"articles": Routes(push=_push_with(
         update=Request("PUT", "/api/posts/{}")))}),
     ["{}", "no field"]),
    ("push without a delete",
     lambda: define_routes({"articles": Routes(push=Push(create=_OK_PUSH["create"],
                                                         update=_OK_PUSH["update"]))}),
     ["no delete request", "delete=Request", "read-only"]),
    ("push without a create",
     lambda: define_routes({"articles": Routes(push=Push(update=_OK_PUSH["update"],
                                                         delete=_OK_PUSH["delete"]))}),
     ["no create request", "create=Request"]),
    ("bad method", lambda: Request("FETCH", "/api/posts"), ["'FETCH'", "POST", "PUT"]),
    ("method None", lambda: Request(None, "/api/posts"), ["None", "GET"]),  # type: ignore[arg-type]
    ("url None", lambda: Request("GET", None), ["url", "string or a callable"]),  # type: ignore[arg-type]
    ("Cursor without param or query", lambda: Cursor(field="updatedAt"),
     ["updatedAt", "param=", "query="]),
    ("Pull without url", lambda: Pull("GET"), ["url", "Pull('GET', '/api/posts')"]),
    ("Pull with POST", lambda: Pull("POST", "/api/posts"), ["GET", "'POST'"]),
    ("rename of an unknown column",
     lambda: define_routes({"articles": Routes(push=_push_with(), fields={"updatedAt": "x"})}),
     ["'updatedAt'", "not a column", "updated_at"]),
    ("neither push nor pull", lambda: define_routes({"articles": Routes()}),
     ["neither push nor pull"]),
    ("routes value not a Routes",
     lambda: define_routes({"articles": {"push": None}}),  # type: ignore[dict-item]
     ["Routes(...)", "dict"]),
    ("batch size 0", lambda: Schedule(push_batch_size=0), ["push_batch_size", ">= 1"]),
]


@pytest.mark.parametrize("label,define,phrases", DEFINITION_MISTAKES,
                         ids=[m[0] for m in DEFINITION_MISTAKES])
def test_definition_mistakes_fail_at_definition_and_say_what_to_fix(
        label: str, define: Callable[[], Any], phrases: list[str]) -> None:
    FIGURES["definitions:checked"] += 1
    with pytest.raises(ConfigurationError) as caught:
        define()
    for phrase in phrases:
        assert phrase in str(caught.value), f"{label}: {phrase!r} not in {caught.value}"


# BUG-7 (fixed): mistakes that used to be accepted at definition (and failed later, per
# op) or refused with ValueError / AttributeError instead of ConfigurationError.
MORE_DEFINITION_MISTAKES: list[tuple[str, Callable[[], Any], list[str]]] = [
    ("non-callable Request.map_response",
     lambda: Request("POST", "/a", map_response="data"),  # type: ignore[arg-type]
     ["map_response", "callable", "lambda body: body['data']"]),
    ("non-callable Request.conflict_when",
     lambda: Request("POST", "/a", conflict_when=409),  # type: ignore[arg-type]
     ["conflict_when=409", "callable", "lambda status, body"]),
    ("non-callable Pull.map_response",
     lambda: Pull("GET", "/a", map_response="data"),  # type: ignore[arg-type]
     ["Pull(map_response='data')", "callable"]),
    ("non-callable Pull.deleted",
     lambda: Pull("GET", "/a", deleted="deleted"),  # type: ignore[arg-type]
     ["Pull(deleted='deleted')", "lambda row: row.get('deleted', False)"]),
    ("Pull.paginate not a paginator",
     lambda: Pull("GET", "/a", paginate="offset"),  # type: ignore[arg-type]
     ["paginate='offset'", "Offset()", "PageNumber()"]),
    ("Pull.paginate a class, not an instance",
     lambda: Pull("GET", "/a", paginate=Offset),  # type: ignore[arg-type]
     ["an instance, Offset()"]),
    ("Pull.cursor not a Cursor",
     lambda: Pull("GET", "/a", cursor="updatedAt"),  # type: ignore[arg-type]
     ["cursor='updatedAt'", "Cursor(field='updatedAt', param="]),
    ("Pull.url not a string", lambda: Pull("GET", 5),  # type: ignore[arg-type]
     ["url", "'/api/posts'", "not 5"]),
    ("Cursor with an empty field", lambda: Cursor(field="", param="since"),
     ["Cursor(field='')", "Cursor(field='updatedAt'"]),
    ("unbalanced placeholder '{id'",
     lambda: define_routes({"articles": Routes(push=_push_with(
         update=Request("PUT", "/api/posts/{id")))}),
     ["'/api/posts/{id'", "{field}", "doubled"]),
    ("stray '}'",
     lambda: define_routes({"articles": Routes(push=_push_with(
         update=Request("PUT", "/api/posts/id}")))}),
     ["'/api/posts/id}'", "Single '}'", "doubled"]),
    ("placeholder with a conversion '{id!r}' (never rendered)",
     lambda: define_routes({"articles": Routes(push=_push_with(
         update=Request("PUT", "/api/posts/{id!r}")))}),
     ["{id!r}", "write {id}", "url=lambda item"]),
    ("placeholder with a format spec '{id:>5}' (never rendered)",
     lambda: define_routes({"articles": Routes(push=_push_with(
         update=Request("PUT", "/api/posts/{id:>5}")))}),
     ["{id:>5}", "write {id}"]),
    ("push=Request instead of Push",
     lambda: define_routes({"articles": Routes(push=Request("POST", "/a"))}),  # type: ignore[arg-type]
     ["push must be a Push(...)", "not a Request", "push=Push(create=Request('POST'"]),
    ("Push(create='...') instead of a Request",
     lambda: define_routes({"articles": Routes(push=_push_with(create="/api/posts"))}),
     ["Push(create='/api/posts')", "create=Request('POST', '/api/posts')"]),
    ("two columns renamed to one server field",
     lambda: define_routes({"articles": Routes(push=_push_with(),
                                               fields={"title": "name", "body": "name"})}),
     ["'body', 'title'", "'name'", "its own server field"]),
    ("a rename onto another column's name",
     lambda: define_routes({"articles": Routes(push=_push_with(), fields={"title": "body"})}),
     ["'body', 'title'", "its own server field"]),
    ("Errors(max_retries=-1)", lambda: Errors(max_retries=-1),
     ["max_retries=-1", ">= 0"]),
    ("Routes(fields=...) not a mapping of names",
     lambda: Routes(fields={"updated_at": None}),  # type: ignore[dict-item]
     ["fields=", "{'updated_at': 'updatedAt'}"]),
]


@pytest.mark.parametrize("label,define,phrases", MORE_DEFINITION_MISTAKES,
                         ids=[m[0] for m in MORE_DEFINITION_MISTAKES])
def test_bug7_more_definition_mistakes_fail_at_definition(
        label: str, define: Callable[[], Any], phrases: list[str]) -> None:
    FIGURES["definitions:checked"] += 1
    try:
        define()
    except ConfigurationError as exc:
        for phrase in phrases:
            assert phrase in str(exc), f"{label}: {phrase!r} not in {exc}"
        return
    except Exception as exc:
        raise AssertionError(f"{label}: {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"{label}: accepted")


def test_bug7_a_conversion_placeholder_dead_letters_every_op(hostile: HostileServer,
                                                             template: Template) -> None:
    """BUG-7 (fixed): url templates are rendered the way define_routes checked them --
    ``{id!r}`` is refused at definition (above), and a literal brace written ``{{``
    reaches the server as a brace, next to the encoded id; nothing is dead-lettered."""
    routes = define_routes({"articles": Routes(fields={"updated_at": "updatedAt"},
                                               push=_push_with(
                                                   delete=Request("DELETE",
                                                                  "/api/posts/{{x}}/{id}")))})
    case = push_case(template)
    hostile.reset(script=sane_script)
    try:
        with start_sync(case.engine, SyncConfig(base_url=hostile.url, routes=routes,
                                                clock=FakeClock())) as sync:
            sync.push()
            letters = sync.dead_letters()
        assert letters == [], [letter.error for letter in letters]
        deletes = [seen.target for seen in hostile.requests if seen.method == "DELETE"]
        assert deletes == ["/api/posts/%7Bx%7D/d1"] or deletes == ["/api/posts/{x}/d1"], deletes
    finally:
        untrack(case.maker)
        case.engine.dispose()


def test_the_strategies_really_send_nan_and_infinity() -> None:
    """Sanity of the strategies: NaN/Infinity really are sent (json.dumps allows them)."""
    assert json.dumps(math.nan) == "NaN" and json.loads("Infinity") == math.inf
