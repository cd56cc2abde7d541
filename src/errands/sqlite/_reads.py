"""The SQLite store's reads: a job, listings, counts and recent activity, each one
statement on the thread's connection; the status is a literal wherever a partial index
serves the query.

A row that cannot be read (something other than errands wrote it) is shown as a failed
job with the reason (``_rows.unreadable``), and said once in the log.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from datetime import datetime

from .._record import JobRecord, JobStatus
from .._stats import Activity
from ._activity import activity
from ._rows import Unreadables
from ._schema import COLUMNS
from ._transactions import Transactions, mapped


class Reads(Transactions, Unreadables):
    KIND = "SQLite"

    @mapped
    def get(self, id: str) -> JobRecord | None:
        return self._find(self._db(), id)

    def _find(self, db: sqlite3.Connection, id: str) -> JobRecord | None:
        row = db.execute(f"SELECT {COLUMNS} FROM errands_jobs WHERE id = ?", (id,)).fetchone()
        return self._read_row(row) if row is not None else None

    @mapped
    def jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        name: str | None = None,
        offset: int = 0,
    ) -> list[JobRecord]:
        if name is not None:
            where, values = ("name = ?", [name])
            if status is not None:
                where, values = (f"{where} AND status = ?", [name, status.value])
            rows = self._db().execute(
                f"SELECT {COLUMNS} FROM errands_jobs WHERE {where} "
                f"ORDER BY seq DESC LIMIT ? OFFSET ?",
                (*values, limit, offset),
            )
        elif status is None:
            rows = self._db().execute(
                f"SELECT {COLUMNS} FROM errands_jobs ORDER BY seq DESC LIMIT ? OFFSET ?",
                (limit, offset),
            )
        else:
            # The status as a literal, so that its partial index can serve the query
            # rather than a scan of every job kept.
            source = {
                JobStatus.QUEUED: "errands_jobs INDEXED BY errands_claimable",
                JobStatus.RUNNING: "errands_jobs INDEXED BY errands_running",
            }.get(status, "errands_jobs")
            finished = " AND finished_at IS NOT NULL" if status.finished else ""
            rows = self._db().execute(
                f"SELECT {COLUMNS} FROM {source} WHERE status = '{status.value}'"
                f"{finished} ORDER BY seq DESC LIMIT ? OFFSET ?",
                (limit, offset),
            )
        return [self._read_row(row) for row in rows.fetchall()]

    @mapped
    def activity(self, now: datetime) -> Activity:
        return activity(self._db(), now)

    @mapped
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

    @mapped
    def counts_by_task(self) -> dict[str, dict[JobStatus, int]]:
        statuses = {status.value: status for status in JobStatus}
        by_task: dict[str, dict[JobStatus, int]] = {}
        # One count per partial index, each read alone (no row of the table is read
        # for the finished ones, nearly all of a big store).
        rows = self._db().execute(
            "SELECT name, 'queued', COUNT(*) FROM errands_jobs WHERE status = 'queued' "
            "GROUP BY name UNION ALL SELECT name, 'running', COUNT(*) FROM errands_jobs "
            "WHERE status = 'running' GROUP BY name UNION ALL SELECT name, status, COUNT(*) "
            "FROM errands_jobs INDEXED BY errands_finished_by_task WHERE finished_at IS NOT "
            "NULL GROUP BY name, status"
        )
        for name, status, n in _known(rows.fetchall(), statuses):
            by_task.setdefault(name, {})[status] = n
        return by_task

    @mapped
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


def _known(
    rows: Iterable[tuple[str, str, int]], statuses: dict[str, JobStatus]
) -> Iterator[tuple[str, JobStatus, int]]:
    """Counts of rows whose status errands knows (an unreadable row counts nowhere)."""
    for name, status, n in rows:
        if status in statuses:
            yield name, statuses[status], n
