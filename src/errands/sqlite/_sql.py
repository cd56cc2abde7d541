"""The SQLite store's statements that are built, not written out: claims (one arm a
task name), the columns an older file lacks, and task limits read and spent in a
claim's transaction."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator, Mapping

from .._limits import Limit, allowances, spent
from ._rows import Row
from ._schema import ADDED, BLOCKED, CLAIMABLE_COLUMNS, COLUMNS, PRIORITY, RUN_AT

#: Jobs of one name that are claimable, first due first (then in the order added):
#: a range of errands_claimable, read in its order.
CLAIMABLE = (
    "FROM errands_jobs j WHERE j.status = 'queued' AND j.name = ? AND j.run_at <= ? "
    f"AND NOT {BLOCKED}"
)


def missing_columns(db: sqlite3.Connection) -> list[str]:
    """The columns of ``ADDED`` that the file's job table lacks."""
    have = {row[1] for row in db.execute("PRAGMA table_info(errands_jobs)")}
    return [column for column in ADDED if column not in have]


def split_limited(
    groups: list[tuple[tuple[str, ...], int]], limited: Mapping[str, int]
) -> Iterator[tuple[tuple[str, ...], list[int], int]]:
    """The groups of a claim, each limited name in a group of its own (its own
    allowance), sharing the ``most`` of the group it came from: ``(names, mosts,
    index)``, where ``mosts[index]`` is what the group may still take."""
    mosts = [most for _, most in groups]
    for index, (names, _) in enumerate(groups):
        free = tuple(name for name in names if name not in limited)
        if free:
            yield free, mosts, index
        for name in names:
            if name in limited:
                yield (name,), mosts, index


def claim_order(row: Row) -> tuple[int, float, int]:
    """Claimed rows in the order they were chosen: priority, due time, then FIFO."""
    priority = row[PRIORITY]
    return (-priority if isinstance(priority, int) else 0, row[RUN_AT], row[0])


def old_claimable(db: sqlite3.Connection) -> bool:
    """Whether the claimable index is an earlier build's (not in priority order)."""
    columns = [row[2] for row in db.execute("PRAGMA index_info(errands_claimable)")]
    return bool(columns) and columns != CLAIMABLE_COLUMNS


def unless_stopped(runs: str, stopped: str) -> str:
    """SQL: ``runs`` for a job that runs on, ``stopped`` for one asked to stop
    (``request_cancel``), which ends cancelled however its attempt went."""
    return f"CASE WHEN cancel_requested_at IS NULL THEN {runs} ELSE {stopped} END"


def stopped_status(status: str) -> str:
    """SQL: the status ``status``, or cancelled for a job asked to stop."""
    return unless_stopped(repr(status), "'cancelled'")


#: A released job is due now (parameter), or at its scheduled time if that is later
#: (``JobRecord.due`` in SQL).
RELEASED_RUN_AT = "MAX(?, COALESCE(scheduled_at, 0))"


@functools.lru_cache(maxsize=64)
def look_sql(names: int) -> str:
    """For each of ``names`` names (parameters ``name, now``) whether a job of it is
    claimable, then whether a lease has run out (parameter ``now``): one read."""
    due = f"EXISTS (SELECT 1 {CLAIMABLE})"
    expired = "EXISTS (SELECT 1 FROM errands_jobs WHERE status = 'running' AND lease_until < ?)"
    return f"SELECT {', '.join([due] * names)}, {expired}"


@functools.lru_cache(maxsize=64)
def claim_sql(names: int) -> str:
    """Claim the first claimable jobs of ``names`` names: parameters ``owner,
    lease_until, now``, then ``name, now, limit`` for each name, then (for more than
    one name) ``limit``."""
    # One arm a name, each stopping at the limit: a claim reads at most names x limit
    # rows, however many jobs are due.
    order = "ORDER BY j.priority DESC, j.run_at, j.seq"
    arm = f"SELECT j.seq, j.priority, j.run_at {CLAIMABLE} {order} LIMIT ?"
    if names == 1:
        chosen = f"SELECT j.seq {CLAIMABLE} {order} LIMIT ?"
    else:
        arms = " UNION ALL ".join([f"SELECT * FROM ({arm})"] * names)
        chosen = f"SELECT seq FROM ({arms}) ORDER BY priority DESC, run_at, seq LIMIT ?"
    return (
        "UPDATE errands_jobs SET status = 'running', attempts = attempts + 1, owner = ?, "
        f"lease_until = ?, started_at = ? WHERE seq IN ({chosen}) RETURNING seq, {COLUMNS}"
    )


@functools.lru_cache(maxsize=64)
def claim_ids_sql(ids: int) -> str:
    return (
        "UPDATE errands_jobs SET status = 'running', attempts = attempts + 1, owner = ?, "
        "lease_until = ?, started_at = ? WHERE seq IN (SELECT j.seq FROM errands_jobs j "
        f"WHERE j.status = 'queued' AND j.id IN ({', '.join('?' * ids)}) AND NOT {BLOCKED}) "
        f"RETURNING seq, {COLUMNS}"
    )


def allowance(
    db: sqlite3.Connection, limited: Mapping[str, Limit], now: float
) -> tuple[dict[str, int], dict[str, float | None]]:
    """How many more jobs of each limited name may start now; the tokens of each
    bucket now (None: no bucket yet: full)."""
    marks = ", ".join("?" * len(limited))
    names = list(limited)
    running = dict(
        db.execute(
            "SELECT name, COUNT(*) FROM errands_jobs INDEXED BY errands_running WHERE "
            f"status = 'running' AND name IN ({marks}) GROUP BY name",
            names,
        ).fetchall()
    )
    buckets = {
        name: (tokens, updated)
        for name, tokens, updated in db.execute(
            f"SELECT name, tokens, updated FROM errands_limits WHERE name IN ({marks})",
            names,
        ).fetchall()
    }
    return allowances(limited, running, buckets, now)


def spend(
    db: sqlite3.Connection,
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
        "INSERT INTO errands_limits (name, tokens, updated) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET tokens = excluded.tokens, updated = excluded.updated",
        (name, left, now),
    )
