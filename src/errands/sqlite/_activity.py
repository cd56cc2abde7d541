"""What the SQLite store's jobs have been doing lately (``Store.activity``): the rows
``Tally`` counts, each set a range of one of the store's partial indexes, so that it
stays quick on a file of millions of finished jobs."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from .._stats import Activity, Tally

# Queued jobs by minute of the timeline (-1: added before it), with the earliest of
# each: one pass over the queued ones, however many there are.
QUEUED = """
SELECT MIN(created_at), COUNT(*) FROM errands_jobs WHERE status = 'queued'
GROUP BY CASE WHEN created_at < :start THEN -1
              ELSE CAST((created_at - :start) / 60 AS INTEGER) END
"""
# The earliest a queued job due now was due (the claimable index holds run_at).
DUE = (
    "SELECT MIN(run_at) FROM errands_jobs INDEXED BY errands_claimable "
    "WHERE status = 'queued' AND run_at <= :now"
)
JOB = "status, name, created_at, started_at, finished_at"
RUNNING = f"SELECT {JOB} FROM errands_jobs INDEXED BY errands_running WHERE status = 'running'"
# Every job that finished in the last hour: the one read of their rows.
FINISHED = (
    f"SELECT {JOB} FROM errands_jobs INDEXED BY errands_finished "
    f"WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at >= :hour"
)


def activity(db: sqlite3.Connection, now: datetime) -> Activity:
    tally = Tally(now)
    for earliest, count in db.execute(QUEUED, {"start": tally.start}):
        tally.queued(earliest, count)
    (since,) = db.execute(DUE, {"now": tally.now}).fetchone()
    if since is not None:
        tally.due(since)
    for row in db.execute(RUNNING):
        tally.job(*row)
    for row in db.execute(FINISHED, {"hour": tally.hour}):
        tally.job(*row)
    return tally.activity()
