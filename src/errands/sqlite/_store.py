"""The SQLite store: jobs in one file, shared by every process that opens it.

WAL journal with ``synchronous=NORMAL``: a committed job survives the process being
killed (SIGKILL, OOM) because the WAL is in the OS's page cache; it may be lost only
if the machine itself loses power before the next checkpoint. ``FULL`` would fsync
every commit, about seven times slower here. Writes take ``BEGIN IMMEDIATE`` so
concurrent writers queue on the busy timeout instead of failing with "database is
locked" halfway through a transaction. Each thread gets its own connection.
Arguments and results are stored as JSON text. No ``sqlite3`` error leaves a method:
each becomes the ``StoreError`` that says what happened and what to do (``_errors``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .._cancel import CANCELLED_QUEUED, CANCELLED_RUNNING
from .._limits import Limit
from .._record import JobRecord, JobStatus, utcnow
from .._tuning import BUSY_TIMEOUT, MAX_LOST_LEASES, PURGE_CHUNK
from ..exceptions import ConfigurationError, StoreError
from ..local._store import Want, poison_error
from ._errors import busy
from ._processes import Processes
from ._rows import (
    Row,
    Unreadable,
    corrupt_error,
    dumps,
    record,
    ts,
)
from ._schema import (
    ADDED,
    INDEXES,
    INSERT,
    INSERT_NEW,
    SCHEMA,
)
from ._sql import (
    RELEASED_RUN_AT,
    allowance,
    claim_ids_sql,
    claim_order,
    claim_sql,
    look_sql,
    missing_columns,
    old_claimable,
    spend,
    split_limited,
    stopped_status,
    unless_stopped,
)
from ._transactions import mapped

logger = logging.getLogger("errands")


class SQLiteStore(Processes):
    durable = True

    def __init__(self, path: str | Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        if sqlite3.sqlite_version_info < (3, 35):
            raise ConfigurationError(
                f"the SQLite store needs SQLite >= 3.35 (this Python has {sqlite3.sqlite_version})"
            )
        super().__init__(path, busy_timeout)
        self._warned: set[str] = set()
        self.lost: deque[str] = deque()
        try:
            self._db().executescript(SCHEMA)
            if missing_columns(self._db()) or old_claimable(self._db()):  # made by an earlier build
                with self._write() as db:
                    for column in missing_columns(db):  # again: another process may have added it
                        db.execute(f"ALTER TABLE errands_jobs ADD COLUMN {column} {ADDED[column]}")
                    if old_claimable(db):
                        db.execute("DROP INDEX errands_claimable")
            self._db().executescript(INDEXES)
        except sqlite3.Error as exc:
            self.close()
            raise self._error(exc) from exc

    # -- writing ----------------------------------------------------------------

    @mapped
    def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        rows = [
            (
                job.id, job.name, job.status.value, dumps(job.args, "[]"),
                dumps(job.kwargs, "{}"), job.attempts, job.max_attempts, None, job.error,
                job.traceback,
                job.created_at.timestamp(), ts(job.started_at), ts(job.finished_at),
                ts(job.run_at), job.after, job.owner, None, job.lost, ts(job.scheduled_at),
                job.priority, ts(job.cancel_requested_at), job.traceparent,
            )
            for job in jobs
        ]  # fmt: skip
        kept: list[JobRecord] = []
        with self._write() as db:
            # One statement for all, in a savepoint of its own: an id already kept (a
            # caller's, task.options(job_id=)) fails it, and then each row goes alone.
            db.execute("SAVEPOINT errands_enqueue")
            try:
                db.executemany(INSERT, rows)
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK TO errands_enqueue")
                db.execute("RELEASE errands_enqueue")
                kept = [
                    job
                    for job, row in zip(jobs, rows, strict=True)
                    if db.execute(INSERT_NEW, row).fetchone() is None
                ]
            else:
                db.execute("RELEASE errands_enqueue")
        if any(job.owner is None for job in jobs):  # free: claimable (when due) at once
            self._announce()
        return kept

    @mapped
    def release(self, ids: Collection[str]) -> None:
        now = utcnow().timestamp()
        with self._write() as db:
            released = db.executemany(
                f"UPDATE errands_jobs SET run_at = {RELEASED_RUN_AT}, owner = NULL WHERE id = ? "
                "AND status = 'queued' AND attempts = 0 AND owner IS NOT NULL",
                [(now, id) for id in ids],
            ).rowcount
        if released:
            self._announce()

    @mapped
    def cancel(self, ids: Collection[str], reason: str) -> list[str]:
        now = utcnow().timestamp()
        cancelled = []
        with self._write() as db:
            for id in ids:
                row = db.execute(
                    "UPDATE errands_jobs SET status = 'cancelled', error = ?, finished_at = ?, "
                    "owner = NULL WHERE id = ? AND status = 'queued' RETURNING id",
                    (reason, now, id),
                ).fetchone()
                if row is not None:
                    cancelled.append(id)
        return cancelled

    @mapped
    def claim(
        self,
        owner: str,
        lease: float,
        wants: Sequence[Want],
        limit: int | None = None,
        limits: Mapping[str, Limit] | None = None,
    ) -> list[JobRecord]:
        groups = [(tuple(names), most) for names, most in wants if most > 0 and names]
        if limit is None:
            limit = sum(most for _, most in groups)
        if not groups or limit <= 0:
            return []
        now = utcnow().timestamp()
        wanted = tuple(dict.fromkeys(name for names, _ in groups for name in names))
        limited = {name: limits[name] for name in wanted if limits and name in limits}
        look: list[Any] = []
        for name in wanted:
            look += (name, now)
        *due, expired = self._db().execute(look_sql(len(wanted)), (*look, now)).fetchone()
        if not expired:
            ready = {name for name, found in zip(wanted, due, strict=True) if found}
            if ready and limited:  # a task at its limit has nothing to claim
                allowed, _ = allowance(self._db(), limited, now)
                ready -= {name for name, most in allowed.items() if most <= 0}
            if not ready:
                return []  # idle polls read only, and never take the write lock
            groups = [(tuple(name for name in names if name in ready), n) for names, n in groups]
        claimed: list[JobRecord] = []
        lost: list[str] = []
        with self._write() as db:
            if expired:
                lost = self._expire_leases(db, now)
            allowed, tokens = allowance(db, limited, now) if limited else ({}, {})
            for names, most, kind in split_limited(groups, allowed):
                left = min(most[kind], limit - len(claimed))
                if len(names) == 1 and names[0] in allowed:
                    left = min(left, allowed[names[0]])
                if not names or left <= 0:
                    continue
                values: list[Any] = [owner, now + lease, now]
                for name in names:
                    values += (name, now, left)
                if len(names) > 1:
                    values.append(left)
                # One statement takes the group's jobs (chosen before any is marked).
                rows = db.execute(claim_sql(len(names)), values).fetchall()
                # Priority first, then due time, then FIFO.
                rows.sort(key=claim_order)
                most[kind] -= len(rows)
                if len(names) == 1 and names[0] in allowed:
                    spend(db, limited[names[0]], names[0], tokens, len(rows), now)
                claimed += self._records(db, rows, now)
        if lost:  # counted once the transaction is in
            self.after_commit(lambda: self.lost.extend(lost))
            self._announce()  # for workers of the names this claim does not want
        return claimed

    def claim_now(
        self,
        owner: str,
        lease: float,
        wants: Sequence[Want],
        limit: int | None = None,
        limits: Mapping[str, Limit] | None = None,
    ) -> list[JobRecord] | None:
        try:
            with self._without_waiting():
                return self.claim(owner, lease, wants, limit, limits)
        except StoreError as exc:
            if busy(exc.__cause__):
                return None
            raise
        except sqlite3.Error as exc:  # (opening the connection)
            raise self._error(exc) from exc

    @mapped
    def claim_ids(self, owner: str, lease: float, ids: Collection[str]) -> list[JobRecord]:
        wanted = list(ids)
        if not wanted:
            return []
        now = utcnow().timestamp()
        with self._write() as db:
            rows = db.execute(claim_ids_sql(len(wanted)), (owner, now + lease, now, *wanted))
            return self._records(db, sorted(rows.fetchall()), now)

    def _records(self, db: sqlite3.Connection, rows: list[Row], now: float) -> list[JobRecord]:
        """Claimed rows as records; a row nobody can run is failed with the reason."""
        claimed = []
        for seq, *row in rows:
            try:
                claimed.append(record(row))
            except Unreadable as exc:
                self._warn(row[0], str(exc), "failed")
                db.execute(
                    "UPDATE errands_jobs SET status = 'failed', error = ?, finished_at = ?, "
                    "owner = NULL, lease_until = NULL WHERE seq = ?",
                    (corrupt_error(str(exc)), now, seq),
                )
        return claimed

    def _expire_leases(self, db: sqlite3.Connection, now: float) -> list[str]:
        """Jobs whose worker stopped renewing its lease are claimable again, up to
        MAX_LOST_LEASES times; then they are failed as poison. The task names of the
        attempts so lost."""
        # One asked to stop ends cancelled: it is not run again.
        lost = db.execute(
            "UPDATE errands_jobs SET status = 'cancelled', lost = lost + 1, error = ?, "
            "finished_at = ?, owner = NULL, lease_until = NULL "
            "WHERE status = 'running' AND lease_until < ? AND cancel_requested_at IS NOT NULL "
            "RETURNING name",
            (CANCELLED_RUNNING, now, now),
        ).fetchall()
        lost += db.execute(
            "UPDATE errands_jobs SET status = 'failed', lost = lost + 1, error = ?, "
            "traceback = NULL, finished_at = ?, owner = NULL, lease_until = NULL "
            "WHERE status = 'running' AND lease_until < ? AND lost + 1 >= ? RETURNING name",
            (poison_error(MAX_LOST_LEASES), now, now, MAX_LOST_LEASES),
        ).fetchall()
        lost += db.execute(
            "UPDATE errands_jobs SET status = 'queued', lost = lost + 1, owner = NULL, "
            "lease_until = NULL, run_at = ? WHERE status = 'running' AND lease_until < ? "
            "RETURNING name",
            (now, now),
        ).fetchall()
        return [name for (name,) in lost]

    @mapped
    def renew(self, jobs: Sequence[JobRecord], lease: float) -> list[str]:
        until = utcnow().timestamp() + lease
        return [
            job.id
            for job in jobs
            if self._update_claimed(job, "lease_until = ?", (until,), ends=False) is None
        ]

    @mapped
    def complete(self, job: JobRecord, result: Any) -> JobStatus | None:
        return self._update_claimed(
            job,
            f"status = {stopped_status('succeeded')}, result = {unless_stopped('?', 'NULL')}, "
            f"error = {unless_stopped('error', '?')}, finished_at = ?",
            (json.dumps(result), CANCELLED_RUNNING, utcnow().timestamp()),
        )

    @mapped
    def retry(
        self, job: JobRecord, error: str, traceback: str, run_at: datetime
    ) -> JobStatus | None:
        return self._update_claimed(
            job,
            f"status = {stopped_status('queued')}, error = {unless_stopped('?', '?')}, "
            f"traceback = ?, run_at = ?, finished_at = {unless_stopped('NULL', '?')}",
            (error, CANCELLED_RUNNING, traceback, run_at.timestamp(), utcnow().timestamp()),
        )

    @mapped
    def fail(self, job: JobRecord, error: str, traceback: str | None) -> JobStatus | None:
        return self._update_claimed(
            job,
            f"status = {stopped_status('failed')}, error = {unless_stopped('?', '?')}, "
            "traceback = ?, finished_at = ?",
            (error, CANCELLED_RUNNING, traceback, utcnow().timestamp()),
        )

    @mapped
    def requeue(self, job: JobRecord) -> JobStatus | None:
        now = utcnow().timestamp()
        status = self._update_claimed(
            job,
            f"status = {stopped_status('queued')}, error = {unless_stopped('error', '?')}, "
            f"finished_at = {unless_stopped('NULL', '?')}, attempts = attempts - 1, run_at = ?",
            (CANCELLED_RUNNING, now, now),
        )
        if status is JobStatus.QUEUED:  # given back, due now
            self._announce()
        return status

    def _update_claimed(
        self, job: JobRecord, assignments: str, values: tuple[Any, ...], *, ends: bool = True
    ) -> JobStatus | None:
        """Write to ``job``'s claim, if it is still the current one (with ``ends``, its
        outcome: the claim ends); the job's status after it."""
        if ends:
            assignments += ", owner = NULL, lease_until = NULL"
        with self._write(one_statement=True) as db:
            row = db.execute(
                f"UPDATE errands_jobs SET {assignments} "
                "WHERE id = ? AND status = 'running' AND owner = ? AND attempts = ? "
                "RETURNING status",
                (*values, job.id, job.owner, job.attempts),
            ).fetchone()
        return None if row is None else JobStatus(row[0])

    @mapped
    def request_cancel(self, id: str) -> tuple[JobRecord | None, bool]:
        now = utcnow().timestamp()
        with self._write() as db:
            cancelled = db.execute(
                "UPDATE errands_jobs SET status = 'cancelled', error = ?, finished_at = ?, "
                "owner = NULL WHERE id = ? AND status = 'queued' RETURNING id",
                (CANCELLED_QUEUED, now, id),
            ).fetchone()
            if cancelled is None:
                db.execute(
                    "UPDATE errands_jobs SET cancel_requested_at = ? WHERE id = ? "
                    "AND status = 'running' AND cancel_requested_at IS NULL",
                    (now, id),
                )
            found = self._find(db, id)
        return found, cancelled is not None

    @mapped
    def cancelling(self, ids: Collection[str]) -> list[str]:
        wanted = list(ids)
        found: list[str] = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self._db().execute(
                "SELECT id FROM errands_jobs INDEXED BY errands_running WHERE status = 'running' "
                f"AND cancel_requested_at IS NOT NULL AND id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            found += [id for (id,) in rows.fetchall()]
        return found

    @mapped
    def requeue_finished(self, id: str, max_attempts: int) -> JobRecord | None:
        with self._write() as db:
            db.execute(
                "UPDATE errands_jobs SET status = 'queued', run_at = ?, max_attempts = ?, "
                "result = NULL, finished_at = NULL, cancel_requested_at = NULL, owner = NULL, "
                "lease_until = NULL WHERE id = ? AND status IN ('failed', 'cancelled')",
                (utcnow().timestamp(), max_attempts, id),
            )
            found = self._find(db, id)
        if found is not None and found.status is JobStatus.QUEUED:
            self._announce()
        return found

    @mapped
    def purge(
        self,
        before: datetime,
        statuses: Collection[JobStatus] | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        # In short transactions, so that requests and workers never wait long for the
        # write lock behind a purge of a million jobs.
        cutoff = before.timestamp()
        every = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
        kinds = [s.value for s in (every if statuses is None else statuses) if s.finished]
        if not kinds:
            return 0
        marks = ", ".join("?" * len(kinds))
        with self._write() as db:
            db.execute(
                "DELETE FROM errands_processes WHERE stopped_at IS NOT NULL AND stopped_at < ?",
                (cutoff,),
            )
        purged = 0
        while True:
            with self._write() as db:
                deleted = db.execute(
                    "DELETE FROM errands_jobs WHERE seq IN (SELECT seq FROM errands_jobs "
                    f"WHERE status IN ({marks}) AND finished_at < ? LIMIT ?)",
                    (*kinds, cutoff, PURGE_CHUNK),
                ).rowcount
            purged += deleted
            if progress is not None:
                progress(purged)
            if deleted < PURGE_CHUNK:
                return purged
