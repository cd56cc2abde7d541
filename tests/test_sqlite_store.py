"""The SQLite store itself: its file, its transactions, and what it says when the file
fails it. What every store must do is in test_store.py."""

import functools
import logging
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from errands import JobRecord, JobStatus, StoreError
from errands._group_commit import GroupCommit, _Write
from errands.exceptions import StoreCorrupt, StoreUnwritable
from errands.local._store import ProcessInfo
from errands.sqlite import SQLiteStore
from errands.sqlite import _store as sqlite

T = [(("t",), 10)]


def now() -> datetime:
    return datetime.now(UTC)


def job(id: str, **kw: object) -> JobRecord:
    return JobRecord(id=id, name="t", run_at=now(), **kw)  # type: ignore[arg-type]


def insert_row(store: SQLiteStore, id: str, *, status: str = "queued", args: str = "[]") -> None:
    """A row written by something other than errands."""
    store._db().execute(
        "INSERT INTO errands_jobs (id, name, status, args, kwargs, attempts, max_attempts, "
        "created_at, run_at) VALUES (?, 't', ?, ?, '{}', 0, 1, 0, 0)",
        (id, status, args),
    )


# -- rows that cannot be read ---------------------------------------------------------


def test_a_row_that_cannot_be_read_is_failed_with_the_reason_when_claimed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.db")
    insert_row(store, "bad", args="{not json")
    store.enqueue([job("good")])
    assert [j.id for j in store.claim("w", 30, T)] == ["good"]
    record = store.get("bad")
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error is not None
    assert record.error.startswith("CorruptJob: the stored job cannot be read: its arguments")
    assert store.counts()[JobStatus.FAILED] == 1  # failed for good, not only shown so
    store.close()


def test_rows_that_cannot_be_read_are_listed_as_failed_and_the_rest_as_they_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(tmp_path / "jobs.db")
    store.enqueue([job("before")])
    insert_row(store, "odd-status", status="paused")
    insert_row(store, "bad-json", status="succeeded", args="[1,")
    store.enqueue([job("after")])
    with caplog.at_level(logging.WARNING, logger="errands"):
        listed = {j.id: j for j in store.jobs()}
        store.jobs()
        single = store.get("odd-status")
    assert list(listed) == ["after", "bad-json", "odd-status", "before"]
    assert listed["before"].status is listed["after"].status is JobStatus.QUEUED
    for id, reason in [("odd-status", "its status 'paused' is none of"), ("bad-json", "JSON")]:
        record = listed[id]
        assert record.status is JobStatus.FAILED and record.error is not None
        assert record.error.startswith("CorruptJob: the stored job cannot be read: ")
        assert reason in record.error
    assert single is not None and single.error == listed["odd-status"].error
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once per job, however often it is read
    assert all(str(tmp_path / "jobs.db") in message for message in warnings)
    store.close()


# -- errors -----------------------------------------------------------------------------


def damaged_copy(tmp_path: Path, how: str) -> Path:
    """A real store's file, then damaged: pages overwritten, or the file cut short."""
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path)
    for i in range(20):
        store.enqueue([job(f"j{i}-{n}", args=["x" * 500]) for n in range(10)])
    store.close()  # the last connection checkpoints the WAL into the file
    assert not Path(f"{path}-wal").exists()
    size = path.stat().st_size
    with open(path, "r+b") as file:
        if how == "overwritten":
            file.seek(4096)  # every page after the first (which holds the schema)
            file.write(os.urandom(size - 4096))
        else:
            file.truncate(size // 3)
    return path


def assert_says_restore(exc: StoreError, path: Path) -> None:
    message = str(exc)
    assert str(path) in message and "backup" in message
    assert "disk" not in message.replace("disk image", "") and "space" not in message


def test_a_file_that_is_not_a_database_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"these are not the jobs you are looking for\n" * 200)
    with pytest.raises(StoreCorrupt, match="is not a database") as raised:
        SQLiteStore(path)
    assert_says_restore(raised.value, path)
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)


@pytest.mark.parametrize("how", ["overwritten", "truncated"])
def test_a_damaged_database_is_reported_as_corrupt(tmp_path: Path, how: str) -> None:
    path = damaged_copy(tmp_path, how)
    with pytest.raises(StoreCorrupt, match="is damaged") as raised:
        store = SQLiteStore(path)  # opening reads only the schema: it may still work
        store.jobs(limit=1000)
        store.claim("w", 30, T)
    assert_says_restore(raised.value, path)


def test_a_store_in_a_missing_directory_says_to_create_it(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "jobs.db"
    with pytest.raises(StoreUnwritable) as raised:
        SQLiteStore(path)
    assert str(raised.value) == (
        f"the SQLite store {path} cannot be opened: the directory {path.parent} does not "
        f"exist: create it, or point errands at a file in an existing directory."
    )


def test_a_path_that_cannot_be_opened_as_a_file_is_unwritable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnwritable, match=rf"{tmp_path} cannot be opened.*read and write"):
        SQLiteStore(tmp_path)  # a directory


def test_a_read_only_database_refuses_writes_as_unwritable(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path)
    store.enqueue([job("kept")])
    # The connection is made read-only, so that the test holds as root (which chmod
    # does not stop); SQLite answers as for a read-only file: SQLITE_READONLY.
    store._db().execute("PRAGMA query_only = 1")
    with pytest.raises(StoreUnwritable, match=r"is read-only.*writable by this user") as raised:
        store.enqueue([job("refused")])
    assert str(path) in str(raised.value)
    cause = raised.value.__cause__
    assert isinstance(cause, sqlite3.Error) and cause.sqlite_errorname == "SQLITE_READONLY"
    assert [j.id for j in store.jobs()] == ["kept"]  # reading still works
    store.close()


def test_a_file_locked_too_long_by_another_process_is_an_error_that_may_pass(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path, busy_timeout=0.1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a long write elsewhere
    with pytest.raises(StoreError) as raised:
        store.enqueue([job("a")])
    assert type(raised.value) is StoreError
    assert str(raised.value).startswith(
        f"the SQLite store {path} was locked by another process for longer than the busy "
        f"timeout (0.1 s); nothing of this call was stored."
    )
    other.execute("ROLLBACK")
    other.close()
    store.enqueue([job("a")])  # it passed
    store.close()


def test_a_full_disk_is_an_error_that_may_pass_and_keeps_nothing(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path)
    # SQLite's own "database or disk is full", from a page budget on this connection.
    pages = store._db().execute("PRAGMA page_count").fetchone()[0]
    store._db().execute(f"PRAGMA max_page_count = {pages + 8}")
    with pytest.raises(StoreError) as raised:
        store.enqueue([job(f"j{i}", args=["y" * 4000]) for i in range(20)])
    assert type(raised.value) is StoreError
    assert str(raised.value).startswith(
        f"the SQLite store {path} could not be written: the disk is full"
    )
    assert "Nothing of this call was stored" in str(raised.value)
    assert store.jobs() == []
    store.close()


# -- transactions -----------------------------------------------------------------------


def test_a_write_that_fills_the_disk_aborts_its_group_and_nothing_after_it_commits(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "jobs.db")
    pages = store._db().execute("PRAGMA page_count").fetchone()[0]
    store._db().execute(f"PRAGMA max_page_count = {pages + 4}")

    def record(id: str, size: int) -> JobRecord:
        return JobRecord(id=id, name="t", args=["x" * size])

    for merged in (True, False):  # merged bulk writes, and writes of their own

        def write(id: str, size: int, merged: bool = merged) -> _Write:
            records = [record(f"{merged}-{id}", size)]
            if merged:
                return _Write(None, store.enqueue, records)
            return _Write(functools.partial(store.enqueue, records), None, ())

        writes = [write("first", 10), write("too-big", 200_000), write("third", 10)]
        with pytest.raises(StoreError):
            GroupCommit(store.batch)._run(writes)
        # What the callers were told (failed) is what happened: nothing was kept.
        ids = (f"{merged}-first", f"{merged}-too-big", f"{merged}-third")
        assert [store.get(id) for id in ids] == [None, None, None]
    store.close()


def test_a_bad_write_in_a_merged_group_fails_alone(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.db")
    store.enqueue([JobRecord(id="taken", name="t")])

    def held(id: str) -> JobRecord:
        return JobRecord(id=id, name="t", owner="web", run_at=now() + timedelta(seconds=60))

    bad = held("bad")
    bad.args = [object()]  # cannot be stored
    again = held("taken")
    writes = [_Write(None, store.enqueue, [job]) for job in (held("a"), bad, held("b"), again)]
    writes += [_Write(None, store.release, ["a"]), _Write(None, store.release, ["b", "taken"])]
    outcomes = GroupCommit(store.batch)._run(writes)
    assert [ok for ok, _ in outcomes] == [True, False, True, True, True, True]
    assert "not JSON serializable" in str(outcomes[1][1])
    # A job whose id is kept is not added: its write says so, and the others' do not.
    assert [value for _, value in outcomes[2:4]] == [[], [again]]
    assert store.get("bad") is None
    for id in ("a", "b"):
        record = store.get(id)  # stored, then released
        assert record is not None and record.owner is None
        assert record.run_at is not None and record.run_at <= now()
    store.close()


def test_a_group_of_idle_polls_never_takes_the_write_lock(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.db", busy_timeout=0.5)
    store.enqueue([JobRecord(id="other", name="other", run_at=now())])  # due, not wanted
    store.beat(ProcessInfo("web", "web", "host", 1, (), now(), now()))
    other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process is writing, at length
    started = time.monotonic()
    polls = [_Write(functools.partial(store.claim, "w", 30, T), None, ()) for _ in range(3)]
    orphans = functools.partial(store.release_orphans, now() - timedelta(seconds=60))
    polls.append(_Write(orphans, None, ()))
    assert GroupCommit(store.batch)._run(polls) == [(True, [])] * 4  # nothing due: no wait
    assert time.monotonic() - started < 0.4
    other.execute("ROLLBACK")
    other.close()
    store.close()


def test_claim_now_never_waits_for_another_writer_and_claims_once_it_is_gone(
    tmp_path: Path,
) -> None:
    """What a worker that owns its event loop claims with there: never held up by a
    write elsewhere (None: it then claims through its commit thread, which waits)."""
    store = SQLiteStore(tmp_path / "jobs.db", busy_timeout=30)
    store.enqueue([job("a")])
    other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process is writing, at length
    started = time.monotonic()
    assert store.claim_now("w", 30, T) is None
    assert time.monotonic() - started < 5  # not the 30 s busy timeout
    other.execute("ROLLBACK")
    [claimed] = store.claim_now("w", 30, T) or []
    assert claimed.id == "a" and claimed.owner == "w" and claimed.attempts == 1
    assert store.get("a").status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert store.claim_now("w", 30, T) == []  # nothing left
    # The thread's own connection still waits as before: a write elsewhere is waited for.
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, other.execute, ("ROLLBACK",)).start()
    store.enqueue([job("b")])
    assert store.get("b") is not None
    other.close()
    store.close()


def test_connections_of_threads_that_ended_are_closed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.db")
    threads = [threading.Thread(target=store.get, args=("x",)) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    threading.Thread(target=store.get, args=("x",)).start()  # opening one prunes the rest
    time.sleep(0.2)
    assert len(store._connections) <= 2
    store.close()


def test_purge_deletes_in_chunks_and_counts_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "PURGE_CHUNK", 7)
    store = SQLiteStore(tmp_path / "jobs.db")
    store.enqueue([job(f"j{i}") for i in range(30)])
    for claimed in store.claim("w", 30, [(("t",), 25)]):
        store.complete(claimed, None)
    assert store.purge(now() + timedelta(seconds=1)) == 25
    counts = store.counts()
    assert counts[JobStatus.QUEUED] == 5 and counts[JobStatus.SUCCEEDED] == 0
    store.close()


# -- files of earlier builds ------------------------------------------------------------

FIRST_BUILD = """
    CREATE TABLE errands_jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL, status TEXT NOT NULL, args TEXT NOT NULL, kwargs TEXT NOT NULL,
        attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL, result TEXT, error TEXT,
        traceback TEXT, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
        run_at REAL, after TEXT, owner TEXT, lease_until REAL,
        lost INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX errands_jobs_due ON errands_jobs (status, run_at, seq);
    CREATE INDEX errands_jobs_lease ON errands_jobs (status, lease_until);
    CREATE INDEX errands_jobs_finished ON errands_jobs (finished_at);
    CREATE INDEX errands_jobs_after ON errands_jobs (after);
"""
# The build before processes and claims by name.
PREVIOUS_BUILD = """
    CREATE TABLE errands_jobs (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL, status TEXT NOT NULL, args TEXT NOT NULL, kwargs TEXT NOT NULL,
        attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL, result TEXT, error TEXT,
        traceback TEXT, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
        run_at REAL, after TEXT, owner TEXT, lease_until REAL,
        lost INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX errands_queued ON errands_jobs (run_at, seq) WHERE status = 'queued';
    CREATE INDEX errands_running ON errands_jobs (lease_until) WHERE status = 'running';
    CREATE INDEX errands_finished ON errands_jobs (status, finished_at)
        WHERE finished_at IS NOT NULL;
"""

# The build before priorities: scheduled_at, and claims by name in due order.
BEFORE_PRIORITIES = """
    CREATE TABLE errands_jobs (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL, status TEXT NOT NULL, args TEXT NOT NULL, kwargs TEXT NOT NULL,
        attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL, result TEXT, error TEXT,
        traceback TEXT, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
        run_at REAL, after TEXT, owner TEXT, lease_until REAL,
        lost INTEGER NOT NULL DEFAULT 0, scheduled_at REAL);
    CREATE INDEX errands_claimable ON errands_jobs (name, run_at, seq) WHERE status = 'queued';
    CREATE INDEX errands_running ON errands_jobs (lease_until) WHERE status = 'running';
    CREATE INDEX errands_finished ON errands_jobs (status, finished_at)
        WHERE finished_at IS NOT NULL;
"""


@pytest.mark.parametrize(
    "schema",
    [FIRST_BUILD, PREVIOUS_BUILD, BEFORE_PRIORITIES],
    ids=["first", "previous", "before-priorities"],
)
def test_a_file_from_an_earlier_build_gets_the_new_indexes_and_tables(
    tmp_path: Path, schema: str
) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        schema
        + """
        INSERT INTO errands_jobs (id, name, status, args, kwargs, attempts, max_attempts,
            created_at, run_at) VALUES ('waiting', 't', 'queued', '[1]', '{}', 0, 1, 0, 0);
        """
    )
    old.close()
    store = SQLiteStore(path)
    indexes = {
        name
        for (name,) in store._db().execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'errands_%'"
        )
    }
    assert indexes == {
        "errands_claimable",
        "errands_running",
        "errands_finished",
        "errands_finished_by_task",
    }
    claimable = [row[2] for row in store._db().execute("PRAGMA index_info(errands_claimable)")]
    assert claimable == ["name", "priority", "run_at", "seq"]
    store.enqueue([job("new"), job("first", priority=1)])
    assert [j.id for j in store.claim("w", 30, T)] == ["first", "waiting", "new"]
    waiting = store.get("waiting")
    assert waiting is not None and waiting.priority == 0 and waiting.cancel_requested_at is None
    store.beat(ProcessInfo("web", "web", "host", 1, (), now(), now()))
    assert [p.id for p in store.processes()] == ["web"]
    store.close()


def test_a_row_with_a_time_no_date_holds_is_listed_as_failed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.db")
    store.enqueue([job("fine")])
    store._db().execute(
        "INSERT INTO errands_jobs (id, name, status, args, kwargs, attempts, max_attempts, "
        "created_at, run_at) VALUES ('far', 't', 'queued', '[]', '{}', 0, 1, 0, 253402300800.0)"
    )
    listed = {j.id: j for j in store.jobs()}
    assert listed["fine"].status is JobStatus.QUEUED
    assert listed["far"].status is JobStatus.FAILED and "CorruptJob" in (listed["far"].error or "")
    store.close()
