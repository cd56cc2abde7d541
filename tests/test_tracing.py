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
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Server

pytestmark = [pytest.mark.server, pytest.mark.slow]


def spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_jobs_attempt_is_a_child_of_the_request_that_added_it(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    served, ran = tmp_path / "server.jsonl", tmp_path / "worker.jsonl"
    server = Server("tests.apps.traced:app", env={"TRACED_DB": str(db), "TRACES_FILE": str(served)})
    worker = subprocess.Popen(
        [sys.executable, "-m", "errands", "worker", "tests.apps.traced:errands"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TRACED_DB": str(db),
             "TRACES_FILE": str(ran)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ids = httpx.post(server.url + "/go").json()
        deadline = time.monotonic() + 30
        while len([s for s in spans(ran) if s["name"].startswith("errands run")]) < 2:
            assert time.monotonic() < deadline, spans(ran)
            time.sleep(0.1)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        server.stop()
    [request] = [s for s in spans(served) if s["name"] == "POST /go"]
    assert request["events"] == ["errands add", "errands add"]
    runs = {
        s["attributes"]["messaging.destination.name"]: s
        for s in spans(ran)
        if s["name"].startswith("errands run")
    }
    work, fail = runs["traced.work"], runs["traced.fail"]
    for run, id in ((work, ids["work"]), (fail, ids["fail"])):
        assert run["trace"] == request["trace"]
        assert run["parent"] == request["span"]
        assert run["kind"] == "CONSUMER"
        assert run["attributes"]["messaging.system"] == "errands"
        assert run["attributes"]["messaging.message.id"] == id
        assert run["attributes"]["errands.attempt"] == 1
    assert work["status"] == "UNSET" and work["attributes"]["errands.outcome"] == "succeeded"
    assert fail["status"] == "ERROR" and fail["events"] == ["exception"]
    assert fail["attributes"]["error.type"] == "ConnectionError"
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
