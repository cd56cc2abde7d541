"""Smoke test of ``pip install 'errands[postgres]'``, run by ``scripts/smoke`` in a fresh
venv.

A registered task on the local PostgreSQL server (127.0.0.1:5432, user postgres) runs
through ``join()`` in a database made for this test and dropped after it, and its
result is read back by a second instance. Exits 77 (skipped) when the server cannot
be reached, unless CI=true. Not collected by pytest.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from pathlib import Path

import psycopg

import errands as errands_package
from errands import Errands, JobStatus

EXTRA = "errands[postgres]"
SERVER = ("127.0.0.1", 5432)
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def check(condition: bool, problem: str) -> None:
    if not condition:
        raise SystemExit(f"{EXTRA} smoke test failed: {problem}")


def reachable() -> bool:
    try:
        socket.create_connection(SERVER, timeout=2).close()
    except OSError as exc:
        message = f"{EXTRA} smoke test: PostgreSQL is not reachable at {SERVER} ({exc})"
        if os.environ.get("CI") == "true":
            raise SystemExit(message) from None
        print(message + "; skipped")
        return False
    return True


def run_a_job(url: str) -> None:
    errands = Errands(url)

    @errands.task(name="smoke.add", retries=1)
    def add(a: int, b: int) -> int:
        return a + b

    job = errands.add_task(add, 2, 3)
    asyncio.run(errands.join(timeout=30))
    record = errands.get(job.id)
    check(record is not None, f"errands.get({job.id!r}) found no job after join()")
    assert record is not None
    check(
        record.status is JobStatus.SUCCEEDED and record.result == 5,
        f"the job ended {record.status.value} with result {record.result!r} "
        f"(error: {record.error}), expected succeeded with 5",
    )
    # Another instance on the same database reads what the worker recorded there.
    stored = Errands(url).get(job.id)
    check(
        stored is not None and stored.result == 5,
        f"a second Errands on the database reads {stored!r} for the job, expected its result 5",
    )


def main() -> None:
    check(
        Path(errands_package.__file__).is_relative_to(sys.prefix),
        f"errands was imported from {errands_package.__file__}, not from the venv {sys.prefix}",
    )
    if not reachable():
        raise SystemExit(77)
    name = f"errands_smoke_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        run_a_job(f"postgresql://postgres@127.0.0.1:5432/{name}")
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    print(f"{EXTRA}: a task ran on PostgreSQL through join() and was read back")


if __name__ == "__main__":
    main()
