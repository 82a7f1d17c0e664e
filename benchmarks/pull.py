"""What pull costs: sqla_sync's paged delta pull against a bare ``requests`` loop.

The example backend runs in its own process (``python -m examples.server --port 0``)
and is seeded once with 100,000 posts (``POST /__admin/seed/posts``, 5,000 per
request; each row gets its own ``updatedAt`` from the server clock).  Two variants
then copy the whole listing into a fresh SQLite file each:

* ``bare``: one :class:`requests.Session` asks ``GET /api/posts?limit=1000`` and
  then ``updated_after=<updatedAt of the last row>``, parses each page with
  ``.json()`` and writes it with one Core executemany upsert (SQLite
  ``INSERT ... ON CONFLICT DO UPDATE``) of id, title, body, updated_at, version into
  a plain (non-Syncable) table of the same shape, committed per page; it stops at
  the first page shorter than the limit.
* ``sqla_sync``: one timed :meth:`SyncEngine.pull` of a ``Syncable`` model with a
  ``Cursor(field="updatedAt", param="updated_after")`` and ``Offset()`` paging,
  ``pull_page_size=1000`` (the library's own rows: shadow, checkpoint, outbox
  lookups, all in the same file; the library asks for the next page while it
  applies one, the bare loop does not).

Both must end with exactly the server's rows (id, title, body, updatedAt, version);
anything else fails the run loudly.  The variants take turns within one run and
the median of 3 runs is reported.

Memory: the sqla_sync pull (and, for reference, the bare loop) runs once more in a
fresh child process each: once under :mod:`tracemalloc` (peak of the Python
allocations made during the pull) and once without it, for the growth of the
resident set (``VmHWM`` of ``/proc/self/status``, the peak reset through
``/proc/self/clear_refs`` just before the pull where the kernel allows it).
Goal: the sqla_sync pull grows memory by less than 60 MB on both counts.

Other modes: ``--profile`` runs one sqla_sync pull under cProfile and prints the
top functions by tottime and by cumulative time.

Run: ``python benchmarks/pull.py [--quick | --profile [--top 30]]``
(``--quick``: 10,000 rows instead of 100,000).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from sqlalchemy import (
    Column,
    Engine,
    FromClause,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    select,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqla_sync import (
    Cursor,
    Offset,
    Pull,
    PullResult,
    Push,
    Request,
    Routes,
    Schedule,
    Syncable,
    SyncConfig,
    create_tables,
    define_routes,
    start_sync,
)

ROOT = Path(__file__).resolve().parent.parent
ROWS = 100_000
PAGE_SIZE = 1_000
SEED_CHUNK = 5_000
REPS = 3
MEMORY_GOAL_MB = 60.0
TIMEOUT = (5.0, 60.0)  # (connect, read) seconds
BODY_TEXT = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod. " * 3
MB = 2**20

#: (id, title, body, updatedAt, version) of one post, as the server lists it.
PostTuple = tuple[str, str | None, str | None, str, int]


class BenchmarkError(RuntimeError):
    """A run did not do what it should have: its timing means nothing."""


# -- the synced model and its routes -----------------------------------------


class Base(DeclarativeBase):
    pass


class Post(Syncable, Base):
    __tablename__ = "posts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str | None] = mapped_column(String(2000))
    updated_at: Mapped[str | None] = mapped_column(String(40))
    version: Mapped[int | None]


def _data(body: Any) -> Any:
    return body["data"]


def _is_deleted(row: Any) -> bool:
    return bool(row.get("deleted", False))


ROUTES = define_routes({
    "posts": Routes(
        fields={"updated_at": "updatedAt"},
        push=Push(
            create=Request("POST", "/api/posts"),
            update=Request("PUT", "/api/posts/{id}"),
            delete=Request("DELETE", "/api/posts/{id}"),
        ),
        pull=Pull(
            "GET", "/api/posts",
            map_response=_data,
            cursor=Cursor(field="updatedAt", param="updated_after"),
            paginate=Offset(),
            deleted=_is_deleted,
        ),
    )
})

# -- the bare variant's table: same shape, not Syncable ------------------------

BARE_METADATA = MetaData()
bare_posts = Table(
    "posts",
    BARE_METADATA,
    Column("id", String(64), primary_key=True),
    Column("title", String(200)),
    Column("body", String(2000)),
    Column("updated_at", String(40)),
    Column("version", Integer),
)
_UPSERT = sqlite_insert(bare_posts)
BARE_UPSERT = _UPSERT.on_conflict_do_update(
    index_elements=[bare_posts.c.id],
    set_={name: _UPSERT.excluded[name] for name in ("title", "body", "updated_at", "version")},
)


def local_rows(engine: Engine, table: FromClause) -> list[PostTuple]:
    """Every row of ``table`` as (id, title, body, updated_at, version)."""
    c = table.c
    with engine.connect() as conn:
        return [
            (r[0], r[1], r[2], r[3], r[4])
            for r in conn.execute(select(c.id, c.title, c.body, c.updated_at, c.version))
        ]


# -- the backend, in its own process -----------------------------------------


class Backend:
    """``python -m examples.server`` as a child process, and its admin endpoints."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "examples.server", "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._admin: requests.Session | None = None
        line = self._first_line(timeout=30.0)
        if not line.startswith("LISTENING "):
            self.close()
            raise BenchmarkError(f"the backend did not start: {line!r}")
        self.url = line.split()[1]
        self._admin = requests.Session()

    def _first_line(self, timeout: float) -> str:
        lines: queue.Queue[str] = queue.Queue()
        stdout = self._proc.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True)
        reader.start()
        try:
            return lines.get(timeout=timeout).strip()
        except queue.Empty:
            return f"<nothing within {timeout:g} s>"

    @property
    def admin(self) -> requests.Session:
        assert self._admin is not None
        return self._admin

    def seed(self, n: int) -> float:
        """Seed ``n`` posts (ids p000001...), ``SEED_CHUNK`` per request; seconds taken."""
        start = time.perf_counter()
        for first in range(0, n, SEED_CHUNK):
            chunk = [
                {"id": f"p{i:06d}", "title": f"Post number {i}", "body": f"{i}: {BODY_TEXT}"}
                for i in range(first + 1, min(first + SEED_CHUNK, n) + 1)
            ]
            answer = self.admin.post(f"{self.url}/__admin/seed/posts", json=chunk,
                                     timeout=(5.0, 300.0))
            answer.raise_for_status()
        return time.perf_counter() - start

    def rows(self) -> dict[str, PostTuple]:
        """Every post the server holds (tombstones fail the run), by id."""
        answer = self.admin.get(f"{self.url}/__admin/rows/posts", timeout=(5.0, 300.0))
        answer.raise_for_status()
        found: dict[str, PostTuple] = {}
        for r in answer.json()["data"]:
            if r.get("deleted"):
                raise BenchmarkError(f"the server holds a tombstone: {r['id']}")
            found[r["id"]] = (r["id"], r["title"], r["body"], r["updatedAt"], r["version"])
        return found

    def close(self) -> None:
        """SIGTERM the server and wait for it (kill it if it lingers)."""
        if self._admin is not None:
            self._admin.close()
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def check_rows(variant: str, got: Sequence[PostTuple], expected: dict[str, PostTuple]) -> None:
    """Fail loudly unless ``got`` is exactly the server's rows."""
    if len(got) != len(expected):
        raise BenchmarkError(f"{variant}: {len(got)} local rows, the server has {len(expected)}")
    wrong = [row for row in got if expected.get(row[0]) != row]
    if wrong:
        first = wrong[0]
        raise BenchmarkError(
            f"{variant}: {len(wrong)} local rows differ from the server's, e.g. {first!r} "
            f"against {expected.get(first[0])!r}"
        )


# -- the two variants ----------------------------------------------------------


@contextmanager
def sqlite_file(directory: Path, prefix: str) -> Iterator[tuple[Path, Engine]]:
    """A fresh SQLite file and its engine, both gone afterwards."""
    path = directory / f"{prefix}-{uuid.uuid4().hex}.db"
    engine = create_engine(f"sqlite:///{path}")
    try:
        yield path, engine
    finally:
        engine.dispose()
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink(missing_ok=True)


@dataclass(frozen=True)
class Run:
    """One timed pull: wall seconds, CPU seconds of this process, pages, rows written."""

    seconds: float
    cpu: float
    pages: int
    rows: int


def bare_pull(url: str, engine: Engine) -> tuple[int, int]:
    """The bare loop: (pages requested, rows written)."""
    pages = written = 0
    after: str | None = None
    with requests.Session() as http:
        while True:
            params: dict[str, str | int] = {"limit": PAGE_SIZE}
            if after is not None:
                params["updated_after"] = after
            answer = http.get(f"{url}/api/posts", params=params, timeout=TIMEOUT)
            answer.raise_for_status()
            rows = answer.json()["data"]
            pages += 1
            if rows:
                with engine.begin() as conn:
                    conn.execute(BARE_UPSERT, [
                        {"id": r["id"], "title": r["title"], "body": r["body"],
                         "updated_at": r["updatedAt"], "version": r["version"]}
                        for r in rows
                    ])
                written += len(rows)
                after = rows[-1]["updatedAt"]
            if len(rows) < PAGE_SIZE:
                return pages, written


def run_bare(url: str, directory: Path, expected: dict[str, PostTuple]) -> Run:
    """Time the bare loop into a fresh file, then check what it wrote."""
    with sqlite_file(directory, "bare") as (_, engine):
        BARE_METADATA.create_all(engine)
        gc.collect()
        cpu = time.process_time()
        start = time.perf_counter()
        pages, written = bare_pull(url, engine)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        check_rows("bare", local_rows(engine, bare_posts), expected)
    return Run(elapsed, cpu, pages, written)


Runner = Callable[[Callable[[], PullResult]], PullResult]


def _direct(fn: Callable[[], PullResult]) -> PullResult:
    return fn()


def sync_config(url: str) -> SyncConfig:
    schedule = Schedule(
        interval=0.0, on_online=False, on_commit=False,  # no background syncs: one pull
        pull_page_size=PAGE_SIZE, pull_max_pages=1000,
    )
    return SyncConfig(base_url=url, routes=ROUTES, sync=schedule)


def prepare_sync_db(engine: Engine) -> None:
    Base.metadata.create_all(engine)
    create_tables(engine)


def run_sqla_sync(url: str, directory: Path, expected: dict[str, PostTuple],
                  runner: Runner = _direct) -> Run:
    """Time one ``pull()`` into a fresh file, then check what it wrote.

    ``runner`` calls the pull (``cProfile.Profile.runcall`` to profile it).
    """
    with sqlite_file(directory, "sync") as (_, engine):
        prepare_sync_db(engine)
        sync = start_sync(engine, sync_config(url))
        try:
            gc.collect()
            cpu = time.process_time()
            start = time.perf_counter()
            result = runner(sync.pull)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu
        finally:
            sync.stop()
        n = len(expected)
        if result.pulled != n or result.deleted or result.conflicts:
            raise BenchmarkError(
                f"sqla_sync: pulled {result.pulled} of {n} (deleted {result.deleted}, "
                f"conflicts {result.conflicts}, {result.pages} pages)"
            )
        check_rows("sqla_sync", local_rows(engine, Post.__table__), expected)
    return Run(elapsed, cpu, result.pages, result.pulled)


# -- memory, measured in a fresh child process --------------------------------


def _status_kb(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (VmHWM, VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchmarkError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_child(url: str, variant: str, mode: str, expected_rows: int) -> dict[str, Any]:
    """One pull in this (fresh) process; the memory it grew by, as JSON-ready data."""
    with tempfile.TemporaryDirectory(prefix="sqla_sync_pull_mem_") as tmp, \
            sqlite_file(Path(tmp), variant) as (_, engine):
        pull: Callable[[], int]
        if variant == "sqla_sync":
            prepare_sync_db(engine)
            sync = start_sync(engine, sync_config(url))

            def pull() -> int:
                return sync.pull().pulled
        else:
            BARE_METADATA.create_all(engine)
            sync = None

            def pull() -> int:
                return bare_pull(url, engine)[1]
        try:
            gc.collect()
            out: dict[str, Any] = {"variant": variant, "mode": mode}
            if mode == "tracemalloc":
                tracemalloc.start()
                base, _ = tracemalloc.get_traced_memory()
                rows = pull()
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                out["growth_mb"] = (peak - base) / MB
            else:
                reset = _reset_peak_rss()
                before = _status_kb("VmRSS") if reset else _status_kb("VmHWM")
                rows = pull()
                after = _status_kb("VmHWM")
                out.update(growth_mb=(after - before) / 1024, peak_reset=reset,
                           hwm_mb=after / 1024)
        finally:
            if sync is not None:
                sync.stop()
    if rows != expected_rows:
        raise BenchmarkError(f"{variant} ({mode}): wrote {rows} of {expected_rows} rows")
    out["rows"] = rows
    return out


def measure_memory(url: str, variant: str, mode: str, expected_rows: int) -> dict[str, Any]:
    """Run :func:`memory_child` in a fresh interpreter and return its report."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-child", url,
         "--variant", variant, "--mode", mode, "--rows", str(expected_rows)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False,
    )
    if done.returncode != 0:
        raise BenchmarkError(f"memory child {variant}/{mode} failed:\n{done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


# -- the benchmark ----------------------------------------------------------------


def benchmark(quick: bool) -> bool:
    n = ROWS // 10 if quick else ROWS
    print(f"pull: {n} rows, pages of {PAGE_SIZE}, median of {REPS} runs"
          f"{', quick (1/10 size)' if quick else ''}", flush=True)
    times: dict[str, list[float]] = {"bare": [], "sqla_sync": []}
    cpus: dict[str, list[float]] = {"bare": [], "sqla_sync": []}
    pages: dict[str, int] = {}
    with Backend() as backend, tempfile.TemporaryDirectory(prefix="sqla_sync_pull_") as tmp:
        seeded = backend.seed(n)
        expected = backend.rows()
        if len(expected) != n:
            raise BenchmarkError(f"the server holds {len(expected)} posts after seeding {n}")
        print(f"seeded {n} posts in {seeded:.1f} s", flush=True)
        directory = Path(tmp)
        for rep in range(REPS):
            # Take turns, and swap who goes first, so drift hits both alike.
            order = ("bare", "sqla_sync") if rep % 2 == 0 else ("sqla_sync", "bare")
            for variant in order:
                if variant == "bare":
                    run = run_bare(backend.url, directory, expected)
                else:
                    run = run_sqla_sync(backend.url, directory, expected)
                times[variant].append(run.seconds)
                cpus[variant].append(run.cpu)
                pages[variant] = run.pages
        med = {v: statistics.median(ts) for v, ts in times.items()}
        med_cpu = {v: statistics.median(ts) for v, ts in cpus.items()}
        memory = {
            (variant, mode): measure_memory(backend.url, variant, mode, n)
            for variant in ("sqla_sync", "bare")
            for mode in ("tracemalloc", "rss")
        }
    ratio = med["sqla_sync"] / med["bare"]
    runs = ", ".join(f"{v} " + "/".join(f"{t:.2f}" for t in ts) for v, ts in times.items())
    print(f"runs (s): {runs}; requests: bare {pages['bare']}, sqla_sync {pages['sqla_sync']}")
    print(f"pull {n} rows, pages of {PAGE_SIZE}: sqla_sync/bare = {ratio:.2f}x "
          f"(bare {med['bare']:.2f} s, sqla_sync {med['sqla_sync']:.2f} s, median of {REPS})")
    # The server's own work is in the wall time of both; this process's CPU time is not
    # and is steadier on a busy machine.
    print(f"client CPU during the pull: sqla_sync/bare = "
          f"{med_cpu['sqla_sync'] / med_cpu['bare']:.2f}x (bare {med_cpu['bare']:.2f} s, "
          f"sqla_sync {med_cpu['sqla_sync']:.2f} s, median of {REPS})")
    traced = memory[("sqla_sync", "tracemalloc")]["growth_mb"]
    rss_report = memory[("sqla_sync", "rss")]
    rss = rss_report["growth_mb"]
    how = "peak reset via clear_refs" if rss_report["peak_reset"] else "VmHWM after - before"
    print(f"pull peak memory growth: {traced:.1f} MB tracemalloc, {rss:.1f} MB RSS "
          f"({how}) (goal < {MEMORY_GOAL_MB:g} MB)")
    print(f"bare loop peak memory growth, for reference: "
          f"{memory[('bare', 'tracemalloc')]['growth_mb']:.1f} MB tracemalloc, "
          f"{memory[('bare', 'rss')]['growth_mb']:.1f} MB RSS")
    passed = ratio <= 1.5
    print(f"goal: sqla_sync pull <= 1.5x the bare loop: {ratio:.2f}x "
          f"{'PASS' if passed else 'FAIL'}")
    for label, value in (("tracemalloc", traced), ("RSS", rss)):
        ok = value < MEMORY_GOAL_MB
        passed &= ok
        print(f"goal: sqla_sync pull peak memory growth ({label}) < {MEMORY_GOAL_MB:g} MB: "
              f"{value:.1f} MB {'PASS' if ok else 'FAIL'}")
    return passed


# -- profile ---------------------------------------------------------------------


def profile(quick: bool, top: int, restrict: str, save: str | None) -> None:
    """cProfile one sqla_sync pull; print the top functions by tottime and cumulative.

    ``save`` names a file for the raw stats (``pstats.Stats(path)`` reads it back).
    """
    n = ROWS // 10 if quick else ROWS
    profiler = cProfile.Profile()
    with Backend() as backend, tempfile.TemporaryDirectory(prefix="sqla_sync_pull_prof_") as tmp:
        backend.seed(n)
        expected = backend.rows()
        plain = run_sqla_sync(backend.url, Path(tmp), expected)
        run = run_sqla_sync(backend.url, Path(tmp), expected, runner=profiler.runcall)
    print(f"profile: sqla_sync pull of {n} rows, pages of {PAGE_SIZE}: {run.seconds:.2f} s "
          f"under cProfile ({plain.seconds:.2f} s without), {run.pages} pages")
    if save:
        profiler.dump_stats(save)
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(order).print_stats(restrict, top)
        print(f"-- by {order}, restricted to {restrict!r}")
        print(out.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{ROWS // 10} rows, not {ROWS}")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one sqla_sync pull")
    parser.add_argument("--top", type=int, default=30, help="with --profile: rows to print")
    parser.add_argument("--restrict", default=".",
                        help="with --profile: regex on file:function names")
    parser.add_argument("--save", metavar="PATH",
                        help="with --profile: also write the raw stats to PATH")
    parser.add_argument("--memory-child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["sqla_sync", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["tracemalloc", "rss"], help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        report = memory_child(args.memory_child, args.variant, args.mode, args.rows)
        print(json.dumps(report))
        return 0
    if args.profile:
        profile(args.quick, args.top, args.restrict, args.save)
        return 0
    return 0 if benchmark(args.quick) else 1


if __name__ == "__main__":
    raise SystemExit(main())
