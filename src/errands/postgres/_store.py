"""The PostgreSQL store: jobs in a schema of one database, shared by every process on
every host that opens it.

The same semantics as the SQLite store (``errands.sqlite._store``), statement for
statement where they can be; what differs is concurrency. Claims pass over rows
other claimers hold (``FOR UPDATE SKIP LOCKED``, see ``_sql``) instead of queueing on
one write lock; task limits are counted under an advisory lock a name; every write
that depends on a job's state says that state in its ``WHERE`` (PostgreSQL checks it
again on the row it locks), so two processes never both end, expire or cancel one
job. No ``psycopg`` error leaves a method: each becomes a ``StoreError`` (``_errors``).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from .._cancel import CANCELLED_QUEUED, CANCELLED_RUNNING
from .._limits import Limit
from .._record import JobRecord, JobStatus, utcnow
from .._tuning import MAX_LOST_LEASES, POLL_ANNOUNCED, PURGE_CHUNK
from ..local._listeners import Listeners
from ..local._store import ProcessInfo, Success, Want, poison_error
from ..sqlite._rows import Row, Unreadable, corrupt_error, process_info, record
from ..sqlite._sql import claim_order, split_limited, stopped_status, unless_stopped
from ._connections import Connection, mapped
from ._listen import Listener, channel
from ._reads import Reads
from ._schema import INSERT_NEW, PROCESS_COLUMNS, PROCESS_NAMES, insert_sql, new_row
from ._sql import (
    CLAIM_IDS,
    LOOK,
    SERVER_LATER,
    SERVER_NOW,
    allowance,
    claim_sql,
    lock_limits,
    spend,
)
from ._transaction import Writer

#: A released job is due now (parameter), or at its scheduled time if that is later.
RELEASED_RUN_AT = "GREATEST(%s, scheduled_at)"
FINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
#: Successes recorded (parameters: the error of a job asked to stop, now, then arrays
#: of the jobs' ids, owners, attempts and results), each where its claim is current:
#: ``complete``'s statement for many jobs, one round trip.
COMPLETE_ALL = (
    f"UPDATE jobs SET status = {stopped_status('succeeded')}, "
    f"result = {unless_stopped('done.result', 'NULL')}, error = {unless_stopped('error', '%s')}, "
    "finished_at = %s, owner = NULL, lease_until = NULL FROM unnest(%s::text[], %s::text[], "
    "%s::integer[], %s::text[]) AS done(id, owner, attempts, result) WHERE jobs.id = done.id "
    "AND jobs.status = 'running' AND jobs.owner = done.owner AND jobs.attempts = done.attempts "
    "RETURNING jobs.id, jobs.status"
)
#: A request's jobs released (parameters: now, their ids, the channel), and the workers
#: told if any was: one statement, one round trip.
RELEASE = (
    f"WITH released AS (UPDATE jobs SET run_at = {RELEASED_RUN_AT}, owner = NULL "
    "WHERE id = ANY(%s) AND status = 'queued' AND attempts = 0 AND owner IS NOT NULL "
    "RETURNING 1) SELECT pg_notify(%s, '') WHERE EXISTS (SELECT 1 FROM released)"
)


class PostgresStore(Reads):
    durable = True

    def __init__(self, conninfo: str, *, schema: str = "errands", location: str = "") -> None:
        super().__init__(conninfo, schema, location or f"a PostgreSQL database (schema {schema})")
        self._warned: set[str] = set()
        self.lost: deque[str] = deque()
        self._listeners = Listeners()

    def writer(self, record: JobRecord) -> Writer:
        """``add_task_in``: what writes ``record`` on a connection of the caller's."""
        return Writer(self, record)

    # -- writing ----------------------------------------------------------------

    @mapped
    def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        if not jobs:
            return []
        if len(jobs) == 1:  # (add_task): one statement, its notification in it
            job = jobs[0]
            with self._write(one_statement=True) as db:
                if job.owner is None:  # free: claimable (when due) at once
                    row = (*new_row(job), channel(self.schema))
                    added = db.execute(insert_sql(self.schema), row).fetchone()
                else:
                    added = db.execute(INSERT_NEW, new_row(job)).fetchone()
            return [] if added is not None else [job]
        rows = [new_row(job) for job in jobs]
        kept = []
        with self._write() as db:
            # One statement a job, pipelined; an id already kept (a caller's, or twice
            # in ``jobs``) adds nothing and returns no row.
            cursor = db.cursor()
            cursor.executemany(INSERT_NEW, rows, returning=True)
            free = False  # an added job nobody holds: claimable (when due) at once
            for job in jobs:
                if cursor.fetchone() is None:
                    kept.append(job)
                elif job.owner is None:
                    free = True
                cursor.nextset()
            if free:
                self._announce(db)
        return kept

    @mapped
    def release(self, ids: Collection[str]) -> None:
        with self._write(one_statement=True) as db:
            db.execute(RELEASE, (utcnow(), list(ids), channel(self.schema)))

    @mapped
    def cancel(self, ids: Collection[str], reason: str) -> list[str]:
        wanted = list(ids)
        with self._write() as db:
            rows = db.execute(
                "UPDATE jobs SET status = 'cancelled', error = %s, finished_at = %s, "
                "owner = NULL WHERE id = ANY(%s) AND status = 'queued' RETURNING id",
                (reason, utcnow(), wanted),
            ).fetchall()
        cancelled = {id for (id,) in rows}
        return [id for id in dict.fromkeys(wanted) if id in cancelled]

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
        now = utcnow()
        wanted = list(dict.fromkeys(name for names, _ in groups for name in names))
        limited = {name: limits[name] for name in wanted if limits and name in limits}
        with self._read() as db:
            row = db.execute(LOOK, (wanted, now)).fetchone()
        assert row is not None
        ready, expired = set(row[0]), row[1]
        if not ready and not expired:
            return []  # an idle poll: one read, no transaction
        if not expired:
            groups = [(tuple(name for name in names if name in ready), n) for names, n in groups]
        # The usual claim is one statement: no lease ran out, no limit, one group.
        single = not expired and not limited and sum(bool(names) for names, _ in groups) == 1
        claimed: list[JobRecord] = []
        lost: list[str] = []
        # A claim may commit alone as its batch's first write: should the batch fail
        # after it, the jobs wait for their lease, claimed by nobody that runs them (a
        # request's writes never do: a 503 means nothing of them was kept).
        with self._write(one_statement=single, alone=True) as db:
            if expired:
                lost = self._expire_leases(db, now)
            if limited:
                lock_limits(db, self.schema, list(limited))
                # Counted from now on: a job that ended while this claim waited for the
                # lock ended before the jobs it lets start (their started_at says so).
                now = utcnow()
            allowed, tokens = allowance(db, limited, now.timestamp()) if limited else ({}, {})
            for names, most, kind in split_limited(groups, allowed):
                left = min(most[kind], limit - len(claimed))
                if len(names) == 1 and names[0] in allowed:
                    left = min(left, allowed[names[0]])
                if not names or left <= 0:
                    continue
                values: tuple[Any, ...] = (owner, lease, now)
                if len(names) == 1:
                    values += (names[0], now, left)
                else:
                    values += (list(names), now, left, left)
                rows = db.execute(claim_sql(len(names) > 1), values).fetchall()
                rows.sort(key=claim_order)  # priority first, then due time, then FIFO
                most[kind] -= len(rows)
                if len(names) == 1 and names[0] in allowed:
                    spend(db, limited[names[0]], names[0], tokens, len(rows), now.timestamp())
                claimed += self._records(db, rows, now)
        if lost:  # counted once the transaction is in (a batch's, inside one)
            self.after_commit(lambda: self.lost.extend(lost))
        return claimed

    @mapped
    def claim_ids(self, owner: str, lease: float, ids: Collection[str]) -> list[JobRecord]:
        wanted = list(ids)
        if not wanted:
            return []
        now = utcnow()
        with self._write() as db:
            rows = db.execute(CLAIM_IDS, (owner, lease, now, wanted))
            return self._records(db, sorted(rows.fetchall()), now)

    def _records(self, db: Connection, rows: Sequence[Row], now: datetime) -> list[JobRecord]:
        """Claimed rows as records; a row nobody can run is failed with the reason (in
        the claim's transaction, or just after a claim of one statement: should that
        write be lost, the row's lease runs out, and it is claimed and failed again)."""
        claimed = []
        for seq, *row in rows:
            try:
                claimed.append(record(row))
            except Unreadable as exc:
                self._warn(row[0], str(exc), "failed")
                db.execute(
                    "UPDATE jobs SET status = 'failed', error = %s, finished_at = %s, "
                    "owner = NULL, lease_until = NULL WHERE seq = %s",
                    (corrupt_error(str(exc)), now, seq),
                )
        return claimed

    def _expire_leases(self, db: Connection, now: datetime) -> list[str]:
        """Jobs whose worker stopped renewing its lease are claimable again, up to
        MAX_LOST_LEASES times; then they are failed as poison. The task names of the
        attempts so lost (each found by one claimer: the row's lock decides)."""
        # One asked to stop ends cancelled: it is not run again.
        lost = db.execute(
            "UPDATE jobs SET status = 'cancelled', lost = lost + 1, error = %s, "
            "finished_at = %s, owner = NULL, lease_until = NULL "
            f"WHERE status = 'running' AND lease_until < {SERVER_NOW} "
            "AND cancel_requested_at IS NOT NULL RETURNING name",
            (CANCELLED_RUNNING, now),
        ).fetchall()
        lost += db.execute(
            "UPDATE jobs SET status = 'failed', lost = lost + 1, error = %s, "
            "traceback = NULL, finished_at = %s, owner = NULL, lease_until = NULL "
            f"WHERE status = 'running' AND lease_until < {SERVER_NOW} AND lost + 1 >= %s "
            "RETURNING name",
            (poison_error(MAX_LOST_LEASES), now, MAX_LOST_LEASES),
        ).fetchall()
        again = db.execute(
            "UPDATE jobs SET status = 'queued', lost = lost + 1, owner = NULL, "
            f"lease_until = NULL, run_at = %s WHERE status = 'running' AND lease_until < "
            f"{SERVER_NOW} RETURNING name",
            (now,),
        ).fetchall()
        if again:
            self._announce(db)  # for workers of the names this claim does not want
        return [name for (name,) in lost + again]

    @mapped
    def renew(self, jobs: Sequence[JobRecord], lease: float) -> list[str]:
        return [
            job.id
            for job in jobs
            if self._update_claimed(job, f"lease_until = {SERVER_LATER}", (lease,), ends=False)
            is None
        ]

    @mapped
    def complete(self, job: JobRecord, result: Any) -> JobStatus | None:
        return self._update_claimed(
            job,
            f"status = {stopped_status('succeeded')}, result = {unless_stopped('%s', 'NULL')}, "
            f"error = {unless_stopped('error', '%s')}, finished_at = %s",
            (json.dumps(result), CANCELLED_RUNNING, utcnow()),
        )

    @mapped
    def complete_all(self, successes: Sequence[Success]) -> None:
        ids, owners, attempts, results = [], [], [], []
        for success in successes:
            ids.append(success.job.id)
            owners.append(success.job.owner)
            attempts.append(success.job.attempts)
            results.append(json.dumps(success.result))
        with self._write() as db:
            rows = db.execute(
                COMPLETE_ALL, (CANCELLED_RUNNING, utcnow(), ids, owners, attempts, results)
            ).fetchall()
        statuses = dict(rows)
        for success in successes:
            status = statuses.get(success.job.id)
            success.status = None if status is None else JobStatus(status)

    @mapped
    def retry(
        self, job: JobRecord, error: str, traceback: str, run_at: datetime
    ) -> JobStatus | None:
        return self._update_claimed(
            job,
            f"status = {stopped_status('queued')}, error = {unless_stopped('%s', '%s')}, "
            f"traceback = %s, run_at = %s, finished_at = {unless_stopped('NULL', '%s')}",
            (error, CANCELLED_RUNNING, traceback, run_at, utcnow()),
        )

    @mapped
    def fail(self, job: JobRecord, error: str, traceback: str | None) -> JobStatus | None:
        return self._update_claimed(
            job,
            f"status = {stopped_status('failed')}, error = {unless_stopped('%s', '%s')}, "
            "traceback = %s, finished_at = %s",
            (error, CANCELLED_RUNNING, traceback, utcnow()),
        )

    @mapped
    def requeue(self, job: JobRecord) -> JobStatus | None:
        now = utcnow()
        return self._update_claimed(
            job,
            f"status = {stopped_status('queued')}, error = {unless_stopped('error', '%s')}, "
            f"finished_at = {unless_stopped('NULL', '%s')}, attempts = attempts - 1, run_at = %s",
            (CANCELLED_RUNNING, now, now),
            announce=True,
        )

    def _update_claimed(
        self,
        job: JobRecord,
        assignments: str,
        values: tuple[Any, ...],
        *,
        ends: bool = True,
        announce: bool = False,
    ) -> JobStatus | None:
        """Write to ``job``'s claim, if it is still the current one (with ``ends``, its
        outcome: the claim ends); the job's status after it. With ``announce``, a job
        queued by it is announced (due now: given back)."""
        if ends:
            assignments += ", owner = NULL, lease_until = NULL"
        with self._write() as db:
            row = db.execute(
                f"UPDATE jobs SET {assignments} "
                "WHERE id = %s AND status = 'running' AND owner = %s AND attempts = %s "
                "RETURNING status",
                (*values, job.id, job.owner, job.attempts),
            ).fetchone()
            if announce and row is not None and row[0] == JobStatus.QUEUED.value:
                self._announce(db)
        return None if row is None else JobStatus(row[0])

    @mapped
    def request_cancel(self, id: str) -> tuple[JobRecord | None, bool]:
        now = utcnow()
        with self._write() as db:
            cancelled = db.execute(
                "UPDATE jobs SET status = 'cancelled', error = %s, finished_at = %s, "
                "owner = NULL WHERE id = %s AND status = 'queued' RETURNING id",
                (CANCELLED_QUEUED, now, id),
            ).fetchone()
            if cancelled is None:
                db.execute(
                    "UPDATE jobs SET cancel_requested_at = %s WHERE id = %s "
                    "AND status = 'running' AND cancel_requested_at IS NULL",
                    (now, id),
                )
            found = self._find(db, id)
        return found, cancelled is not None

    @mapped
    def cancelling(self, ids: Collection[str]) -> list[str]:
        with self._read() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE status = 'running' "
                "AND cancel_requested_at IS NOT NULL AND id = ANY(%s)",
                (list(ids),),
            ).fetchall()
        return [id for (id,) in rows]

    @mapped
    def requeue_finished(self, id: str, max_attempts: int) -> JobRecord | None:
        with self._write() as db:
            queued = db.execute(
                "UPDATE jobs SET status = 'queued', run_at = %s, max_attempts = %s, "
                "result = NULL, finished_at = NULL, cancel_requested_at = NULL, owner = NULL, "
                "lease_until = NULL WHERE id = %s AND status IN ('failed', 'cancelled')",
                (utcnow(), max_attempts, id),
            ).rowcount
            if queued:
                self._announce(db)
            return self._find(db, id)

    @mapped
    def purge(
        self,
        before: datetime,
        statuses: Collection[JobStatus] | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        # In short transactions: a purge of a million jobs never holds their row locks
        # (nor bloats one transaction) for long.
        kinds = [s.value for s in (FINAL if statuses is None else statuses) if s.finished]
        if not kinds:
            return 0
        with self._write() as db:
            db.execute(
                "DELETE FROM processes WHERE stopped_at IS NOT NULL AND stopped_at < %s",
                (before,),
            )
        purged = 0
        while True:
            with self._write() as db:
                deleted = db.execute(
                    "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE status = ANY(%s) "
                    "AND finished_at < %s LIMIT %s)",
                    (kinds, before, PURGE_CHUNK),
                ).rowcount
            purged += deleted
            if progress is not None:
                progress(purged)
            if deleted < PURGE_CHUNK:
                return purged

    def _announce(self, db: Connection) -> None:
        """Tell the listening workers that jobs became claimable (at commit)."""
        db.execute("SELECT pg_notify(%s, '')", (channel(self.schema),))

    #: How often a worker that is told of new jobs still polls (seconds).
    poll_announced = POLL_ANNOUNCED

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        listener = Listener(self._conninfo, self.schema, wake, self.location)
        return self._listeners.keep(listener)

    def close(self) -> None:
        self._listeners.close()
        super().close()

    # -- processes --------------------------------------------------------------

    @mapped
    def beat(self, process: ProcessInfo) -> None:
        with self._write() as db:
            db.execute(
                f"INSERT INTO processes ({', '.join(PROCESS_NAMES)}) "
                f"VALUES (%s, %s, %s, %s, %s, %s, {SERVER_NOW}, NULL) "
                "ON CONFLICT (id) DO UPDATE SET role = excluded.role, host = excluded.host, "
                "pid = excluded.pid, tasks = excluded.tasks, seen_at = excluded.seen_at, "
                "stopped_at = NULL",
                (
                    process.id,
                    process.role,
                    process.host,
                    process.pid,
                    json.dumps(list(process.tasks)),
                    process.started_at,
                ),
            )

    @mapped
    def stopped(self, id: str) -> None:
        now = utcnow()
        with self._write() as db:
            db.execute(
                "UPDATE processes SET stopped_at = %s WHERE id = %s AND stopped_at IS NULL",
                (now, id),
            )
            self._release_held(db, [id], now)

    @mapped
    def release_orphans(self, seen_before: datetime) -> list[str]:
        # Heartbeats are the server's times: the age asked for, on the server's clock.
        age = max(0.0, (utcnow() - seen_before).total_seconds())
        stale = f"stopped_at IS NULL AND seen_at < {SERVER_NOW} - %s * interval '1 second'"
        with self._read() as db:
            found = db.execute(
                f"SELECT EXISTS (SELECT 1 FROM processes WHERE {stale})", (age,)
            ).fetchone()
        if not found or not found[0]:
            return []  # the usual answer: one read
        now = utcnow()
        with self._write() as db:
            # Asked again as a write: one may have beaten since, or another process
            # found it first (the row's lock decides).
            rows = db.execute(
                f"UPDATE processes SET stopped_at = %s WHERE {stale} RETURNING id",
                (now, age),
            ).fetchall()
            gone = [id for (id,) in rows]
            if gone:
                self._release_held(db, gone, now)
        return gone

    def _release_held(self, db: Connection, owners: Sequence[str], now: datetime) -> None:
        """Release the unreleased jobs of processes that are gone: a read of the queued
        jobs (no index by owner: it would cost every enqueue, for a rare event)."""
        released = db.execute(
            f"UPDATE jobs SET run_at = {RELEASED_RUN_AT}, owner = NULL WHERE status = 'queued' "
            "AND attempts = 0 AND owner = ANY(%s)",
            (now, list(owners)),
        ).rowcount
        if released:
            self._announce(db)

    @mapped
    def processes(self) -> list[ProcessInfo]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {PROCESS_COLUMNS}, EXTRACT(EPOCH FROM {SERVER_NOW})::float8 "
                "FROM processes ORDER BY seen_at DESC"
            ).fetchall()
        # Heartbeats are the server's times: read on this host's clock, as the callers
        # compare them with it (which processes are alive, how long ago each was seen).
        here = utcnow().timestamp()
        return [process_info((*row[:6], row[6] - (row[8] - here), row[7])) for row in rows]
