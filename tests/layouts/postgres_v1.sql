-- The PostgreSQL store's layout version 1 (errands before its layout 2), as it made it:
-- tests/test_postgres_layout.py upgrades a schema of this layout.
CREATE TABLE IF NOT EXISTS version (
    version integer NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    name text NOT NULL,
    status text NOT NULL,
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
INSERT INTO version (version) VALUES (1);
