"""Thin FastAPI layer over :class:`examples.server.api.Api`.

One catch-all route hands the raw ASGI request to the framework-agnostic
:class:`~examples.server.api.Api` (the same contract, store and fault switch the Flask
app uses) and turns its :class:`~examples.server.api.ApiResponse` back into ASGI
messages. FastAPI's routing and validation are bypassed on purpose: they work on the
percent-decoded ``scope["path"]``, while the contract routes on ``scope["raw_path"]``
(ids may contain ``%2F``).

Transport faults (``drop``/``truncate``) need the connection, which plain ASGI does not
expose. :class:`examples.fastapi_backend.run.TransportH11Protocol` (what
:class:`~examples.fastapi_backend.run.FastAPIBackendServer` serves with) puts the asyncio
transport into ``scope["extensions"]["examples.transport"]["transport"]``; the answer then
aborts the connection (drop) or sends the announced-too-long head, half the body and
closes (truncate). Under a server without that extension a drop degrades to an empty 500
with ``Connection: close`` (as the Flask app does without a socket), and a truncation
ends the ASGI call with an unfinished body, which makes the server close the connection.

The request headers the contract sees are made identical to the Flask backend's (which
sees them through a WSGI environ): names title-cased, repeated headers joined with
``,``, names with ``_`` dropped, ``Transfer-Encoding`` dropped and ``Content-Length`` set
to the length of the body actually read.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import anyio
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from examples.server.api import Api, ApiRequest, ApiResponse
from examples.server.store import Store

#: Attribute of ``app.state`` holding the app's :class:`Api`.
STATE_KEY = "sqla_sync_backend"
#: ASGI scope extension carrying the connection's transport (set by ``run.py``).
TRANSPORT_EXTENSION = "examples.transport"
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: How long a transport fault waits for the server to notice the closed connection.
_DISCONNECT_WAIT_S = 5.0


def create_app(**options: Any) -> FastAPI:
    """Build the backend app; ``options`` are :class:`~examples.server.store.Store`'s.

    The same options as :func:`examples.server.flask_app.create_app` (``id_mode``,
    ``filter``, ``ts``, ``tombstones``, ``token``, ``delay_ms``, ``database_url``). The
    app's :class:`Api` (with ``.store`` and ``.faults``) is ``app.state.sqla_sync_backend``;
    :func:`backend_of` returns it typed.
    """
    api = Api(Store(**options))
    # No docs/openapi routes: every path belongs to the contract (404s included).
    app = FastAPI(title="sqla_sync reference backend", docs_url=None, redoc_url=None,
                  openapi_url=None)
    setattr(app.state, STATE_KEY, api)

    @app.api_route("/{anything:path}", methods=_METHODS, include_in_schema=False)
    async def dispatch(request: Request) -> Response:
        """Hand the raw request to the contract and translate its answer."""
        scope = request.scope
        body = await request.body()
        headers = request_headers(scope, body)
        api_request = ApiRequest(
            method=scope["method"],
            target=raw_target(scope),
            headers=headers,
            body=body,
            base_url=_base_url(scope, headers),
            remote=_remote(scope),
        )
        # Api.handle blocks (store lock, SQLite, injected delays): keep it off the loop.
        answer = await run_in_threadpool(api.handle, api_request)
        return ApiAnswer(answer)

    return app


def backend_of(app: FastAPI) -> Api:
    """The :class:`Api` behind an app made by :func:`create_app`."""
    api = getattr(app.state, STATE_KEY)
    assert isinstance(api, Api)
    return api


def raw_target(scope: Scope) -> str:
    """The request target as sent on the wire (raw path + query), from the ASGI scope."""
    raw_path = scope.get("raw_path")
    if raw_path:
        path = bytes(raw_path).decode("latin-1")
    else:
        path = quote(scope.get("root_path", "") + scope["path"], safe="/")
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    return f"{path}?{query}" if query else path


def request_headers(scope: Scope, body: bytes) -> list[tuple[str, str]]:
    """The request headers as the Flask backend's contract sees them (module docstring)."""
    merged: dict[str, str] = {"Content-Length": str(len(body))}
    for raw_name, raw_value in scope["headers"]:
        name = bytes(raw_name).decode("latin-1").title()
        if "_" in name or name in ("Content-Length", "Transfer-Encoding"):
            continue  # X_Foo must not pose as X-Foo (as werkzeug's environ does)
        value = bytes(raw_value).decode("latin-1")
        merged[name] = f"{merged[name]},{value}" if name in merged else value
    return list(merged.items())


def _base_url(scope: Scope, headers: list[tuple[str, str]]) -> str:
    """``scheme://host[:port]`` for absolute links: the Host header, else the socket."""
    host = next((value for name, value in headers if name == "Host"), "")
    if not host:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "127.0.0.1"
    return f"{scope.get('scheme', 'http')}://{host}"


def _remote(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


def transport_of(scope: Scope) -> Any:
    """The connection's asyncio transport if the server exposes it, else None."""
    extension = (scope.get("extensions") or {}).get(TRANSPORT_EXTENSION)
    return extension.get("transport") if isinstance(extension, dict) else None


class ApiAnswer(Response):
    """An :class:`ApiResponse` as an ASGI response, carrying out drop/truncate."""

    def __init__(self, answer: ApiResponse) -> None:
        super().__init__(content=answer.body, status_code=answer.status or 500)
        self.answer = answer
        self.raw_headers = _response_headers(answer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self.answer
        transport = transport_of(scope)
        if answer.transport == "drop":
            if transport is not None:
                transport.abort()  # nothing was written: the client sees a closed socket
                await _until_disconnected(receive)
                return
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-length", b"0"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": self.raw_headers})
        if answer.transport == "truncate":
            # Content-Length announces more than this; the response is never finished.
            await send({"type": "http.response.body", "body": answer.body, "more_body": True})
            if transport is not None:
                transport.close()  # flushes what was written, then closes
                await _until_disconnected(receive)
            return
        await send({"type": "http.response.body", "body": answer.body})


def _response_headers(answer: ApiResponse) -> list[tuple[bytes, bytes]]:
    """ASGI headers of an answer: its own, plus Content-Length (and close on truncate)."""
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
               for name, value in answer.headers]
    no_body = answer.status in (204, 304) or answer.status < 200
    if not no_body and all(name != b"content-length" for name, _ in headers):
        headers.append((b"content-length", str(len(answer.body)).encode()))
    if answer.transport == "truncate":
        headers.append((b"connection", b"close"))
    return headers


async def _until_disconnected(receive: Receive) -> None:
    """Wait until the server has seen the connection go (so it does not answer itself)."""
    with anyio.move_on_after(_DISCONNECT_WAIT_S):
        while (await receive())["type"] != "http.disconnect":
            pass
