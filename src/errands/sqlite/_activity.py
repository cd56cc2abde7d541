"""What the SQLite store's jobs have been doing lately (``Store.activity``): each figure
a range of one of its partial indexes, so that it stays quick on a file of millions of
finished jobs."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from .._stats import WINDOWS, Activity, run_times, timeline, timeline_start
from ._rows import dt

FINAL = "('succeeded', 'failed', 'cancelled')"

# The queue's depth over the timeline: the jobs that were waiting at some time in it are
# queued now, running now, or finished in it (a job added in it and finished since
# finished in it too); each with when it was added and when it left the queue (started,
# or cancelled before it did; never for a queued one).
QUEUE = f"""
WITH waited (created, leaves) AS (
    SELECT created_at, NULL FROM errands_jobs WHERE status = 'queued'
    UNION ALL
    SELECT created_at, started_at FROM errands_jobs INDEXED BY errands_running
        WHERE status = 'running'
    UNION ALL
    SELECT created_at, COALESCE(started_at, finished_at) FROM errands_jobs
        WHERE status IN {FINAL} AND finished_at >= :start
)
SELECT 'waiting', 0, COUNT(*) FROM waited
    WHERE created < :start AND (leaves IS NULL OR leaves >= :start)
UNION ALL
SELECT 'added', CAST((created - :start) / 60 AS INTEGER), COUNT(*) FROM waited
    WHERE created >= :start GROUP BY 2
UNION ALL
SELECT 'left', CAST((leaves - :start) / 60 AS INTEGER), COUNT(*) FROM waited
    WHERE leaves >= :start GROUP BY 2
"""


def activity(db: sqlite3.Connection, now: datetime) -> Activity:
    at = now.timestamp()
    hour = at - 3600
    start = timeline_start(now)
    (oldest,) = db.execute(
        "SELECT MIN(created_at) FROM errands_jobs WHERE status = 'queued'"
    ).fetchone()
    finished = {
        minutes: db.execute(
            f"SELECT COUNT(*) FROM errands_jobs WHERE status IN {FINAL} AND finished_at >= ?",
            (at - 60 * minutes,),
        ).fetchone()[0]
        for minutes in WINDOWS
    }
    samples = db.execute(
        "SELECT name, finished_at - started_at FROM errands_jobs WHERE status IN "
        "('succeeded', 'failed') AND finished_at >= ? AND started_at IS NOT NULL",
        (hour,),
    ).fetchall()
    failing = dict(
        db.execute(
            "SELECT name, COUNT(*) FROM errands_jobs WHERE status = 'failed' "
            "AND finished_at >= ? GROUP BY name",
            (hour,),
        ).fetchall()
    )
    ended = {
        (status, minute): n
        for status, minute, n in db.execute(
            "SELECT status, CAST((finished_at - :start) / 60 AS INTEGER), COUNT(*) "
            "FROM errands_jobs WHERE status IN ('succeeded', 'failed') "
            "AND finished_at >= :start GROUP BY 1, 2",
            {"start": start.timestamp()},
        )
    }
    waiting = 0
    added: dict[int, int] = {}
    left: dict[int, int] = {}
    for kind, minute, n in db.execute(QUEUE, {"start": start.timestamp()}):
        if kind == "waiting":
            waiting = n
        else:
            (added if kind == "added" else left)[minute] = n
    return Activity(
        dt(oldest) if isinstance(oldest, int | float) else None,
        finished,
        run_times((n, float(s)) for n, s in samples if isinstance(s, int | float)),
        timeline(start, ended, waiting, added, left),
        failing,
    )
