"""Thin Flask 3 layer over :class:`examples.server.api.Api`.

Every path goes to one view that hands the raw request to the framework-agnostic
:class:`~examples.server.api.Api` and turns its answer back into a Flask response.
Flask's own routing is bypassed on purpose: it matches the percent-decoded
``PATH_INFO``, while the contract routes on the raw path (ids may contain ``%2F``).

Transport faults (``drop``/``truncate``) need the socket. Under
:class:`examples.server.run.BackendServer` the WSGI environ carries a
``"examples.transport"`` dict the app fills in and the server carries out. Under
werkzeug's dev server the socket in ``"werkzeug.socket"`` is shut down instead (it closes
every connection after one response anyway), so truncation works there too.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, request
from werkzeug.routing import BaseConverter

from .api import Api, ApiRequest, ApiResponse
from .store import Store

#: Key of the app's :class:`Api` in ``app.extensions``.
EXTENSION_KEY = "sqla_sync_backend"
#: WSGI environ key of the transport directive dict (set by ``run.py``'s server).
TRANSPORT_KEY = "examples.transport"
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class _AnyPathConverter(BaseConverter):
    """Matches the whole remaining path, slashes and empty string included."""

    regex = ".*"
    part_isolating = False


def raw_target(environ: dict[str, Any]) -> str:
    """The request target as sent on the wire (raw path + query), from the environ."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return str(raw)
    path = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""), safe="/")
    query = environ.get("QUERY_STRING", "")
    return f"{path}?{query}" if query else path


def create_app(**options: Any) -> Flask:
    """Build the backend app; ``options`` are :class:`~examples.server.store.Store`'s.

    The app's :class:`Api` (with ``.store`` and ``.faults``) is ``app.extensions
    ["sqla_sync_backend"]``; :func:`backend_of` returns it typed.
    """
    api = Api(Store(**options))
    app = Flask("examples.server")
    app.url_map.converters["anypath"] = _AnyPathConverter
    app.url_map.merge_slashes = False
    app.extensions[EXTENSION_KEY] = api

    def dispatch(anything: str = "") -> Response:
        """Hand the raw request to the contract and translate its answer."""
        environ = request.environ
        remote = environ.get("REMOTE_ADDR")
        port = environ.get("REMOTE_PORT")
        api_request = ApiRequest(
            method=request.method,
            target=raw_target(environ),
            headers=list(request.headers.items()),
            body=request.get_data(cache=False),
            base_url=request.host_url.rstrip("/"),
            remote=f"{remote}:{port}" if remote and port else remote,
        )
        return _to_flask(api.handle(api_request), environ)

    app.add_url_rule("/<anypath:anything>", "dispatch", dispatch, methods=_METHODS,
                     provide_automatic_options=False, strict_slashes=False)
    return app


def backend_of(app: Flask) -> Api:
    """The :class:`Api` behind an app made by :func:`create_app`."""
    api = app.extensions[EXTENSION_KEY]
    assert isinstance(api, Api)
    return api


def _to_flask(answer: ApiResponse, environ: dict[str, Any]) -> Response:
    """ApiResponse → Flask Response, arranging drop/truncate with the server."""
    directive = environ.get(TRANSPORT_KEY)
    if answer.transport == "drop":
        if isinstance(directive, dict):
            directive["action"] = "drop"
        else:
            _shutdown(environ.get("werkzeug.socket"))
        return Response(b"", status=500)
    response = Response(answer.body, status=answer.status)
    response.headers.remove("Content-Type")
    for key, value in answer.headers:
        # Set after the body so an explicit (truncation) Content-Length survives.
        if key.lower() == "content-length":
            response.headers[key] = value
        else:
            response.headers.add(key, value)
    if answer.transport == "truncate" and isinstance(directive, dict):
        directive["action"] = "truncate"
    return response


def _shutdown(sock: Any) -> None:
    """Best-effort hard close of a werkzeug connection socket."""
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
