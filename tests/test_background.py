"""The per-request collector: order, sharing, dropping on errors, failure isolation."""

import logging
import threading
import time
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, HTTPException, WebSocket
from fastapi.testclient import TestClient
from starlette.responses import StreamingResponse

from errands import BackgroundTasks, Errands, ErrandsError, Job, JobStatus, Tasks, _background


@pytest.mark.parametrize("push", ["contextlib's primitive", "push_async_exit"])
def test_tasks_run_in_the_order_added_across_dependencies_and_subdependencies(
    push: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if push == "push_async_exit":  # (a Python whose private primitive differs)
        monkeypatch.setattr(_background, "_PUSH_EXIT", None)
    order: list[str] = []
    app = FastAPI()

    def sub(tasks: BackgroundTasks) -> None:
        tasks.add_task(order.append, "sub")

    def dep(tasks: BackgroundTasks, _: Annotated[None, Depends(sub)]) -> Tasks:
        tasks.add_task(order.append, "dep")
        return tasks

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks, from_dep: Annotated[Tasks, Depends(dep)]) -> int:
        assert from_dep is tasks  # one instance per request
        tasks.add_task(order.append, "endpoint")
        return len(tasks)

    assert TestClient(app).get("/").json() == 3
    assert order == ["sub", "dep", "endpoint"]


def test_each_request_gets_its_own_instance() -> None:
    seen: list[Tasks] = []
    app = FastAPI()

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks) -> None:
        seen.append(tasks)

    client = TestClient(app)
    client.get("/")
    client.get("/")
    assert len(seen) == 2 and seen[0] is not seen[1]
    assert isinstance(seen[0], Tasks)


def test_def_and_async_def_callables_take_args_and_kwargs() -> None:
    got: list[tuple[str, int, str]] = []
    app = FastAPI()

    def sync_task(kind: str, n: int, *, suffix: str = "") -> None:
        got.append((kind, n, suffix))

    async def async_task(kind: str, n: int, *, suffix: str = "") -> None:
        got.append((kind, n, suffix))

    @app.get("/")
    def endpoint(tasks: BackgroundTasks) -> None:
        tasks.add_task(sync_task, "def", 1, suffix="!")
        tasks.add_task(async_task, "async", 2, suffix="?")

    TestClient(app).get("/")
    assert got == [("def", 1, "!"), ("async", 2, "?")]


def test_a_failing_task_does_not_stop_the_next_and_is_logged_and_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []
    handles: list[Job[None]] = []
    app = FastAPI()

    def explode() -> None:
        raise RuntimeError("kaboom")

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks) -> None:
        handles.append(tasks.add_task(explode))
        handles.append(tasks.add_task(ran.append, "after"))

    with caplog.at_level(logging.ERROR, logger="errands"):
        assert TestClient(app).get("/").status_code == 200
    assert ran == ["after"]
    failed = handles[0].info()
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error == "RuntimeError: kaboom"
    assert failed.traceback is not None and "kaboom" in failed.traceback
    assert handles[1].status is JobStatus.SUCCEEDED
    assert any("kaboom" in (r.exc_text or "") for r in caplog.records)


def test_tasks_of_an_endpoint_that_raises_are_dropped_registered_ones_included() -> None:
    errands = Errands("memory://")
    ran: list[str] = []
    handles: list[Job[None]] = []

    @errands.task
    def registered(x: str) -> None:
        ran.append(x)

    app = FastAPI(lifespan=errands.lifespan)

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks) -> None:
        handles.append(tasks.add_task(ran.append, "plain"))
        handles.append(tasks.add_task(registered, "registered"))
        raise HTTPException(409, "no")

    with TestClient(app) as client:
        assert client.get("/").status_code == 409
    assert ran == []
    assert handles[0].status is JobStatus.CANCELLED
    assert handles[1].info() is None  # never stored
    assert errands.backlog == 0


def test_a_registered_task_in_a_dependency_that_raises_is_never_stored() -> None:
    errands = Errands("memory://")
    ids: list[str] = []

    @errands.task
    def registered() -> None: ...

    def dep(tasks: BackgroundTasks) -> None:
        ids.append(tasks.add_task(registered).id)
        raise HTTPException(400)

    app = FastAPI()

    @app.get("/", dependencies=[Depends(dep)])
    async def endpoint() -> None: ...

    assert TestClient(app).get("/").status_code == 400
    assert errands.get(ids[0]) is None
    assert errands.jobs() == []


def test_request_scoped_yield_dependencies_can_take_background_tasks() -> None:
    order: list[str] = []
    app = FastAPI()

    async def session(tasks: BackgroundTasks):  # type: ignore[no-untyped-def]
        tasks.add_task(order.append, "opened")
        yield "db"
        tasks.add_task(order.append, "teardown")  # after the endpoint, before release

    @app.get("/")
    async def endpoint(db: Annotated[str, Depends(session)], tasks: BackgroundTasks) -> str:
        tasks.add_task(order.append, "endpoint")
        return db

    assert TestClient(app).get("/").json() == "db"
    assert order == ["opened", "endpoint", "teardown"]


def test_streaming_response_tasks_run_after_the_last_chunk() -> None:
    events: list[str] = []
    app = FastAPI()

    @app.get("/stream")
    async def stream(tasks: BackgroundTasks) -> StreamingResponse:
        async def body():  # type: ignore[no-untyped-def]
            for i in range(3):
                events.append(f"chunk{i}")
                yield f"{i}\n"

        tasks.add_task(events.append, "task")
        return StreamingResponse(body())

    assert TestClient(app).get("/stream").text == "0\n1\n2\n"
    assert events == ["chunk0", "chunk1", "chunk2", "task"]


def test_websocket_endpoints_run_their_tasks_after_returning() -> None:
    from docs.examples import websocket

    with TestClient(websocket.app).websocket_connect("/chat") as ws:
        ws.send_text("hi")
        assert ws.receive_text() == "echo: hi"
        assert websocket.transcripts == []  # not while the endpoint runs
        ws.send_text("bye")
    deadline = time.monotonic() + 5
    while not websocket.transcripts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert websocket.transcripts == [["hi"]]


def test_websocket_tasks_go_to_the_worker_when_one_runs() -> None:
    errands = Errands("memory://")
    done = threading.Event()
    app = FastAPI(lifespan=errands.lifespan)

    @app.websocket("/ws")
    async def ws_endpoint(websocket: WebSocket, tasks: BackgroundTasks) -> None:
        await websocket.accept()
        tasks.add_task(done.set)
        await websocket.close()

    with TestClient(app) as client, client.websocket_connect("/ws"):
        pass
    assert done.wait(5)


def test_annotating_with_the_concrete_class_fails_with_a_clear_error() -> None:
    app = FastAPI()
    with pytest.raises(ErrandsError, match=r"errands\.BackgroundTasks"):

        @app.get("/")
        async def endpoint(tasks: Tasks) -> None: ...


def test_starlette_background_task_runs_after_the_response_with_a_handle() -> None:
    from docs.examples import starlette_response

    response = TestClient(starlette_response.app).get("/")
    assert starlette_response.audit == ["/"]
    assert len(response.json()["job"]) == 32


def test_plain_and_registered_tasks_keep_their_order_each_and_run_side_by_side() -> None:
    errands = Errands("memory://")
    events: list[str] = []
    release = threading.Event()

    @errands.task
    def slow_registered(n: int) -> None:
        release.wait(5)
        events.append(f"registered{n}")

    app = FastAPI(lifespan=errands.lifespan)

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks) -> None:
        tasks.add_task(slow_registered, 1)
        tasks.add_task(events.append, "plain1")
        tasks.add_task(slow_registered, 2)
        tasks.add_task(events.append, "plain2")

    with TestClient(app) as client:
        client.get("/")
        deadline = time.monotonic() + 5
        while len(events) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # The plain lane did not wait for the slow registered task added before it.
        assert events == ["plain1", "plain2"]
        release.set()
        while len(events) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert events == ["plain1", "plain2", "registered1", "registered2"]


def test_eager_mode_runs_everything_in_the_order_added() -> None:
    errands = Errands("memory://", eager=True)
    events: list[str] = []

    @errands.task
    def registered(n: int) -> None:
        events.append(f"registered{n}")

    app = FastAPI(lifespan=errands.lifespan)

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks) -> None:
        tasks.add_task(registered, 1)
        tasks.add_task(events.append, "plain")
        tasks.add_task(registered, 2)

    with TestClient(app) as client:
        client.get("/")
        assert events == ["registered1", "plain", "registered2"]


def test_jobs_of_a_successful_endpoint_run_even_if_a_teardown_fails_afterwards() -> None:
    errands = Errands("memory://")
    ran: list[str] = []

    @errands.task
    def registered() -> None:
        ran.append("registered")

    async def fragile():  # type: ignore[no-untyped-def]
        yield
        raise RuntimeError("teardown broke after the response")

    app = FastAPI(lifespan=errands.lifespan)

    @app.get("/")
    async def endpoint(tasks: BackgroundTasks, _: Annotated[None, Depends(fragile)]) -> str:
        return tasks.add_task(registered).id

    with TestClient(app, raise_server_exceptions=False) as client:
        job_id = client.get("/").json()  # the client holds the id: the job must run
        deadline = time.monotonic() + 5
        while not ran and time.monotonic() < deadline:
            time.sleep(0.01)
    assert ran == ["registered"]
    record = errands.get(job_id)
    assert record is not None and record.status is JobStatus.SUCCEEDED


def test_a_task_added_in_teardown_that_does_not_fit_is_dropped_alone() -> None:
    errands = Errands("memory://", max_backlog=1, backlog_timeout=0)
    ran: list[str] = []

    @errands.task
    def registered() -> None:
        ran.append("registered")

    async def adds_late(tasks: BackgroundTasks):  # type: ignore[no-untyped-def]
        yield
        tasks.add_task(ran.append, "late")  # the backlog is full by now

    app = FastAPI(lifespan=errands.lifespan)

    @app.get("/", dependencies=[Depends(adds_late)])
    async def endpoint(tasks: BackgroundTasks) -> None:
        tasks.add_task(registered)

    with TestClient(app) as client:
        assert client.get("/").status_code == 200
        deadline = time.monotonic() + 5
        while (not ran or errands.backlog) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert ran == ["registered"]
    assert errands.backlog == 0


def test_tasks_run_in_a_context_of_their_own_not_the_requests() -> None:
    import contextvars

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("rid", default="none")
    seen: list[str] = []
    errands = Errands("memory://")
    app = FastAPI(lifespan=errands.lifespan)

    @app.get("/{rid}")
    async def endpoint(rid: str, tasks: BackgroundTasks) -> None:
        request_id.set(rid)
        tasks.add_task(lambda: seen.append(request_id.get()))

    with TestClient(app) as client:
        client.get("/abc")
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert seen == ["none"]


def test_the_private_exit_primitive_is_used_only_with_the_signature_it_has_always_had(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from contextlib import AsyncExitStack

    assert _background._private_push_exit() is not None  # this Python's
    monkeypatch.setattr(AsyncExitStack, "_push_exit_callback", lambda self, callback: None)
    assert _background._private_push_exit() is None
    monkeypatch.delattr(AsyncExitStack, "_push_exit_callback")
    monkeypatch.delattr(AsyncExitStack.__mro__[1], "_push_exit_callback")
    assert _background._private_push_exit() is None
