"""The PostgreSQL store itself: its schema, its claim's plan, claims from processes side by
side, a killed worker, and what it says when the server fails it. What every store must
do is in test_store.py; every mode, test_modes.py and test_contract.py."""

import asyncio
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from errands import Errands, JobRecord, JobStatus, StoreError
from errands._group_commit import GroupCommit, _Write
from errands._lifecycle import where_jobs_go
from errands.exceptions import ConfigurationError, StoreUnwritable
from errands.local import LocalBackend
from errands.local._store import ProcessInfo, Success
from errands.postgres import PostgresStore, parse_url
from errands.postgres import _store as pg_store
from errands.postgres._connections import CHECK_AFTER_IDLE
from errands.postgres._schema import VERSION
from errands.postgres._sql import LOOK, claim_sql
from tests.conftest import ROOT, postgres_url, wait_finished
from tests.test_processes import Worker, lines, started, starts, wait_for

pytestmark = pytest.mark.postgres

T = [(("t",), 10)]


def now() -> datetime:
    return datetime.now(UTC)


def job(id: str, name: str = "t", **kw: object) -> JobRecord:
    return JobRecord(**{"id": id, "name": name, "run_at": now(), **kw})  # type: ignore[arg-type]


@pytest.fixture
def url(postgres_database: str) -> str:
    return postgres_url(postgres_database)


@pytest.fixture
def opened() -> Iterator[Callable[[str], Errands]]:
    """``Errands(url)``, its store's connections closed after the test."""
    made: list[Errands] = []

    def errands(url: str) -> Errands:
        made.append(Errands(url))
        return made[-1]

    yield errands
    for one in made:
        one._core.backend.store.close()  # type: ignore[attr-defined]


def open_store(url: str) -> PostgresStore:
    conninfo, schema, _ = parse_url(url)
    return PostgresStore(conninfo, schema=schema)


@pytest.fixture
def store(url: str) -> Iterator[PostgresStore]:
    made = open_store(url)
    yield made
    made.close()


def query(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Rows of ``sql`` in the test run's database, on a connection of the test's own."""
    conninfo, _, _ = parse_url(url)
    with psycopg.connect(conninfo, autocommit=True) as db:
        cursor = db.execute(sql, params or None)
        return cursor.fetchall() if cursor.description else []


def schema_of(url: str) -> str:
    return parse_url(url)[1]


# -- the schema -------------------------------------------------------------------------


def test_the_store_makes_its_schema_tables_indexes_and_version_row(
    opened: Callable[[str], Errands], url: str
) -> None:
    schema = schema_of(url)
    assert query(url, "SELECT 1 FROM pg_namespace WHERE nspname = %s", schema) == []
    errands = opened(url)
    tables = query(url, "SELECT tablename FROM pg_tables WHERE schemaname = %s", schema)
    assert sorted(name for (name,) in tables) == ["jobs", "limits", "processes", "version"]
    found = query(url, "SELECT indexname FROM pg_indexes WHERE schemaname = %s", schema)
    indexes = {name for (name,) in found}
    assert {"jobs_claimable", "jobs_running", "jobs_finished", "jobs_finished_by_task"} <= indexes
    assert query(url, f"SELECT version FROM {schema}.version") == [(VERSION,)]
    # Opened again (another process, a restart): nothing is made twice.
    opened(url)
    assert query(url, f"SELECT version FROM {schema}.version") == [(VERSION,)]
    assert isinstance(errands._core.backend, LocalBackend)
    assert errands._core.backend.location == (
        f"postgresql://postgres@127.0.0.1:5432/{parse_url(url)[0].rsplit('/', 1)[1]} "
        f"(schema {schema})"
    )
    # The start-up line names it so, once (not the URL, then that in brackets).
    assert where_jobs_go(errands._core) == errands._core.backend.location


def test_stores_in_two_schemas_of_one_database_never_see_each_others_jobs(
    postgres_database: str,
) -> None:
    first = open_store(postgres_url(postgres_database))
    second = open_store(postgres_url(postgres_database))
    first.enqueue([job("a")])
    assert second.get("a") is None and second.unfinished() == 0
    assert [j.id for j in first.claim("w", 30, T)] == ["a"]
    first.close()
    second.close()


def test_the_default_schema_is_errands_and_other_schemas_are_left_alone(
    opened: Callable[[str], Errands],
    postgres_database: str,
) -> None:
    query(postgres_database, "CREATE SCHEMA bystander")
    query(postgres_database, "CREATE TABLE bystander.jobs (id text)")
    query(postgres_database, "INSERT INTO bystander.jobs VALUES ('theirs')")
    errands = opened(postgres_database)  # no ?schema=
    assert errands._core.backend.location.endswith("(schema errands)")
    assert query(postgres_database, "SELECT id FROM bystander.jobs") == [("theirs",)]
    assert query(postgres_database, "SELECT version FROM errands.version") == [(VERSION,)]


def test_a_made_schema_is_opened_without_ddl_so_a_role_that_only_reads_and_writes_can(
    opened: Callable[[str], Errands], url: str
) -> None:
    writer = opened(url)
    writer.add_task(writer.task(name="t")(double), 21)
    # A session that may not change anything (no CREATE, no INSERT) still opens it.
    read_only = url + "&options=-c%20default_transaction_read_only%3Don"
    assert opened(read_only).jobs()[0].args == [21]
    fresh = postgres_url(url.split("?")[0])  # a schema not made yet needs its DDL
    with pytest.raises(StoreError, match="read-only transaction"):
        opened(fresh + "&options=-c%20default_transaction_read_only%3Don")


def test_both_schemes_select_postgres_and_a_bad_schema_name_is_refused(
    opened: Callable[[str], Errands], url: str
) -> None:
    other = opened(url.replace("postgresql://", "postgres://", 1))
    assert isinstance(other._core.backend, LocalBackend)
    assert isinstance(other._core.backend.store, PostgresStore)
    with pytest.raises(ConfigurationError, match="lower-case letters"):
        opened(url.split("?")[0] + "?schema=Robert'); DROP TABLE x;--")


def test_the_location_never_shows_the_password() -> None:
    conninfo, schema, location = parse_url(
        "postgres://app:s3cret@db.example:6543/jobs?sslmode=require&schema=work"
    )
    assert schema == "work"
    assert conninfo == "postgresql://app:s3cret@db.example:6543/jobs?sslmode=require"
    assert location == "postgresql://app@db.example:6543/jobs (schema work)"
    assert "s3cret" not in location


def test_the_password_is_never_shown_and_a_misspelt_option_is_a_configuration_error(
    opened: Callable[[str], Errands], postgres_database: str
) -> None:
    url = postgres_database.replace("postgres@", "postgres:s3cret@", 1)  # trust: ignored
    errands = opened(url)
    assert errands.url == url.replace(":s3cret@", ":***@")
    assert "s3cret" not in repr(errands)
    with pytest.raises(ConfigurationError, match="did you mean sslmode for sslmod") as raised:
        Errands(url + "?sslmod=require")
    with pytest.raises(ConfigurationError, match="did you mean password for pasword") as typo:
        Errands(url + "?pasword=hunter2")
    assert "hunter2" not in str(typo.value)  # a misspelt option may hold a secret
    assert "s3cret" not in str(raised.value) and ":***@" in str(raised.value)
    with pytest.raises(ConfigurationError, match="give the database as") as raised:
        Errands("postgresql://postgres:s3cret@127.0.0.1:port/db")
    assert "s3cret" not in str(raised.value)


# -- the claim's plan -----------------------------------------------------------------


def test_claims_read_the_claimable_index_not_the_table_of_100000_jobs(
    store: PostgresStore, url: str
) -> None:
    schema = store.schema
    # 100,000 jobs: nearly all finished, some queued (a few names), some running.
    query(
        url,
        f"INSERT INTO {schema}.jobs (id, name, status, args, kwargs, attempts, max_attempts, "
        "created_at, run_at, finished_at, lease_until) "
        "SELECT 'j' || i, 'n' || (i % 7), "
        "CASE WHEN i % 10 = 0 THEN 'queued' WHEN i % 97 = 0 THEN 'running' ELSE 'succeeded' END, "
        "'[]', '{}', 1, 1, now(), now() - interval '1 minute', "
        "CASE WHEN i % 10 <> 0 AND i % 97 <> 0 THEN now() END, "
        "CASE WHEN i % 97 = 0 THEN now() + interval '1 hour' END "
        "FROM generate_series(1, 100000) AS i",
    )
    query(url, f"ANALYZE {schema}.jobs")
    at = now()
    statements = [
        (LOOK, (["n1", "n2"], at)),
        (claim_sql(False), ("w", 30, at, "n1", at, 10)),
        (claim_sql(True), ("w", 30, at, ["n1", "n2", "n3"], at, 10, 10)),
    ]
    conninfo, _, _ = parse_url(url)
    with psycopg.connect(conninfo, autocommit=True) as db:
        db.execute("SELECT set_config('search_path', %s, false)", (schema,))
        for mode in ("auto", "force_generic_plan"):  # as first run, and once prepared
            db.execute("SELECT set_config('plan_cache_mode', %s, false)", (mode,))
            for sql, params in statements:
                plan = "\n".join(row[0] for row in db.execute(f"EXPLAIN {sql}", params))
                assert "Seq Scan" not in plan, plan
                assert "jobs_claimable" in plan, plan
    # And the claim takes what the plan promised.
    claimed = store.claim("w", 30, [(("n1", "n2"), 5)])
    assert len(claimed) == 5 and {j.name for j in claimed} <= {"n1", "n2"}


# -- processes side by side -----------------------------------------------------------

CLAIMER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from errands.postgres import PostgresStore, parse_url

    conninfo, schema, _ = parse_url(sys.argv[1])
    store = PostgresStore(conninfo, schema=schema)
    go = Path(sys.argv[2])
    while not go.exists():  # both start claiming at once
        time.sleep(0.001)
    taken = []
    turn = 0
    while True:
        turn += 1
        wants = [(("t",), 3)] if turn % 2 else [(("t", "u"), 4)]
        claimed = store.claim(sys.argv[3], 30, wants)
        if not claimed and not store.unfinished():
            break
        for job in claimed:
            store.complete(job, None)
        taken += [job.id for job in claimed]
    print(json.dumps(taken))
    """
)


def test_two_processes_claiming_at_once_never_take_the_same_job(
    store: PostgresStore, url: str, tmp_path: Path
) -> None:
    names = ["t", "u"]
    store.enqueue([job(f"j{i}", name=names[i % 2]) for i in range(1500)])
    go = tmp_path / "go"
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, url, str(go), f"w{n}"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    go.touch()
    taken = []
    for claimer in claimers:
        out, err = claimer.communicate(timeout=120)
        assert claimer.returncode == 0, err
        taken.append(json.loads(out))
    first, second = (set(t) for t in taken)
    assert first and second  # both took a share
    assert not first & second  # never the same job
    assert len(taken[0]) + len(taken[1]) == 1500 and first | second == {
        f"j{i}" for i in range(1500)
    }
    assert store.counts()[JobStatus.SUCCEEDED] == 1500


def test_a_concurrency_limit_holds_across_claimers_at_once(store: PostgresStore) -> None:
    from errands._limits import Limit

    store.enqueue([job(f"j{i}") for i in range(40)])
    limits = {"t": Limit(concurrency=3, rate=None)}
    taken: list[list[JobRecord]] = []
    barrier = threading.Barrier(8)

    def claim(n: int) -> None:
        barrier.wait()
        taken.append(store.claim(f"w{n}", 30, T, 10, limits))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(len(t) for t in taken) == 3
    assert store.counts()[JobStatus.RUNNING] == 3


# -- a killed worker --------------------------------------------------------------------


@pytest.fixture
def env(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"ERRANDS_URL": url, "DURABLE_LOG": str(tmp_path / "log")}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "log").touch()
    return values


@pytest.mark.server
def test_a_job_whose_worker_is_killed_runs_again_on_another_after_its_lease(
    opened: Callable[[str], Errands],
    env: dict[str, str],
) -> None:
    from tests.test_processes import app_module

    app = app_module()  # lease=1.0, on $ERRANDS_URL
    job_ = app.errands.add_task(app.slow, "k", 1.5)
    workers = [Worker(env)]
    try:
        wait_for(lambda: started(env, "k"))
        workers[0].signal(signal.SIGKILL)  # mid-job: its lease is never renewed
        workers.append(Worker(env))
        reader = opened(env["ERRANDS_URL"])
        wait_for(lambda: reader.get(job_.id).status is JobStatus.SUCCEEDED, timeout=20)  # type: ignore[union-attr]
        record = reader.get(job_.id)
        assert record is not None
        assert record.attempts == 2 and record.lost == 1  # shown, not counted as a failure
        assert starts(env, "k") == 2
        assert "done k" in lines(env)
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.signal(signal.SIGTERM)
            worker.log.close()


# -- hosts whose clocks disagree --------------------------------------------------------


def test_a_host_whose_clock_runs_ahead_never_takes_a_live_workers_job(
    store: PostgresStore, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases and heartbeats are written and read on the server's clock: a host whose
    clock is ten minutes ahead sees neither a 30 s lease nor a heartbeat as run out."""
    store.enqueue([job("a")])
    [claimed] = store.claim("w1", 30, T)
    store.renew([claimed], 30)
    store.beat(ProcessInfo("w1", "worker", "host1", 1, ("t",), now(), now()))
    other = open_store(url)  # another host, whose clock runs ahead
    try:
        monkeypatch.setattr(pg_store, "utcnow", lambda: now() + timedelta(minutes=10))
        assert other.claim("w2", 30, T) == []
        assert other.release_orphans(pg_store.utcnow() - timedelta(seconds=30)) == []
        record = other.get("a")
        assert record is not None and record.status is JobStatus.RUNNING
        assert record.owner == "w1" and record.lost == 0
        # Seen on this host's clock: a second ago, not ten minutes before now.
        [seen] = other.processes()
        assert abs((pg_store.utcnow() - seen.seen_at).total_seconds()) < 5
        # A lease that has run out by the server's clock is found all the same.
        query(url, f"UPDATE {parse_url(url)[1]}.jobs SET lease_until = now() - interval '1 s'")
        assert [j.id for j in other.claim("w2", 30, T)] == ["a"]
    finally:
        other.close()


# -- when the server fails the store ----------------------------------------------------


def test_a_server_that_cannot_be_reached_is_a_store_error_that_may_pass() -> None:
    with pytest.raises(StoreError, match="cannot be reached") as raised:
        Errands("postgresql://postgres@127.0.0.1:1/nothing")
    assert type(raised.value) is StoreError  # not corrupt, not unwritable: it may pass
    assert "127.0.0.1:1/nothing (schema errands)" in str(raised.value)


def test_a_database_that_does_not_exist_is_unwritable(postgres_database: str) -> None:
    missing = postgres_database.rsplit("/", 1)[0] + "/errands_test_no_such_database"
    with pytest.raises(StoreUnwritable, match="refused access"):
        Errands(missing)


def drop_connections(url: str) -> None:
    """The server ends every connection to the test run's database but the caller's
    (as a restart or a failover does)."""
    query(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )


def test_connections_the_server_dropped_while_idle_are_replaced_unseen(
    store: PostgresStore, url: str
) -> None:
    store.enqueue([job("a")])
    drop_connections(url)
    time.sleep(CHECK_AFTER_IDLE + 0.2)
    record = store.get("a")  # no error: the pool checked its idle connection
    assert record is not None and record.status is JobStatus.QUEUED


def test_a_connection_dropped_while_in_use_fails_its_call_as_a_store_error_then_heals(
    store: PostgresStore, url: str
) -> None:
    store.enqueue([job("a")])
    drop_connections(url)
    with pytest.raises(StoreError, match="cannot be reached"):  # mapped: no psycopg error
        store.get("a")

    def healed() -> bool:
        try:
            return store.get("a") is not None
        except StoreError:
            return False  # another connection the server dropped: discarded in turn

    wait_for(healed)
    assert [j.id for j in store.claim("w", 30, T)] == ["a"]


def test_a_batch_whose_connection_breaks_midway_fails_whole_and_never_passes_as_committed(
    store: PostgresStore, url: str
) -> None:
    """psycopg leaves a transaction whose connection broke without a word (its COMMIT
    is never sent): a batch whose later write failed so must not report the earlier
    ones (a request's jobs: its 200) as kept."""
    with pytest.raises(StoreError, match="cannot be reached"), store.batch():
        store.enqueue([job("a")])  # in the batch's transaction, not committed yet
        drop_connections(url)
        with pytest.raises(StoreError, match="cannot be reached"):
            store.enqueue([job("b")])  # (the group commit gives this one its error)

    def healed() -> bool:
        try:
            return store.get("z") is None
        except StoreError:
            return False

    wait_for(healed)
    assert store.get("a") is None and store.get("b") is None


def test_a_request_during_an_outage_gets_503_and_one_after_it_is_kept(
    opened: Callable[[str], Errands], url: str
) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from errands import BackgroundTasks

    errands = opened(url)

    @errands.task(name="t")
    def t() -> None:
        pass

    app = FastAPI()

    @app.post("/")
    async def add(tasks: BackgroundTasks) -> str:
        return tasks.add_task(t).id

    database = parse_url(url)[0].rsplit("/", 1)[1]
    admin = url.split("?")[0].rsplit("/", 1)[0] + "/postgres"
    client = TestClient(app, raise_server_exceptions=False)
    # The test run's database refuses every connection, and drops those it has.
    query(admin, f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
    try:
        query(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            database,
        )
        response = client.post("/")
        assert response.status_code == 503
        assert "Retry-After" in response.headers
    finally:
        query(admin, f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
    assert query(url, f"SELECT count(*) FROM {schema_of(url)}.jobs") == [(0,)]

    def accepted() -> bool:
        return client.post("/").status_code == 200

    wait_for(accepted, timeout=30)  # the pool connects again by itself
    assert query(url, f"SELECT count(*) FROM {schema_of(url)}.jobs") == [(1,)]


# -- group commit ------------------------------------------------------------------------


def alone(write: Callable[[], object]) -> _Write:
    return _Write(write, None, ())


def test_a_write_the_server_refuses_in_a_group_fails_alone_first_or_not(
    store: PostgresStore,
) -> None:
    """A batch's first write of one statement is a transaction by itself; a first write
    of more takes no savepoint (its failure rolls back the transaction, which holds
    nothing else yet); each later write takes one."""

    def enqueue(*ids: str, **kw: object) -> _Write:
        return alone(functools.partial(store.enqueue, [job(id, **kw) for id in ids]))

    out_of_range = {"priority": 2**40}  # the server refuses it: integer out of range
    groups = [
        [enqueue("bad-alone", **out_of_range), enqueue("a", owner="web"), enqueue("b")],
        [enqueue("bad-first", "c", **out_of_range), enqueue("d"), enqueue("e")],
        [enqueue("f", "g"), enqueue("bad-then", **out_of_range), enqueue("h")],
        [enqueue("i", "j"), enqueue("bad-last", **out_of_range)],
    ]
    outcomes = [[ok for ok, _ in GroupCommit(store.batch)._run(writes)] for writes in groups]
    assert outcomes == [
        [False, True, True],
        [False, True, True],
        [True, False, True],
        [True, False],
    ]
    # What a write was told is what happened: the good ones are kept, the bad ones not.
    assert sorted(record.id for record in store.jobs(limit=20)) == list("abdefghij")
    # Released in a group: a job held by a request, then a job whose id is kept already.
    writes = [alone(functools.partial(store.release, ["a"])), enqueue("k", "a")]
    outcomes = GroupCommit(store.batch)._run(writes)
    assert outcomes[0] == (True, None) and [j.id for j in outcomes[1][1]] == ["a"]
    released = store.get("a")
    assert released is not None and released.owner is None


def test_successes_recorded_in_one_call_each_get_the_status_complete_would_give(
    store: PostgresStore,
) -> None:
    store.enqueue([job(id) for id in ("a", "b", "c", "d")])
    a, b, c, d = sorted(store.claim("w", 30, T, 4), key=lambda j: j.id)
    store.request_cancel("b")  # asked to stop while it ran: ends cancelled
    stale = dataclasses.replace(c, attempts=c.attempts + 1)  # not the current claim
    successes = [Success(a, {"n": 1}), Success(b, 2), Success(stale, 3), Success(d, None)]
    store.complete_all(successes)
    assert [s.status for s in successes] == [
        JobStatus.SUCCEEDED, JobStatus.CANCELLED, None, JobStatus.SUCCEEDED,
    ]  # fmt: skip
    records = {id: store.get(id) for id in "abcd"}
    assert records["a"] is not None and records["a"].result == {"n": 1}
    assert records["b"] is not None and records["b"].result is None
    assert records["c"] is not None and records["c"].status is JobStatus.RUNNING  # untouched
    assert records["d"] is not None and records["d"].status is JobStatus.SUCCEEDED
    assert all(r is not None and r.owner is None for r in (records["a"], records["d"]))


def test_a_group_whose_read_failed_in_its_transaction_keeps_nothing_and_says_so(
    store: PostgresStore,
) -> None:
    """A failed statement outside a savepoint dooms the transaction: PostgreSQL would take
    its COMMIT for a ROLLBACK. The writes before it must not be reported kept."""

    def bad_read() -> None:
        with store._read() as db:
            db.execute("SELECT 1 / 0")

    writes = [
        alone(functools.partial(store.enqueue, [job("a"), job("b")])),  # a transaction
        alone(bad_read),
        alone(functools.partial(store.enqueue, [job("c")])),
    ]
    with pytest.raises(StoreError, match="nothing of it was kept"):
        GroupCommit(store.batch)._run(writes)
    assert store.jobs(limit=10) == []
    # The connection went back to the pool in a usable state.
    GroupCommit(store.batch)._run([alone(functools.partial(store.enqueue, [job("d")]))])
    assert [record.id for record in store.jobs(limit=10)] == ["d"]


# -- LISTEN/NOTIFY ----------------------------------------------------------------------


def test_a_listening_store_is_told_of_jobs_other_processes_make_claimable(url: str) -> None:
    listening, adding = open_store(url), open_store(url)
    told = threading.Event()
    stop = listening.listen(told.set)
    try:
        assert told.wait(5)  # once listening: for what was added before
        told.clear()
        adding.enqueue([job("free")])
        assert told.wait(5)
        told.clear()
        adding.enqueue([job("held", owner="web-1", run_at=now() + timedelta(seconds=60))])
        assert not told.wait(0.5)  # unreleased: nothing to claim yet
        adding.release(["held"])
        assert told.wait(5)
        told.clear()
        adding.release(["held"])  # released already: nothing new
        assert not told.wait(0.5)
    finally:
        stop()
        listening.close()
    try:
        # Stopped: nobody is woken, and its connection goes by itself.
        adding.enqueue([job("after")])
        assert not told.wait(1)

        def listeners() -> int:
            rows = query(
                url,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'LISTEN %%'",
            )
            return int(rows[0][0])  # type: ignore[call-overload]

        wait_for(lambda: listeners() == 0, timeout=5)
    finally:
        adding.close()


def test_a_worker_runs_a_job_another_process_adds_without_waiting_for_its_poll(
    opened: Callable[[str], Errands], url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    monkeypatch.setattr(PostgresStore, "poll_announced", 60.0)  # only a notification wakes it
    worker = opened(url)
    adder = opened(url)  # another process, as far as the store can tell: no worker
    worker.task(name="double")(double)
    doubled = adder.task(name="double")(double)
    with TestClient(FastAPI(lifespan=worker.lifespan)):
        time.sleep(0.5)  # idle: its first polls are done
        job_ = adder.add_task(doubled, 21)
        record = wait_finished(worker, job_.id, timeout=10)
    assert record.status is JobStatus.SUCCEEDED and record.result == 42


def double(n: int) -> int:
    return 2 * n


def test_constructing_an_instance_starts_no_thread_its_first_read_opens_the_pool(
    opened: Callable[[str], Errands], url: str
) -> None:
    before = threading.active_count()
    errands = opened(url)
    assert threading.active_count() == before  # as on SQLite: nothing runs yet
    assert errands.get("nothing") is None
    assert threading.active_count() > before  # the pool's


@pytest.mark.parametrize(
    ("url", "hidden"),
    [
        ("postgresql://app@db/jobs?password=TOPSECRET&sslmode=require", "TOPSECRET"),
        ("postgresql://app@db/jobs?sslpassword=TOPSECRET", "TOPSECRET"),
        ("postgresql://app:p@ss@db/jobs", "p@ss"),
    ],
)
def test_a_password_anywhere_in_the_url_is_hidden(url: str, hidden: str) -> None:
    from errands.postgres import masked

    assert hidden not in masked(url) and "***" in masked(url)
    assert hidden not in parse_url(url)[2]


def test_a_password_holding_an_at_sign_reaches_libpq_whole(postgres_database: str) -> None:
    """libpq splits user and host at the first @: errands hands it the password
    percent-encoded, so the host is read right and no part of the password shows."""
    url = postgres_database.replace("postgres@", "postgres:p@ss@", 1)  # trust: ignored
    errands = Errands(url)
    try:
        assert "p@ss" not in errands.url and "ss@" not in repr(errands)
        assert errands.stats() is not None  # connected: the host was read right
    finally:
        errands._core.backend.store.close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://app:pw@[::1/db", "give the database as"),
        ("postgresql://app@db/jobs?schema=pg_jobs", "pg_"),
        ("postgresql://app@db/jobs?schema=" + "s" * 56, "at most 55"),
    ],
)
def test_a_url_errands_cannot_use_is_a_configuration_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        parse_url(url)


def test_a_unix_socket_url_keeps_its_slashes() -> None:
    conninfo, schema, _ = parse_url("postgresql:///jobs?host=/var/run/postgresql")
    assert conninfo == "postgresql:///jobs?host=%2Fvar%2Frun%2Fpostgresql" and schema == "errands"


def test_a_longest_schema_name_still_adds_and_wakes(
    opened: Callable[[str], Errands], url: str
) -> None:
    """Its channel (errands_<schema>) must fit PostgreSQL's 63-byte names."""
    errands = opened(url.split("?")[0] + "?schema=" + "s" * 55)

    @errands.task(name="t")
    def t() -> int:
        return 1

    async def main() -> str:
        async with errands.lifespan():
            job = errands.add_task(t)
            await errands.join(timeout=20)
            return job.id

    record = errands.get(asyncio.run(main()))
    assert record is not None and record.result == 1
