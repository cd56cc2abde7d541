"""errands' metrics through the OpenTelemetry metrics API: on the meter provider given to
``FastAPI(telemetry=...)``, or on the global one (a worker of its own, a Celery worker),
the same counts as the Prometheus text, under OpenTelemetry's names, with attributes that
hold task names, outcomes and statuses only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from errands import Errands, JobStatus
from tests.test_metrics import tasks_of_every_outcome

Points = dict[tuple[str, tuple[tuple[str, Any], ...]], Any]


def points(reader: InMemoryMetricReader) -> Points:
    """Every data point collected now, by instrument name and sorted attributes: a
    number for counters and gauges, the (count, sum, bucket bounds) of a histogram."""
    found: Points = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            assert scope.scope.name == "errands"
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, tuple(sorted((point.attributes or {}).items())))
                    if hasattr(point, "bucket_counts"):
                        found[key] = (point.count, point.sum, tuple(point.explicit_bounds))
                    else:
                        found[key] = point.value
    return found


def run_jobs(errands: Errands, app: object) -> None:
    ok, flaky, bad, slow = tasks_of_every_outcome(errands)

    async def main() -> None:
        async with errands.lifespan(app):
            for i in range(3):
                errands.add_task(ok, i)
            for task in (flaky, bad, slow):
                errands.add_task(task)
            errands.add_task(ok.options(delay=3600), 9)
            deadline = time.monotonic() + 20
            while sum(1 for r in errands.jobs(limit=100) if r.finished) < 6:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)

    asyncio.run(main())


def check(found: Points, errands: Errands) -> None:
    def value(name: str, **attributes: str) -> Any:
        return found.get((name, tuple(sorted(attributes.items()))), 0)

    added = {t: value("errands.jobs.added", **{"errands.task": t}) for t in ("ok", "flaky", "bad")}
    assert added == {"ok": 4, "flaky": 1, "bad": 1}
    attempts = {
        (dict(attrs)["errands.task"], dict(attrs)["errands.outcome"]): v
        for (name, attrs), v in found.items()
        if name == "errands.attempts"
    }
    assert attempts == {
        ("ok", "succeeded"): 3,
        ("flaky", "retried"): 1,
        ("flaky", "succeeded"): 1,
        ("bad", "failed"): 1,
        ("slow", "timed_out"): 1,
    }
    for task, count in (("ok", 3), ("flaky", 2), ("bad", 1), ("slow", 1)):
        for name in ("errands.attempt.duration", "errands.job.wait"):
            made, _, bounds = value(name, **{"errands.task": task})
            assert made == count
            assert bounds[0] == 0.001 and bounds[-1] == 3600.0  # 1 ms jobs to hour-long waits
    assert value("errands.attempt.duration", **{"errands.task": "slow"})[1] >= 0.05
    stats = errands.stats()
    for name, counts in stats.tasks.items():
        for status in JobStatus:
            attributes = {"errands.task": name, "errands.status": status.value}
            assert value("errands.jobs", **attributes) == counts.get(status, 0)
    assert value("errands.jobs", **{"errands.task": "ok", "errands.status": "queued"}) == 1
    assert value("errands.store.up") == 1
    assert ("errands.oldest_due_job.age", ()) in found
    keys = {k for _, attrs in found for k, _ in attrs}
    assert keys <= {"errands.task", "errands.outcome", "errands.status"}


def test_on_the_meter_provider_given_to_fastapi(url: str) -> None:
    reader = InMemoryMetricReader()
    errands = Errands(url)
    app = FastAPI(telemetry={"meter_provider": MeterProvider(metric_readers=[reader])})
    run_jobs(errands, app)
    check(points(reader), errands)


def test_off_when_fastapi_is_told_metrics_false() -> None:
    reader = InMemoryMetricReader()
    errands = Errands("memory://")
    provider = MeterProvider(metric_readers=[reader])
    app = FastAPI(telemetry={"meter_provider": provider, "metrics": False})
    run_jobs(errands, app)
    assert errands._core.metrics.counting is None
    assert not [k for k in points(reader) if k[0].startswith("errands.")]


@pytest.fixture
def global_provider() -> Iterator[InMemoryMetricReader]:
    """OpenTelemetry's global meter provider, set as an app's setup sets it."""
    from opentelemetry.metrics import _internal

    reader = InMemoryMetricReader()
    previous = _internal._METER_PROVIDER
    _internal._METER_PROVIDER = MeterProvider(metric_readers=[reader])
    try:
        yield reader
    finally:
        _internal._METER_PROVIDER = previous


def test_on_the_global_provider_without_an_app(global_provider: InMemoryMetricReader) -> None:
    assert metrics.get_meter_provider() is not None
    errands = Errands("memory://")
    run_jobs(errands, None)
    check(points(global_provider), errands)


def test_not_counted_while_no_provider_is_set() -> None:
    errands = Errands("memory://")
    run_jobs(errands, None)
    assert errands._core.metrics.counting is None  # each hook stays one test


def test_with_prometheus_too_both_count(url: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families
    from starlette.testclient import TestClient

    reader = InMemoryMetricReader()
    errands = Errands(url)
    scraped = errands.metrics()
    app = FastAPI(telemetry={"meter_provider": MeterProvider(metric_readers=[reader])})
    run_jobs(errands, app)
    check(points(reader), errands)
    text = TestClient(scraped).get("/").text
    ok = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "errands_attempts_total" and s.labels == {"task": "ok", "outcome": "succeeded"}
    ]
    assert ok == [3]


def test_one_read_of_the_store_serves_every_gauge_of_a_collection() -> None:
    """Five gauges, one ``stats()``: a slow store is read once a collection, and a
    failing one reports ``errands.store.up`` 0 (and no other gauge)."""
    reader = InMemoryMetricReader()
    errands = Errands("memory://")
    reads: list[float] = []
    real = errands._core.backend.stats

    def counted() -> Any:
        reads.append(time.monotonic())
        time.sleep(1.2)  # slower than the reading is kept for
        if len(reads) > 1:
            raise OSError("the store is gone")
        return real()

    errands._core.backend.stats = counted  # type: ignore[method-assign]
    assert errands._core.metrics.opentelemetry(MeterProvider(metric_readers=[reader]))
    first = points(reader)
    assert len(reads) == 1 and first[("errands.store.up", ())] == 1
    assert first[("errands.workers", ())] == 0
    assert points(reader)[("errands.store.up", ())] == 1 and len(reads) == 1  # still fresh
    time.sleep(1.1)
    second = points(reader)
    assert len(reads) == 2 and second[("errands.store.up", ())] == 0
    assert not [key for key in second if key[0] == "errands.workers"]
