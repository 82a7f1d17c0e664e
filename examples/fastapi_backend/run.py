"""Run the FastAPI backend on a real socket: uvicorn in a background thread.

:class:`FastAPIBackendServer` mirrors :class:`examples.server.run.BackendServer`
(``url``, ``host``, ``port``, ``app``, ``api``, ``store``, ``faults``, ``reset()``,
``stop()``, a context manager). Compared with a plain ``uvicorn.run``:

* the listening socket is bound in the constructor, so ``port`` (0 = any free port) is
  known at once and the constructor returns only when uvicorn accepts connections;
* :class:`TransportH11Protocol` (uvicorn's h11 protocol) sets ``TCP_NODELAY`` on every
  connection and exposes the connection's transport to the app as the
  ``"examples.transport"`` scope extension, which the drop/truncate faults need;
* keep-alive connections are not timed out after 5 s (the Flask server never times
  them out either; a pooled client must not race an idle-timeout close);
* nothing is logged per request, no ``Server`` header, no proxy-header rewriting;
* :meth:`FastAPIBackendServer.stop` wakes the serving loop at once (uvicorn polls every
  0.1 s), closes the listening socket and aborts every connection, idle keep-alive ones
  included, so a stopped server really is gone for pooled clients. It returns then, as
  ``BackendServer.stop`` does: a request already running in the thread pool finishes
  its work in the background (its answer goes nowhere; at most 5 s are granted) and the
  serving thread ends after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from examples.server.api import Api
from examples.server.faults import Faults
from examples.server.store import Store

from .app import TRANSPORT_EXTENSION, backend_of, create_app

ASGIApp = Any
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
#: Idle keep-alive connections stay open this long (uvicorn's default is 5 s).
KEEP_ALIVE_S = 3600
#: Largest request head accepted (the Flask server allows 64 KiB per line).
_MAX_HEAD = 256 * 1024


def expose_transport(app: ASGIApp, transport: asyncio.Transport) -> ASGIApp:
    """Wrap ``app`` so each HTTP scope carries ``transport`` as an extension."""

    async def with_transport(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            extensions = scope.setdefault("extensions", {})
            extensions[TRANSPORT_EXTENSION] = {"transport": transport}
        await app(scope, receive, send)

    return with_transport


class TransportH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with TCP_NODELAY and the transport in the ASGI scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # asyncio already sets it on TCP; be explicit anyway
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.app = expose_transport(self.app, transport)


class _ThreadedServer(uvicorn.Server):
    """A uvicorn.Server that starts in a thread, stops at once and drops connections."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()
        self.closed = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def run_in_thread(self, sock: socket.socket) -> None:
        """Thread target: serve on ``sock``; the events are set even if serving fails."""
        try:
            self.run(sockets=[sock])
        finally:
            self.ready.set()
            self.closed.set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await super().startup(sockets=sockets)
        self.ready.set()

    def request_exit(self) -> None:
        """Thread-safe: make the serving loop exit now rather than at its next tick."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(wake.set)

    async def main_loop(self) -> None:
        """uvicorn's loop (on_tick every 0.1 s keeps the Date header fresh), wakeable."""
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            if self._wake is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.1)
            else:
                await asyncio.sleep(0.1)
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop listening, abort every connection, let running requests finish."""
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        await asyncio.sleep(0)  # run the connection_lost callbacks
        self.closed.set()
        tasks = list(self.server_state.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.timeout_graceful_shutdown)
            for task in pending:
                task.cancel()
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()


class FastAPIBackendServer:
    """The FastAPI backend on ``127.0.0.1`` (port 0 = any free port), served by uvicorn.

    Keyword options are :func:`~examples.fastapi_backend.app.create_app`'s (``id_mode``,
    ``filter``, ``ts``, ``tombstones``, ``token``, ``delay_ms``). The server starts in
    the constructor; use it as ``with FastAPIBackendServer() as srv:`` or call
    :meth:`stop`.

    Attributes: ``url`` (``http://127.0.0.1:PORT``), ``host``, ``port``, ``app``
    (FastAPI), ``api`` (:class:`~examples.server.api.Api`), ``store`` and ``faults``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **app_options: Any) -> None:
        self.app: FastAPI = create_app(**app_options)
        self.api: Api = backend_of(self.app)
        self.store: Store = self.api.store
        self.faults: Faults = self.api.faults
        self._socket = socket.create_server((host, port), backlog=128)
        self.host = host
        self.port = int(self._socket.getsockname()[1])
        self.url = f"http://{host}:{self.port}"
        self._stopped = False
        config = uvicorn.Config(
            self.app,
            http=TransportH11Protocol,
            ws="none",
            loop="asyncio",
            lifespan="on",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=int(_STOP_TIMEOUT_S),
            h11_max_incomplete_event_size=_MAX_HEAD,
        )
        self._server = _ThreadedServer(config)
        self._thread = threading.Thread(
            target=self._server.run_in_thread,
            args=(self._socket,),
            name=f"fastapi-backend-{self.port}",
            daemon=True,
        )
        self._thread.start()
        if not self._server.ready.wait(_START_TIMEOUT_S) or not self._server.started:
            self.stop()
            raise RuntimeError(f"uvicorn did not start on {self.url}")

    def reset(self) -> None:
        """Shortcut for ``store.reset()`` (rows, logs, caches, faults, clock)."""
        self.store.reset()

    def stop(self) -> None:
        """Stop accepting and close every connection (see the module docstring)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.request_exit()
        self._server.closed.wait(_STOP_TIMEOUT_S)
        self._socket.close()

    def join(self, timeout: float | None = None) -> bool:
        """After :meth:`stop`: wait for the serving thread to end; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> FastAPIBackendServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
