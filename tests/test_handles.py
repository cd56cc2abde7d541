"""Job handles: ids, status, records, and waiting from anywhere."""

import asyncio
import threading

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from errands import BackgroundTasks, Errands, ErrandsError, Job, JobStatus, WaitTimeout, _plain

pytestmark = pytest.mark.anyio


async def test_plain_callables_are_jobs_too_marked_not_durable() -> None:
    errands = Errands("memory://")
    job = errands.add_task(lambda: 7)
    assert isinstance(job, Job) and isinstance(job.id, str) and len(job.id) == 32
    assert job.status is JobStatus.QUEUED and not job.durable
    await errands.join(timeout=5)
    record = errands.get(job.id)
    assert record is not None and record.result == 7 and record.durable is False
    assert record.name.endswith("<lambda>")


async def test_memory_store_jobs_are_not_durable_either() -> None:
    errands = Errands("memory://")

    @errands.task
    def task() -> None: ...

    job = errands.add_task(task)
    assert not job.durable
    record = job.info()
    assert record is not None and record.durable is False


async def test_get_returns_none_for_unknown_ids() -> None:
    assert Errands("memory://").get("nope") is None


async def test_wait_times_out_with_wait_timeout_and_the_job_goes_on() -> None:
    errands = Errands("memory://")
    gate = asyncio.Event()
    job = errands.add_task(gate.wait)
    async with errands.lifespan():
        with pytest.raises(WaitTimeout, match="still running") as caught:
            await job.wait(timeout=0.1)
        assert isinstance(caught.value, TimeoutError)
        gate.set()
        record = await job.wait(timeout=5)
    assert record.status is JobStatus.SUCCEEDED


async def test_wait_from_another_thread_and_loop_is_woken_when_the_job_finishes() -> None:
    errands = Errands("memory://")
    gate = threading.Event()

    @errands.task
    def blocked() -> str:
        gate.wait(10)
        return "done"

    job = errands.add_task(blocked)
    results: list[str] = []

    def waiter() -> None:
        record = asyncio.run(job.wait(timeout=10))
        results.append(record.result)

    async with errands.lifespan():
        thread = threading.Thread(target=waiter)
        thread.start()
        await asyncio.sleep(0.1)
        gate.set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 10)
    assert results == ["done"]


async def test_waiting_on_a_job_that_was_never_stored_says_so() -> None:
    errands = Errands("memory://")

    @errands.task
    def task() -> None: ...

    job: Job[None] = Job("0" * 32, task.name, errands._core)
    with pytest.raises(ErrandsError, match="not known"):
        await job.wait(timeout=1)


def test_a_client_can_poll_a_job_by_its_id() -> None:
    from docs.examples import signup

    with TestClient(signup.app) as client:
        job_id = client.post("/signup/ada@example.com").json()["job"]
        for _ in range(200):
            body = client.get(f"/jobs/{job_id}").json()
            if body["status"] == "succeeded":
                break
            asyncio.run(asyncio.sleep(0.01))
        assert body["status"] == "succeeded"
        assert body["result"] == "welcome sent to ada@example.com"
        assert body["attempts"] == 1 and body["name"] == "docs.examples.signup.send_welcome"
        assert client.get("/jobs/unknown").status_code == 404
    assert signup.sent == ["ada@example.com"]


def test_handles_returned_in_a_request_see_the_job_run() -> None:
    errands = Errands("memory://", eager=True)
    handles: list[Job[int]] = []

    @errands.task
    def add(a: int, b: int) -> int:
        return a + b

    app = FastAPI(lifespan=errands.lifespan)

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks) -> None:
        handles.append(tasks.add_task(add, 1, 2))

    with TestClient(app) as client:
        client.get("/")
    record = handles[0].info()
    assert record is not None and record.result == 3 and record.status is JobStatus.SUCCEEDED


def test_an_instance_keeps_the_records_of_its_latest_finished_plain_jobs_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What keeps a web process's memory flat over a million requests that each add a
    plain task (benchmarks/memory.py): the records kept for get() stop at the bound."""
    monkeypatch.setattr(_plain, "KEEP_FINISHED", 5)
    errands = Errands("memory://")
    handles: list[Job[None]] = []

    async def noop() -> None:
        pass

    app = FastAPI(lifespan=errands.lifespan)

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks) -> None:
        handles.append(tasks.add_task(noop))

    with TestClient(app) as client:
        for _ in range(40):
            client.get("/")
        asyncio.run(errands.join(timeout=5))
        kept = [job for job in handles if errands.get(job.id) is not None]
    assert len(handles) == 40 and errands.backlog == 0
    assert len(kept) == 5 and len(errands._core.plain._records) == 5
    assert all(job.status is JobStatus.SUCCEEDED for job in kept)
    assert len(errands._core.plain._finished) == 5


async def test_jobs_takes_a_status_by_its_name_and_refuses_anything_else(url: str) -> None:
    errands = Errands(url)

    @errands.task
    def ok() -> int:
        return 1

    job = errands.add_task(ok)
    await errands.join(timeout=5)
    assert [r.id for r in errands.jobs(status="succeeded")] == [job.id]
    assert [r.id for r in errands.jobs(status=JobStatus.SUCCEEDED)] == [job.id]
    assert errands.jobs(status="failed") == []
    for bad in ["done", "SUCCEEDED", 3]:
        with pytest.raises(ValueError, match="'queued', 'running', 'succeeded', 'failed'"):
            errands.jobs(status=bad)  # type: ignore[arg-type]
