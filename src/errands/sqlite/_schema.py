"""The SQLite store's tables and indexes, made (or brought up to date) on open."""

from __future__ import annotations

SCHEMA = """
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
    lost INTEGER NOT NULL DEFAULT 0,
    scheduled_at REAL,
    priority INTEGER NOT NULL DEFAULT 0,
    cancel_requested_at REAL,
    traceparent TEXT
);
CREATE TABLE IF NOT EXISTS errands_limits (
    name TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS errands_processes (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    tasks TEXT NOT NULL,
    started_at REAL NOT NULL,
    seen_at REAL NOT NULL,
    stopped_at REAL
);
"""
#: Made once the job table has every column (``ADDED``: a file of an earlier build
#: gets them first).
INDEXES = """
DROP INDEX IF EXISTS errands_jobs_due;
DROP INDEX IF EXISTS errands_jobs_lease;
DROP INDEX IF EXISTS errands_jobs_finished;
DROP INDEX IF EXISTS errands_jobs_after;
DROP INDEX IF EXISTS errands_queued;
CREATE INDEX IF NOT EXISTS errands_claimable ON errands_jobs (name, priority DESC, run_at, seq)
    WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS errands_running ON errands_jobs (lease_until)
    WHERE status = 'running';
CREATE INDEX IF NOT EXISTS errands_finished ON errands_jobs (status, finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS errands_finished_by_task ON errands_jobs (name, status)
    WHERE finished_at IS NOT NULL;
"""
#: The columns of ``errands_claimable`` (a file of an earlier build has it without
#: ``priority``: it is made again).
CLAIMABLE_COLUMNS = ["name", "priority", "run_at", "seq"]
# Finished jobs are indexed twice, each entry written once (when the job finishes):
# by status and time (purges, recent activity) and by task (counts by task, which
# would otherwise read every row).
# Queued jobs are claimed highest priority first, then first due, then first added:
# the claimable index is in that order within a name, so a claim reads its first rows.
# Each index is partial: it holds only the rows its queries look for, so a job's
# writes touch few index entries (a queued job is in one index, a running job in
# another). Queued jobs are indexed by name first: a claim reads only the names it
# wants, however many jobs of other names are due (a task at its concurrency limit,
# a task only newer workers know). The DROPs replace the indexes of files made by
# earlier builds, whose table may keep its AUTOINCREMENT: harmless, as a new rowid is
# above every kept one either way, which is all the FIFO order needs.
# errands_processes.tasks is a JSON list of names. errands_limits keeps the token
# bucket of each task with a rate (tokens at the time ``updated``).

COLUMNS = (
    "id, name, status, args, kwargs, attempts, max_attempts, result, error, traceback, "
    "created_at, started_at, finished_at, run_at, after, owner, lease_until, lost, "
    "scheduled_at, priority, cancel_requested_at, traceparent"
)
#: Columns added since the first release, each with its definition: a file made by an
#: earlier build gets them when opened (earlier builds ignore them: they name their
#: columns, and a job they add has none of what these record).
ADDED = {
    "scheduled_at": "REAL",
    "priority": "INTEGER NOT NULL DEFAULT 0",
    "cancel_requested_at": "REAL",
    "traceparent": "TEXT",
}
#: Where ``run_at`` is in a row of ``seq, {COLUMNS}``.
RUN_AT = 1 + COLUMNS.split(", ").index("run_at")
PRIORITY = 1 + COLUMNS.split(", ").index("priority")
INSERT = (
    f"INSERT INTO errands_jobs ({COLUMNS}) VALUES ({', '.join('?' * len(COLUMNS.split(', ')))})"
)
#: The same, for one row, doing nothing if its id is kept: returns a row if added.
INSERT_NEW = f"{INSERT} ON CONFLICT (id) DO NOTHING RETURNING seq"

UNFINISHED = "('queued', 'running')"
#: A job waiting for the job added before it in its request.
BLOCKED = (
    f"(j.after IS NOT NULL AND EXISTS (SELECT 1 FROM errands_jobs p "
    f"WHERE p.id = j.after AND p.status IN {UNFINISHED}))"
)

PROCESS_COLUMNS = "id, role, host, pid, tasks, started_at, seen_at, stopped_at"
