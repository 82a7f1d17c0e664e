"""``sqla-sync``: look at and run the sync of a database from the command line.

Commands (``--url`` or ``SQLA_SYNC_URL`` names the database)::

    sqla-sync status [--json]        queue, dead letters, leader, checkpoints, last sync
    sqla-sync dead-letters [--json]  the ops given up on
    sqla-sync retry ID               put dead letter ID back in the queue
    sqla-sync run MODULE:ATTR        sync in the foreground until SIGINT/SIGTERM
    sqla-sync demo                   a guided tour against a local example server

Exit codes: 0 success; 1 the command failed (unreachable database, no such
dead letter, a factory that does not give a SyncConfig); 2 wrong usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import create_engine, inspect, select
from sqlalchemy.engine import Engine

from . import outbox as ob
from .checkpoints import get_checkpoint
from .config import SyncConfig
from .engine import LAST_SYNC_CHECKPOINT, start_sync
from .errors import SyncError
from .tables import checkpoints, leases

__all__ = ["main"]


def _engine(url: str | None) -> Engine:
    if not url:
        raise SystemExit(_usage("no database: pass --url or set SQLA_SYNC_URL"))
    engine = create_engine(url)
    if not inspect(engine).has_table("sqla_sync_outbox"):
        raise SyncError(f"{url}: no sqla_sync tables here (run the alembic branch sqla_sync "
                        "or sqla_sync.create_tables first)")
    return engine


def _usage(message: str) -> int:
    print(f"sqla-sync: {message}", file=sys.stderr)
    return 2


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return dt.datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds")


def _status(engine: Engine) -> dict[str, Any]:
    now = time.time()
    with engine.connect() as conn:
        depth = ob.queue_depth(conn)
        dead = ob.dead_letter_count(conn)
        age = ob.oldest_pending_age(conn, now)
        lease_rows = conn.execute(select(leases)).mappings().all()
        points = {row.name: json.loads(row.value) if row.value else None
                  for row in conn.execute(select(checkpoints))}
        last = get_checkpoint(conn, LAST_SYNC_CHECKPOINT)
    points.pop(LAST_SYNC_CHECKPOINT, None)
    return {
        "queue_depth": depth,
        "dead_letters": dead,
        "oldest_pending_age": age,
        "leaders": [
            {"name": r["name"], "owner": r["owner"], "token": r["token"],
             "expires_in": round(r["expires_at"] - now, 1),
             "live": r["expires_at"] > now} for r in lease_rows
        ],
        "last_sync_at": last,
        "checkpoints": points,
    }


def _print_status(data: dict[str, Any]) -> None:
    age = data["oldest_pending_age"]
    rows = [
        ("queue depth", str(data["queue_depth"])),
        ("dead letters", str(data["dead_letters"])),
        ("oldest pending", "-" if age is None else f"{age:.0f} s"),
        ("last sync", _when(data["last_sync_at"])),
    ]
    for lease in data["leaders"] or [{"name": "default", "owner": None}]:
        if lease.get("owner") and lease.get("live"):
            text = f"{lease['owner']} (token {lease['token']}, {lease['expires_in']} s left)"
        else:
            text = "none"
        rows.append((f"leader [{lease['name']}]", text))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    if data["checkpoints"]:
        print("checkpoints:")
        for name, value in sorted(data["checkpoints"].items()):
            print(f"  {name}  {json.dumps(value)}")


def _load_config(spec: str) -> SyncConfig:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SyncError(f"{spec!r} is not MODULE:ATTR (e.g. myapp.sync:config)")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part)
    config = target() if callable(target) and not isinstance(target, SyncConfig) else target
    if not isinstance(config, SyncConfig):
        raise SyncError(f"{spec} gave {type(config).__name__}, not a SyncConfig")
    return config


def _run(engine: Engine, spec: str) -> int:
    config = _load_config(spec)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sync = start_sync(engine, config)
    sync.start()
    print(f"sqla-sync: syncing {engine.url.render_as_string(hide_password=True)} with "
          f"{config.base_url}; Ctrl-C stops", file=sys.stderr, flush=True)
    stop.wait()
    sync.stop()
    print("sqla-sync: stopped", file=sys.stderr, flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sqla-sync``."""
    parser = argparse.ArgumentParser(prog="sqla-sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SQLA_SYNC_URL"),
                        help="database URL (default: $SQLA_SYNC_URL)")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="queue, dead letters, leader, checkpoints")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    letters = sub.add_parser("dead-letters", help="list the ops given up on")
    letters.add_argument("--json", action="store_true", help="machine-readable output")
    retry = sub.add_parser("retry", help="put a dead letter back in the queue")
    retry.add_argument("id", type=int)
    run = sub.add_parser("run", help="sync until SIGINT/SIGTERM")
    run.add_argument("config", help="MODULE:ATTR giving a SyncConfig (or a function returning one)")
    sub.add_parser("demo", help="a guided tour against a local example server")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sqla-sync`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo()
        engine = _engine(args.url)
        if args.command == "status":
            data = _status(engine)
            if args.json:
                print(json.dumps(data, indent=2, sort_keys=True))
            else:
                _print_status(data)
            return 0
        if args.command == "dead-letters":
            with engine.connect() as conn:
                letters = ob.dead_letters(conn)
            if args.json:
                print(json.dumps([letter.__dict__ for letter in letters], indent=2))
            elif not letters:
                print("no dead letters")
            else:
                print(f"{'id':>6}  {'table':<16} {'op':<7} {'status':<6} error")
                for d in letters:
                    print(f"{d.id:>6}  {d.table_name:<16} {d.op:<7} {d.status or '-'!s:<6} "
                          f"{d.error[:80]}")
            return 0
        if args.command == "retry":
            with engine.begin() as conn:
                if not ob.revive(conn, args.id):
                    raise SyncError(f"no dead letter with id {args.id}; see "
                                    "'sqla-sync dead-letters'")
            print(f"dead letter {args.id} is back in the queue")
            return 0
        if args.command == "run":
            return _run(engine, args.config)
    except SyncError as exc:
        print(f"sqla-sync: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # an unreachable database, a bad module: say it, exit 1
        print(f"sqla-sync: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
