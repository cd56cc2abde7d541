"""What a job's record holds, field by field, the same in SQLite mode and in Celery mode
(Redis and RabbitMQ brokers, with a real Celery worker process): queued, cancelled,
running, running again after a failure, waiting for a retry, succeeded after retries,
failed for good.

Each test reads records as a client would (``errands.get(id)``) and asserts the same
values whatever the mode.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from errands import BackgroundTasks, Errands, JobRecord, JobStatus, Task
from tests.apps import modes
from tests.conftest import CeleryWorker, require_service, wait_finished

MODES = ["sqlite", "celery-redis", "celery-rabbitmq"]


class Running:
    def __init__(self, mode: modes.Mode, client: TestClient) -> None:
        self.mode = mode
        self.errands: Errands = mode.errands
        self.client = client

    def task(self, name: str) -> Task[..., object]:
        task = self.errands.registered(name)
        assert task is not None
        return task

    def get(self, id: str) -> JobRecord:
        record = self.errands.get(id)
        assert record is not None
        return record

    def finished(self, id: str, timeout: float = 30) -> JobRecord:
        record: JobRecord = wait_finished(self.errands, id, timeout)
        return record

    def seen(self, id: str, wanted: Callable[[JobRecord], bool], timeout: float = 30) -> JobRecord:
        """The job's record as soon as it is as ``wanted`` (looked at every 20 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.errands.get(id)
            if record is not None and wanted(record):
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"job {id} not as wanted in {timeout} s: {record}")
            time.sleep(0.02)


def add_pair_endpoints(app: FastAPI, mode: modes.Mode) -> None:
    @app.post("/pair/{tag}")
    async def pair(tag: str, background: BackgroundTasks) -> dict[str, list[str]]:
        """Two jobs in one request: the second waits for the first (1.5 s)."""
        jobs = [
            background.add_task(mode.slow, f"{tag}-1", 1.5),
            background.add_task(mode.record, f"{tag}-2"),
        ]
        return {"jobs": [job.id for job in jobs]}

    @app.post("/retried-pair/{tag}")
    async def retried_pair(tag: str, background: BackgroundTasks) -> dict[str, list[str]]:
        """Two jobs in one request: the first fails once, then succeeds."""
        jobs = [
            background.add_task(mode.flaky, tag, 1),
            background.add_task(mode.record, f"{tag}-next"),
        ]
        return {"jobs": [job.id for job in jobs]}


@pytest.fixture(scope="module", params=MODES)
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    previous = os.environ.get("MODES_LOG")
    os.environ["MODES_LOG"] = str(folder / "log")
    queue = f"errands-test-{uuid.uuid4().hex[:8]}"
    worker = None
    try:
        if name.startswith("celery"):
            require_service("redis")
            if name == "celery-rabbitmq":
                require_service("rabbitmq")
        mode = modes.make(name, path=str(folder / "jobs.db"), queue=queue)
        add_pair_endpoints(mode.app, mode)
        if mode.celery is not None:
            worker = CeleryWorker(name, queue, folder / "log")
        with TestClient(mode.app) as client:
            yield Running(mode, client)
    finally:
        if worker is not None:
            worker.stop()
            with mode.celery.connection_for_write() as connection:  # type: ignore[union-attr]
                channel: Any = connection.default_channel
                for q in (queue, f"{queue}-routed"):
                    with contextlib.suppress(Exception):
                        channel.queue_delete(q)
        if previous is None:
            os.environ.pop("MODES_LOG", None)
        else:
            os.environ["MODES_LOG"] = previous


def tag() -> str:
    return uuid.uuid4().hex[:8]


def at_or_after(later: datetime | None, earlier: datetime | None) -> bool:
    """``later >= earlier``, to the millisecond (Celery mode's creation times are)."""
    assert later is not None and earlier is not None
    return later.timestamp() >= earlier.timestamp() - 0.001


def test_a_queued_job_and_then_a_cancelled_one(running: Running) -> None:
    t = tag()
    first, second = running.client.post(f"/pair/{t}").json()["jobs"]
    record = running.get(second)
    assert record.status is JobStatus.QUEUED
    assert (record.name, record.args, record.kwargs) == ("modes.record", [f"{t}-2"], {})
    assert (record.attempts, record.max_attempts, record.lost) == (0, 1, 0)
    assert (record.result, record.error, record.traceback) == (None, None, None)
    assert (record.started_at, record.finished_at) == (None, None)
    assert (record.owner, record.lease_until) == (None, None)
    assert record.after == first
    assert record.durable is True
    assert at_or_after(record.run_at, record.created_at)

    assert running.errands.store.cancel([second], "dropped: test") == [second]
    record = running.get(second)
    assert record.status is JobStatus.CANCELLED
    assert record.error == "dropped: test"
    assert (record.name, record.args, record.kwargs) == ("modes.record", [f"{t}-2"], {})
    assert (record.attempts, record.max_attempts) == (0, 1)
    assert record.after == first
    assert (record.result, record.traceback, record.started_at) == (None, None, None)
    assert at_or_after(record.finished_at, record.created_at)

    assert running.finished(first).status is JobStatus.SUCCEEDED
    time.sleep(0.5)  # time enough for the next job to run, were it to
    record = running.get(second)
    assert record.status is JobStatus.CANCELLED and record.error
    assert f"{t}-2" not in modes.lines()


def test_a_running_job_and_then_its_success(running: Running) -> None:
    t = tag()
    job = running.errands.add_task(running.mode.slow, t, 1.5)
    record = running.seen(job.id, lambda r: r.status is JobStatus.RUNNING)
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
    job = running.errands.add_task(running.task("modes.stubborn"), t, 1, 1.5)
    record = running.seen(job.id, lambda r: r.status is JobStatus.RUNNING and r.attempts == 2)
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
    job = running.errands.add_task(running.task("modes.patient"), t, 5)
    record = running.seen(job.id, lambda r: r.attempts == 1 and r.error is not None)
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

    assert running.errands.store.cancel([job.id], "dropped: test") == [job.id]
    record = running.get(job.id)
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
