"""The reference REST backends' contract, over real loopback HTTP, on every backend.

The library's sync tests trust these servers to behave like "an existing REST API", so
their contract — paging, filters, timestamp formats, tombstones, If-Match, idempotent
replay, auth, the request log and every fault action (connection drops and truncation
included) — is checked here with a real socket and ``requests`` as the client, the way
sqla_sync will talk to them. Every test runs once per backend (``[flask]`` =
examples/server on its threaded WSGI server, ``[fastapi]`` = examples/fastapi_backend on
uvicorn; see tests/backends.py).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.backends import BACKEND_NAMES, BACKENDS, Backend, start_backend

ROOT = Path(__file__).resolve().parents[1]
FROZEN_MS = 1_764_149_838_123  # 2025-11-26T09:37:18.123Z
FROZEN_ISO = "2025-11-26T09:37:18.123Z"

StartServer = Callable[..., Backend]


@pytest.fixture(params=BACKEND_NAMES)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test ("flask" or "fastapi")."""
    return str(request.param)


@pytest.fixture
def start(backend: str) -> Iterator[StartServer]:
    """Factory starting servers of the backend under test; all stopped afterwards."""
    servers: list[Backend] = []

    def _start(**options: Any) -> Backend:
        server = start_backend(backend, **options)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()


@pytest.fixture
def srv(start: StartServer) -> Backend:
    """A backend with default options (client ids, strict filter, iso, tombstones)."""
    return start()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A pooled client session, like the library uses."""
    with requests.Session() as session:
        yield session


def _post(http: requests.Session, srv: Backend, resource: str, body: dict[str, Any],
          **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", 5)
    return http.post(f"{srv.url}/api/{resource}", json=body, **kwargs)


# --------------------------------------------------------------------------- CRUD


def test_crud_with_client_ids(srv: Backend, http: requests.Session) -> None:
    created = _post(http, srv, "posts", {"id": "p1", "title": "Hi", "body": "x", "junk": 1})
    assert created.status_code == 201
    assert created.headers["ETag"] == '"1"'
    row = created.json()
    assert row["id"] == "p1" and row["title"] == "Hi" and row["body"] == "x"
    assert row["version"] == 1 and row["deleted"] is False
    assert "junk" not in row

    fetched = http.get(f"{srv.url}/api/posts/p1", timeout=5)
    assert fetched.status_code == 200 and fetched.json() == row

    put = http.put(f"{srv.url}/api/posts/p1", json={"title": "New", "version": 99}, timeout=5)
    assert put.status_code == 200
    assert put.json()["title"] == "New"
    assert put.json()["body"] is None, "PUT replaces the whole resource"
    assert put.json()["version"] == 2 and put.headers["ETag"] == '"2"'

    patched = http.patch(f"{srv.url}/api/posts/p1", json={"body": "b"}, timeout=5)
    assert patched.status_code == 200
    assert patched.json()["title"] == "New" and patched.json()["body"] == "b"
    assert patched.json()["version"] == 3

    assert _post(http, srv, "posts", {"id": "p1"}).json() == {"error": "exists"}
    assert _post(http, srv, "posts", {"id": "p1"}).status_code == 409
    assert _post(http, srv, "posts", {"title": "no id"}).status_code == 400
    assert _post(http, srv, "posts", {"id": 5}).status_code == 400

    comment = _post(http, srv, "comments", {"id": "c1", "postId": "p1", "content": "yo"})
    assert comment.status_code == 201
    assert comment.json()["postId"] == "p1" and comment.json()["content"] == "yo"

    assert http.delete(f"{srv.url}/api/posts/p1", timeout=5).status_code == 204
    assert http.get(f"{srv.url}/api/posts/p1", timeout=5).status_code == 404
    assert http.put(f"{srv.url}/api/posts/p1", json={}, timeout=5).status_code == 404
    assert http.patch(f"{srv.url}/api/posts/p1", json={}, timeout=5).status_code == 404
    assert http.delete(f"{srv.url}/api/posts/p1", timeout=5).status_code == 404
    assert http.get(f"{srv.url}/api/posts/nope", timeout=5).status_code == 404


def test_crud_with_server_ids(start: StartServer, http: requests.Session) -> None:
    srv = start(id_mode="server")
    first = _post(http, srv, "posts", {"id": "ignored", "title": "a"})
    second = _post(http, srv, "posts", {"title": "b"})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == 1 and second.json()["id"] == 2
    comment = _post(http, srv, "comments", {"postId": 2, "content": "c"})
    assert comment.json()["id"] == 1 and comment.json()["postId"] == 2
    assert isinstance(comment.json()["postId"], int)

    assert http.get(f"{srv.url}/api/posts/2", timeout=5).json()["title"] == "b"
    assert http.patch(f"{srv.url}/api/posts/1", json={"title": "A"}, timeout=5).json() == {
        **first.json(),
        "title": "A",
        "version": 2,
        "updatedAt": srv.store.get("posts", 1)["updatedAt"],  # type: ignore[index]
    }
    assert http.get(f"{srv.url}/api/posts/abc", timeout=5).status_code == 404
    assert http.delete(f"{srv.url}/api/posts/1", timeout=5).status_code == 204
    assert _post(http, srv, "posts", {"title": "c"}).json()["id"] == 3


def test_ids_with_encoded_slashes_are_one_segment(srv: Backend,
                                                   http: requests.Session) -> None:
    assert _post(http, srv, "posts", {"id": "a/b?c", "title": "t"}).status_code == 201
    got = http.get(f"{srv.url}/api/posts/a%2Fb%3Fc", timeout=5)
    assert got.status_code == 200 and got.json()["id"] == "a/b?c"
    assert http.get(f"{srv.url}/api/posts/a/b", timeout=5).status_code == 404


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize(("mode", "expected"), [("strict", []), ("inclusive", ["a", "b"])])
def test_updated_after_filter_modes(start: StartServer, http: requests.Session, mode: str,
                                    expected: list[str]) -> None:
    srv = start(filter=mode)
    srv.store.freeze_clock(FROZEN_MS)
    for row_id in ("b", "a"):
        _post(http, srv, "posts", {"id": row_id})
    listing = http.get(f"{srv.url}/api/posts", params={"updated_after": FROZEN_ISO},
                       timeout=5).json()
    assert [r["id"] for r in listing["data"]] == expected
    earlier = http.get(f"{srv.url}/api/posts", params={"updated_after": "2025-11-26T09:37:18Z"},
                       timeout=5).json()
    assert [r["id"] for r in earlier["data"]] == ["a", "b"]


@pytest.mark.parametrize(
    ("ts", "wire", "before"),
    [
        ("iso", FROZEN_ISO, "2025-11-26T10:37:18.122+01:00"),
        ("epoch_s", FROZEN_MS / 1000, (FROZEN_MS - 1) / 1000),
        ("epoch_ms", FROZEN_MS, FROZEN_MS - 1),
    ],
)
def test_timestamp_formats(start: StartServer, http: requests.Session, ts: str, wire: Any,
                           before: Any) -> None:
    srv = start(ts=ts)
    srv.store.freeze_clock(FROZEN_MS)
    row = _post(http, srv, "posts", {"id": "p"}).json()
    assert row["updatedAt"] == wire
    assert type(row["updatedAt"]) is type(wire)
    url = f"{srv.url}/api/posts"
    assert len(http.get(url, params={"updated_after": before}, timeout=5).json()["data"]) == 1
    assert http.get(url, params={"updated_after": wire}, timeout=5).json()["data"] == []
    assert len(http.get(url, params={"updated_after": 0}, timeout=5).json()["data"]) == 1
    bad = http.get(url, params={"updated_after": "yesterday"}, timeout=5)
    assert bad.status_code == 400
    if ts == "iso":
        parsed = datetime.fromisoformat(row["updatedAt"].replace("Z", "+00:00"))
        assert parsed == datetime.fromtimestamp(FROZEN_MS / 1000, tz=timezone.utc)


def test_clock_is_strictly_increasing_and_freezable(srv: Backend,
                                                     http: requests.Session) -> None:
    stamps = [_post(http, srv, "posts", {"id": f"p{i}"}).json()["updatedAt"] for i in range(20)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 20
    clock = http.post(f"{srv.url}/__admin/clock", json={"freeze": FROZEN_MS}, timeout=5).json()
    assert clock["now"] == FROZEN_MS and clock["frozen"] is True
    assert _post(http, srv, "posts", {"id": "x"}).json()["updatedAt"] == FROZEN_ISO
    moved = http.post(f"{srv.url}/__admin/clock", json={"advance": 1000}, timeout=5).json()
    assert moved["now"] == FROZEN_MS + 1000
    assert _post(http, srv, "posts", {"id": "y"}).json()["updatedAt"] == "2025-11-26T09:37:19.123Z"
    http.post(f"{srv.url}/__admin/clock", json={"freeze": None}, timeout=5)
    assert _post(http, srv, "posts", {"id": "z"}).json()["updatedAt"] > stamps[-1]


# --------------------------------------------------------------------------- paging


def _walk(http: requests.Session, srv: Backend, style: str) -> list[list[Any]]:
    """Fetch every page of /api/posts with limit 100 in one paging style."""
    url = f"{srv.url}/api/posts"
    pages: list[list[Any]] = []
    params: dict[str, Any] = {"limit": 100}
    if style == "page":
        params["page"] = 1
    elif style == "offset":
        params["offset"] = 0
    next_url: str | None = None
    while True:
        if style == "link" and next_url:
            response = http.get(next_url, timeout=5)
        else:
            response = http.get(url, params=params, timeout=5)
        assert response.status_code == 200
        body = response.json()
        assert body["total"] == 250
        pages.append(body["data"])
        if body["next_cursor"] is None:
            assert body["next"] is None and "Link" not in response.headers
            return pages
        assert response.headers["Next-Page"] == body["next"]
        assert response.headers["Link"] == f'<{body["next"]}>; rel="next"'
        assert body["next"].startswith(srv.url + "/api/posts?")
        last = body["data"][-1]
        if style == "page":
            params["page"] += 1
        elif style == "offset":
            params["offset"] += 100
        elif style == "cursor":
            params["cursor"] = body["next_cursor"]
        elif style == "keyset":
            params.update(after_ts=last["updatedAt"], after_id=last["id"])
        else:
            next_url = body["next"]
        assert len(pages) < 10


@pytest.mark.parametrize("id_mode", ["client", "server"])
@pytest.mark.parametrize("style", ["page", "offset", "cursor", "keyset", "link"])
def test_paging_returns_each_row_once(start: StartServer, http: requests.Session,
                                      style: str, id_mode: str) -> None:
    srv = start(id_mode=id_mode)
    srv.store.freeze_clock(FROZEN_MS)
    if id_mode == "client":
        ids: list[Any] = [f"p{i:03d}" for i in range(250)]
        rows = [{"id": i, "title": i} for i in reversed(ids)]
    else:
        ids = list(range(1, 251))
        rows = [{"title": str(i)} for i in ids]
    seeded = http.post(f"{srv.url}/__admin/seed/posts", json=rows, timeout=5)
    assert seeded.status_code == 200
    pages = _walk(http, srv, style)
    assert [len(p) for p in pages] == [100, 100, 50]
    got = [r["id"] for page in pages for r in page]
    assert got == ids, "every row exactly once, ordered by (updatedAt, id)"


def test_order_is_updated_at_then_id(start: StartServer, http: requests.Session) -> None:
    srv = start(id_mode="server")
    srv.store.seed("posts", [
        {"id": 10, "updatedAt": "2025-01-01T00:00:00.002Z"},
        {"id": 9, "updatedAt": "2025-01-01T00:00:00.001Z"},
        {"id": 2, "updatedAt": "2025-01-01T00:00:00.002Z"},
    ])
    listing = http.get(f"{srv.url}/api/posts", timeout=5).json()
    assert [r["id"] for r in listing["data"]] == [9, 2, 10]
    after: dict[str, str | int] = {"after_ts": "2025-01-01T00:00:00.002Z", "after_id": 2}
    keyset = http.get(f"{srv.url}/api/posts", timeout=5, params=after).json()
    assert [r["id"] for r in keyset["data"]] == [10]


def test_limit_default_max_and_bad_params(srv: Backend, http: requests.Session) -> None:
    srv.store.seed("posts", [{"id": f"p{i:04d}"} for i in range(1100)])
    url = f"{srv.url}/api/posts"
    assert len(http.get(url, timeout=5).json()["data"]) == 100
    assert len(http.get(url, params={"limit": 5000}, timeout=5).json()["data"]) == 1000
    for params in ({"limit": 0}, {"limit": "x"}, {"page": 0}, {"cursor": "!!"},
                   {"after_ts": FROZEN_ISO}):
        response = http.get(url, params=params, timeout=5)
        assert response.status_code == 400, params
        assert response.json()["error"] == "invalid"


# --------------------------------------------------------------------------- deletes


def test_tombstones_and_deletions_feed(srv: Backend, http: requests.Session) -> None:
    created = _post(http, srv, "posts", {"id": "p1", "title": "t"}).json()
    _post(http, srv, "posts", {"id": "p2"})
    assert http.delete(f"{srv.url}/api/posts/p1", timeout=5).status_code == 204
    listing = http.get(f"{srv.url}/api/posts", timeout=5).json()["data"]
    tomb = next(r for r in listing if r["id"] == "p1")
    assert tomb["deleted"] is True and tomb["version"] == 2
    assert tomb["updatedAt"] > created["updatedAt"]
    assert listing[-1]["id"] == "p1", "a delete is a write: it moves the row to the end"
    delta = http.get(f"{srv.url}/api/posts", params={"updated_after": created["updatedAt"]},
                     timeout=5).json()["data"]
    assert [r["id"] for r in delta] == ["p2", "p1"]

    feed = http.get(f"{srv.url}/api/posts/deleted", timeout=5).json()["data"]
    assert feed == [{"id": "p1", "deletedAt": tomb["updatedAt"]}]
    later = http.get(f"{srv.url}/api/posts/deleted", params={"since": tomb["updatedAt"]},
                     timeout=5).json()
    assert later == {"data": []}
    assert _post(http, srv, "posts", {"id": "p1"}).status_code == 409


def test_hard_deletes_still_feed_deletions(start: StartServer, http: requests.Session) -> None:
    srv = start(tombstones=False, ts="epoch_ms")
    _post(http, srv, "posts", {"id": "p1"})
    assert http.delete(f"{srv.url}/api/posts/p1", timeout=5).status_code == 204
    assert http.get(f"{srv.url}/api/posts", timeout=5).json()["data"] == []
    feed = http.get(f"{srv.url}/api/posts/deleted", params={"since": 0}, timeout=5).json()
    assert [d["id"] for d in feed["data"]] == ["p1"]
    assert isinstance(feed["data"][0]["deletedAt"], int)
    assert _post(http, srv, "posts", {"id": "p1"}).status_code == 201


# --------------------------------------------------------------------------- If-Match


def test_if_match_precondition(srv: Backend, http: requests.Session) -> None:
    _post(http, srv, "posts", {"id": "p1", "title": "v1"})
    url = f"{srv.url}/api/posts/p1"
    stale = http.put(url, json={"title": "x"}, headers={"If-Match": '"7"'}, timeout=5)
    assert stale.status_code == 412
    assert stale.json()["error"] == "precondition failed"
    assert stale.json()["current"]["title"] == "v1"
    assert stale.json()["current"]["version"] == 1
    ok = http.put(url, json={"title": "v2"}, headers={"If-Match": '"1"'}, timeout=5)
    assert ok.status_code == 200 and ok.json()["version"] == 2
    bare = http.patch(url, json={"title": "v3"}, headers={"If-Match": "2"}, timeout=5)
    assert bare.status_code == 200 and bare.headers["ETag"] == '"3"'
    assert http.delete(url, headers={"If-Match": '"2"'}, timeout=5).status_code == 412
    assert http.delete(url, headers={"If-Match": '"3"'}, timeout=5).status_code == 204


# --------------------------------------------------------------------------- idempotency


def test_idempotency_key_replays_without_redoing(srv: Backend,
                                                 http: requests.Session) -> None:
    key = {"Idempotency-Key": "k-1"}
    first = _post(http, srv, "posts", {"id": "p1", "title": "t"}, headers=key)
    again = _post(http, srv, "posts", {"id": "p1", "title": "t"}, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert srv.store.count("posts") == 1
    assert _post(http, srv, "posts", {"id": "p1"}, headers={"Idempotency-Key": "k-2"}
                 ).status_code == 409

    patch_key = {"Idempotency-Key": "k-3"}
    url = f"{srv.url}/api/posts/p1"
    one = http.patch(url, json={"title": "u"}, headers=patch_key, timeout=5)
    two = http.patch(url, json={"title": "u"}, headers=patch_key, timeout=5)
    assert one.json() == two.json() and two.json()["version"] == 2
    assert srv.store.get("posts", "p1")["version"] == 2  # type: ignore[index]
    log = srv.store.requests(method="PATCH")
    assert [e["replayed"] for e in log] == [False, True]


# --------------------------------------------------------------------------- faults


def test_fault_status_with_retry_after(srv: Backend, http: requests.Session) -> None:
    srv.faults.add(method="POST", path="/api/posts", action="status", status=503,
                   headers={"Retry-After": "2"})
    failed = _post(http, srv, "posts", {"id": "p1"})
    assert failed.status_code == 503 and failed.headers["Retry-After"] == "2"
    assert failed.json() == {"error": "injected"}
    assert srv.store.count("posts") == 0, "a status fault does not do the work"
    assert _post(http, srv, "posts", {"id": "p1"}).status_code == 201


def test_fault_rules_over_http_with_skip_and_times(srv: Backend,
                                                   http: requests.Session) -> None:
    rules = {"rules": [{"method": "GET", "path": "/api/comments", "skip": 1, "times": 2,
                        "action": "status", "status": 429, "headers": {"Retry-After": "1"},
                        "body": {"error": "slow down"}}]}
    assert http.post(f"{srv.url}/__admin/faults", json=rules, timeout=5).status_code == 200
    url = f"{srv.url}/api/comments"
    codes = [http.get(url, timeout=5).status_code for _ in range(4)]
    assert codes == [200, 429, 429, 200]
    assert http.get(f"{srv.url}/api/posts", timeout=5).status_code == 200
    state = http.get(f"{srv.url}/__admin/faults", timeout=5).json()
    assert state["rules"][0]["fired"] == 2 and len(state["injected"]) == 2
    assert http.delete(f"{srv.url}/__admin/faults", timeout=5).status_code == 204
    bad = http.post(f"{srv.url}/__admin/faults", json={"rules": [{"action": "nope"}]},
                    timeout=5)
    assert bad.status_code == 400


def test_fault_drop_before(srv: Backend, http: requests.Session) -> None:
    srv.faults.add(method="POST", action="drop_before")
    with pytest.raises(requests.ConnectionError):
        _post(http, srv, "posts", {"id": "p1"}, headers={"Idempotency-Key": "k"})
    assert srv.store.count("posts") == 0
    retry = _post(http, srv, "posts", {"id": "p1"}, headers={"Idempotency-Key": "k"})
    assert retry.status_code == 201 and "Idempotent-Replayed" not in retry.headers


def test_fault_drop_after_commit_then_idempotent_retry(srv: Backend,
                                                       http: requests.Session) -> None:
    srv.faults.add(method="POST", action="drop_after_commit")
    key = {"Idempotency-Key": "outbox-1"}
    with pytest.raises(requests.ConnectionError):
        _post(http, srv, "posts", {"id": "p1", "title": "t"}, headers=key)
    assert srv.store.count("posts") == 1, "the server committed before dropping"
    retry = _post(http, srv, "posts", {"id": "p1", "title": "t"}, headers=key)
    assert retry.status_code == 201 and retry.json()["id"] == "p1"
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert srv.store.count("posts") == 1
    without_key = _post(http, srv, "posts", {"id": "p1", "title": "t"})
    assert without_key.status_code == 409


def test_fault_malformed_truncated_wrong_type(srv: Backend,
                                              http: requests.Session) -> None:
    srv.faults.set_rules([
        {"path": "/api/posts/m", "action": "malformed"},
        {"path": "/api/posts/t", "action": "truncated"},
        {"path": "/api/posts/w", "action": "wrong_type"},
        {"method": "DELETE", "action": "truncated"},
    ])
    for row_id in ("m", "t", "w"):
        _post(http, srv, "posts", {"id": row_id})
    malformed = http.patch(f"{srv.url}/api/posts/m", json={"title": "x"}, timeout=5)
    assert malformed.status_code == 200
    assert malformed.headers["Content-Type"] == "application/json"
    with pytest.raises(requests.JSONDecodeError):
        malformed.json()
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        http.patch(f"{srv.url}/api/posts/t", json={"title": "x"}, timeout=5)
    wrong = http.patch(f"{srv.url}/api/posts/w", json={"title": "x"}, timeout=5)
    assert wrong.headers["Content-Type"].startswith("text/html")
    assert wrong.text.lstrip().lower().startswith("<!doctype html")
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        http.delete(f"{srv.url}/api/posts/m", timeout=5)
    rows = {r["id"]: r for r in srv.store.rows("posts")}
    assert all(rows[i]["title"] == "x" for i in "mtw"), "the work was done in every case"
    assert rows["m"]["deleted"] is True
    assert http.get(f"{srv.url}/api/posts/w", timeout=5).json()["title"] == "x"


def test_fault_delay_causes_client_timeout(srv: Backend,
                                           http: requests.Session) -> None:
    srv.faults.add(method="POST", action="delay", ms=400)
    with pytest.raises(requests.Timeout):
        _post(http, srv, "posts", {"id": "p1"}, timeout=0.1)
    deadline = time.monotonic() + 3
    while srv.store.count("posts") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.store.count("posts") == 1, "a slow request still commits"


def test_random_faults_are_reproducible(start: StartServer) -> None:
    def outcomes() -> list[str]:
        srv = start()
        srv.faults.set_rules([{"random": {"seed": 7, "rate": 0.3, "actions": [
            "status:503", "status:429:1", "drop_before", "malformed"]}}])
        seen = []
        with requests.Session() as session:
            for i in range(30):
                try:
                    response = session.get(f"{srv.url}/api/posts", timeout=5)
                    response.json()
                    seen.append(str(response.status_code))
                except requests.JSONDecodeError:
                    seen.append("bad-json")
                except requests.ConnectionError:
                    seen.append("dropped")
                assert i < 30
        return seen

    first = outcomes()
    assert first == outcomes()
    assert set(first) - {"200"}, "rate 0.3 over 30 requests injects something"
    assert "200" in first


def test_admin_is_never_faulted(srv: Backend, http: requests.Session) -> None:
    srv.faults.add(action="status", status=500, times=-1)
    assert http.get(f"{srv.url}/__admin/rows/posts", timeout=5).status_code == 200
    assert http.get(f"{srv.url}/api/posts", timeout=5).status_code == 500
    assert http.get(f"{srv.url}/api/posts", timeout=5).status_code == 500


# --------------------------------------------------------------------------- request log


def test_request_log_keeps_the_raw_target(srv: Backend, http: requests.Session) -> None:
    raw = "/api/posts/..%2Fadmin%2Fx%3Fy%3D1"
    response = http.get(f"{srv.url}{raw}", headers={"X-Trace": "abc"}, timeout=5)
    assert response.status_code == 404
    _post(http, srv, "posts", {"id": "p1", "title": "t"})
    log = http.get(f"{srv.url}/__admin/requests", timeout=5).json()["data"]
    assert [e["method"] for e in log] == ["GET", "POST"]
    assert log[0]["path"] == raw and log[0]["target"] == raw
    assert log[0]["id"] == "../admin/x?y=1"
    assert log[0]["headers"]["X-Trace"] == "abc"
    assert log[0]["status"] == 404
    assert log[1]["body"] == {"id": "p1", "title": "t"} and log[1]["status"] == 201
    assert log[1]["headers"]["Content-Type"] == "application/json"
    assert http.delete(f"{srv.url}/__admin/requests", timeout=5).status_code == 204
    assert srv.store.requests() == []


# --------------------------------------------------------------------------- auth


def test_bearer_token_and_rotation(start: StartServer, http: requests.Session) -> None:
    srv = start(token="s3cret")
    url = f"{srv.url}/api/posts"
    denied = http.get(url, timeout=5)
    assert denied.status_code == 401 and denied.json() == {"error": "unauthorized"}
    assert http.get(url, headers={"Authorization": "Bearer wrong"}, timeout=5
                    ).status_code == 401
    assert http.get(url, headers={"Authorization": "Bearer s3cret"}, timeout=5
                    ).status_code == 200
    rotated = http.post(f"{srv.url}/__admin/token", json={"token": "next"}, timeout=5)
    assert rotated.status_code == 200
    assert http.get(url, headers={"Authorization": "Bearer s3cret"}, timeout=5
                    ).status_code == 401
    assert http.get(url, headers={"Authorization": "Bearer next"}, timeout=5
                    ).status_code == 200


# --------------------------------------------------------------------------- admin


def test_admin_seed_rows_edit_delete_reset(srv: Backend, http: requests.Session) -> None:
    admin = f"{srv.url}/__admin"
    seeded = http.post(f"{admin}/seed/posts", timeout=5, json=[
        {"id": "b", "title": "B", "updatedAt": FROZEN_ISO, "version": 4},
        {"id": "a", "title": "A", "deleted": True},
    ]).json()["data"]
    assert seeded[0]["updatedAt"] == FROZEN_ISO and seeded[0]["version"] == 4
    rows = http.get(f"{admin}/rows/posts", timeout=5).json()["data"]
    assert [r["id"] for r in rows] == ["a", "b"] and rows[0]["deleted"] is True
    assert http.get(f"{srv.url}/api/posts/a", timeout=5).status_code == 404

    edited = http.patch(f"{admin}/rows/posts/b", json={"title": "B2"}, timeout=5).json()
    assert edited["title"] == "B2" and edited["version"] == 5
    assert edited["updatedAt"] > FROZEN_ISO
    assert http.delete(f"{admin}/rows/posts/b", timeout=5).status_code == 204
    assert srv.store.get("posts", "b", include_deleted=True)["deleted"] is True  # type: ignore[index]
    assert http.delete(f"{admin}/rows/posts/zz", timeout=5).status_code == 404

    srv.faults.add(action="status", status=500)
    assert http.post(f"{admin}/reset", timeout=5).status_code == 200
    assert srv.store.rows("posts") == [] and srv.store.requests() == []
    assert srv.faults.rules() == []
    assert http.get(f"{srv.url}/api/posts/deleted", timeout=5).json() == {"data": []}


# --------------------------------------------------------------------------- transport


def test_keep_alive_nodelay_and_quiet(srv: Backend, http: requests.Session,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    _post(http, srv, "posts", {"id": "p1"})
    for _ in range(20):
        assert http.get(f"{srv.url}/api/posts/p1", timeout=5).status_code == 200
    remotes = {e["remote"] for e in srv.store.requests()}
    assert len(remotes) == 1, "one pooled keep-alive connection serves every request"
    # Nagle off on the server's side of it (the speed itself is benchmarks' business).
    # Our own server keeps its sockets; uvicorn's asyncio transport sets TCP_NODELAY.
    httpd = getattr(srv, "_httpd", None)
    if httpd is not None:
        with httpd._connections_lock:
            open_sockets = list(httpd._connections)
        assert open_sockets and all(
            c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in open_sockets)
    captured = capfd.readouterr()
    assert captured.err == ""


def test_stop_is_fast_and_closes_idle_connections(start: StartServer,
                                                  http: requests.Session) -> None:
    srv = start()
    assert http.get(f"{srv.url}/api/posts", timeout=5).status_code == 200
    # stop() closes idle keep-alive connections instead of waiting for them:
    # it returns (a hang would hold this thread until the client gives up).
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    stopper.join(30)
    assert not stopper.is_alive(), "stop() waits on an idle keep-alive connection"
    with pytest.raises(requests.ConnectionError):
        http.get(f"{srv.url}/api/posts", timeout=2)


def test_cli_subprocess_serves_and_exits_on_sigterm(backend: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", BACKENDS[backend].module, "--port", "0", "--id-mode", "server",
         "--ts", "epoch_ms"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "no LISTENING line within 15 s"
        line = proc.stdout.readline().strip()
        assert line.startswith("LISTENING http://127.0.0.1:")
        url = line.split(" ", 1)[1]
        created = requests.post(f"{url}/api/posts", json={"title": "t"}, timeout=5)
        assert created.status_code == 201 and created.json()["id"] == 1
        assert isinstance(created.json()["updatedAt"], int)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert proc.stdout.read() == ""
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


# --------------------------------------------------------------------------- parity


def _exchange(srv: Backend) -> tuple[list[Any], list[dict[str, Any]]]:
    """One scripted conversation: (normalized answers, normalized request log)."""
    srv.store.freeze_clock(FROZEN_MS)
    srv.store.seed("comments", [{"id": f"c{i}", "content": str(i)} for i in range(3)])
    json_type = {"Content-Type": "application/json"}
    calls: list[tuple[str, str, bytes | None, dict[str, str]]] = [
        ("POST", "/api/posts", b'{"id": "a/b", "title": "t"}', {**json_type,
                                                                "Idempotency-Key": "k"}),
        ("POST", "/api/posts", b'{"id": "a/b", "title": "t"}', {**json_type,
                                                                "Idempotency-Key": "k"}),
        ("GET", "/api/posts/a%2Fb", None, {"X-Trace": "1"}),
        ("PUT", "/api/posts/a%2Fb", b'{"title": "u"}', {**json_type, "If-Match": '"9"'}),
        ("PATCH", "/api/posts/a%2Fb", b'{"title": "u"}', {**json_type, "If-Match": '"1"'}),
        ("GET", "/api/comments?limit=2&updated_after=", None, {}),
        ("GET", "/api/comments?limit=2&page=2", None, {}),
        ("DELETE", "/api/posts/a%2Fb", None, {}),
        ("DELETE", "/api/posts/a%2Fb", None, {}),
        ("GET", "/api/posts/deleted?since=0", None, {}),
        ("POST", "/api/posts", b"not json", json_type),
        ("OPTIONS", "/api/posts", None, {}),
        ("HEAD", "/api/posts/x", None, {}),
        ("GET", "/api/posts/a/b", None, {}),
        ("GET", "/", None, {}),
        ("GET", "/__admin/health", None, {}),
    ]
    answers: list[Any] = []
    with requests.Session() as http:
        for method, path, body, headers in calls:
            got = http.request(method, srv.url + path, data=body, headers=headers, timeout=5)
            kept = sorted((k.lower(), v.replace(srv.url, "BASE")) for k, v in got.headers.items()
                          if k.lower() != "date")
            answers.append((method, path, got.status_code, kept,
                            got.content.replace(srv.url.encode(), b"BASE")))
    log = []
    for entry in srv.store.requests():
        entry = {k: v for k, v in entry.items() if k not in ("time", "remote")}
        entry["headers"] = {**entry["headers"], "Host": "HOST"}
        log.append(entry)
    return answers, log


def test_backends_answer_alike() -> None:
    """Same requests → same statuses, headers (but Date), bodies and request log."""
    results = {}
    for name in BACKEND_NAMES:
        server = start_backend(name)
        try:
            results[name] = _exchange(server)
        finally:
            server.stop()
    (flask_answers, flask_log), (fastapi_answers, fastapi_log) = (
        results["flask"], results["fastapi"])
    for flask_answer, fastapi_answer in zip(flask_answers, fastapi_answers):
        assert flask_answer == fastapi_answer
    assert flask_log == fastapi_log


def test_fastapi_app_without_the_transport_extension() -> None:
    """Served without FastAPIBackendServer's protocol, drop/truncate degrade in ASGI."""
    import asyncio

    from examples.fastapi_backend import backend_of, create_app

    app = create_app()
    backend_of(app).faults.set_rules([
        {"path": "/api/posts/d", "action": "drop_before"},
        {"path": "/api/posts/t", "action": "truncated"},
    ])

    async def call(path: str) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path,
                 "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 80)}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))

        await app(scope, receive, send)
        return sent

    dropped = asyncio.run(call("/api/posts/d"))
    assert dropped[0]["status"] == 500
    assert (b"connection", b"close") in dropped[0]["headers"]
    assert dropped[1]["body"] == b""
    truncated = asyncio.run(call("/api/posts/t"))
    head = dict(truncated[0]["headers"])
    assert int(head[b"content-length"]) > len(truncated[1]["body"])
    assert truncated[1]["more_body"] is True and len(truncated) == 2, "left unfinished"
