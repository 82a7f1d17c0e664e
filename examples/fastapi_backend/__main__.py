"""``python -m examples.fastapi_backend``: run the FastAPI backend in its own process.

The same flags and protocol as ``python -m examples.server``: prints exactly one line,
``LISTENING http://127.0.0.1:PORT``, once the socket accepts connections, then serves
until SIGTERM or SIGINT and exits 0.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from examples.server.__main__ import _parser

from .run import FastAPIBackendServer


def main(argv: list[str] | None = None) -> int:
    """Parse flags, serve until a termination signal, return the exit code."""
    parser = _parser()
    parser.prog = "python -m examples.fastapi_backend"
    parser.description = "sqla_sync reference REST backend (FastAPI + uvicorn)"
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = FastAPIBackendServer(
        host=args.host,
        port=args.port,
        id_mode=args.id_mode,
        filter=args.filter,
        ts=args.ts,
        tombstones=args.tombstones,
        token=args.token,
        delay_ms=args.delay_ms,
    )
    try:
        print(f"LISTENING {server.url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
