"""The core behaviour, the same on every mode: memory, SQLite, Celery on Redis and
Celery on RabbitMQ (with real Celery worker processes).

One app (``tests/apps/modes.py``) runs on each; only its ``Errands(...)`` line
differs. Jobs are looked at through ``errands.get(id)``, as a client would.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from errands import JobRecord, JobStatus
from tests.apps import modes
from tests.conftest import Running, wait_until


def tag() -> str:
    return uuid.uuid4().hex[:8]


def test_result_status_and_times(running: Running) -> None:
    job = running.errands.add_task(running.mode.add, 2, 3)
    record = asyncio.run(job.wait(timeout=20))
    assert record.status is JobStatus.SUCCEEDED
    assert record.result == 5
    assert record.attempts == 1
    assert record.name == "modes.add"
    assert record.durable is (running.mode.name != "memory")
    assert record.started_at is not None and record.finished_at is not None
    assert record.created_at <= record.started_at <= record.finished_at


def test_unknown_id_is_none(running: Running) -> None:
    assert running.errands.get(uuid.uuid4().hex) is None


def test_request_order_and_failure_isolation(running: Running) -> None:
    t = tag()
    response = running.client.post(f"/sequence/{t}")
    assert response.status_code == 200
    first, second, third = (running.finished(id) for id in response.json()["jobs"])
    assert first.status is JobStatus.SUCCEEDED and first.result == f"{t}-1"
    assert second.status is JobStatus.FAILED
    assert second.error == f"ValueError: boom {t}-2"
    assert second.traceback and "boom" in second.traceback
    assert third.status is JobStatus.SUCCEEDED  # the failure did not stop it
    ours = [line for line in modes.lines() if line.startswith(t)]
    # Each started after the previous one finished (the first one sleeps 0.3 s).
    assert ours == [f"{t}-1 start", f"{t}-1 end", f"{t}-2", f"{t}-3"]
    assert first.finished_at and third.started_at and first.finished_at <= third.started_at


def test_requests_run_side_by_side(running: Running) -> None:
    a, b = tag(), tag()
    jobs = [running.client.post(f"/slow/{t}").json()["job"] for t in (a, b)]
    for id in jobs:
        assert running.finished(id).status is JobStatus.SUCCEEDED
    log = modes.lines()
    # Both started before either ended: they ran at the same time.
    assert max(log.index(f"{a} start"), log.index(f"{b} start")) < min(
        log.index(f"{a} end"), log.index(f"{b} end")
    )


def test_jobs_of_an_endpoint_that_raised_never_run(running: Running) -> None:
    dropped, after = tag(), tag()
    assert running.client.post(f"/raises/{dropped}").status_code == 500
    # A later job has run: had the dropped one been sent, it would have run too.
    running.finished(running.errands.add_task(running.mode.record, after).id)
    time.sleep(0.3)
    assert after in modes.lines() and dropped not in modes.lines()


def test_retries_until_success(running: Running) -> None:
    t = tag()
    record = running.finished(running.errands.add_task(running.mode.flaky, t, 2).id)
    assert record.status is JobStatus.SUCCEEDED and record.result == "ok"
    assert record.attempts == 3
    assert modes.lines().count(t) == 3


def test_retries_run_out(running: Running) -> None:
    t = tag()
    record = running.finished(running.errands.add_task(running.mode.flaky, t, 10).id)
    assert record.status is JobStatus.FAILED
    assert record.attempts == 4  # retries=3: four attempts in all
    assert record.error == f"RuntimeError: attempt 4 of {t} failed"
    assert modes.lines().count(t) == 4


@pytest.mark.parametrize("task", ["sleepy", "sleepy_sync"])
def test_timeouts(running: Running, task: str) -> None:
    job = running.errands.add_task(getattr(running.mode, task), 5.0)
    record = running.finished(job.id, timeout=4)  # well before the 5 s sleep ends
    assert record.status is JobStatus.FAILED
    assert record.error == f"TaskTimeout: task 'modes.{task}' timed out after 0.5 s"


def test_join_waits_for_the_jobs_and_jobs_lists_them(running: Running) -> None:
    t = tag()
    ids = [running.errands.add_task(running.mode.slow, f"{t}-{i}", 0.2).id for i in range(3)]
    asyncio.run(running.errands.join(timeout=30))
    for id in ids:
        record = running.errands.get(id)
        assert record is not None and record.status is JobStatus.SUCCEEDED
    assert set(ids) <= {record.id for record in running.errands.jobs(limit=100)}


def test_plain_callables_run_in_this_process(running: Running) -> None:
    t = tag()
    jobs = running.client.post(f"/mixed/{t}").json()
    plain = running.finished(jobs["plain"])
    registered = running.finished(jobs["registered"])
    assert plain.status is registered.status is JobStatus.SUCCEEDED
    assert plain.durable is False
    assert registered.durable is (running.mode.name != "memory")
    assert {f"{t}-plain", f"{t}-registered"} <= set(modes.lines())


def test_later_jobs_of_a_request_may_carry_any_json(running: Running) -> None:
    t = tag()
    first, big, odd = running.client.post(f"/awkward/{t}").json()["jobs"]
    assert running.finished(first).result == t
    assert running.finished(big).result == "x" * 300_000
    assert running.finished(odd).result == {"k" * 300: 2**70}


def test_a_running_job_says_so(running: Running) -> None:
    job = running.errands.add_task(running.mode.slow, tag(), 1.5)
    seen: list[JobRecord] = []

    def is_running() -> bool:
        record = running.errands.get(job.id)
        seen.append(record) if record is not None else None
        return record is not None and record.status is JobStatus.RUNNING

    wait_until(is_running, timeout=20)
    record = seen[-1]
    assert record.attempts == 1 and record.started_at is not None
    assert record.name == "modes.slow" and not record.finished
    assert running.finished(job.id).status is JobStatus.SUCCEEDED
