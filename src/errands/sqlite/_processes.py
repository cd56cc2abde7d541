"""The SQLite store's table of processes: each beats while it runs; one that stopped
or stopped beating has the jobs it held for its requests released to the workers."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime

from .._record import utcnow
from ..local._store import ProcessInfo
from ._rows import process_info
from ._schema import PROCESS_COLUMNS
from ._sql import RELEASED_RUN_AT
from ._transactions import mapped
from ._wakeups import WakeUps


class Processes(WakeUps):
    @mapped
    def beat(self, process: ProcessInfo) -> None:
        with self._write(one_statement=True) as db:
            db.execute(
                f"INSERT INTO errands_processes ({PROCESS_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (id) DO UPDATE SET "
                "role = excluded.role, host = excluded.host, pid = excluded.pid, "
                "tasks = excluded.tasks, seen_at = excluded.seen_at, stopped_at = NULL",
                (
                    process.id,
                    process.role,
                    process.host,
                    process.pid,
                    json.dumps(list(process.tasks)),
                    process.started_at.timestamp(),
                    utcnow().timestamp(),
                ),
            )

    @mapped
    def stopped(self, id: str) -> None:
        now = utcnow().timestamp()
        with self._write() as db:
            db.execute(
                "UPDATE errands_processes SET stopped_at = ? WHERE id = ? AND stopped_at IS NULL",
                (now, id),
            )
            released = self._release_held(db, [id], now)
        if released:
            self._announce()

    @mapped
    def release_orphans(self, seen_before: datetime) -> list[str]:
        cutoff = seen_before.timestamp()
        stale = "FROM errands_processes WHERE stopped_at IS NULL AND seen_at < ?"
        (found,) = self._db().execute(f"SELECT EXISTS (SELECT 1 {stale})", (cutoff,)).fetchone()
        if not found:
            return []  # the usual answer: read only, no write lock
        now = utcnow().timestamp()
        with self._write() as db:
            # Asked again under the write lock: one may have beaten since.
            gone = [
                id
                for (id,) in db.execute(
                    "UPDATE errands_processes SET stopped_at = ? WHERE stopped_at IS NULL "
                    "AND seen_at < ? RETURNING id",
                    (now, cutoff),
                ).fetchall()
            ]
            released = self._release_held(db, gone, now) if gone else 0
        if released:
            self._announce()
        return gone

    def _release_held(self, db: sqlite3.Connection, owners: Sequence[str], now: float) -> int:
        """Release the unreleased jobs of processes that are gone: a scan of the queued
        jobs (no index by owner: it would cost every enqueue, for a rare event); how
        many."""
        marks = ", ".join("?" * len(owners))
        return db.execute(
            f"UPDATE errands_jobs INDEXED BY errands_claimable SET run_at = {RELEASED_RUN_AT}, "
            f"owner = NULL WHERE status = 'queued' AND attempts = 0 AND owner IN ({marks})",
            (now, *owners),
        ).rowcount

    @mapped
    def processes(self) -> list[ProcessInfo]:
        rows = self._db().execute(
            f"SELECT {PROCESS_COLUMNS} FROM errands_processes ORDER BY seen_at DESC"
        )
        return [process_info(row) for row in rows.fetchall()]
