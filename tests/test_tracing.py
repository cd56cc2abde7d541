"""Traces across processes: a request served by uvicorn adds registered jobs; a separate
`errands worker` runs them; each exports its spans to its own file. Each attempt is a
span `errands run <task>` (CONSUMER) in the request's trace, the request's span its
parent; a task's own spans are its children; a failure is recorded on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from errands import BackgroundTasks
from tests.conftest import ROOT, Server, require_service, wait_finished

pytestmark = [pytest.mark.server, pytest.mark.slow]


def spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("mode", ["sqlite", pytest.param("celery", marks=pytest.mark.celery)])
def test_a_jobs_attempt_is_a_child_of_the_request_that_added_it(mode: str, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    served, ran = tmp_path / "server.jsonl", tmp_path / "worker.jsonl"
    env = {"TRACED_DB": str(db)}
    if mode == "sqlite":
        command = [sys.executable, "-m", "errands", "worker", "tests.apps.traced:errands"]
    else:
        require_service("redis")
        env["TRACED_QUEUE"] = queue = f"errands-traced-{uuid.uuid4().hex[:8]}"
        command = [
            sys.executable, "-m", "celery", "-A", "tests.apps.traced:celery_app", "worker",
            "-P", "threads", "-c", "2", "-Q", queue, "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-n", f"{queue}@%h",
        ]  # fmt: skip
    server = Server("tests.apps.traced:app", env={**env, "TRACES_FILE": str(served)})
    worker = subprocess.Popen(
        command,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            **env,
            "TRACES_FILE": str(ran),
            "METRICS_FILE": str(tmp_path / "metrics.jsonl"),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ids = httpx.post(server.url + "/go").json()
        deadline = time.monotonic() + 30
        # work, then fail (after it: its request's order), whose retry is a third attempt
        while len([s for s in spans(ran) if s["name"].startswith("errands run")]) < 3:
            assert time.monotonic() < deadline, spans(ran)
            time.sleep(0.1)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        server.stop()
    [request] = [s for s in spans(served) if s["name"] == "POST /go"]
    assert request["events"] == ["errands add", "errands add"]
    runs = sorted(
        (s for s in spans(ran) if s["name"].startswith("errands run")),
        key=lambda s: (
            s["attributes"]["messaging.destination.name"],
            s["attributes"]["errands.attempt"],
        ),
    )
    fail, retried, work = runs
    for run, id in ((work, ids["work"]), (fail, ids["fail"]), (retried, ids["fail"])):
        assert run["trace"] == request["trace"]
        assert run["parent"] == request["span"]
        assert run["kind"] == "CONSUMER"
        assert run["attributes"]["messaging.system"] == "errands"
        assert run["attributes"]["messaging.message.id"] == id
    assert [r["attributes"]["errands.attempt"] for r in (work, fail, retried)] == [1, 1, 2]
    assert work["status"] == "UNSET" and work["attributes"]["errands.outcome"] == "succeeded"
    assert fail["attributes"]["errands.outcome"] == "retried"  # the metrics' label
    for failed in (fail, retried):
        assert failed["status"] == "ERROR" and failed["events"] == ["exception"]
        assert failed["attributes"]["error.type"] == "ConnectionError"
    assert retried["attributes"]["errands.outcome"] == "failed"
    [inside] = [s for s in spans(ran) if s["name"] == "inside work"]
    assert inside["parent"] == work["span"] and inside["trace"] == request["trace"]


def test_a_job_added_under_any_span_runs_under_it_in_this_process(url: str) -> None:
    """Outside a request (a script, a cron): the span current when the job was added."""
    import asyncio

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from errands import Errands

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("script")
    errands = Errands(url)

    @errands.task(name="step", retries=1, backoff=0)
    def step(fail_first: bool) -> None:
        if fail_first and not getattr(step, "failed", False):
            step.failed = True  # type: ignore[attr-defined]
            raise RuntimeError("once")

    async def main() -> None:
        async with errands.lifespan():
            with tracer.start_as_current_span("nightly batch"):
                errands.add_task(step, True)
            await errands.join(timeout=20)

    from opentelemetry import trace

    previous = trace._TRACER_PROVIDER  # the global one the attempt's span is made with
    trace._TRACER_PROVIDER = provider
    try:
        asyncio.run(main())
    finally:
        trace._TRACER_PROVIDER = previous
    finished = exporter.get_finished_spans()
    [batch] = [s for s in finished if s.name == "nightly batch"]
    runs = sorted(
        (s for s in finished if s.name == "errands run step"), key=lambda s: s.start_time or 0
    )
    assert [s.attributes["errands.attempt"] for s in runs] == [1, 2]  # type: ignore[index]
    assert [s.status.status_code.name for s in runs] == ["ERROR", "UNSET"]
    for run in runs:
        assert run.kind is SpanKind.CONSUMER
        assert run.parent is not None and run.parent.span_id == batch.context.span_id
        assert run.context.trace_id == batch.context.trace_id
    assert [e.name for e in batch.events] == ["errands add"]


def test_the_apps_tracer_provider_and_exclude_setting_are_used(url: str) -> None:
    """A user configures telemetry once, on FastAPI: errands' attempt spans go to the
    tracer provider given to ``FastAPI(telemetry=...)`` (the global one is left unset),
    and a request its ``exclude`` skips adds jobs that carry no trace, even under a span
    another instrumentation opened (here a middleware's)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from errands import Errands

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    errands = Errands(url)
    app = FastAPI(
        lifespan=errands.lifespan,
        telemetry={"tracer_provider": provider, "exclude": lambda scope: scope["path"] == "/quiet"},
    )

    @errands.task(name="noted")
    def noted(n: int) -> int:
        return n

    @app.middleware("http")
    async def instrumentation(request: Any, call_next: Any) -> Any:
        with provider.get_tracer("other").start_as_current_span("other's span"):
            return await call_next(request)

    @app.post("/{path}")
    async def add(path: str, tasks: BackgroundTasks) -> str:
        return tasks.add_task(noted, 1).id

    with TestClient(app) as client:
        traced, quiet = client.post("/loud").json(), client.post("/quiet").json()
        done = [wait_finished(errands, id) for id in (traced, quiet)]
    assert [record.result for record in done] == [1, 1]
    assert done[0].traceparent is not None and done[1].traceparent is None
    finished = exporter.get_finished_spans()
    [request] = [s for s in finished if s.name == "POST /{path}"]
    [run] = [s for s in finished if s.name == "errands run noted"]
    assert run.attributes is not None and run.attributes["messaging.message.id"] == traced
    assert run.parent is not None and run.parent.span_id == request.context.span_id


@pytest.mark.parametrize("garbage", ["", "00-zz-yy-01", "x" * 10_000, 123, b"00-ab"])
def test_a_malformed_trace_context_gives_a_span_with_no_parent(garbage: Any) -> None:
    """A Celery message's header may hold anything: the attempt still runs, traced
    under no parent, never failing on it."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from errands._tracing import attempt_span

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with attempt_span(garbage, "t", "id", 1, provider) as span:
        assert span is not None
    [run] = exporter.get_finished_spans()
    assert run.name == "errands run t" and run.parent is None
