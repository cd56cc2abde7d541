"""An instance's metrics through the OpenTelemetry metrics API, so that they go wherever
the app's other metrics go: on the meter provider given to ``FastAPI(telemetry=...)``
(seen when the app's lifespan runs), else on OpenTelemetry's global one once it is
set. The same figures as the Prometheus text (``_metrics.py``), under OpenTelemetry's
names: ``errands.jobs.added``, ``errands.attempts`` (counters), ``errands.job.wait``,
``errands.attempt.duration`` (histograms, seconds), and gauges read from the store when
the provider collects (``errands.jobs``, ``errands.oldest_due_job.age``,
``errands.unrunnable_jobs``, ``errands.workers``, ``errands.store.up``).

Attributes are ``errands.task``, ``errands.outcome`` and ``errands.status`` only:
never ids or arguments. Nothing here runs unless OpenTelemetry's metrics API has been
imported by the app."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._record import JobStatus, utcnow

if TYPE_CHECKING:
    from ._stats import Stats

#: How long one read of the store serves the gauges of one collection (they are
#: observed one after the other, each asking).
_FRESH = 1.0


def configured_provider(given: Any = None) -> Any:
    """The meter provider to use: ``given`` (the app's), else the global one if the
    app set one; None when OpenTelemetry's metrics are not in use (not imported, or
    no provider set: the API's proxy)."""
    if given is not None:
        return given
    api = sys.modules.get("opentelemetry.metrics")
    if api is None:
        return None
    provider = api.get_meter_provider()
    cls = type(provider)
    if (cls.__module__, cls.__name__) in _UNSET:
        return None
    return provider


#: The providers OpenTelemetry's API stands in with until an SDK's is set (as
#: FastAPI's telemetry tells them apart).
_UNSET = {
    ("opentelemetry.metrics._internal", "_ProxyMeterProvider"),
    ("opentelemetry.metrics._internal", "NoOpMeterProvider"),
    ("opentelemetry.metrics", "NoOpMeterProvider"),
}


class Meters:
    """The instruments of one instance on one meter provider."""

    def __init__(
        self,
        provider: Any,
        stats: Callable[[], Stats],
        buckets: Iterable[float],
        *,
        gauges: bool = True,
    ) -> None:
        from opentelemetry.metrics import Observation

        from . import __version__

        self.provider = provider
        self._stats = stats
        self._read: tuple[float, Stats | None] = (-_FRESH, None)
        self._lock = threading.Lock()
        self._observation = Observation
        meter = provider.get_meter("errands", __version__)
        bounds = list(buckets)
        self.jobs_added = meter.create_counter(
            "errands.jobs.added", unit="{job}", description="Jobs added, by task."
        )
        self.attempts = meter.create_counter(
            "errands.attempts",
            unit="{attempt}",
            description="Attempts that ended, by task and outcome.",
        )
        self.wait = meter.create_histogram(
            "errands.job.wait", unit="s",
            description="From when a job was due to when its attempt started.",
            explicit_bucket_boundaries_advisory=bounds,
        )  # fmt: skip
        self.run = meter.create_histogram(
            "errands.attempt.duration", unit="s", description="How long each attempt ran.",
            explicit_bucket_boundaries_advisory=bounds,
        )  # fmt: skip
        if gauges:
            self._gauges(meter)

    def _gauges(self, meter: Any) -> None:
        from opentelemetry.metrics import CallbackOptions, Observation

        def gauge(name: str, unit: str, description: str, read: Callable[[Stats], Any]) -> None:
            def observe(options: CallbackOptions) -> Iterator[Any]:
                found = self.stats()
                if found is not None:
                    yield from read(found)

            meter.create_observable_gauge(name, [observe], unit=unit, description=description)

        gauge("errands.jobs", "{job}", "Jobs in the store, by task and status.", self._jobs)
        gauge(
            "errands.oldest_due_job.age", "s",
            "How long the queued job due the longest has waited to start (0: none).", self._oldest,
        )  # fmt: skip
        gauge(
            "errands.unrunnable_jobs", "{job}", "Queued jobs no live worker runs, by task.",
            self._unrunnable,
        )  # fmt: skip
        gauge("errands.workers", "{worker}", "Live workers of the store.", self._workers)

        def up(options: CallbackOptions) -> Iterator[Any]:
            yield Observation(0 if self.stats() is None else 1)

        meter.create_observable_gauge(
            "errands.store.up", [up], unit="1",
            description="1 if the store answered when the gauges were read, 0 if not.",
        )  # fmt: skip

    def added(self, names: Iterable[str]) -> None:
        for name in names:
            self.jobs_added.add(1, {"errands.task": name})

    def attempted(self, task: str, outcome: str, waited: float | None, ran: float) -> None:
        self.attempts.add(1, {"errands.task": task, "errands.outcome": outcome})
        attributes = {"errands.task": task}
        if waited is not None:
            self.wait.record(max(0.0, waited), attributes)
        self.run.record(max(0.0, ran), attributes)

    def lost(self, names: Iterable[str]) -> None:
        for name in names:
            self.attempts.add(1, {"errands.task": name, "errands.outcome": "lost"})

    def stats(self) -> Stats | None:
        """The store's figures for this collection: one read serves every gauge."""
        with self._lock:
            at, found = self._read
            if time.monotonic() - at >= _FRESH:
                try:
                    found = self._stats()
                except Exception:
                    found = None
                self._read = (time.monotonic(), found)  # fresh from when it was read
            return found

    def _jobs(self, found: Stats) -> Iterator[Any]:
        for name, counts in sorted(found.tasks.items()):
            for status in JobStatus:
                attributes = {"errands.task": name, "errands.status": status.value}
                yield self._observation(counts.get(status, 0), attributes)

    def _oldest(self, found: Stats) -> Iterator[Any]:
        oldest = found.activity.oldest_queued
        yield self._observation(0.0 if oldest is None else (utcnow() - oldest).total_seconds())

    def _unrunnable(self, found: Stats) -> Iterator[Any]:
        for name, count in sorted(found.unrunnable.items()):
            yield self._observation(count, {"errands.task": name})

    def _workers(self, found: Stats) -> Iterator[Any]:
        yield self._observation(len(found.workers))
