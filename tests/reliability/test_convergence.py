"""Convergence: random interleavings of local edits, server edits, syncs and faults.

A hypothesis state machine edits rows locally (insert, update, delete through
a tracked session, sometimes several in one transaction), edits them on the
server as another client would (``seed``, ``admin_patch``, ``admin_delete``),
syncs, pushes or pulls alone, switches seeded random faults on and off and
rotates the server's token.  At the end the faults are cleared and the engine
syncs until its queue is empty (a final fault-free sync, maybe two); then,
under each conflict policy (server-wins, client-wins, lww; client-wins also
against a server that deletes for good and keeps a deletions feed):

* both sides are equal: every local row is the server's live row, with the same
  values, version and updatedAt, and every live server row is local;
* the outbox holds only dead letters (``queue_depth() == 0``), and each dead
  letter is a refusal the server really gave (a 4xx), never a transient fault
  that ran out of retries;
* no lost change: a row only ever written locally ends, on both sides, with the
  user's last write (a value, or deleted).

The bugs this machine found (each isolated in a deterministic test at the end
of this module or in test_faults.py) are fixed; their signatures are still
recognised and counted, so that a failure names the bug that came back.  Bug 1: a change lost on a row whose push answer was lost.  Bug 2: a
kept local edit of a tombstoned row refused with 409.  Bug 4: an update that met
a 404 holding the row's later ops back.  Bug 6: a kept op answered from the
server's idempotency cache.  Bug 7: a re-created row hidden by the stale shadow
of a kept delete.  Bug 8: a second insert left by a rebase onto a deleted row.

Runs are reproducible: the hypothesis seed is fixed (``SEED``, printed on
failure, ``SQLA_SYNC_RELIABILITY_SEED=N`` to choose another), the example
database is off and ``print_blob`` prints a ``@reproduce_failure`` blob.  The
fast profile runs a modest number of examples; ``SQLA_SYNC_RELIABILITY_LONG=1``
runs many more and longer ones; ``SQLA_SYNC_RELIABILITY_EXAMPLES=N`` overrides.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from examples.server.run import BackendServer
from sqla_sync import (
    Auth,
    AuthFailure,
    Conflict,
    Conflicts,
    Cursor,
    Errors,
    Offset,
    Pull,
    Push,
    Request,
    Routes,
    Schedule,
    SyncConfig,
    SyncEngine,
    SyncError,
    create_tables,
    define_routes,
    start_sync,
    track,
    untrack,
)
from sqla_sync.outbox import ops_for_row, pending_ops
from tests.conftest import FakeClock
from tests.models import Article, Base

pytestmark = pytest.mark.reliability

LONG = os.environ.get("SQLA_SYNC_RELIABILITY_LONG", "") == "1"
SEED = int(os.environ.get("SQLA_SYNC_RELIABILITY_SEED") or 20_240_601)
EXAMPLES = int(os.environ.get("SQLA_SYNC_RELIABILITY_EXAMPLES") or (300 if LONG else 25))
STEPS = 60 if LONG else 30

READ_TIMEOUT = 2.0
#: Faults the machine may switch on.  Those after the work (drop_after_commit,
#: malformed, truncated, wrong_type) leave the server changed while the client saw
#: a failure.  Timeouts are left to the fault soup: a request the client gave up
#: on still runs on the server later, at a moment that depends on the scheduler,
#: and an example must replay step for step to shrink.
FAULT_ACTIONS = [
    "status:500", "status:503", "status:429:1", "drop_before", "drop_after_commit",
    "malformed", "truncated", "wrong_type",
]
AFTER_WORK = ("drop_after_commit", "malformed", "truncated", "wrong_type", "delay")
MAX_RETRIES = 40
PICK = st.integers(0, 2**16)
FIELDS = st.sampled_from(["title", "body", "both"])
#: One local edit: (kind, which row, which field, set the body to None).
Edit = tuple[str, int, str, bool]
EDITS = st.tuples(st.sampled_from(["insert", "update", "update", "delete"]), PICK, FIELDS,
                  st.booleans())
SHRINK = LONG or os.environ.get("SQLA_SYNC_RELIABILITY_SHRINK", "") == "1"


def fast_sqlite(path: Path) -> Engine:
    """A SQLite file engine without fsync per commit (the runs are throwaway)."""
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.close()

    return engine


def routes(tombstones: bool = True) -> Any:
    """Articles on /api/posts; server deletes arrive as tombstones or, on a server
    that deletes for good, through its deletions feed."""
    deletions = None if tombstones else Pull(
        "GET", "/api/posts/deleted", map_response=lambda b: b["data"],
        cursor=Cursor(field="deletedAt", param="since"))
    return define_routes({"articles": Routes(
        fields={"updated_at": "updatedAt"},
        push=Push(create=Request("POST", "/api/posts"),
                  update=Request("PUT", "/api/posts/{id}"),
                  delete=Request("DELETE", "/api/posts/{id}")),
        pull=Pull("GET", "/api/posts", map_response=lambda b: b["data"],
                  cursor=Cursor(field="updatedAt", param="updated_after"),
                  paginate=Offset(), deleted=lambda row: row.get("deleted", False)),
        deletions=deletions,
    )})


class TokenBox:
    """A shared token variable, renewed from the server when a 401 says it expired."""

    def __init__(self, server: BackendServer) -> None:
        self.server = server
        self.token = server.store.token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def refresh(self, failure: AuthFailure) -> None:
        self.token = self.server.store.token


Row = tuple[Any, ...]


class ConvergenceMachine(RuleBasedStateMachine):
    """One local database and engine against the shared backend (reset per example)."""

    server: ClassVar[BackendServer]
    policy: ClassVar[str]
    tombstones: ClassVar[bool]
    stats: ClassVar[dict[str, Any]]

    def __init__(self) -> None:
        super().__init__()
        server = self.server
        server.reset()
        server.store.set_token("tok-0")
        self.tmp = tempfile.TemporaryDirectory(prefix="sqla-sync-convergence-")
        self.db = fast_sqlite(Path(self.tmp.name) / "local.db")
        Base.metadata.create_all(self.db)
        create_tables(self.db)
        self.maker: sessionmaker[Session] = track(sessionmaker(self.db, expire_on_commit=False))
        self.clock = FakeClock()
        self.box = TokenBox(server)
        self.sync: SyncEngine = start_sync(self.db, SyncConfig(
            base_url=server.url, routes=routes(self.tombstones),
            auth=Auth(get_headers=self.box.headers, on_auth_error=self.box.refresh),
            sync=Schedule(interval=0, on_commit=False, push_batch_size=5,
                          push_concurrency=1, pull_page_size=4, pull_max_pages=50),
            conflicts=Conflicts(policy=self.policy),  # type: ignore[arg-type]
            errors=Errors(max_retries=MAX_RETRIES,
                          retry_delay=lambda attempt: min(2.0 ** attempt, 60.0)),
            timeout=(2.0, READ_TIMEOUT), clock=self.clock, seed=0))
        self.conflicts: list[Conflict] = []
        self.sync.on("conflict", self.conflicts.append)
        self.n = 0
        self.tokens = 0
        self.faulty = False
        # Every id ever used, and the ids the server side ever wrote on its own.
        self.ids: list[str] = []
        self.server_touched: set[str] = set()
        # The user's last write per id: (title, body) or None (deleted).
        self.intended: dict[str, tuple[str, str | None] | None] = {}
        self.closed = False
        type(self).stats["examples"] += 1

    # -- helpers ----------------------------------------------------------------

    def _value(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def local_ids(self) -> list[str]:
        with self.db.connect() as conn:
            return sorted(conn.execute(select(Article.id)).scalars())

    def server_live(self) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in self.server.store.rows("posts") if not r["deleted"]}

    def _round(self) -> None:
        try:
            self.sync.sync()
        except SyncError:
            try:
                self.sync.push()
            except SyncError:
                pass
        if self.sync.get_status().auth_required:
            self.sync.resume()

    # -- local edits ----------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        """Some rows both sides know before the edits start."""
        with self.maker() as s:
            for _ in range(2):
                row_id = self._value("k")
                s.add(Article(id=row_id, title=f"t-{row_id}", body=None))
                self.ids.append(row_id)
                self.intended[row_id] = (f"t-{row_id}", None)
            s.commit()
        self._round()

    # Every rule draws all its arguments up front, whatever the state: the shape of
    # the draws never depends on the database or the server, so a failing example
    # replays (and shrinks) draw for draw.  ``pick`` chooses among the rows there are.

    def _local_write(self, s: Session, edit: Edit) -> None:
        kind, pick, field, null = edit
        existing = sorted(s.execute(select(Article.id)).scalars())
        if kind == "insert" or not existing:
            row_id = self._value("k")
            title, body = f"L{self.n}", None if null else f"lb{self.n}"
            s.add(Article(id=row_id, title=title, body=body))
            self.ids.append(row_id)
            self.intended[row_id] = (title, body)
            return
        row_id = existing[pick % len(existing)]
        article = s.get(Article, row_id)
        assert article is not None
        if kind == "delete":
            s.delete(article)
            self.intended[row_id] = None
            return
        value = self._value("L")
        if field in ("title", "both"):
            article.title = value
        if field in ("body", "both"):
            article.body = None if null else value
        self.intended[row_id] = (article.title, article.body)

    @rule(edit=EDITS)
    def local_edit(self, edit: Edit) -> None:
        with self.maker() as s:
            self._local_write(s, edit)
            s.commit()

    @rule(edits=st.lists(EDITS, min_size=2, max_size=4))
    def local_transaction(self, edits: list[Edit]) -> None:
        """Several edits in one transaction (compaction folds them per row)."""
        with self.maker() as s:
            for edit in edits:
                self._local_write(s, edit)
                s.flush()
            s.commit()

    # -- server edits (another client) ------------------------------------------

    @rule(reuse=st.booleans(), pick=PICK)
    def server_seed(self, reuse: bool, pick: int) -> None:
        """Another client creates a row: a new id, or one created here but not pushed yet."""
        known = {r["id"] for r in self.server.store.rows("posts")}
        local_only = [i for i in self.local_ids() if i not in known]
        if reuse and local_only:
            row_id = local_only[pick % len(local_only)]
        else:
            row_id = self._value("s")
            self.ids.append(row_id)
        self.server.store.seed("posts", [{"id": row_id, "title": self._value("S"),
                                          "body": None}])
        self.server_touched.add(row_id)

    @rule(pick=PICK, field=FIELDS)
    def server_patch(self, pick: int, field: str) -> None:
        live = sorted(self.server_live())
        if not live:
            return
        row_id = live[pick % len(live)]
        value = self._value("S")
        fields = {"title": value} if field == "title" else (
            {"body": value} if field == "body" else {"title": value, "body": value})
        self.server.store.admin_patch("posts", row_id, fields)
        self.server_touched.add(row_id)

    @rule(pick=PICK)
    def server_delete(self, pick: int) -> None:
        live = sorted(self.server_live())
        if not live:
            return
        row_id = live[pick % len(live)]
        self.server.store.admin_delete("posts", row_id)
        self.server_touched.add(row_id)

    # -- syncing ----------------------------------------------------------------------

    @rule(advance=st.sampled_from([0.0, 1.0, 65.0]))
    def sync_round(self, advance: float) -> None:
        self.clock.advance(advance)
        self._round()

    @rule()
    def push_only(self) -> None:
        self.clock.advance(65.0)
        try:
            if self.sync.push().auth_required:
                self.sync.resume()
        except SyncError:
            pass

    @rule()
    def pull_only(self) -> None:
        try:
            self.sync.pull()
        except SyncError:
            pass

    # -- faults -----------------------------------------------------------------------

    @precondition(lambda self: not self.faulty)
    @rule(fault_seed=st.integers(0, 2**16), rate=st.sampled_from([0.2, 0.5]),
          actions=st.lists(st.sampled_from(FAULT_ACTIONS), min_size=1, max_size=4,
                           unique=True))
    def faults_on(self, fault_seed: int, rate: float, actions: list[str]) -> None:
        self.faulty = True
        self.server.faults.set_rules([{"random": {"seed": fault_seed, "rate": rate,
                                                  "actions": actions}}])
        type(self).stats["fault_phases"] += 1

    @precondition(lambda self: self.faulty)
    @rule()
    def faults_off(self) -> None:
        self.faulty = False
        type(self).stats["faults"] += len(self.server.faults.injected())
        self.server.faults.clear()

    @rule()
    def rotate_token(self) -> None:
        self.tokens += 1
        self.server.store.set_token(f"tok-{self.tokens}")

    # -- the end -------------------------------------------------------------------

    def settle(self) -> None:
        """Faults off, then sync until nothing is pending (a final fault-free sync, maybe two)."""
        type(self).stats["faults"] += len(self.server.faults.injected())
        self.server.faults.clear()
        for _ in range(3):
            self.clock.advance(10_000.0)
            self._round()
            if self.sync.queue_depth() == 0:
                break
        self._round()

    def local_rows(self) -> dict[str, Row]:
        with self.db.connect() as conn:
            rows = conn.execute(select(Article.id, Article.title, Article.body,
                                       Article.version, Article.updated_at))
            return {r[0]: tuple(r[1:]) for r in rows}

    def lost_answer_rows(self) -> set[str]:
        """Rows a push of which met a fault after the server did the work (the server
        changed, the client saw a failure): the rows bug 1 (see test_faults.py,
        test_a_lost_answer_never_loses_the_next_change) can lose a change on."""
        rows: set[str] = set()
        for entry in self.server.store.requests():
            fault = entry.get("fault") or ""
            if entry["method"] == "GET" or not fault.startswith(AFTER_WORK):
                continue
            body = entry.get("body")
            row_id = entry.get("id") or (body.get("id") if isinstance(body, dict) else None)
            if row_id is not None:
                rows.add(str(row_id))
        return rows

    def kept_server_deletes(self) -> dict[str, tuple[str, int]]:
        """Rows the server deleted that the policy kept locally and that are stuck:
        row id -> (the known bug, its pending ops).

        Bug 2: the re-create of a tombstoned row is refused with 409 (retried until
        it is a dead letter).  Bug 4: an update pushed before the pull saw the
        delete got a 404 and became a dead letter that holds back the row's later
        ops forever, or that leaves the local row behind once the pull has already
        passed the delete.
        """
        live = set(self.server_live())
        local = self.local_rows()
        found: dict[str, tuple[str, int]] = {}
        with self.db.connect() as conn:
            for row_id in sorted(set(self.ids) - live):
                if row_id not in self.server_touched:
                    continue
                ops = ops_for_row(conn, "articles", json.dumps([row_id]))
                statuses = {json.loads(op.last_error).get("status")
                            for op in ops if op.last_error}
                pending = sum(1 for op in ops if op.status == "pending")
                if 409 in statuses:
                    found[row_id] = ("bug 2", pending)
                elif (pending or row_id in local) and 404 in statuses and any(
                        op.status == "dead" and op.op == "update" for op in ops):
                    found[row_id] = ("bug 4", pending)
        return found

    def replayed_after_kept_conflict(self) -> set[str]:
        """Rows whose conflict the policy settled for the local side and whose op was
        then answered from the server's Idempotency-Key cache (bug 6)."""
        kept = {str(c.key) for c in self.conflicts if c.resolution in ("local", "merged")}
        rows: set[str] = set()
        for entry in self.server.store.requests():
            body = entry.get("body")
            row_id = entry.get("id") or (body.get("id") if isinstance(body, dict) else None)
            if entry.get("replayed") and row_id is not None and str(row_id) in kept:
                rows.add(str(row_id))
        return rows

    def refused_inserts_on_live_rows(self, local: dict[str, Row]) -> dict[str, str]:
        """Live rows that differ locally and have an insert the server refused with 409.

        Bug 8 when both sides hold the same values: a rebase turned several pending
        ops of the row into inserts; the first re-created the row, the next one meets
        409 (and the pending insert keeps the answer from being written back).
        Bug 7 otherwise: the row was deleted and re-created by another client after
        the policy kept the local side of the delete, and a stale shadow hid it.
        """
        live = self.server_live()
        rows: dict[str, str] = {}
        with self.db.connect() as conn:
            for row_id in sorted(set(live) & set(local)):
                ops = ops_for_row(conn, "articles", json.dumps([row_id]))
                if any(op.op == "insert" and op.last_error
                       and json.loads(op.last_error).get("status") == 409 for op in ops):
                    same = local[row_id][:2] == (live[row_id]["title"], live[row_id]["body"])
                    rows[row_id] = "bug 8" if same else "bug 7"
        return rows

    def known_bugs(self, local: dict[str, Row]) -> dict[str, str]:
        """Rows whose divergence has the signature of a known bug: row id -> bug."""
        known = {row_id: bug for row_id, (bug, _) in self.kept_server_deletes().items()}
        for row_id, bug in self.refused_inserts_on_live_rows(local).items():
            known.setdefault(row_id, bug)
        known.update(dict.fromkeys(self.replayed_after_kept_conflict() - set(known),
                                   "bug 6"))
        return known

    def problems(self) -> tuple[list[str], list[str]]:
        """(violations, changes lost on rows whose push answer was lost)."""
        found: list[str] = []
        lost_answer: list[str] = []
        stats = type(self).stats
        server = self.server_live()
        remote = {i: (r["title"], r["body"], r["version"], r["updatedAt"])
                  for i, r in server.items()}
        local = self.local_rows()
        known = self.known_bugs(local)
        for row_id in sorted(set(local) | set(remote)):
            if local.get(row_id) == remote.get(row_id):
                continue
            bug = known.get(row_id)
            if bug is not None:
                # A known bug (isolated in its own test): counted, not failed, so that
                # the machine keeps looking for others.
                stats[bug] += 1
                stats.setdefault(f"{bug} example", f"{row_id}: local {local.get(row_id)}, "
                                                   f"server {remote.get(row_id)}")
                continue
            found.append(f"divergence on {row_id}: local {local.get(row_id)} != "
                         f"server {remote.get(row_id)}")
        with self.db.connect() as conn:
            pending = [op for op in pending_ops(conn) if json.loads(op.row_key)[0] not in known]
        if pending:
            found.append(f"{len(pending)} op(s) still pending after the final syncs: "
                         + ", ".join(f"{op.op} {op.row_key} ({op.last_error})"
                                     for op in pending[:5]))
        for letter in self.sync.dead_letters():
            stats["dead_letters"] += 1
            if letter.status is None or not 400 <= letter.status < 500:
                found.append(f"dead letter {letter.op} {letter.row_key} without a 4xx "
                             f"refusal: {letter.status} {letter.error[:200]}")
        ambiguous = self.lost_answer_rows()
        for row_id, want in self.intended.items():
            if row_id in self.server_touched:
                continue
            got = server.get(row_id)
            got_values = None if got is None else (got["title"], got["body"])
            if got_values != want:
                text = (f"lost change on {row_id} (never written by the server): "
                        f"the user's last write {want}, the server has {got_values}")
                (lost_answer if row_id in ambiguous else found).append(text)
        return found, lost_answer

    def teardown(self) -> None:
        try:
            self.settle()
            problems, lost_answer = self.problems()
            stats = type(self).stats
            stats["conflicts"] += len(self.conflicts)
            stats["lost_after_lost_answer"] += len(lost_answer)
            if lost_answer and not stats.get("lost_example"):
                stats["lost_example"] = lost_answer[0]
            assert not problems, "\n".join(problems)
        finally:
            self.sync.stop()
            untrack(self.maker)
            self.db.dispose()
            self.tmp.cleanup()


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[bool, BackendServer]]:
    """One backend per delete mode (tombstones or hard deletes), reset per example."""
    servers: dict[bool, BackendServer] = {}
    try:
        for tombstones in (True, False):
            servers[tombstones] = BackendServer(tombstones=tombstones)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


CONFIGS = [
    pytest.param("server-wins", True, id="server-wins"),
    pytest.param("client-wins", True, id="client-wins"),
    pytest.param("lww", True, id="lww"),
    pytest.param("client-wins", False, id="client-wins-hard-deletes"),
]


@pytest.mark.parametrize(("policy", "tombstones"), CONFIGS)
def test_both_sides_converge(backends: dict[bool, BackendServer], policy: str,
                             tombstones: bool) -> None:
    name = policy + ("" if tombstones else "-hard-deletes")
    stats: dict[str, Any] = {"examples": 0, "fault_phases": 0, "faults": 0, "conflicts": 0,
                             "dead_letters": 0, "lost_after_lost_answer": 0,
                             "bug 2": 0, "bug 4": 0, "bug 6": 0, "bug 7": 0, "bug 8": 0}
    machine = type(f"Convergence_{name.replace('-', '_')}", (ConvergenceMachine,),
                   {"server": backends[tombstones], "policy": policy,
                    "tombstones": tombstones, "stats": stats})
    config = settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
        print_blob=True, derandomize=False,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, *([Phase.shrink] if SHRINK else [])],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    started = time.monotonic()
    try:
        run_state_machine_as_test(seed(SEED)(machine), settings=config)
    except BaseException:
        print(f"convergence[{name}] failed; replay: SQLA_SYNC_RELIABILITY_SEED={SEED} "
              f"SQLA_SYNC_RELIABILITY_EXAMPLES={EXAMPLES} pytest "
              f"'tests/reliability/test_convergence.py::test_both_sides_converge[{name}]'")
        raise
    finally:
        print(f"convergence[{name}]: seed={SEED} {stats} "
              f"seconds={time.monotonic() - started:.1f}")
    known = []
    if stats["lost_after_lost_answer"]:
        known.append(
            f"bug 1: {stats['lost_after_lost_answer']} change(s) lost on rows whose push "
            f"answer was lost (test_faults.py::test_a_lost_answer_never_loses_the_next_"
            f"change), e.g. {stats['lost_example']}")
    if stats["bug 2"]:
        known.append(
            f"bug 2: {stats['bug 2']} row(s) deleted on the server and kept locally by "
            f"{policy} never converge: the server refuses the re-create with 409 "
            f"(test_a_kept_local_edit_of_a_server_deleted_row_converges), "
            f"e.g. {stats['bug 2 example']}")
    if stats["bug 4"]:
        known.append(
            f"bug 4: {stats['bug 4']} row(s) whose update met a 404 (deleted on the server "
            f"since the last pull) became dead letters that hold back the row's later ops "
            f"(test_an_update_of_a_row_deleted_on_the_server_goes_to_the_policy), "
            f"e.g. {stats['bug 4 example']}")
    if stats["bug 6"]:
        known.append(
            f"bug 6: {stats['bug 6']} row(s) diverged because an op the policy kept was "
            f"answered from the idempotency cache (test_a_kept_local_op_is_not_answered_"
            f"from_the_idempotency_cache), e.g. {stats['bug 6 example']}")
    if stats["bug 7"]:
        known.append(
            f"bug 7: {stats['bug 7']} row(s) re-created on the server after the policy kept "
            f"the local side of its delete were hidden by a stale shadow and refused with "
            f"409 (test_a_row_re_created_after_a_kept_delete_is_seen), "
            f"e.g. {stats['bug 7 example']}")
    if stats["bug 8"]:
        known.append(
            f"bug 8: {stats['bug 8']} row(s) kept a second insert, refused with 409, after "
            f"a rebase turned every pending op of the row into an insert "
            f"(test_a_rebase_onto_a_deleted_row_makes_one_insert), "
            f"e.g. {stats['bug 8 example']}")
    # Every signature above is a fixed bug come back.
    assert not known, "; ".join(known)


# -- the known bugs, each isolated in a deterministic case ----------------------------


class Pair:
    """One local database and one backend holding one synced row "p"."""

    def __init__(self, tmp: Path, policy: str, *, tombstones: bool = True,
                 max_retries: int = 3) -> None:
        self.server = BackendServer(tombstones=tombstones)
        self.db = fast_sqlite(tmp / "local.db")
        Base.metadata.create_all(self.db)
        create_tables(self.db)
        self.maker: sessionmaker[Session] = track(sessionmaker(self.db, expire_on_commit=False))
        self.clock = FakeClock()
        self.sync = start_sync(self.db, SyncConfig(
            base_url=self.server.url, routes=routes(tombstones), clock=self.clock, seed=1,
            conflicts=Conflicts(policy=policy),  # type: ignore[arg-type]
            errors=Errors(max_retries=max_retries)))
        self.conflicts: list[Conflict] = []
        self.sync.on("conflict", self.conflicts.append)
        with self.maker() as s:
            s.add(Article(id="p", title="v1"))
            s.commit()
        self.sync.sync()

    def edit(self, title: str) -> None:
        with self.maker() as s:
            article = s.get(Article, "p")
            assert article is not None
            article.title = title
            s.commit()

    def settle(self, rounds: int = 6) -> None:
        for _ in range(rounds):
            self.clock.advance(3600.0)
            self.sync.sync()

    def local(self) -> str | None:
        with self.maker() as s:
            article = s.get(Article, "p")
            return None if article is None else article.title

    def remote(self) -> str | None:
        live = {r["id"]: r["title"] for r in self.server.store.rows("posts") if not r["deleted"]}
        return live.get("p")

    def state(self) -> str:
        letters = [(d.op, d.status) for d in self.sync.dead_letters()]
        pushes = [(r["method"], r["status"]) for r in self.server.store.requests()
                  if r["method"] != "GET"]
        return (f"local {self.local()!r}, server {self.remote()!r}, pending "
                f"{self.sync.queue_depth()}, dead letters {letters}, pushes {pushes}")

    def close(self) -> None:
        self.sync.stop()
        untrack(self.maker)
        self.server.stop()
        self.db.dispose()


def test_a_kept_local_edit_of_a_server_deleted_row_converges(tmp_path: Path) -> None:
    """Bug 2.  client-wins keeps a local edit of a row the server tombstoned: the op
    is rebased to an insert, the server refuses the re-create of a tombstoned id
    with 409, the conflict answer (no row in its body) is retried like a transient
    error until max_retries makes it a dead letter, and the sides stay apart
    (local row kept, server tombstone) for good."""
    pair = Pair(tmp_path, "client-wins")
    try:
        pair.server.store.admin_delete("posts", "p")
        pair.edit("v2")
        pair.settle()
        assert pair.local() == pair.remote() and pair.sync.queue_depth() == 0, pair.state()
    finally:
        pair.close()


def test_lww_weighs_a_server_delete_by_its_time(tmp_path: Path) -> None:
    """Bug 3.  Under lww a local edit made after the server deleted the row must
    win; the tombstone carries its updatedAt (the time of the delete), but the
    library reads no time from a tombstone and lets every server delete win."""
    pair = Pair(tmp_path, "lww", tombstones=False)  # hard deletes: a re-create works
    try:
        pair.server.store.admin_delete("posts", "p")
        time.sleep(0.05)
        pair.edit("v2")  # the local change time (time.time) is after the delete
        pair.settle(2)
        resolutions = [c.resolution for c in pair.conflicts]
        assert resolutions == ["local"], f"resolutions {resolutions}; {pair.state()}"
    finally:
        pair.close()


@pytest.mark.parametrize(("policy", "tombstones"), [("client-wins", False),
                                                    ("server-wins", True)])
def test_an_update_of_a_row_deleted_on_the_server_goes_to_the_policy(
        tmp_path: Path, policy: str, tombstones: bool) -> None:
    """Bug 4.  The server deletes a row; the user edits it and a push runs before
    any pull (the on_commit trigger pushes without pulling): PUT answers 404.
    The op becomes a dead letter at once ("other 4xx") instead of a conflict with
    a deleted remote.  Under client-wins every later edit of the row waits behind
    that dead letter forever (the queue never drains, the sides never meet);
    under server-wins the row converges but a dead letter for a row that no longer
    exists stays behind (health stays degraded)."""
    pair = Pair(tmp_path, policy, tombstones=tombstones)
    try:
        pair.server.store.admin_delete("posts", "p")
        pair.edit("v2")
        result = pair.sync.push()
        assert (result.conflicts, result.dead_lettered) == (1, 0), pair.state()
        if policy == "client-wins":
            pair.edit("v3")  # the kept row is created again, then updated
        else:
            assert pair.local() is None  # the 404 settled it: the server's delete stands
        pair.settle()
        want = "v3" if policy == "client-wins" else None
        assert (pair.local(), pair.remote()) == (want, want), pair.state()
        assert pair.sync.queue_depth() == 0 and pair.sync.dead_letters() == [], pair.state()
    finally:
        pair.close()


def test_a_row_deleted_locally_and_on_the_server_is_no_conflict(tmp_path: Path) -> None:
    """Bug 5 (minor).  A synced row deleted locally and on the server is reported
    as a conflict (local None, remote None) because the both-sides-deleted
    shortcut only applies to rows without a shadow; the event and the metric
    count a conflict that is none, and client-wins sends a pointless DELETE."""
    pair = Pair(tmp_path, "client-wins")
    try:
        pair.server.store.admin_delete("posts", "p")
        with pair.maker() as s:
            article = s.get(Article, "p")
            assert article is not None
            s.delete(article)
            s.commit()
        pair.settle(2)
        assert (pair.local(), pair.remote(), pair.sync.queue_depth()) == (None, None, 0)
        assert pair.conflicts == [], (
            f"{[(c.local, c.remote, c.resolution) for c in pair.conflicts]}; {pair.state()}")
    finally:
        pair.close()


def test_a_kept_local_op_is_not_answered_from_the_idempotency_cache(tmp_path: Path) -> None:
    """Bug 6.  A PUT reaches the server but its answer is lost; another client then
    edits the row; the pull meets the pending op as a conflict and client-wins
    keeps it.  The kept op goes out again with its old Idempotency-Key, so the
    server answers from its idempotency cache (``Idempotent-Replayed``) without
    applying it; the library writes the stale answer back and drops the op.  The
    local side keeps its value and an older version, the server keeps the other
    client's value: they never meet again, and nothing says so."""
    pair = Pair(tmp_path, "client-wins")
    try:
        pair.edit("v2")
        pair.server.faults.add(method="PUT", path="/api/posts/p", action="malformed")
        assert pair.sync.push().failed == 1  # the server has v2; the answer was garbage
        pair.server.store.admin_patch("posts", "p", {"title": "server"})
        pair.settle(3)
        replays = [r["replayed"] for r in pair.server.store.requests("PUT")]
        assert [c.resolution for c in pair.conflicts] == ["local"]
        assert pair.local() == pair.remote() == "v2", f"{pair.state()}; PUT replayed {replays}"
    finally:
        pair.close()


def test_a_row_re_created_after_a_kept_delete_is_seen(tmp_path: Path) -> None:
    """Bug 7.  On a server that deletes for good, another client deletes "p" and then
    creates "p" again (version 1 again); meanwhile the user edited "p".  The pull
    reads the delete from the feed first: client-wins keeps the local row and turns
    its op into an insert, but the shadow of the old "p" (version 1) stays; the
    listing then shows the new "p", version 1, which the library takes for the row
    it knows (versions compare equal) and skips.  The insert meets 409 ("exists"),
    a conflict answer without a row, and is retried until it is a dead letter; the
    sides never meet."""
    pair = Pair(tmp_path, "client-wins", tombstones=False)
    try:
        pair.server.store.admin_delete("posts", "p")
        pair.edit("mine")
        pair.server.store.seed("posts", [{"id": "p", "title": "theirs"}])
        pair.settle(4)
        assert pair.local() == pair.remote() == "mine", pair.state()
        assert pair.sync.queue_depth() == 0 and pair.sync.dead_letters() == [], pair.state()
    finally:
        pair.close()


def test_a_rebase_onto_a_deleted_row_makes_one_insert(tmp_path: Path) -> None:
    """Bug 8.  A row has two pending ops (an update waiting for its retry, and a later
    edit); the server deletes the row; client-wins keeps the local side and the
    rebase turns both ops into inserts.  The first POST re-creates the row, the
    second meets 409, is retried until it is a dead letter, and while it is pending
    the first answer is not written back (version and updatedAt stay empty)."""
    pair = Pair(tmp_path, "client-wins", tombstones=False)
    try:
        pair.edit("v2")
        pair.server.faults.add(method="PUT", path="/api/posts/p", action="status", status=503)
        assert pair.sync.push().failed == 1
        pair.edit("v3")  # a new op: the first one is claimed
        pair.server.store.admin_delete("posts", "p")
        pair.settle(5)
        assert pair.local() == pair.remote() == "v3", pair.state()
        assert pair.sync.queue_depth() == 0 and pair.sync.dead_letters() == [], pair.state()
    finally:
        pair.close()


@pytest.mark.parametrize("policy", ["client-wins", "server-wins"])
def test_a_create_of_an_id_the_server_already_has_goes_to_the_policy(
        tmp_path: Path, policy: str) -> None:
    """Another client creates "x" after our last pull; this user creates "x" too.
    The POST meets 409 without a row: the next pull brings the server's "x" and the
    policy settles it there (client-wins turns the create into an update), instead
    of retrying the create into a dead letter."""
    pair = Pair(tmp_path, policy)
    try:
        pair.server.store.seed("posts", [{"id": "x", "title": "theirs"}])
        with pair.maker() as s:
            s.add(Article(id="x", title="mine"))
            s.commit()
        assert pair.sync.push().conflicts == 1  # 409 "exists", before any pull saw "x"
        pair.settle(3)
        with pair.maker() as s:
            article = s.get(Article, "x")
            local = None if article is None else article.title
        remote = {r["id"]: r["title"] for r in pair.server.store.rows("posts")}.get("x")
        want = "mine" if policy == "client-wins" else "theirs"
        assert (local, remote) == (want, want), pair.state()
        assert pair.sync.queue_depth() == 0 and pair.sync.dead_letters() == [], pair.state()
    finally:
        pair.close()
