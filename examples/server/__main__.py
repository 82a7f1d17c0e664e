"""``python -m examples.server``: run the backend in its own process.

Prints exactly one line, ``LISTENING http://127.0.0.1:PORT``, once the socket accepts
connections, then serves until SIGTERM or SIGINT and exits 0. A parent process (test or
benchmark) reads that line to learn the port, which is why ``--port 0`` is the norm.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .run import BackendServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.server", description="sqla_sync reference REST backend"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--id-mode", choices=["client", "server"], default="client")
    parser.add_argument("--filter", choices=["strict", "inclusive"], default="strict")
    parser.add_argument("--ts", choices=["iso", "epoch_s", "epoch_ms"], default="iso")
    parser.add_argument("--tombstones", action=argparse.BooleanOptionalAction, default=True,
                        help="soft deletes (default) or --no-tombstones for hard deletes")
    parser.add_argument("--token", default=None, help="require 'Authorization: Bearer T'")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="latency added to every /api response")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, serve until a termination signal, return the exit code."""
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = BackendServer(
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
