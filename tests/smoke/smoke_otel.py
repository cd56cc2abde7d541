"""Smoke test of ``pip install 'errands[otel]'`` alone, run by ``scripts/smoke`` in a
fresh venv: with OpenTelemetry's API imported and no SDK (no provider set, as in an app
that installed the API but configured nothing), jobs run, are untraced and uncounted,
and nothing fails. Not collected by pytest."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from opentelemetry import metrics, trace

import errands as errands_package
from errands import Errands, JobStatus

EXTRA = "errands[otel]"


def check(condition: bool, problem: str) -> None:
    if not condition:
        raise SystemExit(f"{EXTRA} smoke test failed: {problem}")


def main() -> None:
    check(
        Path(errands_package.__file__).is_relative_to(sys.prefix),
        f"errands was imported from {errands_package.__file__}, not from the venv {sys.prefix}",
    )
    tracer = trace.get_tracer("smoke")
    with tempfile.TemporaryDirectory() as tmp:
        errands = Errands(f"sqlite:///{tmp}/errands.db")

        @errands.task(name="smoke.add")
        def add(a: int, b: int) -> int:
            return a + b

        async def run() -> str:
            async with errands.lifespan():
                with tracer.start_as_current_span("no SDK: a span that records nothing"):
                    job = errands.add_task(add, 2, 3)
                await errands.join(timeout=20)
                return job.id

        id = asyncio.run(run())
        record = errands.get(id)
        check(record is not None and record.status is JobStatus.SUCCEEDED, f"job: {record}")
        assert record is not None
        check(record.result == 5, f"result {record.result!r}")
        check(record.traceparent is None, f"a trace with no SDK: {record.traceparent}")
        check(errands._core.metrics.counting is None, "counting with no meter provider set")
        check(metrics.get_meter_provider() is not None, "the API's meter provider")
    print(f"{EXTRA}: ok")


if __name__ == "__main__":
    main()
