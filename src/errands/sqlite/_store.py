"""The SQLite store: jobs in one file, shared by every process that opens it.

WAL journal with ``synchronous=NORMAL``: a committed job survives the process being
killed (SIGKILL, OOM) because the WAL is in the OS's page cache; it may be lost only
if the machine itself loses power before the next checkpoint. ``FULL`` would fsync
every commit, about seven times slower here. Writes take ``BEGIN IMMEDIATE`` so
concurrent writers queue on the busy timeout instead of failing with "database is
locked" halfway through a transaction. Each thread gets its own connection.
Arguments and results are stored as JSON text.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._record import JobRecord, JobStatus, utcnow
from ..exceptions import ConfigurationError, StoreError
from ..local._store import MAX_LOST_LEASES, poison_error

_SCHEMA = """
CREATE TABLE IF NOT EXISTS errands_jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    args TEXT NOT NULL,
    kwargs TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    result TEXT,
    error TEXT,
    traceback TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    run_at REAL,
    after TEXT,
    owner TEXT,
    lease_until REAL,
    lost INTEGER NOT NULL DEFAULT 0
);
DROP INDEX IF EXISTS errands_jobs_due;
DROP INDEX IF EXISTS errands_jobs_lease;
DROP INDEX IF EXISTS errands_jobs_finished;
DROP INDEX IF EXISTS errands_jobs_after;
CREATE INDEX IF NOT EXISTS errands_queued ON errands_jobs (run_at, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS errands_running ON errands_jobs (lease_until)
    WHERE status = 'running';
CREATE INDEX IF NOT EXISTS errands_finished ON errands_jobs (status, finished_at)
    WHERE finished_at IS NOT NULL;
"""
# Each index is partial: it holds only the rows its queries look for, so a job's
# writes touch few index entries (a queued job is in one index, a running job in
# another). The DROPs replace the full indexes of files made by earlier builds,
# whose table keeps its AUTOINCREMENT: harmless, as a new rowid is above every
# kept one either way, which is all the FIFO order needs.

#: Jobs deleted per transaction by ``purge``.
PURGE_CHUNK = 1000

_COLUMNS = (
    "id, name, status, args, kwargs, attempts, max_attempts, result, error, traceback, "
    "created_at, started_at, finished_at, run_at, after, owner, lease_until, lost"
)
#: Where ``run_at`` is in a row of ``seq, {_COLUMNS}``.
_RUN_AT = 1 + _COLUMNS.split(", ").index("run_at")
_UNFINISHED = "('queued', 'running')"
#: A job waiting for the job added before it in its request.
_BLOCKED = (
    f"(j.after IS NOT NULL AND EXISTS (SELECT 1 FROM errands_jobs p "
    f"WHERE p.id = j.after AND p.status IN {_UNFINISHED}))"
)


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _dumps(value: Any, empty: str) -> str:
    return json.dumps(value) if value else empty


def _loads(text: str | None, default: Any, strict: bool) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        if strict:
            raise
        return default


def _record(row: sqlite3.Row | tuple[Any, ...], *, strict: bool = False) -> JobRecord:
    """A row as a record. Undecodable JSON raises when ``strict`` (a worker is about to
    run the job); for reading, it shows as empty arguments and no result."""
    (id, name, status, args, kwargs, attempts, max_attempts, result, error, trace, created_at,
     started_at, finished_at, run_at, after, owner, lease_until, lost) = row  # fmt: skip
    return JobRecord(
        id=id,
        name=name,
        status=JobStatus(status),
        args=_loads(args, [], strict),
        kwargs=_loads(kwargs, {}, strict),
        attempts=attempts,
        max_attempts=max_attempts,
        result=_loads(result, None, strict),
        error=error,
        traceback=trace,
        created_at=_dt(created_at) or utcnow(),
        started_at=_dt(started_at),
        finished_at=_dt(finished_at),
        run_at=_dt(run_at),
        durable=True,
        after=after,
        owner=owner,
        lease_until=_dt(lease_until),
        lost=lost,
    )


class SQLiteStore:
    durable = True
    claims = True

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        if sqlite3.sqlite_version_info < (3, 35):
            raise ConfigurationError(
                f"the SQLite store needs SQLite >= 3.35 (this Python has {sqlite3.sqlite_version})"
            )
        self.path = str(path)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        self._db().executescript(_SCHEMA)

    # -- connections ------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # transactions are explicit
                check_same_thread=False,
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            with self._lock:
                # Threads come and go (thread pools shrink): close what dead ones left.
                alive = []
                for thread, conn in self._connections:
                    if thread.is_alive():
                        alive.append((thread, conn))
                    else:
                        conn.close()
                alive.append((threading.current_thread(), db))
                self._connections = alive
        return db

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around several writes of this thread (group commit).

        Inside it each write runs in a savepoint (or, if it is a single statement, as
        that statement): a write that fails is undone alone. The transaction begins
        with the first write that needs it: a batch of idle polls (claims that find
        nothing due) never takes the write lock.
        """
        self._local.batch = None
        self._local.lazy = True
        try:
            yield
            db: sqlite3.Connection | None = self._local.batch
            if db is not None:
                try:
                    db.execute("COMMIT")
                except sqlite3.Error as exc:
                    raise self._error(exc) from exc
        except BaseException:
            db = self._local.batch
            if db is not None and db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            self._local.lazy = False
            self._local.batch = None

    def _begin(self) -> sqlite3.Connection:
        try:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return db

    @contextmanager
    def _write(self, *, one_statement: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; nothing of it is kept if any statement fails.

        A write of ``one_statement`` needs no savepoint in a batch: SQLite undoes a
        failed statement by itself.
        """
        batch: sqlite3.Connection | None = getattr(self._local, "batch", None)
        if batch is None and getattr(self._local, "lazy", False):
            batch = self._local.batch = self._begin()
        if batch is not None:
            if not one_statement:
                with self._savepoint(batch):
                    yield batch
                return
            self._check_batch(batch)
            try:
                yield batch
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            return
        db = self._begin()
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc) from exc
            raise

    def _check_batch(self, db: sqlite3.Connection) -> None:
        if not db.in_transaction:
            # An earlier write's error (a full disk, an I/O error) made SQLite roll the
            # whole batch back: nothing more may run, or it would commit on its own.
            raise StoreError(
                f"the SQLite store {self.path!r} rolled back a group of writes after an "
                f"error; nothing of it was stored"
            )

    @contextmanager
    def _savepoint(self, db: sqlite3.Connection) -> Iterator[None]:
        self._check_batch(db)
        db.execute("SAVEPOINT errands_write")
        try:
            yield
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK TO errands_write")
                db.execute("RELEASE errands_write")
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc) from exc
            raise
        db.execute("RELEASE errands_write")

    def _error(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(
            f"the SQLite store {self.path!r} could not be written: {exc}. Nothing of this "
            f"call was stored. Check that the disk has room and the file and its directory "
            f"are writable."
        )

    # -- writing ----------------------------------------------------------------

    def enqueue(self, jobs: Sequence[JobRecord]) -> None:
        rows = [
            (
                job.id, job.name, job.status.value, _dumps(job.args, "[]"),
                _dumps(job.kwargs, "{}"), job.attempts, job.max_attempts, None, job.error,
                job.traceback,
                job.created_at.timestamp(), _ts(job.started_at), _ts(job.finished_at),
                _ts(job.run_at), job.after, None, None, job.lost,
            )
            for job in jobs
        ]  # fmt: skip
        with self._write() as db:
            db.executemany(
                f"INSERT INTO errands_jobs ({_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def release(self, ids: Collection[str]) -> None:
        now = utcnow().timestamp()
        with self._write() as db:
            db.executemany(
                "UPDATE errands_jobs SET run_at = ? "
                "WHERE id = ? AND status = 'queued' AND attempts = 0",
                [(now, id) for id in ids],
            )

    def cancel(self, ids: Collection[str], reason: str) -> list[str]:
        now = utcnow().timestamp()
        cancelled = []
        with self._write() as db:
            for id in ids:
                row = db.execute(
                    "UPDATE errands_jobs SET status = 'cancelled', error = ?, finished_at = ? "
                    "WHERE id = ? AND status = 'queued' RETURNING id",
                    (reason, now, id),
                ).fetchone()
                if row is not None:
                    cancelled.append(id)
        return cancelled

    def claim(
        self, owner: str, limit: int, lease: float, ids: Collection[str] | None = None
    ) -> list[JobRecord]:
        now = utcnow().timestamp()
        until = now + lease
        blocked = _BLOCKED
        due, expired = self._look(now)
        if ids is None and not (due or expired):
            return []  # idle polls read only, and never take the write lock
        if ids is None:
            chosen = (
                f"SELECT j.seq FROM errands_jobs j WHERE j.status = 'queued' "
                f"AND j.run_at <= ? AND NOT {blocked} ORDER BY j.run_at, j.seq LIMIT ?"
            )
            values: tuple[Any, ...] = (now, limit)
        else:
            wanted = list(ids)
            chosen = (
                f"SELECT j.seq FROM errands_jobs j WHERE j.status = 'queued' "
                f"AND j.id IN ({', '.join('?' for _ in wanted)}) AND NOT {blocked} "
                f"ORDER BY j.seq LIMIT ?"
            )
            values = (*wanted, limit)
        with self._write() as db:
            if expired:
                self._expire_leases(db, now)
            # One statement takes them all (the choice is made before any is marked).
            rows = db.execute(
                "UPDATE errands_jobs SET status = 'running', attempts = attempts + 1, "
                f"owner = ?, lease_until = ?, started_at = ? WHERE seq IN ({chosen}) "
                f"RETURNING seq, {_COLUMNS}",
                (owner, until, now, *values),
            ).fetchall()
            # In the order chosen: due time, then FIFO.
            rows.sort(key=(lambda r: r[0]) if ids is not None else (lambda r: (r[_RUN_AT], r[0])))
            claimed = []
            for seq, *row in rows:
                try:
                    claimed.append(_record(row, strict=True))
                except (ValueError, TypeError) as exc:
                    # A row nobody can run: fail it with the reason, do not crash on it.
                    db.execute(
                        "UPDATE errands_jobs SET status = 'failed', error = ?, finished_at = ?, "
                        "owner = NULL, lease_until = NULL WHERE seq = ?",
                        (f"CorruptJob: the stored job cannot be read: {exc!r}", now, seq),
                    )
        return claimed

    def _expire_leases(self, db: sqlite3.Connection, now: float) -> None:
        """Jobs whose worker stopped renewing its lease are claimable again, up to
        MAX_LOST_LEASES times; then they are failed as poison."""
        db.execute(
            "UPDATE errands_jobs SET status = 'failed', lost = lost + 1, error = ?, "
            "traceback = NULL, finished_at = ?, owner = NULL, lease_until = NULL "
            "WHERE status = 'running' AND lease_until < ? AND lost + 1 >= ?",
            (poison_error(MAX_LOST_LEASES), now, now, MAX_LOST_LEASES),
        )
        db.execute(
            "UPDATE errands_jobs SET status = 'queued', lost = lost + 1, owner = NULL, "
            "lease_until = NULL, run_at = ? WHERE status = 'running' AND lease_until < ?",
            (now, now),
        )

    def _look(self, now: float) -> tuple[bool, bool]:
        """Whether any job is due, and whether any lease has run out: one read."""
        try:
            due, expired = (
                self._db()
                .execute(
                    "SELECT EXISTS (SELECT 1 FROM errands_jobs j WHERE j.status = 'queued' "
                    f"AND j.run_at <= ? AND NOT {_BLOCKED}), EXISTS (SELECT 1 FROM "
                    "errands_jobs WHERE status = 'running' AND lease_until < ?)",
                    (now, now),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return bool(due), bool(expired)

    def purge(self, before: datetime) -> int:
        # In short transactions, so that requests and workers never wait long for the
        # write lock behind a purge of a million jobs.
        purged = 0
        while True:
            with self._write() as db:
                deleted = db.execute(
                    "DELETE FROM errands_jobs WHERE seq IN (SELECT seq FROM errands_jobs "
                    "WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at < ? "
                    "LIMIT ?)",
                    (before.timestamp(), PURGE_CHUNK),
                ).rowcount
            purged += deleted
            if deleted < PURGE_CHUNK:
                return purged

    def _update_claimed(self, job: JobRecord, assignments: str, values: tuple[Any, ...]) -> bool:
        with self._write(one_statement=True) as db:
            row = db.execute(
                f"UPDATE errands_jobs SET {assignments} WHERE id = ? AND status = 'running' "
                "AND owner = ? AND attempts = ? RETURNING id",
                (*values, job.id, job.owner, job.attempts),
            ).fetchone()
        return row is not None

    def heartbeat(self, jobs: Sequence[JobRecord], lease: float) -> list[str]:
        until = utcnow().timestamp() + lease
        return [
            job.id for job in jobs if not self._update_claimed(job, "lease_until = ?", (until,))
        ]

    def complete(self, job: JobRecord, result: Any) -> bool:
        return self._update_claimed(
            job,
            "status = 'succeeded', result = ?, finished_at = ?, owner = NULL, lease_until = NULL",
            (json.dumps(result), utcnow().timestamp()),
        )

    def retry(self, job: JobRecord, error: str, traceback: str, run_at: datetime | None) -> bool:
        return self._update_claimed(
            job,
            "status = 'queued', error = ?, traceback = ?, run_at = ?, owner = NULL, "
            "lease_until = NULL",
            (error, traceback, _ts(run_at)),
        )

    def fail(self, job: JobRecord, error: str, traceback: str | None) -> bool:
        return self._update_claimed(
            job,
            "status = 'failed', error = ?, traceback = ?, finished_at = ?, owner = NULL, "
            "lease_until = NULL",
            (error, traceback, utcnow().timestamp()),
        )

    def requeue(self, job: JobRecord) -> bool:
        return self._update_claimed(
            job,
            "status = 'queued', attempts = attempts - 1, run_at = ?, owner = NULL, "
            "lease_until = NULL",
            (utcnow().timestamp(),),
        )

    # -- reading ----------------------------------------------------------------

    def get(self, id: str) -> JobRecord | None:
        row = (
            self._db()
            .execute(f"SELECT {_COLUMNS} FROM errands_jobs WHERE id = ?", (id,))
            .fetchone()
        )
        return _record(row) if row is not None else None

    def jobs(self, status: JobStatus | None = None, limit: int = 100) -> list[JobRecord]:
        if status is None:
            rows = self._db().execute(
                f"SELECT {_COLUMNS} FROM errands_jobs ORDER BY seq DESC LIMIT ?", (limit,)
            )
        else:
            # The status as a literal, so that its partial index can serve the query
            # rather than a scan of every job kept.
            source = {
                JobStatus.QUEUED: "errands_jobs INDEXED BY errands_queued",
                JobStatus.RUNNING: "errands_jobs INDEXED BY errands_running",
            }.get(status, "errands_jobs")
            finished = " AND finished_at IS NOT NULL" if status.finished else ""
            rows = self._db().execute(
                f"SELECT {_COLUMNS} FROM {source} WHERE status = '{status.value}'"
                f"{finished} ORDER BY seq DESC LIMIT ?",
                (limit,),
            )
        return [_record(row) for row in rows.fetchall()]

    def counts(self) -> dict[JobStatus, int]:
        # One count per index: each reads only its own (partial) index.
        rows = self._db().execute(
            "SELECT 'queued', COUNT(*) FROM errands_jobs WHERE status = 'queued' "
            "UNION ALL SELECT 'running', COUNT(*) FROM errands_jobs WHERE status = 'running' "
            "UNION ALL SELECT status, COUNT(*) FROM errands_jobs WHERE finished_at IS NOT NULL "
            "GROUP BY status"
        )
        found = dict(rows.fetchall())
        return {status: found.get(status.value, 0) for status in JobStatus}

    def unfinished(self) -> int:
        # Read from the two partial indexes alone: no finished job is looked at.
        row = (
            self._db()
            .execute(
                "SELECT (SELECT COUNT(*) FROM errands_jobs WHERE status = 'queued') + "
                "(SELECT COUNT(*) FROM errands_jobs WHERE status = 'running')"
            )
            .fetchone()
        )
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            for _, db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
