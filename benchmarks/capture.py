"""What change capture costs: tracked ORM writes against untracked ones, on a SQLite file.

Three variants write the same rows through the same session setup:

* ``plain``: a model that is not :class:`~sqla_sync.Syncable`, in an untracked
  sessionmaker: the ORM alone.
* ``tracked``: a Syncable model in a sessionmaker given to :func:`sqla_sync.track`.
* ``yardstick``: the bare minimum capture this design calls for, written here:
  an ``after_flush`` listener that writes one outbox row per changed object
  (table name, key, op, JSON of the row's column values) with one Core
  executemany, no compaction, to a table of its own.

Scenarios (sizes divided by 10 with ``--quick``):

1. ``insert-1tx``: 20,000 inserts in one transaction;
2. ``insert-10per-tx``: 2,000 transactions of 10 inserts;
3. ``update-pending``: 20,000 updates, in one transaction, of rows whose inserts
   are still pending in the outbox;
4. ``update-pushed``: the same, of rows whose ops were already pushed (the
   outbox emptied before the updates).

Each variant runs on a fresh database file per repetition, the variants take
turns within one run (transaction by transaction in scenario 2), the first
variant rotates between repetitions, and the median of the repetitions is
reported.  The goal is tracked <= 1.30x plain and tracked <= yardstick in
every scenario.  ``--clock cpu`` measures process CPU time instead of wall
time, a cross-check on a busy machine; ``--clock io`` the bytes the process
hands to ``write()`` (``wchar`` of ``/proc/self/io``, Linux only), which does
not depend on the machine's load at all.

Other modes: ``--count-statements`` checks that capture adds the same number
of statements to a flush of 1, 10 or 1000 rows; ``--profile SCENARIO`` splits
the tracked variant's time (the capture listener against the whole) and
prints cProfile tables of the run and of the listener alone.

Run: ``python benchmarks/capture.py [--quick | --count-statements | --profile insert-1tx]``;
``--scenario update-pending --reps 7`` runs one scenario with more repetitions.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import io
import json
import pstats
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import sqlalchemy
from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    select,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    UOWTransaction,
    mapped_column,
    sessionmaker,
)

from sqla_sync import Syncable, create_tables, track
from sqla_sync.tables import metadata as sync_metadata
from sqla_sync.tables import outbox

GOAL_RATIO = 1.30
VARIANTS = ("plain", "tracked", "yardstick")
EPOCH = dt.datetime(2024, 1, 1, 12, 0, 0)


# -- models: the same table shape three times ---------------------------------


class Base(DeclarativeBase):
    pass


class PostColumns:
    """The columns of a typical synced model, shared by the three variants."""

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(100))
    views: Mapped[int] = mapped_column(Integer, default=0)
    published: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class TrackedPost(Syncable, PostColumns, Base):
    __tablename__ = "posts"


class PlainPost(PostColumns, Base):
    __tablename__ = "plain_posts"


class YardPost(PostColumns, Base):
    __tablename__ = "yard_posts"


Post = TrackedPost | PlainPost | YardPost
PostModel = type[TrackedPost] | type[PlainPost] | type[YardPost]

MODELS: dict[str, PostModel] = {
    "plain": PlainPost,
    "tracked": TrackedPost,
    "yardstick": YardPost,
}


# -- the yardstick: the least capture can do ---------------------------------

yard_outbox = Table(
    "yard_outbox",
    Base.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("table_name", String(64), nullable=False),
    Column("row_key", String(500), nullable=False),
    Column("op", String(8), nullable=False),
    Column("payload", Text, nullable=False),
    Column("changed_at", Float, nullable=False),
)

_YARD_KEYS: tuple[str, ...] = tuple(c.key for c in YardPost.__table__.columns)


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _yard_row(obj: Any, op: str, now: float) -> dict[str, Any]:
    d = obj.__dict__
    values = {key: d.get(key) for key in _YARD_KEYS}
    return {
        "table_name": obj.__tablename__,
        "row_key": json.dumps([values["id"]]),
        "op": op,
        "payload": json.dumps(values, default=_json_default, separators=(",", ":")),
        "changed_at": now,
    }


def yardstick_after_flush(session: Session, flush_context: UOWTransaction) -> None:
    """One outbox row per new, dirty or deleted object; one executemany; no compaction.

    ``session.dirty`` is optimistic (a set of the same value counts): a floor
    to measure against, not a complete capture.
    """
    now = time.time()
    rows = [_yard_row(obj, "insert", now) for obj in session.new]
    rows += [_yard_row(obj, "update", now) for obj in session.dirty]
    rows += [_yard_row(obj, "delete", now) for obj in session.deleted]
    if rows:
        session.connection().execute(insert(yard_outbox), rows)


# -- databases and sessions --------------------------------------------------


@contextmanager
def sqlite_file(directory: Path, name: str) -> Iterator[Engine]:
    """A fresh SQLite file with every table (default pragmas), removed afterwards."""
    path = directory / f"{name}.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    create_tables(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        path.unlink(missing_ok=True)


@contextmanager
def server_database(url: str) -> Iterator[Engine]:
    """The database at ``url`` with every table freshly created, dropped afterwards."""
    engine = create_engine(url)
    for meta in (Base.metadata, sync_metadata):
        meta.drop_all(engine)  # leftovers of an interrupted run
    Base.metadata.create_all(engine)
    create_tables(engine)
    try:
        yield engine
    finally:
        for meta in (Base.metadata, sync_metadata):
            meta.drop_all(engine)
        engine.dispose()


def make_sessionmaker(engine: Engine, variant: str) -> sessionmaker[Session]:
    """The same sessionmaker for every variant, plus that variant's capture."""
    factory = sessionmaker(engine)
    if variant == "tracked":
        track(factory)
    elif variant == "yardstick":
        event.listen(factory, "after_flush", yardstick_after_flush)
    return factory


def new_ids(n: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]


def make_post(model: PostModel, id_: str, i: int) -> Post:
    return model(
        id=id_,
        title=f"Post number {i}",
        body="Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 4,
        author=f"author{i % 50}",
        views=i,
        published=bool(i % 2),
        created_at=EPOCH,
        updated_at=EPOCH,
    )


# -- scenarios ---------------------------------------------------------------

#: A scenario prepares a database (untimed) and returns the timed steps, one
#: per transaction; the time of a variant is the sum of its steps.
Step = Callable[[], None]
Scenario = Callable[[sessionmaker[Session], str, int], list[Step]]


def insert_one_tx(factory: sessionmaker[Session], variant: str, n: int) -> list[Step]:
    model = MODELS[variant]
    ids = new_ids(n)

    def run() -> None:
        with factory.begin() as session:
            session.add_all([make_post(model, id_, i) for i, id_ in enumerate(ids)])

    return [run]


def insert_small_txs(factory: sessionmaker[Session], variant: str, n: int) -> list[Step]:
    model = MODELS[variant]
    ids = new_ids(n)
    per_tx = 10

    def transaction(start: int) -> Step:
        def run() -> None:
            with factory.begin() as session:
                session.add_all(
                    [make_post(model, ids[i], i) for i in range(start, min(start + per_tx, n))]
                )

        return run

    return [transaction(start) for start in range(0, n, per_tx)]


def _updates(clear_outbox: bool) -> Scenario:
    def scenario(factory: sessionmaker[Session], variant: str, n: int) -> list[Step]:
        model = MODELS[variant]
        ids = new_ids(n)
        with factory.begin() as session:
            session.add_all([make_post(model, id_, i) for i, id_ in enumerate(ids)])
        if clear_outbox:
            # As if pushed: the ops are done and gone.
            with factory.begin() as session:
                session.execute(delete(outbox))
                session.execute(delete(yard_outbox))
        session = factory()
        rows = cast("Sequence[Post]", session.scalars(select(model)).all())

        def run() -> None:
            for i, row in enumerate(rows):
                row.title = f"Edited post {i}"
            session.commit()
            session.close()

        return [run]

    return scenario


@dataclass(frozen=True)
class Spec:
    """A scenario, its size, and whether the variants take turns step by step.

    Interleaving suits many short transactions, whose time is mostly fsync
    and so at the mercy of whatever else the machine does; one big
    transaction runs each variant alone, so that no variant's objects are
    alive (and scanned by the garbage collector) while another one runs.
    """

    name: str
    scenario: Scenario
    rows: int
    interleave: bool = False


SCENARIOS = (
    Spec("insert-1tx", insert_one_tx, 20_000),
    Spec("insert-10per-tx", insert_small_txs, 20_000, interleave=True),
    Spec("update-pending", _updates(clear_outbox=False), 20_000),
    Spec("update-pushed", _updates(clear_outbox=True), 20_000),
)


def bytes_written() -> float:
    """Bytes this process has handed to ``write()`` so far (Linux)."""
    text = Path("/proc/self/io").read_text()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("wchar:")))


#: Wall time is what users feel; process CPU time leaves out fsync waits and
#: other processes' load, for a cross-check on a busy machine; bytes written
#: show what a commit costs the disk, the same on a busy machine as on a quiet one.
CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter, "cpu": time.process_time, "io": bytes_written,
}
UNITS = {"wall": "s", "cpu": "s CPU time", "io": "MiB written"}
SCALE = {"wall": 1.0, "cpu": 1.0, "io": 1 / 2**20}


def time_repetition(
    directory: Path, spec: Spec, order: Sequence[str], n: int, clock: Callable[[], float],
    url: str | None = None,
) -> dict[str, float]:
    """Seconds per variant for one repetition, each on a fresh database file
    (with ``url``: on freshly created tables of that server, shared by the
    variants that take turns; each variant writes tables of its own)."""
    totals = dict.fromkeys(order, 0.0)
    groups = [tuple(order)] if spec.interleave else [(variant,) for variant in order]
    for group in groups:
        with ExitStack() as stack:
            steps = {}
            shared = stack.enter_context(server_database(url)) if url else None
            for variant in group:
                engine = shared or stack.enter_context(
                    sqlite_file(directory, f"{spec.name}-{variant}"))
                steps[variant] = spec.scenario(make_sessionmaker(engine, variant), variant, n)
            gc.collect()
            for i in range(len(steps[group[0]])):
                for variant in group:
                    start = clock()
                    steps[variant][i]()
                    totals[variant] += clock() - start
    return totals


def benchmark(
    quick: bool, clock_name: str = "wall", only: Sequence[str] | None = None, reps: int = 5,
    url: str | None = None,
) -> bool:
    scale = 10 if quick else 1
    reps = 3 if quick else reps
    passed = True
    with tempfile.TemporaryDirectory(prefix="sqla_sync_bench_") as tmp:
        directory = Path(tmp)
        for spec in SCENARIOS:
            if only and spec.name not in only:
                continue
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for rep in range(reps):
                # Take turns, and rotate who goes first, so drift hits all alike.
                order = VARIANTS[rep % 3 :] + VARIANTS[: rep % 3]
                for variant, seconds in time_repetition(
                    directory, spec, order, spec.rows // scale, CLOCKS[clock_name], url
                ).items():
                    times[variant].append(seconds)
            med = {v: statistics.median(ts) for v, ts in times.items()}
            tracked = med["tracked"] / med["plain"]
            yard = med["yardstick"] / med["plain"]
            passed &= tracked <= GOAL_RATIO and med["tracked"] <= med["yardstick"]
            unit, k = UNITS[clock_name], SCALE[clock_name]
            print(
                f"capture {spec.name}: tracked/plain = {tracked:.2f}x  "
                f"yardstick/plain = {yard:.2f}x  (plain {med['plain'] * k:.3f} {unit}, "
                f"tracked {med['tracked'] * k:.3f} {unit}, yardstick "
                f"{med['yardstick'] * k:.3f} {unit}, median of {reps})",
                flush=True,
            )
    if clock_name == "io":
        print("goal: none for bytes written (the goals are about time)")
        return True
    verdict = "PASS" if passed else "FAIL"
    print(f"goal: tracked <= {GOAL_RATIO:.2f}x plain and <= yardstick in every scenario: {verdict}")
    return passed


# -- statements per flush ----------------------------------------------------


class StatementCounter:
    """Counts cursor executions (an executemany counts once) on one engine."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, *args: Any) -> None:
        self.count += 1


FLUSH_KINDS = ("insert", "update-pending", "update-pushed", "delete-pending", "delete-pushed")


def flush_statements(directory: Path, variant: str, kind: str, n: int) -> int:
    """Statements of one flush of ``n`` changes of the given kind (see FLUSH_KINDS).

    For updates and deletes the rows are inserted and committed first, and for
    the ``-pushed`` kinds the outbox is then emptied, as if pushed.
    """
    model = MODELS[variant]
    ids = new_ids(n)
    with sqlite_file(directory, f"count-{variant}") as engine:
        factory = make_sessionmaker(engine, variant)
        counter = StatementCounter(engine)
        with factory() as session:
            posts = [make_post(model, id_, i) for i, id_ in enumerate(ids)]
            session.add_all(posts)
            if kind != "insert":
                session.commit()
                if kind.endswith("-pushed"):
                    session.execute(delete(outbox))
                    session.commit()
                session.scalars(select(model)).all()  # reload the expired rows first
                for post in posts:
                    if kind.startswith("delete"):
                        session.delete(post)
                    else:
                        post.title = "edited"
                        post.views = post.views  # a no-op set: no op, no statement
            session.connection()
            before = counter.count
            session.flush()
            flushed = counter.count - before
            session.commit()
        return flushed


def count_statements() -> bool:
    ok = True
    with tempfile.TemporaryDirectory(prefix="sqla_sync_count_") as tmp:
        directory = Path(tmp)
        for kind in FLUSH_KINDS:
            extras: list[int] = []
            parts = []
            for n in (1, 10, 1000):
                plain = flush_statements(directory, "plain", kind, n)
                tracked = flush_statements(directory, "tracked", kind, n)
                extras.append(tracked - plain)
                parts.append(f"{n} rows: plain {plain}, tracked {tracked} (+{tracked - plain})")
            constant = len(set(extras)) == 1
            ok &= constant
            print(
                f"statements per flush, {kind}: " + "; ".join(parts)
                + f"  -> constant: {'PASS' if constant else 'FAIL'}"
            )
    return ok


# -- profile -----------------------------------------------------------------


class ListenerBracket:
    """Runs ``enter``/``leave`` around a variant's ``after_flush`` capture, when armed.

    Armed only while the timed steps run, so that a scenario's untimed
    preparation does not count.
    """

    def __init__(self, enter: Callable[[], object], leave: Callable[[], object]) -> None:
        self.enter = enter
        self.leave = leave
        self.armed = False

    def install(self, factory: sessionmaker[Session]) -> None:
        event.listen(factory, "after_flush", self._before, insert=True)
        event.listen(factory, "after_flush", self._after)

    def _before(self, *_: object) -> None:
        if self.armed:
            self.enter()

    def _after(self, *_: object) -> None:
        if self.armed:
            self.leave()

    def run(self, steps: Sequence[Step]) -> None:
        self.armed = True
        try:
            for step in steps:
                step()
        finally:
            self.armed = False


class Stopwatch:
    """Accumulates the time between ``start`` and ``stop`` calls."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> None:
        self.total += time.perf_counter() - self._started


def profile(name: str, variant: str, top: int, restrict: str) -> None:
    """Where a variant's time goes in one scenario: wall split, whole run, capture listener.

    Three runs on fresh files: one unprofiled, timing the ``after_flush``
    capture listener against the whole; one profiling the timed steps (rows
    restricted to ``restrict``); one profiling only inside the listener.
    The per-row mapper guards of Syncable run in the ORM path, outside the
    listener: they show in the whole-run profile.
    """
    spec = next(s for s in SCENARIOS if s.name == name)
    listener_clock = Stopwatch()
    whole_profiler = cProfile.Profile()
    listener_profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="sqla_sync_prof_") as tmp:
        with sqlite_file(Path(tmp), "wall") as engine:
            factory = make_sessionmaker(engine, variant)
            timed = ListenerBracket(listener_clock.start, listener_clock.stop)
            timed.install(factory)
            steps = spec.scenario(factory, variant, spec.rows)
            gc.collect()
            start = time.perf_counter()
            timed.run(steps)
            total = time.perf_counter() - start
        with sqlite_file(Path(tmp), "whole") as engine:
            for step in spec.scenario(make_sessionmaker(engine, variant), variant, spec.rows):
                whole_profiler.runcall(step)
        with sqlite_file(Path(tmp), "listener") as engine:
            factory = make_sessionmaker(engine, variant)
            profiled = ListenerBracket(listener_profiler.enable, listener_profiler.disable)
            profiled.install(factory)
            profiled.run(spec.scenario(factory, variant, spec.rows))
    in_listener = listener_clock.total
    print(
        f"profile {name} {variant}, unprofiled: {total:.3f} s, of which the after_flush "
        f"capture listener {in_listener:.3f} s ({in_listener / total:.0%})"
    )
    for title, profiler, pattern in (
        (f"timed steps, rows matching {restrict!r}", whole_profiler, restrict),
        ("inside the after_flush capture listener", listener_profiler, "."),
    ):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        total_tt: float = stats.total_tt  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(pattern, top)
        body = out.getvalue().replace(_SITE, "")
        print(f"\n== {title} (profiled total {total_tt:.3f} s) ==\n{body}")


_SITE = str(Path(sqlalchemy.__file__).parent.parent) + "/"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1/10 of the sizes, 3 repetitions")
    parser.add_argument(
        "--count-statements", action="store_true", help="check the statements added per flush"
    )
    parser.add_argument(
        "--profile", choices=[s.name for s in SCENARIOS], help="cProfile one scenario"
    )
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall",
        help="wall time, process CPU time or bytes written",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[s.name for s in SCENARIOS],
        help="run only this scenario (repeatable; default: all four)",
    )
    parser.add_argument("--reps", type=int, default=5, help="repetitions (median reported)")
    parser.add_argument(
        "--url",
        help="run on this database server instead of SQLite files; give it a database of "
        "its own: the benchmark's tables are dropped and created there, e.g. "
        "postgresql+psycopg://postgres@127.0.0.1:5432/bench",
    )
    parser.add_argument("--variant", choices=VARIANTS, default="tracked", help="with --profile")
    parser.add_argument("--top", type=int, default=25, help="with --profile: rows to print")
    parser.add_argument(
        "--restrict",
        default="sqla_sync/",
        help="with --profile: regex on file names; '.' for everything",
    )
    args = parser.parse_args(argv)
    if args.profile:
        profile(args.profile, args.variant, args.top, args.restrict)
        return 0
    if args.count_statements:
        return 0 if count_statements() else 1
    return 0 if benchmark(args.quick, args.clock, args.scenario, args.reps, args.url) else 1


if __name__ == "__main__":
    raise SystemExit(main())
