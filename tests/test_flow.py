"""Flow control: task.options(delay=, at=), checked at add_task time."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from errands import BackgroundTasks, ConfigurationError, Errands, InvalidOption, JobStatus, Task


def test_options_give_the_same_task_for_one_call_and_leave_the_task_alone() -> None:
    errands = Errands("memory://")

    @errands.task(name="send", retries=2)
    def send(email: str) -> str:
        return email

    later = send.options(delay=60)
    assert isinstance(later, Task) and later is not send
    assert (later.name, later.policy, later.func) == ("send", send.policy, send.func)
    assert later("a@b.c") == "a@b.c"  # calling it still calls the function
    assert send.start is None and later.start is not None and later.start.delay == 60
    assert send.options(delay=timedelta(minutes=2)).start.delay == 120  # type: ignore[union-attr]
    assert send.options().start is None


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"delay": -1}, "delay must be 0 or more seconds"),
        ({"delay": math.nan}, "got nan"),
        ({"delay": math.inf}, "got inf"),
        ({"delay": 1e12}, "at most 315,360,000 (ten years), got 1000000000000.0"),
        ({"delay": timedelta(seconds=-5)}, "delay must be 0 or more seconds"),
        ({"delay": "10"}, "delay must be seconds (an int or a float) or a timedelta, got '10'"),
        ({"delay": True}, "delay must be seconds (an int or a float) or a timedelta, got True"),
        ({"at": datetime(2030, 1, 1)}, "is a naive datetime (no time zone)"),
        ({"at": "2030-01-01T00:00:00Z"}, "at must be a datetime with a time zone"),
        (
            {"delay": 5, "at": datetime(2030, 1, 1, tzinfo=UTC)},
            "give delay= or at=, not both",
        ),
        ({"at": datetime.max.replace(tzinfo=UTC)}, "is more than ten years ahead"),
        ({"job_id": ""}, "job_id must be 1 to 200 characters, got 0"),
        ({"job_id": "x" * 201}, "job_id must be 1 to 200 characters, got 201"),
        ({"job_id": 42}, "job_id must be a str, got 42"),
        ({"job_id": "a\nb"}, "holds a control character or a lone surrogate"),
        ({"job_id": "a\udcffb"}, "holds a control character or a lone surrogate"),
        (
            {"priority": "high"},
            "priority must be an int (higher runs first, default 0), got 'high'",
        ),
        ({"priority": 1.5}, "priority must be an int"),
        ({"priority": True}, "priority must be an int"),
        ({"priority": 10**7}, "priority must be from -1,000,000 to 1,000,000, got 10000000"),
    ],
)
def test_bad_options_are_refused_naming_the_value_and_what_is_valid(
    options: dict[str, object], says: str
) -> None:
    errands = Errands("memory://")

    @errands.task(name="send")
    def send(email: str) -> str:
        return email

    with pytest.raises(InvalidOption) as caught:
        send.options(**options)  # type: ignore[arg-type]
    assert says in str(caught.value) and "'send'" in str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ConfigurationError)


def test_eager_runs_a_delayed_job_at_once_as_celerys_eager_mode_does() -> None:
    errands = Errands("memory://", eager=True)
    app = FastAPI(lifespan=errands.lifespan)

    @errands.task(name="record")
    def record(x: int) -> int:
        return x

    @app.post("/")
    def endpoint(tasks: BackgroundTasks) -> str:
        return tasks.add_task(record.options(delay=3600), 7).id

    with TestClient(app) as client:
        id = client.post("/").json()
        done = errands.get(id)
        assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == 7
        assert done.scheduled_at is not None


def test_without_a_worker_a_delayed_job_waits_in_the_store_until_join_runs_it() -> None:
    """FastAPI's behaviour with no lifespan runs a request's tasks in the request; a
    delayed one waits instead, and the jobs after it in the request wait for it."""
    errands = Errands("memory://")
    app = FastAPI()  # no lifespan: no worker in this process
    ran: list[str] = []

    @errands.task(name="record")
    def record(x: str) -> str:
        ran.append(x)
        return x

    @app.post("/")
    def endpoint(tasks: BackgroundTasks) -> list[str]:
        return [
            tasks.add_task(record.options(delay=0.5), "delayed").id,
            tasks.add_task(record, "next").id,
        ]

    client = TestClient(app)
    first, second = client.post("/").json()
    assert ran == []
    assert errands.get(first).status is JobStatus.QUEUED  # type: ignore[union-attr]
    assert errands.get(second).status is JobStatus.QUEUED  # type: ignore[union-attr]
    anyio.run(errands.join, 10)
    assert ran == ["delayed", "next"]
    done = errands.get(first)
    assert done is not None and done.started_at is not None and done.scheduled_at is not None
    assert done.started_at >= done.scheduled_at


def test_a_delay_survives_a_restart_of_the_process_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    errands = Errands(url)

    @errands.task(name="record")
    def record(x: str) -> str:
        return x

    when = datetime.now(UTC) + timedelta(hours=1)
    job = errands.add_task(record.options(at=when), "x")
    again = Errands(url)  # another process, later
    stored = again.get(job.id)
    assert stored is not None and stored.status is JobStatus.QUEUED
    assert stored.scheduled_at == when and stored.run_at == when


def test_a_tasks_priority_is_the_default_of_its_jobs_and_a_call_may_change_it() -> None:
    errands = Errands("memory://")

    @errands.task(name="urgent", priority=5)
    def urgent(x: int) -> int:
        return x

    assert urgent.priority == 5 and urgent.options(priority=-2).priority == -2
    assert errands.get(errands.add_task(urgent, 1).id).priority == 5  # type: ignore[union-attr]
    job = errands.add_task(urgent.options(priority=9, job_id="u-9"), 2)
    assert job.id == "u-9" and errands.get("u-9").priority == 9  # type: ignore[union-attr]
    with pytest.raises(InvalidOption, match="'bad': priority must be an int"):
        errands.task(name="bad", priority="high")(lambda: None)  # type: ignore[call-overload]
    assert "bad" not in errands._core.tasks


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
def test_due_jobs_run_highest_priority_first_and_a_request_keeps_its_order(
    url: str, tmp_path: Path
) -> None:
    errands = Errands(url if url == "memory://" else f"sqlite:///{tmp_path}/j.db", concurrency=1)
    app = FastAPI()
    ran: list[str] = []

    @errands.task(name="record")
    async def record(x: str) -> None:
        ran.append(x)

    @app.post("/")
    def endpoint(tasks: BackgroundTasks) -> None:
        tasks.add_task(record, "request-1")
        tasks.add_task(record.options(priority=100), "request-2")  # waits for request-1

    for name, priority in [("low", -1), ("plain", 0), ("high", 10), ("higher", 20)]:
        errands.add_task(record.options(priority=priority), name)
    # No lifespan: on SQLite its jobs wait in the store; on memory they run in the
    # request, as FastAPI's do.
    TestClient(app).post("/")
    errands.add_task(record.options(priority=10), "high-2")
    anyio.run(errands.join, 10)
    if url == "memory://":
        assert ran == ["request-1", "request-2", "higher", "high", "high-2", "plain", "low"]
    else:
        assert ran == ["higher", "high", "high-2", "plain", "request-1", "request-2", "low"]


def test_a_job_after_one_whose_id_was_kept_waits_for_the_kept_job() -> None:
    errands = Errands("memory://")
    app = FastAPI()
    ran: list[str] = []

    @errands.task(name="record")
    def record(x: str) -> None:
        ran.append(x)

    @app.post("/")
    def endpoint(tasks: BackgroundTasks) -> list[object]:
        charge = tasks.add_task(record.options(job_id="charge:1"), "charge")
        receipt = tasks.add_task(record, "receipt")
        return [charge.created, receipt.id]

    client = TestClient(app)
    assert client.post("/").json()[0] is True
    created, receipt = client.post("/").json()
    assert created is False
    assert errands.get(receipt).after == "charge:1"  # type: ignore[union-attr]
    anyio.run(errands.join, 10)
    assert ran[:1] == ["charge"] and ran.count("charge") == 1 and ran.count("receipt") == 2


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
def test_an_id_no_store_can_hold_is_no_job(url: str, tmp_path: Path) -> None:
    from errands import JobNotFound

    errands = Errands(url if url == "memory://" else f"sqlite:///{tmp_path}/j.db")
    assert errands.get("\ud800") is None and errands.cancel("\ud800") is None
    with pytest.raises(JobNotFound):
        errands.retry("\ud800")
