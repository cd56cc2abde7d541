"""The PostgreSQL store's schema: its tables and indexes, in a schema of their own.

Everything errands keeps lives in one PostgreSQL schema (``errands`` unless the URL
says ``?schema=``), made on first use; errands never reads or writes outside it.
The ``version`` table holds one row, the layout's version: a later errands that
changes the layout reads it and brings the tables up to date, and an earlier one
refuses a newer layout rather than misread it. Making or upgrading the schema is
done under an advisory lock, so that processes starting together do it once.

Times are ``timestamptz`` (what a person querying the tables expects); they are read
back as epoch seconds, the form the rows of the SQLite store take, so that both stores
turn rows into records with the same code (``errands.sqlite._rows``). Arguments and
results are JSON text, as the worker wrote them (``jsonb`` would reorder keys).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ..sqlite._rows import dumps
from ..sqlite._schema import COLUMNS as ROW_COLUMNS

if TYPE_CHECKING:
    from .._record import JobRecord

#: The layout this errands writes; ``version`` holds the one a database has.
VERSION = 2
#: The oldest layout whose errands may still use this one (each upgrade so far only
#: adds): during a rolling deploy, processes of the errands before keep working, and
#: start again, beside the processes that upgraded it.
READERS_FROM = 1

#: Every status a job may have: a row holding another (a hand-made edit) is refused
#: by the database, not found by a worker. A new status is a new layout version.
STATUSES = "'queued', 'running', 'succeeded', 'failed', 'cancelled'"

TABLES = f"""
CREATE TABLE IF NOT EXISTS version (
    version integer NOT NULL,
    readers_from integer NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    name text NOT NULL,
    status text NOT NULL CONSTRAINT jobs_status CHECK (status IN ({STATUSES})),
    args text NOT NULL,
    kwargs text NOT NULL,
    attempts integer NOT NULL,
    max_attempts integer NOT NULL,
    result text,
    error text,
    traceback text,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    finished_at timestamptz,
    run_at timestamptz,
    after text,
    owner text,
    lease_until timestamptz,
    lost integer NOT NULL DEFAULT 0,
    scheduled_at timestamptz,
    priority integer NOT NULL DEFAULT 0,
    cancel_requested_at timestamptz,
    traceparent text
);
CREATE TABLE IF NOT EXISTS limits (
    name text PRIMARY KEY,
    tokens double precision NOT NULL,
    updated double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS processes (
    id text PRIMARY KEY,
    role text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    tasks text NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at timestamptz NOT NULL,
    stopped_at timestamptz
);
CREATE INDEX IF NOT EXISTS jobs_claimable ON jobs (name, priority DESC, run_at, seq)
    WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (status, finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_finished_by_task ON jobs (name, status)
    WHERE finished_at IS NOT NULL;
"""
#: What takes a layout from the version before to each version, in order: run in the
#: transaction that then writes the new version, under the schema's lock. A schema
#: made new gets ``TABLES``; one upgraded from any version ends the same (a test
#: compares their catalogs).
UPGRADES: dict[int, str] = {
    2: f"""
ALTER TABLE version ADD COLUMN readers_from integer NOT NULL DEFAULT 1;
ALTER TABLE version ALTER COLUMN readers_from DROP DEFAULT;
ALTER TABLE jobs ADD CONSTRAINT jobs_status CHECK (status IN ({STATUSES})) NOT VALID;
""",
}
#: What checks the rows already there against an upgrade's new constraints, each
#: statement in a transaction of its own after the upgrade's: it reads every job
#: without holding others off (``VALIDATE`` lets reads and writes go on). A row that
#: fails it (a hand-made edit) leaves the constraint unvalidated, holding for new
#: writes only, and is said in the log.
VALIDATIONS: dict[int, list[str]] = {
    2: ["ALTER TABLE jobs VALIDATE CONSTRAINT jobs_status"],
}
#: How long an upgrade waits for a table others hold (old workers' transactions are
#: short): past it, this start fails and the next one tries again.
UPGRADE_LOCK_TIMEOUT = "10s"

# Each index is partial, as in the SQLite store (see its _schema): a queued job is in
# the claimable index, in claim order within a name (priority, due time, then FIFO),
# so a claim reads the first entries of the names it wants and never the table; a
# running job is in the running index (lease expiry, concurrency limits); finished
# jobs are indexed by status and time (purges, recent activity) and by task (counts).
# limits keeps the token bucket of each task with a rate (tokens at ``updated``, epoch
# seconds); processes.tasks is a JSON list of names.

#: The job columns, in the order ``errands.sqlite._rows.record`` reads them.
NAMES = ROW_COLUMNS.split(", ")
TIMES = {
    "created_at",
    "started_at",
    "finished_at",
    "run_at",
    "lease_until",
    "scheduled_at",
    "cancel_requested_at",
    "seen_at",
    "stopped_at",
}


def epoch(column: str, table: str = "") -> str:
    """SQL: the column as read into a record: a time as epoch seconds."""
    qualified = f"{table}.{column}" if table else column
    return f"EXTRACT(EPOCH FROM {qualified})::float8" if column in TIMES else qualified


#: The job columns, as ``SELECT`` reads them (``j.`` where a query names the table so).
COLUMNS = ", ".join(epoch(name) for name in NAMES)
J_COLUMNS = ", ".join(epoch(name, "j") for name in NAMES)
#: Where ``run_at`` and ``priority`` are in a row of ``seq, COLUMNS``.
RUN_AT = 1 + NAMES.index("run_at")
PRIORITY = 1 + NAMES.index("priority")

#: A new job's row, not added if its id is kept, returning a row if added.
_NEW_ROW = (
    f"({', '.join(NAMES)}) VALUES ({', '.join(['%s'] * len(NAMES))}) "
    "ON CONFLICT (id) DO NOTHING RETURNING seq"
)
#: A new job, not added if its id is kept: returns a row if added.
INSERT_NEW = f"INSERT INTO jobs {_NEW_ROW}"


@functools.lru_cache(maxsize=16)
def insert_sql(schema: str) -> str:
    """``INSERT_NEW`` into ``schema`` (named: a caller's connection has its own
    ``search_path``), and its notification on the store's channel (the last parameter)
    if it added the job: one statement, so that it needs no transaction of its own."""
    return (
        f"WITH added AS (INSERT INTO {schema}.jobs {_NEW_ROW}) SELECT pg_notify(%s, '') FROM added"
    )


PROCESS_NAMES = ["id", "role", "host", "pid", "tasks", "started_at", "seen_at", "stopped_at"]
PROCESS_COLUMNS = ", ".join(epoch(name) for name in PROCESS_NAMES)

#: A job waiting for the job added before it in its request: one look-up by id, a
#: scalar subquery (an ``EXISTS`` here would let the planner hash every unfinished job
#: into a table first). A job before it that was purged holds nothing back.
BLOCKED = (
    "(j.after IS NOT NULL AND COALESCE((SELECT p.status FROM jobs p WHERE p.id = j.after), "
    "'') IN ('queued', 'running'))"
)


def new_row(job: JobRecord) -> tuple[Any, ...]:
    """A new job as the store writes it (``enqueue``, ``add_task_in``), its values in
    ``NAMES``' order."""
    return (
        job.id, job.name, job.status.value, dumps(job.args, "[]"),
        dumps(job.kwargs, "{}"), job.attempts, job.max_attempts, None, job.error,
        job.traceback, job.created_at, job.started_at, job.finished_at, job.run_at,
        job.after, job.owner, None, job.lost, job.scheduled_at, job.priority,
        job.cancel_requested_at, job.traceparent,
    )  # fmt: skip
