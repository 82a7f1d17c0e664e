"""The sync engine the crash harness kills: ``sqla-sync run tests.reliability.crash_worker:config``.

The environment says everything:

* ``CRASH_SERVER``: the backend's URL;
* ``CRASH_MODE``: ``client`` (Article, client-generated string ids) or
  ``server`` (Ledger, server-assigned ids, created with negative temporary ids);
* ``CRASH_TTL``: the leader lease TTL (a restarted worker waits for the killed
  one's lease to expire);
* ``CRASH_SEED``: seed of the engine's jitter;
* ``CRASH_CONCURRENCY``: push_concurrency.

Each push and pull carries ``X-Worker: <pid>`` so the request log shows which
incarnation sent what.  Logging goes to stderr at INFO so that a background
sync that failed (or an engine thread that died) leaves a line in the log the
harness scans.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import sys
from typing import Any

from sqla_sync import (
    Cursor,
    Errors,
    Leader,
    Offset,
    Pull,
    Push,
    Request,
    Routes,
    Schedule,
    SyncConfig,
    define_routes,
)
from sqla_sync.signals import signal_for
from tests import models  # noqa: F401  (defines the synced models)

#: Rows per pull page: small, so that a pull spans many pages and can be killed mid-way.
PAGE_SIZE = 5


def table_name(mode: str) -> str:
    """The local table a mode syncs with /api/posts."""
    return "articles" if mode == "client" else "ledgers"


def routes(mode: str, worker: str = "parent") -> Any:
    """Push and pull routes of the mode's table against the example backend."""
    headers = {"X-Worker": worker}
    fields = {"updated_at": "updatedAt"} if mode == "client" else {}
    return define_routes({table_name(mode): Routes(
        fields=fields,
        push=Push(create=Request("POST", "/api/posts", headers=headers),
                  update=Request("PUT", "/api/posts/{id}", headers=headers),
                  delete=Request("DELETE", "/api/posts/{id}", headers=headers)),
        pull=Pull("GET", "/api/posts", headers=headers,
                  map_response=lambda body: body["data"],
                  cursor=Cursor(field="updatedAt", param="updated_after"),
                  paginate=Offset(),
                  deleted=lambda row: bool(row.get("deleted", False))),
    )})


def make_config(server: str, mode: str, *, ttl: float, seed: int | None,
                concurrency: int = 2, worker: str = "parent") -> SyncConfig:
    """The SyncConfig of the worker (and of the parent's final clean sync)."""
    return SyncConfig(
        base_url=server,
        routes=routes(mode, worker),
        sync=Schedule(interval=0.2, on_commit=False, push_concurrency=concurrency,
                      push_batch_size=5, pull_page_size=PAGE_SIZE, pull_max_pages=200),
        # Kills and injected faults fail many attempts of one op: the harness
        # must never run an op out of retries (a dead letter is a failure here).
        errors=Errors(max_retries=1000, retry_delay=lambda attempt: min(0.05 * 2 ** attempt, 0.5)),
        leader=Leader(ttl=ttl),
        timeout=(2.0, 20.0),
        seed=seed,
    )


def _title(row: Any) -> Any:
    return row.get("title") if isinstance(row, dict) else None


def _log_conflict(sender: Any, conflict: Any = None, **_: Any) -> None:
    """One line per conflict, for the harness to tell which lost change came from where."""
    logging.getLogger("crash.conflict").info(
        "CONFLICT %s", json.dumps({"key": conflict.key, "local": _title(conflict.local),
                                   "remote": _title(conflict.remote),
                                   "base": _title(conflict.base),
                                   "resolution": conflict.resolution}))


def _log_dead_letter(sender: Any, dead_letter: Any = None, **_: Any) -> None:
    logging.getLogger("crash.dead").warning("DEAD LETTER %r", dead_letter)


def config() -> SyncConfig:
    """``sqla-sync run`` calls this in the worker process."""
    # SIGUSR1 dumps every thread's stack to the log: the harness asks for it when
    # the worker stops making progress.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal_for("conflict").connect(_log_conflict, weak=False)
    signal_for("dead-letter").connect(_log_dead_letter, weak=False)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s "
                               "%(name)s: %(message)s")
    seed = os.environ.get("CRASH_SEED")
    return make_config(
        os.environ["CRASH_SERVER"],
        os.environ.get("CRASH_MODE", "client"),
        ttl=float(os.environ.get("CRASH_TTL", "0.6")),
        seed=int(seed) if seed else None,
        concurrency=int(os.environ.get("CRASH_CONCURRENCY", "2")),
        worker=str(os.getpid()),
    )


def spawner() -> int:
    """A fork server: imports everything once, then forks a fresh worker on demand.

    A restart of the worker costs an interpreter start and the imports of
    SQLAlchemy, requests and the library (about a second on a small machine);
    forking from a process that has imported them and done nothing else gives
    the same fresh engine -- no connection, no thread, no state -- in a few
    milliseconds, so that 1,000 kills fit in a few minutes.  The harness reads
    ``SQLA_SYNC_CRASH_EXEC=1`` to start a new interpreter every time instead.

    Protocol, one line each way: ``spawn LOG URL`` -> pid; ``wait PID`` -> exit
    code (negative: killed by that signal); ``poll PID`` -> exit code or
    ``running``.
    """
    import traceback

    from sqla_sync import cli

    codes: dict[int, int] = {}
    for line in sys.stdin:
        command, *args = line.split()
        if command == "spawn":
            log, url = args
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                code: Any = 1
                try:
                    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    null = os.open(os.devnull, os.O_RDWR)
                    os.dup2(null, 0)
                    os.dup2(null, 1)
                    os.dup2(fd, 2)
                    code = cli.main(["--url", url, "run", "tests.reliability.crash_worker:config"])
                except SystemExit as exc:
                    code = exc.code
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stderr.flush()
                    os._exit(code if isinstance(code, int) else 1)
            print(pid, flush=True)
        elif command in ("wait", "poll"):
            pid = int(args[0])
            if pid not in codes:
                done, status = os.waitpid(pid, 0 if command == "wait" else os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
            print(codes.get(pid, "running"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(spawner())
