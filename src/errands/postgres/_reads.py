"""The PostgreSQL store's reads: a job, listings, counts and recent activity. Each is
one statement on a borrowed connection (the batch's, inside one), in the store's
schema; the status is a literal wherever a partial index serves the query.

A row that cannot be read (something other than errands wrote it) is shown as a failed
job with the reason, as on SQLite (``errands.sqlite._rows``), and said once in the log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .._record import JobRecord, JobStatus
from .._stats import Activity
from ..sqlite._rows import Unreadables
from ._activity import activity
from ._connections import Connection, Connections, mapped
from ._schema import COLUMNS


class Reads(Connections, Unreadables):
    KIND = "PostgreSQL"

    @mapped
    def get(self, id: str) -> JobRecord | None:
        with self._read() as db:
            return self._find(db, id)

    def _find(self, db: Connection, id: str) -> JobRecord | None:
        row = db.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = %s", (id,)).fetchone()
        return self._read_row(row) if row is not None else None

    @mapped
    def jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        name: str | None = None,
        offset: int = 0,
    ) -> list[JobRecord]:
        where: list[str] = []
        values: list[Any] = []
        if name is not None:
            where.append("name = %s")
            values.append(name)
        if status is not None:
            # The status as a literal, so that its partial index can serve the query.
            where.append(f"status = '{status.value}'")
            if status.finished:
                where.append("finished_at IS NOT NULL")
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM jobs {clause}ORDER BY seq DESC LIMIT %s OFFSET %s",
                (*values, limit, offset),
            ).fetchall()
        return [self._read_row(row) for row in rows]

    @mapped
    def activity(self, now: datetime) -> Activity:
        with self._read() as db:
            return activity(db, now)

    @mapped
    def counts(self) -> dict[JobStatus, int]:
        # One count per partial index: the finished ones are read from theirs alone.
        with self._read() as db:
            rows = db.execute(
                "SELECT 'queued', COUNT(*) FROM jobs WHERE status = 'queued' "
                "UNION ALL SELECT 'running', COUNT(*) FROM jobs WHERE status = 'running' "
                "UNION ALL SELECT status, COUNT(*) FROM jobs WHERE finished_at IS NOT NULL "
                "GROUP BY status"
            ).fetchall()
        found = {status: n for status, n in rows}
        return {status: found.get(status.value, 0) for status in JobStatus}

    @mapped
    def counts_by_task(self) -> dict[str, dict[JobStatus, int]]:
        statuses = {status.value: status for status in JobStatus}
        by_task: dict[str, dict[JobStatus, int]] = {}
        with self._read() as db:
            rows = db.execute(
                "SELECT name, 'queued', COUNT(*) FROM jobs WHERE status = 'queued' "
                "GROUP BY name UNION ALL SELECT name, 'running', COUNT(*) FROM jobs "
                "WHERE status = 'running' GROUP BY name UNION ALL SELECT name, status, "
                "COUNT(*) FROM jobs WHERE finished_at IS NOT NULL GROUP BY name, status"
            ).fetchall()
        for name, status, n in rows:
            if status in statuses:  # an unreadable row counts nowhere
                by_task.setdefault(name, {})[statuses[status]] = n
        return by_task

    @mapped
    def unfinished(self) -> int:
        with self._read() as db:
            row = db.execute(
                "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued') + "
                "(SELECT COUNT(*) FROM jobs WHERE status = 'running')"
            ).fetchone()
        return int(row[0]) if row is not None else 0
