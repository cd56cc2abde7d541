"""The PostgreSQL store's claims: the statements that take jobs, and task limits read
and spent in a claim's transaction.

A claim is one ``UPDATE ... WHERE seq = ANY(ARRAY(SELECT ... FOR UPDATE SKIP LOCKED))
RETURNING``: the rows another claimer holds are passed over, not waited for, so any
number of workers on any number of hosts claim side by side, each job once. The
inner ``SELECT`` reads the partial index ``jobs_claimable`` in its order, one range a
task name, and stops at the claim's limit: the hot path never reads the table.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from .._limits import Limit, allowances, spent
from ._connections import Connection
from ._schema import BLOCKED, COLUMNS

#: The server's clock, which leases and heartbeats are written and read by: hosts
#: whose own clocks disagree still agree on when a lease has run out, so a host whose
#: clock runs ahead never takes a job whose worker is alive. (``statement_timestamp``,
#: not ``clock_timestamp``: a stable function, which an index condition may use.)
SERVER_NOW = "statement_timestamp()"
#: That clock, ``%s`` seconds on: a lease's end.
SERVER_LATER = f"{SERVER_NOW} + %s * interval '1 second'"

ORDER = "ORDER BY j.priority DESC, j.run_at, j.seq"
CLAIM = (
    "UPDATE jobs SET status = 'running', attempts = attempts + 1, owner = %s, "
    f"lease_until = {SERVER_LATER}, started_at = %s WHERE seq = ANY(ARRAY({{chosen}})) "
    f"RETURNING seq, {COLUMNS}"
)


def claimable(name: str) -> str:
    """SQL: jobs of the task ``name`` (an SQL expression) claimable at the time given
    as a parameter. The status is a literal, so that the planner matches the partial
    index whatever the parameters."""
    return (
        f"FROM jobs j WHERE j.status = 'queued' AND j.name = {name} AND j.run_at <= %s "
        f"AND NOT {BLOCKED}"
    )


#: Which of the names (parameter: an array) have a claimable job at the time
#: (parameter), and whether a lease has run out (by the server's clock): one read.
LOOK = (
    f"SELECT ARRAY(SELECT n FROM unnest(%s::text[]) AS n WHERE EXISTS (SELECT 1 "
    f"{claimable('n')})), EXISTS (SELECT 1 FROM jobs WHERE status = 'running' "
    f"AND lease_until < {SERVER_NOW})"
)


@functools.lru_cache(maxsize=2)
def claim_sql(several: bool) -> str:
    """Claim the first claimable jobs of one name (parameters ``owner, lease (seconds),
    now, name, now, limit``) or of several (``owner, lease, now, names, now, limit,
    limit``: up to ``limit`` of each name, then the first ``limit`` of those)."""
    if not several:
        chosen = f"SELECT j.seq {claimable('%s')} {ORDER} LIMIT %s FOR UPDATE OF j SKIP LOCKED"
        return CLAIM.format(chosen=chosen)
    # One range of the index a name, each stopping at the limit: a claim reads at most
    # names x limit entries, however many jobs are due. (Rows locked by an arm and
    # left out by the outer limit stay free for others once the claim commits.)
    arm = (
        f"SELECT j.seq, j.priority, j.run_at {claimable('n.name')} {ORDER} LIMIT %s "
        "FOR UPDATE OF j SKIP LOCKED"
    )
    chosen = (
        "SELECT c.seq FROM unnest(%s::text[]) AS n(name) CROSS JOIN LATERAL "
        f"({arm}) AS c ORDER BY c.priority DESC, c.run_at, c.seq LIMIT %s"
    )
    return CLAIM.format(chosen=chosen)


CLAIM_IDS = CLAIM.format(
    chosen=(
        "SELECT j.seq FROM jobs j WHERE j.status = 'queued' AND j.id = ANY(%s) "
        f"AND NOT {BLOCKED} FOR UPDATE OF j SKIP LOCKED"
    )
)


def lock_limits(db: Connection, schema: str, names: list[str]) -> None:
    """Hold the limited names until the transaction ends (in one order: no deadlock),
    so that claimers elsewhere count running jobs and tokens after this one's."""
    for name in sorted(names):
        db.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"errands-limit:{schema}:{name}",),
        )


def allowance(
    db: Connection, limited: Mapping[str, Limit], now: float
) -> tuple[dict[str, int], dict[str, float | None]]:
    """How many more jobs of each limited name may start now; the tokens of each
    bucket now (None: no bucket yet: full)."""
    names = list(limited)
    running: dict[str, int] = {
        name: n
        for name, n in db.execute(
            "SELECT name, count(*) FROM jobs WHERE status = 'running' AND name = ANY(%s) "
            "GROUP BY name",
            (names,),
        ).fetchall()
    }
    buckets = {
        name: (tokens, updated)
        for name, tokens, updated in db.execute(
            "SELECT name, tokens, updated FROM limits WHERE name = ANY(%s)", (names,)
        ).fetchall()
    }
    return allowances(limited, running, buckets, now)


def spend(
    db: Connection,
    limit: Limit,
    name: str,
    tokens: dict[str, float | None],
    taken: int,
    now: float,
) -> None:
    """Take ``taken`` tokens from the name's bucket."""
    if limit.rate is None or not taken:
        return
    tokens[name] = left = spent(limit, tokens.get(name), taken)
    db.execute(
        "INSERT INTO limits (name, tokens, updated) VALUES (%s, %s, %s) "
        "ON CONFLICT (name) DO UPDATE SET tokens = excluded.tokens, updated = excluded.updated",
        (name, left, now),
    )
