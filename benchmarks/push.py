"""What push costs: sqla_sync's push of queued creates against a bare ``requests`` loop.

The example backend runs in its own process (``python -m examples.server --port 0
--delay-ms N``), so the server's work does not share this process's GIL.  Two
variants send the same JSON bodies to ``POST /api/posts``:

* ``bare``: one :class:`requests.Session`, serially, each body encoded with
  ``json.dumps``, with ``Content-Type: application/json`` and a fresh uuid
  ``Idempotency-Key`` per request (what the library sends); the status is checked.
* ``sqla_sync``: the rows are inserted through a tracked session and committed
  (not timed), then one timed :meth:`SyncEngine.push` sends the outbox at
  concurrency ``c``.

Scenarios (sizes divided by 10 with ``--quick``):

a) 5,000 creates, no added latency: sqla_sync c=1 <= 1.25x bare;
b) 1,000 creates, the server adds 5 ms to every answer: sqla_sync c=1 <= 1.10x
   bare, and sqla_sync c=8 <= 0.30x bare (bare is always serial).

Every run gets a fresh SQLite file in a temporary directory and an emptied
server (``POST /__admin/reset``); afterwards the push result must count every
op as pushed and the server must hold exactly the rows sent.  The variants take
turns within one run, and the median of 3 runs is reported.

The timings are wall-clock and client and server share the machine's CPUs:
run it on a quiet machine (the load average is printed at the start and end),
and ``--verbose`` to see every run's time.

Other modes: ``--batch-sizes 10,50,100,200`` runs the comparison for each
``push_batch_size`` (the default, 100, came out of that experiment);
``--profile`` runs one sqla_sync push of scenario a) at c=1 under cProfile.

Run: ``python benchmarks/push.py [--quick] [--verbose] [--batch-sizes 10,50,100,200 | --profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from sqla_sync import (
    Push,
    Request,
    Routes,
    Schedule,
    Syncable,
    SyncConfig,
    create_tables,
    define_routes,
    start_sync,
    track,
)

ROOT = Path(__file__).resolve().parent.parent
#: ``push_batch_size`` of the main run.  ``--batch-sizes 10,50,100,200``: 10 is far
#: slower (two commits and a 500-op outbox read per 10 requests), 50 to 200 are
#: within noise of each other, 100 was best or tied in both scenarios.
DEFAULT_BATCH_SIZE = 100
REPS = 3
TIMEOUT = (5.0, 30.0)  # (connect, read) seconds, as the library's default
BODY_TEXT = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 4

Body = dict[str, str]


class BenchmarkError(RuntimeError):
    """A run did not do what it should have: its timing means nothing."""


# -- the synced model and its routes -----------------------------------------


class Base(DeclarativeBase):
    pass


class Post(Syncable, Base):
    __tablename__ = "posts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(String(2000))


ROUTES = define_routes({
    "posts": Routes(
        push=Push(
            create=Request("POST", "/api/posts"),
            update=Request("PUT", "/api/posts/{id}"),
            delete=Request("DELETE", "/api/posts/{id}"),
        )
    )
})


def make_bodies(n: int) -> list[Body]:
    """``n`` posts with client ids, keys in column order (as the library sends them)."""
    return [
        {"id": uuid.uuid4().hex, "title": f"Post number {i}", "body": BODY_TEXT}
        for i in range(n)
    ]


# -- the backend, in its own process -----------------------------------------


class Backend:
    """``python -m examples.server`` as a child process, and its admin endpoints."""

    def __init__(self, delay_ms: float) -> None:
        self.delay_ms = delay_ms
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "examples.server", "--port", "0",
             "--delay-ms", f"{delay_ms:g}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
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

    def reset(self) -> None:
        """Empty the server: rows, request log, idempotency keys."""
        self._admin.post(f"{self.url}/__admin/reset", timeout=TIMEOUT).raise_for_status()

    def row_ids(self, resource: str = "posts") -> list[str]:
        """Ids of every row the server holds."""
        answer = self._admin.get(f"{self.url}/__admin/rows/{resource}", timeout=TIMEOUT)
        answer.raise_for_status()
        return [str(row["id"]) for row in answer.json()["data"]]

    def check_holds(self, bodies: Sequence[Body], variant: str) -> None:
        """Fail loudly unless the server holds exactly the rows of ``bodies``."""
        ids = self.row_ids()
        expected = {b["id"] for b in bodies}
        if len(ids) != len(bodies) or set(ids) != expected:
            raise BenchmarkError(
                f"{variant}: the server holds {len(ids)} rows "
                f"({len(set(ids) & expected)} of the {len(bodies)} sent)"
            )

    def close(self) -> None:
        """SIGTERM the server and wait for it (kill it if it lingers)."""
        if getattr(self, "_admin", None) is not None:
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


# -- the two variants ----------------------------------------------------------


def run_bare(backend: Backend, bodies: Sequence[Body]) -> float:
    """Seconds to POST every body serially on one bare session."""
    backend.reset()
    url = f"{backend.url}/api/posts"
    with requests.Session() as http:
        gc.collect()
        start = time.perf_counter()
        for body in bodies:
            answer = http.post(
                url,
                data=json.dumps(body, separators=(",", ":")).encode(),
                headers={"Content-Type": "application/json",
                         "Idempotency-Key": uuid.uuid4().hex},
                timeout=TIMEOUT,
            )
            if answer.status_code != 201:
                raise BenchmarkError(f"bare: POST answered {answer.status_code}: {answer.text}")
        elapsed = time.perf_counter() - start
    backend.check_holds(bodies, "bare")
    return elapsed


Runner = Callable[[Callable[[], Any]], Any]


def _direct(fn: Callable[[], Any]) -> Any:
    return fn()


def run_sqla_sync(
    backend: Backend,
    bodies: Sequence[Body],
    directory: Path,
    *,
    batch_size: int,
    concurrency: int,
    runner: Runner = _direct,
) -> float:
    """Seconds of one ``push()`` of ``bodies``, queued (untimed) in a fresh SQLite file.

    ``runner`` calls the push (``cProfile.Profile.runcall`` to profile it).
    """
    backend.reset()
    variant = f"sqla_sync c={concurrency} batch={batch_size}"
    path = directory / f"push-{uuid.uuid4().hex}.db"
    engine = create_engine(f"sqlite:///{path}")
    try:
        Base.metadata.create_all(engine)
        create_tables(engine)
        factory = track(sessionmaker(engine))
        with factory() as session:
            session.add_all([Post(**body) for body in bodies])
            session.commit()
        schedule = Schedule(
            interval=0.0, on_online=False, on_commit=False,  # no background syncs: one push
            push_batch_size=batch_size, push_concurrency=concurrency,
        )
        sync = start_sync(engine, SyncConfig(base_url=backend.url, routes=ROUTES, sync=schedule))
        try:
            gc.collect()
            start = time.perf_counter()
            result = runner(sync.push)
            elapsed = time.perf_counter() - start
            left = sync.queue_depth()
        finally:
            sync.stop()
    finally:
        engine.dispose()
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink(missing_ok=True)
    n = len(bodies)
    if result.pushed != n or result.failed or result.dead_lettered or left:
        raise BenchmarkError(
            f"{variant}: pushed {result.pushed} of {n} (failed {result.failed}, "
            f"dead-lettered {result.dead_lettered}, {left} left in the outbox)"
        )
    backend.check_holds(bodies, variant)
    return elapsed


# -- scenarios and goals -------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """sqla_sync at ``concurrency`` takes at most ``limit`` times the bare loop's time."""

    concurrency: int
    limit: float


@dataclass(frozen=True)
class Scenario:
    label: str
    rows: int
    delay_ms: float
    goals: tuple[Goal, ...]

    def title(self, rows: int) -> str:
        latency = f" +{self.delay_ms:g} ms" if self.delay_ms else ""
        return f"push {self.label}) {rows} creates{latency}"


SCENARIOS = (
    Scenario("a", 5_000, 0.0, (Goal(1, 1.25),)),
    Scenario("b", 1_000, 5.0, (Goal(1, 1.10), Goal(8, 0.30))),
)


@dataclass(frozen=True)
class Variant:
    """``bare`` (concurrency 0) or sqla_sync at a concurrency and batch size."""

    concurrency: int = 0
    batch_size: int = 0

    @property
    def name(self) -> str:
        if not self.concurrency:
            return "bare"
        return f"sqla_sync c={self.concurrency} batch={self.batch_size}"


def run_scenario(
    scenario: Scenario,
    scale: int,
    batch_sizes: Sequence[int],
    directory: Path,
    *,
    reps: int,
    verbose: bool,
) -> list[tuple[Goal, int, float]]:
    """Time every variant ``reps`` times, taking turns; print ratios, return (goal, B, ratio)."""
    rows = scenario.rows // scale
    bodies = make_bodies(rows)
    bare = Variant()
    variants = [bare] + [Variant(g.concurrency, b) for b in batch_sizes for g in scenario.goals]
    times: dict[Variant, list[float]] = {v: [] for v in variants}
    with Backend(scenario.delay_ms) as backend:
        for rep in range(reps):
            # Take turns, and rotate who goes first, so drift hits all alike.
            shift = rep % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                if variant == bare:
                    elapsed = run_bare(backend, bodies)
                else:
                    elapsed = run_sqla_sync(backend, bodies, directory,
                                            batch_size=variant.batch_size,
                                            concurrency=variant.concurrency)
                times[variant].append(elapsed)
                if verbose:
                    print(f"  {scenario.label}) run {rep + 1} {variant.name}: {elapsed:.2f} s",
                          flush=True)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    outcomes = []
    for variant in variants[1:]:
        ratio = med[variant] / med[bare]
        batch = f" batch={variant.batch_size}" if len(batch_sizes) > 1 else ""
        print(
            f"{scenario.title(rows)} c={variant.concurrency}{batch}: "
            f"sqla_sync/bare = {ratio:.2f}x (bare {med[bare]:.2f} s, "
            f"sqla_sync {med[variant]:.2f} s)",
            flush=True,
        )
        goal = next(g for g in scenario.goals if g.concurrency == variant.concurrency)
        outcomes.append((goal, variant.batch_size, ratio))
    return outcomes


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def benchmark(quick: bool, batch_sizes: Sequence[int], reps: int, verbose: bool) -> bool:
    scale = 10 if quick else 1
    print(f"push: push_batch_size {', '.join(map(str, batch_sizes))}, median of {reps} runs"
          f"{', quick (1/10 sizes)' if quick else ''}; load average {_load()}", flush=True)
    verdicts: list[str] = []
    passed = True
    with tempfile.TemporaryDirectory(prefix="sqla_sync_push_") as tmp:
        for scenario in SCENARIOS:
            outcomes = run_scenario(scenario, scale, batch_sizes, Path(tmp),
                                    reps=reps, verbose=verbose)
            for goal, batch_size, ratio in outcomes:
                ok = ratio <= goal.limit
                passed &= ok
                batch = f" batch={batch_size}" if len(batch_sizes) > 1 else ""
                verdicts.append(
                    f"goal: {scenario.label}) sqla_sync c={goal.concurrency}{batch} "
                    f"<= {goal.limit:.2f}x bare serial: {ratio:.2f}x "
                    f"{'PASS' if ok else 'FAIL'}"
                )
    print(f"push: load average {_load()} at the end (the timings need a quiet machine)")
    for line in verdicts:
        print(line)
    return passed


# -- profile ---------------------------------------------------------------------


def profile(quick: bool, batch_size: int, top: int, restrict: str) -> None:
    """cProfile one sqla_sync push of scenario a) at concurrency 1.

    Prints the ``top`` functions by cumulative and by own time, over everything
    and restricted to file names matching ``restrict``.
    """
    scenario = SCENARIOS[0]
    bodies = make_bodies(scenario.rows // (10 if quick else 1))
    profiler = cProfile.Profile()
    with Backend(scenario.delay_ms) as backend, \
            tempfile.TemporaryDirectory(prefix="sqla_sync_push_prof_") as tmp:
        elapsed = run_sqla_sync(backend, bodies, Path(tmp), batch_size=batch_size,
                                concurrency=1, runner=profiler.runcall)
    print(f"profile {scenario.title(len(bodies))} c=1 batch={batch_size}: "
          f"{elapsed:.2f} s under cProfile")
    for order in ("cumulative", "tottime"):
        for pattern in (".", restrict):
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats(order).print_stats(pattern, top)
            print(f"-- by {order}, file names matching {pattern!r}")
            print(out.getvalue())


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of sizes >= 1")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1/10 of the sizes")
    parser.add_argument(
        "--batch-sizes", type=_sizes, default=[DEFAULT_BATCH_SIZE],
        help=f"push_batch_size values to compare, e.g. 10,50,100,200 "
             f"(default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--reps", type=int, default=REPS,
                        help=f"runs per variant, median reported (default {REPS})")
    parser.add_argument("--verbose", action="store_true", help="print every run's time")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one sqla_sync push of scenario a) at c=1")
    parser.add_argument("--top", type=int, default=30, help="with --profile: rows to print")
    parser.add_argument(
        "--restrict", default="sqla_sync/",
        help="with --profile: regex on file names for the restricted tables",
    )
    args = parser.parse_args(argv)
    if args.profile:
        profile(args.quick, args.batch_sizes[0], args.top, args.restrict)
        return 0
    return 0 if benchmark(args.quick, args.batch_sizes, max(1, args.reps), args.verbose) else 1


if __name__ == "__main__":
    raise SystemExit(main())
