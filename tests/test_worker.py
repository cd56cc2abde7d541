"""The in-process worker: off the request path, its own threads, a bounded backlog."""

import asyncio
import threading
import time
from typing import Any

import anyio
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from errands import BackgroundTasks, BacklogFull, Errands, ErrandsError, JobStatus, WaitTimeout
from tests.conftest import wait_until


def test_with_a_worker_the_response_does_not_wait_for_the_tasks() -> None:
    errands = Errands("memory://")
    gate, done = threading.Event(), threading.Event()
    app = FastAPI(lifespan=errands.lifespan)

    def blocked() -> None:
        gate.wait(10)
        done.set()

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks) -> str:
        return tasks.add_task(blocked).id

    with TestClient(app) as client:
        job_id = client.get("/").json()  # returns while the task is still blocked
        record = errands.get(job_id)
        assert record is not None and not record.finished
        gate.set()
        assert done.wait(5)
        wait_until(lambda: errands.get(job_id).status is JobStatus.SUCCEEDED)  # type: ignore[union-attr]


def test_def_tasks_run_in_the_workers_own_bounded_thread_pool() -> None:
    errands = Errands("memory://", threads=2)
    gate = threading.Event()
    names: list[str] = []
    running = [0]
    peak = [0]
    lock = threading.Lock()
    app = FastAPI(lifespan=errands.lifespan)

    def blocking() -> None:
        with lock:
            names.append(threading.current_thread().name)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        gate.wait(10)
        with lock:
            running[0] -= 1

    @app.get("/add")
    def add(tasks: BackgroundTasks) -> None:
        tasks.add_task(blocking)

    @app.get("/sync-endpoint")
    def sync_endpoint() -> str:
        return threading.current_thread().name

    with TestClient(app) as client:
        for _ in range(5):
            client.get("/add")
        wait_until(lambda: running[0] == 2)
        # The worker's threads are busy; sync endpoints still have theirs.
        served_by = client.get("/sync-endpoint").json()
        assert not served_by.startswith("errands")
        time.sleep(0.1)
        assert peak[0] == 2
        gate.set()
        wait_until(lambda: len(names) == 5)
    assert all(name.startswith("errands") for name in names)


def test_task_lists_of_different_requests_run_concurrently() -> None:
    errands = Errands("memory://")
    barrier = threading.Barrier(3, timeout=5)
    passed: list[bool] = []
    app = FastAPI(lifespan=errands.lifespan)

    def meet() -> None:
        barrier.wait()  # only returns if all three requests' tasks run at once
        passed.append(True)

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks) -> None:
        tasks.add_task(meet)

    with TestClient(app) as client:
        for _ in range(3):
            client.get("/")
        wait_until(lambda: len(passed) == 3)


def test_a_full_backlog_waits_briefly_then_fails_the_request_and_keeps_nothing() -> None:
    errands = Errands("memory://", max_backlog=2, backlog_timeout=0.2, threads=1)
    gate = threading.Event()
    app = FastAPI(lifespan=errands.lifespan)

    @app.exception_handler(BacklogFull)
    async def busy(request: Request, exc: BacklogFull) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks) -> None:
        tasks.add_task(gate.wait, 10)

    with TestClient(app) as client:
        assert client.get("/").status_code == 200
        assert client.get("/").status_code == 200
        started = time.monotonic()
        refused = client.get("/")
        waited = time.monotonic() - started
        assert refused.status_code == 503
        assert "backlog is full" in refused.json()["detail"]
        assert "max_backlog=2" in refused.json()["detail"]
        assert waited >= 0.2
        assert errands.backlog == 2
        with pytest.raises(BacklogFull):
            errands.add_task(print, "x")
        gate.set()
        wait_until(lambda: errands.backlog == 0)
        assert client.get("/").status_code == 200  # room again


def test_a_full_backlog_frees_up_within_the_timeout() -> None:
    errands = Errands("memory://", max_backlog=1, backlog_timeout=5)

    async def main() -> None:
        gate = asyncio.Event()
        async with errands.lifespan():
            errands.add_task(gate.wait)
            adder = asyncio.get_running_loop().run_in_executor(None, errands.add_task, print, "x")
            await asyncio.sleep(0.1)
            gate.set()
            await asyncio.wait_for(adder, 5)  # waited for room, then went in
            await errands.join(timeout=5)

    asyncio.run(main())


def test_shutdown_drains_running_jobs_up_to_the_drain_timeout() -> None:
    errands = Errands("memory://", drain_timeout=5)
    finished: list[str] = []

    async def slow() -> None:
        await asyncio.sleep(0.3)
        finished.append("slow")

    async def main() -> None:
        async with errands.lifespan():
            errands.add_task(slow)
            await asyncio.sleep(0.05)
        assert finished == ["slow"]  # the lifespan waited for it

    asyncio.run(main())


def test_shutdown_past_the_drain_timeout_cancels_and_requeues_registered_jobs() -> None:
    errands = Errands("memory://", drain_timeout=0.1)

    @errands.task
    async def forever() -> None:
        await asyncio.sleep(30)

    async def main() -> str:
        async with errands.lifespan():
            job = errands.add_task(forever)
            await asyncio.sleep(0.05)
            assert job.status is JobStatus.RUNNING
        return job.id

    job_id = asyncio.run(main())
    record = errands.get(job_id)
    assert record is not None and record.status is JobStatus.QUEUED  # back in the queue
    assert record.attempts == 0


def test_join_times_out_with_a_clear_error() -> None:
    errands = Errands("memory://")

    async def main() -> None:
        errands.add_task(asyncio.sleep, 5)
        with pytest.raises(WaitTimeout, match="1 jobs were still waiting or running"):
            await errands.join(timeout=0.1)

    asyncio.run(main())


def test_add_task_from_another_thread_reaches_the_running_worker() -> None:
    errands = Errands("memory://")
    done = threading.Event()

    async def main() -> None:
        async with errands.lifespan():
            thread = threading.Thread(target=errands.add_task, args=(done.set,))
            thread.start()
            thread.join()
            await asyncio.get_running_loop().run_in_executor(None, done.wait, 5)

    asyncio.run(main())
    assert done.is_set()


def test_the_lifespan_cannot_be_entered_twice() -> None:
    from errands import ConfigurationError

    errands = Errands("memory://")

    async def main() -> None:
        async with errands.lifespan():
            with pytest.raises(ConfigurationError, match="already running"):
                async with errands.lifespan():
                    pass

    asyncio.run(main())


def test_a_client_going_away_does_not_cancel_inline_tasks() -> None:
    """No worker: tasks run in the request, shielded from its cancellation."""
    from errands._background import Tasks

    done: list[str] = []

    async def slow() -> None:
        await asyncio.sleep(0.2)
        done.append("finished")

    async def main() -> None:
        tasks = Tasks()
        tasks.add_task(slow)

        async def release() -> None:
            await tasks.request_exit(None, None, None)

        async with anyio.create_task_group() as tg:
            tg.start_soon(release)
            await asyncio.sleep(0.05)
            tg.cancel_scope.cancel()  # how Starlette cancels a request's work

    asyncio.run(main())
    assert done == ["finished"]


def test_a_stream_of_plain_callables_does_not_starve_registered_jobs() -> None:
    errands = Errands("memory://", concurrency=2)
    order: list[str] = []

    @errands.task
    async def registered() -> None:
        order.append("registered")

    async def plain(i: int) -> None:
        await asyncio.sleep(0.01)
        order.append(f"plain{i}")

    async def main() -> None:
        for i in range(20):
            errands.add_task(plain, i)
        errands.add_task(registered)
        await errands.join(timeout=10)

    asyncio.run(main())
    assert order.index("registered") < 5


def test_the_lifespan_answers_a_full_backlog_with_503_and_retry_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errands = Errands("memory://", max_backlog=1, backlog_timeout=0, threads=1)
    gate = threading.Event()
    app = FastAPI(lifespan=errands.lifespan)  # no handler of the user's own

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks) -> None:
        tasks.add_task(gate.wait, 10)

    with TestClient(app) as client:
        assert client.get("/").status_code == 200
        refused = client.get("/")
        gate.set()
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json() == {"detail": "too many background jobs are waiting; try again shortly"}
    assert "Traceback" not in caplog.text  # one warning line, not a traceback a request
    assert "answered 1 request(s) with 503" in caplog.text


def test_an_apps_own_handler_wins_over_errands_default() -> None:
    errands = Errands("memory://", max_backlog=1, backlog_timeout=0, threads=1)
    gate = threading.Event()
    app = FastAPI(lifespan=errands.lifespan)

    @app.exception_handler(ErrandsError)
    async def mine(request: Request, exc: ErrandsError) -> JSONResponse:
        return JSONResponse({"mine": True}, status_code=429)

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks) -> None:
        tasks.add_task(gate.wait, 10)

    with TestClient(app) as client:
        assert client.get("/").status_code == 200
        refused = client.get("/")
        gate.set()
    assert refused.status_code == 429 and refused.json() == {"mine": True}


def test_errands_leaves_the_apps_middleware_and_its_state_alone() -> None:
    built: list[object] = []

    class Pool:
        """A pure ASGI middleware that opens a pool when the app starts."""

        def __init__(self, app: Any) -> None:
            self.app, self.pool = app, None
            built.append(self)

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                self.pool = "connected"
            elif scope["type"] == "http":
                scope.setdefault("state", {})["pool"] = self.pool
            await self.app(scope, receive, send)

    errands = Errands("memory://")
    app = FastAPI(lifespan=errands.lifespan)
    app.add_middleware(Pool)

    @app.get("/")
    async def endpoint(request: Request, tasks: BackgroundTasks) -> dict[str, object]:
        tasks.add_task(print, "x")
        return {"pool": request.state.pool}

    with TestClient(app) as client:
        assert client.get("/").json() == {"pool": "connected"}
    assert len(built) == 1


def test_only_registered_refuses_plain_callables_in_an_app_that_runs_no_worker() -> None:
    errands = Errands("memory://", worker=False, only_registered=True)
    app = FastAPI(lifespan=errands.lifespan)

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks) -> None:
        tasks.add_task(print, "x")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/")
    assert response.status_code == 500  # the endpoint's own error: a ConfigurationError


def test_plain_jobs_that_never_started_are_cancelled_when_the_worker_stops() -> None:
    errands = Errands("memory://", threads=1, concurrency=1, drain_timeout=0.1)

    async def main() -> list[Any]:
        gate = asyncio.Event()
        async with errands.lifespan():
            first = errands.add_task(gate.wait)
            second = errands.add_task(print, "never")
            await asyncio.sleep(0.1)
        gate.set()
        return [await job.wait(timeout=5) for job in (first, second)]

    first, second = asyncio.run(main())
    assert first.status is JobStatus.CANCELLED  # running at the end of the drain
    assert second.status is JobStatus.CANCELLED and second.attempts == 0
    assert second.error == "cancelled: the worker stopped before it ran"
    assert errands.backlog == 0
