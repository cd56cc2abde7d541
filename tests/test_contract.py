"""The backend contract: a job's record, stats and listings mean the same in every
mode (memory, SQLite, Celery on Redis, Celery on RabbitMQ), read as a client reads
them (``errands.get``, ``errands.jobs``, ``errands.stats``): queued, cancelled,
running, running again after a failure, waiting for a retry, succeeded after
retries, failed for good."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from errands import Errands, ErrandsError, JobNotFound, JobRecord, JobStatus, Task
from tests.apps import modes
from tests.conftest import Running, wait_until


def tag() -> str:
    return uuid.uuid4().hex[:8]


def cancel(running: Running, id: str) -> list[str]:
    """Cancel a queued job, as a request that failed after storing it does."""
    cancelled: list[str] = asyncio.run(running.errands._core.backend.cancel([id], "dropped: test"))
    return cancelled


def get(running: Running, id: str) -> JobRecord:
    record = running.errands.get(id)
    assert record is not None
    return record


def seen(
    running: Running, id: str, wanted: Callable[[JobRecord], bool], timeout: float = 30
) -> JobRecord:
    """The job's record as soon as it is as ``wanted`` (looked at every 20 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        record = running.errands.get(id)
        if record is not None and wanted(record):
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"job {id} not as wanted in {timeout} s: {record}")
        time.sleep(0.02)


def at_or_after(later: datetime | None, earlier: datetime | None) -> bool:
    """``later >= earlier``, to the millisecond (Celery mode's creation times are)."""
    assert later is not None and earlier is not None
    return later.timestamp() >= earlier.timestamp() - 0.001


def test_a_queued_job_and_then_a_cancelled_one(running: Running) -> None:
    t = tag()
    first, second = running.client.post(f"/pair/{t}").json()["jobs"]
    record = get(running, second)
    assert record.status is JobStatus.QUEUED
    assert (record.name, record.args, record.kwargs) == ("modes.record", [f"{t}-2"], {})
    assert (record.attempts, record.max_attempts, record.lost) == (0, 1, 0)
    assert (record.result, record.error, record.traceback) == (None, None, None)
    assert (record.started_at, record.finished_at) == (None, None)
    assert (record.owner, record.lease_until) == (None, None)
    assert record.after == first
    assert record.durable is (running.mode.name != "memory")
    assert at_or_after(record.run_at, record.created_at)

    assert cancel(running, second) == [second]
    record = get(running, second)
    assert record.status is JobStatus.CANCELLED
    assert record.error == "dropped: test"
    assert (record.name, record.args, record.kwargs) == ("modes.record", [f"{t}-2"], {})
    assert (record.attempts, record.max_attempts) == (0, 1)
    assert record.after == first
    assert (record.result, record.traceback, record.started_at) == (None, None, None)
    assert at_or_after(record.finished_at, record.created_at)

    assert running.finished(first).status is JobStatus.SUCCEEDED
    time.sleep(0.5)  # time enough for the next job to run, were it to
    record = get(running, second)
    assert record.status is JobStatus.CANCELLED and record.error
    assert f"{t}-2" not in modes.lines()


def test_a_running_job_and_then_its_success(running: Running) -> None:
    t = tag()
    job = running.errands.add_task(running.mode.slow, t, 1.5)
    record = seen(running, job.id, lambda r: r.status is JobStatus.RUNNING)
    assert (record.name, record.args, record.kwargs) == ("modes.slow", [t, 1.5], {})
    assert (record.attempts, record.max_attempts, record.lost) == (1, 1, 0)
    assert record.owner  # the worker that runs it
    assert (record.result, record.error, record.traceback, record.finished_at) == (None,) * 4
    assert at_or_after(record.started_at, record.created_at)
    assert record.after is None

    record = running.finished(job.id)
    assert record.status is JobStatus.SUCCEEDED and record.result == t
    assert (record.attempts, record.max_attempts) == (1, 1)
    assert (record.owner, record.error, record.traceback) == (None, None, None)
    assert at_or_after(record.finished_at, record.started_at)
    assert (record.name, record.args, record.kwargs) == ("modes.slow", [t, 1.5], {})


def test_a_job_running_again_after_a_failure_shows_that_failure(running: Running) -> None:
    t = tag()
    job = running.errands.add_task(running.errands._core.tasks["modes.stubborn"], t, 1, 1.5)
    record = seen(running, job.id, lambda r: r.status is JobStatus.RUNNING and r.attempts == 2)
    assert record.max_attempts == 4
    assert record.error == f"RuntimeError: attempt 1 of {t} failed"
    assert record.traceback and record.error in record.traceback
    assert record.owner and record.finished_at is None

    record = running.finished(job.id)
    assert record.status is JobStatus.SUCCEEDED and record.result == "ok"
    assert (record.attempts, record.max_attempts) == (2, 4)
    assert record.error == f"RuntimeError: attempt 1 of {t} failed"


def test_a_job_waiting_for_its_retry_and_then_cancelled(running: Running) -> None:
    t = tag()
    job = running.errands.add_task(running.errands._core.tasks["modes.patient"], t, 5)
    record = seen(running, job.id, lambda r: r.attempts == 1 and r.error is not None)
    assert record.status is JobStatus.QUEUED
    assert (record.name, record.args) == ("modes.patient", [t, 5])
    assert (record.attempts, record.max_attempts) == (1, 2)
    assert record.error == f"RuntimeError: attempt 1 of {t} failed"
    assert record.traceback and record.error in record.traceback
    assert "Retry" not in record.traceback  # the attempt's own, not Celery's retry
    assert at_or_after(record.started_at, record.created_at)
    assert record.run_at is not None and record.started_at is not None
    assert record.run_at > record.started_at  # when the retry is due
    assert (record.owner, record.finished_at, record.result) == (None, None, None)

    assert cancel(running, job.id) == [job.id]
    record = get(running, job.id)
    assert record.status is JobStatus.CANCELLED and record.error == "dropped: test"
    assert (record.attempts, record.max_attempts) == (1, 2)
    assert record.traceback and "attempt 1" in record.traceback
    assert record.started_at is not None and record.finished_at is not None


def test_a_success_after_retries_keeps_the_last_error(running: Running) -> None:
    t = tag()
    record = running.finished(running.errands.add_task(running.mode.flaky, t, 2).id)
    assert record.status is JobStatus.SUCCEEDED and record.result == "ok"
    assert (record.attempts, record.max_attempts, record.lost) == (3, 4, 0)
    assert record.error == f"RuntimeError: attempt 2 of {t} failed"
    assert record.traceback and record.error in record.traceback
    assert at_or_after(record.started_at, record.created_at)
    assert at_or_after(record.finished_at, record.started_at)
    assert at_or_after(record.finished_at, record.run_at)
    assert record.owner is None


def test_a_failure_after_retries(running: Running) -> None:
    t = tag()
    record = running.finished(running.errands.add_task(running.mode.flaky, t, 10).id)
    assert record.status is JobStatus.FAILED and record.result is None
    assert (record.attempts, record.max_attempts) == (4, 4)
    assert record.error == f"RuntimeError: attempt 4 of {t} failed"
    assert record.traceback and record.error in record.traceback
    assert at_or_after(record.finished_at, record.started_at)
    assert record.owner is None


def test_the_next_job_of_a_request_starts_after_the_first_finished(running: Running) -> None:
    t = tag()
    first, second = running.client.post(f"/retried-pair/{t}").json()["jobs"]
    before, after = running.finished(first), running.finished(second)
    assert before.status is after.status is JobStatus.SUCCEEDED
    assert before.attempts == 2 and after.after == first
    assert at_or_after(after.started_at, before.finished_at)


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
    again = running.errands.stats()  # a second look counts what the first counted
    for status in JobStatus:
        assert again.counts[status] == sum(t.get(status, 0) for t in again.tasks.values())
    assert again.counts[JobStatus.SUCCEEDED] >= 1


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


def test_a_delayed_job_waits_for_its_time_then_runs_and_the_next_one_after_it(
    running: Running,
) -> None:
    t = tag()
    sent = datetime.now(UTC)
    response = running.client.post(f"/delayed/{t}", params={"delay": 2.0})
    answered = datetime.now(UTC)
    first, second = response.json()["jobs"]
    record = get(running, first)
    assert record.status is JobStatus.QUEUED and record.attempts == 0
    # Counted from the commit: after the request came in, before its answer.
    assert record.scheduled_at is not None
    assert sent + timedelta(seconds=2) <= record.scheduled_at <= answered + timedelta(seconds=2)
    assert at_or_after(record.run_at, record.scheduled_at)
    time.sleep(1.0)
    assert get(running, first).status is JobStatus.QUEUED
    assert get(running, second).status is JobStatus.QUEUED
    assert f"{t}-1" not in modes.lines()

    done = running.finished(first)
    assert done.status is JobStatus.SUCCEEDED
    assert at_or_after(done.started_at, done.scheduled_at)
    after = running.finished(second)
    assert after.status is JobStatus.SUCCEEDED and after.scheduled_at is None
    assert at_or_after(after.started_at, done.finished_at)


def test_a_job_added_for_a_time_outside_a_request_runs_then(running: Running) -> None:
    t = tag()
    when = datetime.now(UTC) + timedelta(seconds=1.5)
    job = running.errands.add_task(running.mode.record.options(at=when), t)
    record = get(running, job.id)
    assert record.status is JobStatus.QUEUED and record.scheduled_at == when
    done = running.finished(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.result == t
    assert at_or_after(done.started_at, when)
    # A time already past means at once.
    past = running.errands.add_task(
        running.mode.record.options(at=datetime.now(UTC) - timedelta(days=1)), f"{t}-past"
    )
    assert running.finished(past.id, timeout=10).status is JobStatus.SUCCEEDED


def test_a_caller_chosen_id_keeps_one_job_however_often_it_is_added(running: Running) -> None:
    key = f"once:{tag()}"
    first = running.client.post(f"/once/{key}").json()
    assert first == {"id": key, "created": True, "again": False}  # the same id twice
    record = running.finished(key)
    assert record.status is JobStatus.SUCCEEDED and record.result == f"once-{key}"
    assert running.client.post(f"/once/{key}").json() == {
        "id": key,
        "created": False,
        "again": False,
    }
    # Outside a request too: a handle to the job kept, and nothing added.
    job = running.errands.add_task(running.mode.record.options(job_id=key), "other")
    assert (job.id, job.created) == (key, False)
    time.sleep(0.5)  # time enough to run, were anything added
    assert modes.lines().count(f"once-{key}") == 1
    assert "never" not in modes.lines() and "other" not in modes.lines()
    assert get(running, key).args == [f"once-{key}"]
    fresh = running.errands.add_task(running.mode.record.options(job_id=f"{key}-b"), "b")
    assert fresh.created and running.finished(fresh.id).result == "b"


def test_a_jobs_priority_is_in_its_record(running: Running) -> None:
    t = tag()
    job = running.errands.add_task(running.mode.record.options(priority=7), t)
    assert get(running, job.id).priority == 7
    done = running.finished(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.priority == 7
    plain = running.errands.add_task(running.mode.record, f"{t}-plain")
    assert running.finished(plain.id).priority == 0


def task(running: Running, name: str) -> Task[..., Any]:
    return running.errands._core.tasks[name]


def test_cancel_of_a_queued_job_cancels_it_at_once_and_it_never_runs(running: Running) -> None:
    t = tag()
    job = running.errands.add_task(running.mode.record.options(delay=1.5), t)
    record = running.errands.cancel(job.id)
    assert record is not None and record.status is JobStatus.CANCELLED
    assert record.error == "Cancelled: errands.cancel() was called before it ran"
    assert record.attempts == 0 and record.args == [t]
    time.sleep(2.5)  # past its time
    assert get(running, job.id).status is JobStatus.CANCELLED and t not in modes.lines()
    assert running.errands.cancel(job.id) == get(running, job.id)  # finished: left alone
    assert running.errands.cancel("no-such-job") is None


def test_cancel_stops_a_running_async_job_where_it_runs_with_no_retry(running: Running) -> None:
    t = tag()
    job = running.errands.add_task(task(running, "modes.nap"), t, 30)
    seen(running, job.id, lambda r: r.status is JobStatus.RUNNING)
    wait_until(lambda: f"{t} start" in modes.lines(), timeout=10)
    asked = time.monotonic()
    record = running.errands.cancel(job.id)
    assert record is not None and record.status is JobStatus.RUNNING
    assert record.cancel_requested_at is not None
    done = running.finished(job.id, timeout=10)
    assert time.monotonic() - asked < 5  # about a second, not the 30 s nap
    assert done.status is JobStatus.CANCELLED and done.result is None
    assert done.error == "Cancelled: errands.cancel() was called while it ran"
    assert done.attempts == 1  # retries=2, and none was made
    time.sleep(0.5)
    assert f"{t} end" not in modes.lines() and modes.lines().count(f"{t} start") == 1


def test_cancel_marks_a_running_def_job_which_may_stop_early(running: Running) -> None:
    t = tag()
    job = running.errands.add_task(task(running, "modes.polite"), t, 30)
    seen(running, job.id, lambda r: r.status is JobStatus.RUNNING)
    running.errands.cancel(job.id)
    done = running.finished(job.id, timeout=10)
    assert done.status is JobStatus.CANCELLED and done.result is None  # "stopped" discarded
    assert done.error == "Cancelled: errands.cancel() was called while it ran"
    assert f"{t} stopped early" in modes.lines() and done.attempts == 1
    # One that does not look runs to its end, and still ends cancelled.
    slow = running.errands.add_task(running.mode.slow, f"{t}-slow", 1.5)
    seen(running, slow.id, lambda r: r.status is JobStatus.RUNNING)
    running.errands.cancel(slow.id)
    ended = running.finished(slow.id, timeout=10)
    assert ended.status is JobStatus.CANCELLED and ended.result is None
    assert f"{t}-slow end" in modes.lines()


def test_retry_runs_a_failed_job_one_more_round_counting_on(running: Running) -> None:
    t = tag()
    job = running.errands.add_task(running.mode.flaky, t, 5)  # retries=3: fails all 4
    failed = running.finished(job.id)
    assert failed.status is JobStatus.FAILED and (failed.attempts, failed.max_attempts) == (4, 4)
    again = running.errands.retry(job.id)
    assert again.status is JobStatus.QUEUED and again.id == job.id
    assert again.attempts == 4 and again.error == failed.error  # kept until a success
    done = seen(running, job.id, lambda r: r.status is JobStatus.SUCCEEDED)
    assert (done.attempts, done.max_attempts, done.result) == (6, 8, "ok")
    assert modes.lines().count(t) == 6
    with pytest.raises(ErrandsError, match="is succeeded: only a failed or cancelled job"):
        running.errands.retry(job.id)
    with pytest.raises(JobNotFound):
        running.errands.retry("no-such-job")


def test_retry_runs_a_cancelled_job_and_refuses_a_queued_one(running: Running) -> None:
    t = tag()
    job = running.errands.add_task(running.mode.record.options(delay=60), t)
    with pytest.raises(ErrandsError, match="is queued"):
        running.errands.retry(job.id)
    running.errands.cancel(job.id)
    assert running.errands.retry(job.id).status is JobStatus.QUEUED
    done = running.finished(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.result == t and done.attempts == 1


def times(tag: str, event: str) -> list[float]:
    """When the logged jobs of ``tag`` did ``event`` (start, end), sorted."""
    found = [line.split() for line in modes.lines() if line.startswith(tag)]
    return sorted(float(w[-1]) for w in found if len(w) == 3 and w[-2] == event)


def test_a_tasks_concurrency_holds_its_jobs_and_lets_others_pass(running: Running) -> None:
    t = tag()
    narrow = [
        running.errands.add_task(task(running, "modes.narrow"), f"{t}-{i}", 0.4) for i in range(6)
    ]
    other = running.errands.add_task(running.mode.record, f"{t}-other")
    done = running.finished(other.id)
    assert done.status is JobStatus.SUCCEEDED
    assert get(running, narrow[-1].id).status is JobStatus.QUEUED  # still held back
    for job in narrow:
        assert running.finished(job.id).status is JobStatus.SUCCEEDED
    starts, ends = times(t, "start"), times(t, "end")
    events = sorted([(s, 1) for s in starts] + [(e, -1) for e in ends])
    at_once = most = 0
    for _, step in events:
        at_once += step
        most = max(most, at_once)
    assert most == 2 and len(starts) == 6


def test_a_tasks_rate_spreads_its_attempts(running: Running) -> None:
    t = tag()
    jobs = [running.errands.add_task(task(running, "modes.paced"), f"{t}-{i}") for i in range(30)]
    for job in jobs:
        assert running.finished(job.id).status is JobStatus.SUCCEEDED
    starts = times(t, "start")
    # 30 at 20 a second: about 1.5 s. In Celery mode a job held back comes back after a
    # pause (it waits on the broker, not in a worker), so the last ones may come later.
    slowest = 8.0 if running.mode.celery is not None else 4.0
    assert 1.0 <= starts[-1] - starts[0] <= slowest
    for first, later in zip(starts, starts[4:], strict=False):
        assert later - first >= 0.1  # never 5 within a tenth of a second
