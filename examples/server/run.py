"""Run the backend on a real socket: a small threaded HTTP/1.1 WSGI server.

Why not werkzeug's dev server: it sends ``Connection: close`` on every response, so a
client's connection pool never reuses a connection and each request pays a new TCP
handshake. This server keeps connections alive, sets ``TCP_NODELAY`` on every accepted
socket (without it Nagle + delayed ACK make each loopback request cost ~40 ms), logs
nothing per request, can drop or truncate a response on the app's request (fault
injection), and on :meth:`BackendServer.stop` also closes idle keep-alive connections so
a stopped server really is gone for pooled clients.
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, HTTPServer
from io import BytesIO
from types import TracebackType
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from flask import Flask

from .api import Api
from .faults import Faults
from .flask_app import TRANSPORT_KEY, backend_of, create_app
from .store import Store

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_MAX_LINE = 65536


class _Handler(BaseHTTPRequestHandler):
    """Parses HTTP/1.1 requests on one connection and runs them through the WSGI app."""

    protocol_version = "HTTP/1.1"
    server: BackendHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: no per-request lines on stderr."""

    def handle_one_request(self) -> None:
        """Read one request, call the app, write the answer (or drop the connection)."""
        try:
            line = self.rfile.readline(_MAX_LINE + 1)
            if not line:
                self.close_connection = True
                return
            if len(line) > _MAX_LINE:
                self.send_error(414)
                return
            self.raw_requestline = line
            if not self.parse_request():
                return
            body = self._read_body()
            self._run_app(body)
        except (OSError, ValueError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        """The whole request body (Content-Length or chunked)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline(_MAX_LINE).split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(_MAX_LINE)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) != length:
            raise ValueError("request body shorter than Content-Length")
        return body

    def _environ(self, body: bytes) -> dict[str, Any]:
        target = self.path
        if "://" in target.split("?", 1)[0]:
            parts = urlsplit(target)
            path, query = parts.path, parts.query
        else:
            path, _, query = target.partition("?")
        host, port = self.server.server_address[:2]
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "RAW_URI": target,
            "REQUEST_URI": target,
            "SERVER_NAME": str(host),
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": str(self.client_address[1]),
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            TRANSPORT_KEY: {},
        }
        for name, value in self.headers.items():
            if "_" in name:
                continue  # as werkzeug does: X_Foo must not pose as X-Foo
            key = name.upper().replace("-", "_")
            if key == "CONTENT_LENGTH" or key == "TRANSFER_ENCODING":
                continue
            if key != "CONTENT_TYPE":
                key = "HTTP_" + key
                if key in environ:
                    value = f"{environ[key]},{value}"
            environ[key] = value
        return environ

    def _run_app(self, body: bytes) -> None:
        environ = self._environ(body)
        started: dict[str, Any] = {}
        written: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            started["status"] = status
            started["headers"] = headers
            return written.append

        try:
            result = self.server.app(environ, start_response)
            try:
                payload = b"".join([*written, *result])
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            started = {"status": "500 Internal Server Error",
                       "headers": [("Content-Type", "text/plain")]}
            payload = b"internal server error"
        action = environ[TRANSPORT_KEY].get("action")
        if action == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if action == "truncate":
            self.close_connection = True
        self._write(str(started["status"]), started["headers"], payload)

    def _write(self, status: str, headers: list[tuple[str, str]], payload: bytes) -> None:
        code = int(status.split(None, 1)[0])
        lines = [f"{self.protocol_version} {status}"]
        has_length = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == "connection":
                if value.lower() == "close":
                    self.close_connection = True
                continue
            has_length = has_length or lowered == "content-length"
            lines.append(f"{name}: {value}")
        no_body = code in (204, 304) or 100 <= code < 200
        if not has_length and not no_body:
            lines.append(f"Content-Length: {len(payload)}")
        lines.append(f"Date: {formatdate(usegmt=True)}")
        if self.close_connection:
            lines.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        if no_body or self.command == "HEAD":
            payload = b""
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + payload)


class BackendHTTPServer(socketserver.ThreadingMixIn, HTTPServer):
    """Thread-per-connection HTTP server that tracks its connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: WSGIApp) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the host (can take seconds)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection, disable Nagle on it and remember it."""
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._connections_lock:
            self._connections.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        """Forget and close a finished connection."""
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Hard-close every open connection (idle keep-alive ones included)."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that went away; report real bugs as usual."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class BackendServer:
    """The backend on ``127.0.0.1`` (port 0 = any free port), served by a daemon thread.

    Keyword options are :func:`~examples.server.flask_app.create_app`'s (``id_mode``,
    ``filter``, ``ts``, ``tombstones``, ``token``, ``delay_ms``). The server starts in
    the constructor; use it as ``with BackendServer() as srv:`` or call :meth:`stop`.

    Attributes: ``url`` (``http://127.0.0.1:PORT``), ``host``, ``port``, ``app`` (Flask),
    ``api`` (:class:`~examples.server.api.Api`), ``store`` and ``faults``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **app_options: Any) -> None:
        self.app: Flask = create_app(**app_options)
        self.api: Api = backend_of(self.app)
        self.store: Store = self.api.store
        self.faults: Faults = self.api.faults
        self._httpd = BackendHTTPServer((host, port), self.app)
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._stopped = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"backend-server-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def reset(self) -> None:
        """Shortcut for ``store.reset()`` (rows, logs, caches, faults, clock)."""
        self.store.reset()

    def stop(self) -> None:
        """Stop accepting, close every connection and join the serving thread."""
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()
        self._thread.join(timeout=5)

    def __enter__(self) -> BackendServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
