"""Parity with FastAPI's own telemetry (``FastAPI(telemetry=...)``, FastAPI 0.165+): with
errands' ``BackgroundTasks``, FastAPI's tutorial emits the spans it emits with FastAPI's
own: one ``fastapi.background_task`` per task, under the request's span, with FastAPI's
name, ``code.function.name`` and error status (errands adds the job's id). Side by side,
on the same app, with the SDK's in-memory exporter."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import fastapi
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import errands
from errands import Errands

Shape = tuple[str, tuple[tuple[str, Any], ...], str, str]


def tutorial(background_tasks_type: Any, folder: Path, provider: TracerProvider) -> FastAPI:
    """FastAPI's tutorial (with a dependency), a sync endpoint, and a task that fails,
    on the given ``BackgroundTasks``."""
    app = FastAPI(telemetry={"tracer_provider": provider})
    BackgroundTasks = background_tasks_type

    def write_log(message: str) -> None:
        with open(folder / "log.txt", mode="a") as log:
            log.write(message)

    async def mail_server_down(email: str) -> None:
        await asyncio.sleep(0)
        raise ConnectionError(f"could not mail {email}")

    def get_query(background_tasks: BackgroundTasks, q: str | None = None) -> str | None:
        if q:
            background_tasks.add_task(write_log, f"found query: {q}\n")
        return q

    @app.post("/send-notification/{email}")
    async def send_notification(
        email: str, background_tasks: BackgroundTasks, q: Annotated[str, Depends(get_query)]
    ) -> dict[str, str]:
        background_tasks.add_task(write_log, f"message to {email}\n")
        return {"message": "Message sent"}

    @app.post("/fails/{email}")
    async def fails(email: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(mail_server_down, email)
        return {"message": "queued"}

    @app.post("/sync/{email}")
    def sync_endpoint(email: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(write_log, f"sync {email}\n")
        return {"message": "ok"}

    return app


def run(
    background_tasks_type: Any, folder: Path, lifespan: Callable[..., Any] | None = None
) -> list[ReadableSpan]:
    folder.mkdir()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = tutorial(background_tasks_type, folder, provider)
    if lifespan is not None:
        app.router.lifespan_context = lifespan
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/send-notification/a@example.com", params={"q": "x"}).is_success
        assert client.post("/fails/b@example.com").is_success
        assert client.post("/sync/c@example.com").is_success
        deadline = time.monotonic() + 10
        while sum(s.name == "fastapi.background_task" for s in exporter.get_finished_spans()) < 4:
            assert time.monotonic() < deadline, "the background tasks' spans did not come"
            time.sleep(0.01)
    return list(exporter.get_finished_spans())


def shapes(spans: list[ReadableSpan]) -> tuple[list[Shape], list[ReadableSpan]]:
    """Each background task's span as (name, attributes but errands' own, status, the
    name of its parent span), in order; and those spans."""
    by_id = {span.context.span_id: span for span in spans}
    tasks = [span for span in spans if span.name == "fastapi.background_task"]
    found = []
    for span in tasks:
        assert span.parent is not None
        parent = by_id[span.parent.span_id]
        attributes = tuple(
            sorted((k, v) for k, v in (span.attributes or {}).items() if k != "errands.job.id")
        )
        found.append((span.name, attributes, span.status.status_code.name, parent.name))
    return sorted(found), tasks


@pytest.mark.parametrize("mode", ["memory", "sqlite"])
def test_the_tutorial_traces_its_background_tasks_as_with_fastapis_own(
    tmp_path: Path, mode: str
) -> None:
    theirs, _ = shapes(run(fastapi.BackgroundTasks, tmp_path / "fastapi"))
    url = "memory://" if mode == "memory" else f"sqlite:///{tmp_path}/jobs.db"
    instance = Errands(url)
    ours, spans = shapes(run(errands.BackgroundTasks, tmp_path / "errands", instance.lifespan))
    assert ours == theirs
    assert [shape[3] for shape in ours] == [
        "POST /fails/{email}",
        "POST /send-notification/{email}",
        "POST /send-notification/{email}",
        "POST /sync/{email}",
    ]
    failed = [shape for shape in ours if shape[2] == "ERROR"]
    assert failed == [
        (
            "fastapi.background_task",
            (
                ("code.function.name", "tests.test_telemetry.tutorial.<locals>.mail_server_down"),
                ("error.type", "ConnectionError"),
            ),
            "ERROR",
            "POST /fails/{email}",
        )
    ]
    ids = {span.attributes["errands.job.id"] for span in spans if span.attributes}
    assert len(ids) == 4 and all(instance.get(str(id)) is not None for id in ids)
    # The trace is the request's: every task's span has its request's trace id.
    for span in spans:
        assert span.parent is not None and span.parent.trace_id == span.context.trace_id


def test_without_fastapis_telemetry_nothing_is_captured() -> None:
    from errands._telemetry import request_trace

    assert request_trace() is None  # no request, no FastAPI telemetry
    app = FastAPI()  # no tracer provider configured: FastAPI traces nothing
    seen: list[Any] = []

    @app.post("/")
    async def endpoint(background_tasks: errands.BackgroundTasks) -> None:
        job = background_tasks.add_task(print, "x")
        seen.append(getattr(job._local, "trace", "no plain job"))

    with TestClient(app, raise_server_exceptions=False) as client:
        client.post("/")
    assert seen == [None]
