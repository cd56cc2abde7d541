"""The backend contract: a job's record, stats and listings mean the same in every
mode (memory, SQLite, Celery on Redis, Celery on RabbitMQ), read as a client reads
them (``errands.get``, ``errands.jobs``, ``errands.stats``)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest

from errands import Errands, JobRecord, JobStatus
from tests.apps import modes
from tests.conftest import Running, wait_until


def tag() -> str:
    return uuid.uuid4().hex[:8]


def test_a_queued_job_reads_the_same_in_every_mode(running: Running) -> None:
    t = tag()
    first, _, third = running.client.post(f"/sequence/{t}").json()["jobs"]
    record = running.errands.get(third)  # behind a job that runs for 0.3 s
    assert record is not None and record.status is JobStatus.QUEUED
    assert (record.name, record.args, record.kwargs) == ("modes.record", [f"{t}-3"], {})
    assert record.attempts == 0 and record.max_attempts == 1
    assert record.started_at is None and record.finished_at is None
    assert record.result is None and record.error is None and record.traceback is None
    assert record.durable is (running.mode.name != "memory")
    assert record.created_at <= datetime.now(UTC)
    assert running.finished(third).status is JobStatus.SUCCEEDED
    assert running.finished(first).status is JobStatus.SUCCEEDED


def test_a_job_retried_then_succeeded_keeps_its_last_error(running: Running) -> None:
    t = tag()
    record = running.finished(running.errands.add_task(running.mode.flaky, t, 2).id)
    assert record.status is JobStatus.SUCCEEDED and record.result == "ok"
    assert record.attempts == 3 and record.max_attempts == 4
    assert record.error == f"RuntimeError: attempt 2 of {t} failed"
    assert record.traceback is not None and f"attempt 2 of {t} failed" in record.traceback
    assert record.started_at is not None and record.finished_at is not None
    assert record.created_at <= record.started_at <= record.finished_at
    assert record.owner is None and record.lease_until is None and record.lost == 0


def test_a_job_that_failed_for_good_says_why_and_how_often(running: Running) -> None:
    t = tag()
    record = running.finished(running.errands.add_task(running.mode.flaky, t, 10).id)
    assert record.status is JobStatus.FAILED and record.result is None
    assert record.attempts == record.max_attempts == 4
    assert record.error == f"RuntimeError: attempt 4 of {t} failed"
    assert record.traceback is not None and "RuntimeError" in record.traceback
    assert record.finished_at is not None and record.started_at is not None
    assert record.owner is None and record.lease_until is None


def test_jobs_lists_by_status_name_in_every_mode(running: Running) -> None:
    job = running.errands.add_task(running.mode.add, 20, 22)
    assert running.finished(job.id).result == 42
    assert job.id in {r.id for r in running.errands.jobs(status="succeeded", limit=1000)}
    assert job.id not in {r.id for r in running.errands.jobs(status="failed", limit=1000)}
    with pytest.raises(ValueError, match="not a job status"):
        running.errands.jobs(status="done")


def test_stats_count_jobs_and_show_the_live_workers_and_their_tasks(running: Running) -> None:
    job = running.errands.add_task(running.mode.add, 1, 1)
    running.finished(job.id)
    stats = running.errands.stats()
    assert stats.counts[JobStatus.SUCCEEDED] >= 1
    assert set(stats.counts) == set(JobStatus)
    assert stats.tasks["modes.add"][JobStatus.SUCCEEDED] >= 1
    assert stats.workers, "a worker runs this mode's jobs"
    assert all("modes.add" in worker.tasks for worker in stats.workers)
    assert "modes.add" not in stats.unrunnable


def test_a_job_no_live_worker_knows_is_left_for_one_that_does(running: Running) -> None:
    """During a rolling deploy an old worker meets a new task's jobs: it leaves them
    alone, and stats() names them. Celery's own workers cannot: they fail such a job
    with NotRegistered (documented in the README), which this asserts instead."""
    name = f"modes.newer_{tag()}"
    if running.mode.celery is not None:
        newer = Errands(celery=modes.make_celery(running.mode.name, running.queue))
        newer_task = newer.task(name=name)(modes.record)
        job = newer.add_task(newer_task, "x")
        record = running.finished(job.id)
        assert record.status is JobStatus.FAILED
        assert record.error is not None and record.error.startswith("NotRegistered")
        return
    running.errands._core.backend.store.enqueue(
        [JobRecord(id=uuid.uuid4().hex, name=name, run_at=datetime.now(UTC))]
    )
    wait_until(lambda: running.errands.stats().unrunnable.get(name) == 1, timeout=10)
    time.sleep(0.3)  # polls that could have taken it
    [record] = [r for r in running.errands.jobs(limit=1000) if r.name == name]
    assert record.status is JobStatus.QUEUED and record.attempts == 0
