"""What the PostgreSQL store's jobs have been doing lately (``Store.activity``): the
rows ``Tally`` counts, each set read through one of the store's partial indexes, so
that it stays quick on a table of millions of finished jobs."""

from __future__ import annotations

from datetime import datetime

from .._stats import Activity, Tally
from ._connections import Connection

# Queued jobs by minute of the timeline (-1: added before it), with the earliest of
# each: one pass over the queued ones, however many there are.
QUEUED = """
SELECT EXTRACT(EPOCH FROM MIN(created_at))::float8, COUNT(*) FROM jobs
WHERE status = 'queued'
GROUP BY CASE WHEN created_at < to_timestamp(%(start)s) THEN -1
              ELSE floor(EXTRACT(EPOCH FROM created_at - to_timestamp(%(start)s)) / 60) END
"""
# The earliest a queued job due now was due (the claimable index holds run_at).
DUE = (
    "SELECT EXTRACT(EPOCH FROM MIN(run_at))::float8 FROM jobs "
    "WHERE status = 'queued' AND run_at <= to_timestamp(%(now)s)"
)
JOB = (
    "status, name, EXTRACT(EPOCH FROM created_at)::float8, "
    "EXTRACT(EPOCH FROM started_at)::float8, EXTRACT(EPOCH FROM finished_at)::float8"
)
RUNNING = f"SELECT {JOB} FROM jobs WHERE status = 'running'"
# Every job that finished in the last hour: the one read of their rows.
FINISHED = (
    f"SELECT {JOB} FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled') "
    "AND finished_at >= to_timestamp(%(hour)s)"
)


def activity(db: Connection, now: datetime) -> Activity:
    tally = Tally(now)
    for earliest, count in db.execute(QUEUED, {"start": tally.start}):
        tally.queued(earliest, count)
    row = db.execute(DUE, {"now": tally.now}).fetchone()
    if row is not None and row[0] is not None:
        tally.due(row[0])
    for job in db.execute(RUNNING):
        tally.job(*job)
    for job in db.execute(FINISHED, {"hour": tally.hour}):
        tally.job(*job)
    return tally.activity()
