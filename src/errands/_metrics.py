"""An instance's metrics, in Prometheus' text format (prometheus-client, the ``metrics``
extra): counted in the process where things happen (jobs added, attempts by outcome,
how long jobs waited to start and ran), and read from the store when scraped (jobs by
task and status, the longest wait of a due job, jobs no live worker runs, live
workers), so that those are right however many processes share the store.

Nothing is counted until asked: ``errands.metrics()``, the dashboard's ``/metrics`` or
``errands worker --metrics-port`` turn counting on for the instance (the first of
them, once); until then each hook is one attribute test. Labels are task names,
outcomes and statuses only: never ids or arguments."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._meters import Meters, configured_provider
from ._record import JobStatus, utcnow
from .exceptions import ConfigurationError, TaskTimeout

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from ._attempt import Outcome
    from ._stats import Stats

#: Seconds, for both 1 ms jobs and 10 min ones (and waits of an hour).
BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
#: An attempt's outcome by the status its job was left in: ``retried`` and ``failed``
#: for an exception, with and without another attempt to come; ``timed_out`` (by its
#: cause, whether retried or not) is ``outcome_of``'s.
OUTCOMES = {
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.QUEUED: "retried",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}
_LOCK = threading.Lock()
logger = logging.getLogger("errands")
NEEDS = "the metrics need prometheus-client, which is not installed: pip install 'errands[metrics]'"


def outcome_of(outcome: Outcome) -> str:
    if isinstance(outcome.exc, TaskTimeout):
        return "timed_out"
    return OUTCOMES.get(outcome.status, "failed")


class Metrics:
    """Where one instance's figures go: nowhere until asked (``prometheus()``, or an
    OpenTelemetry meter provider, ``opentelemetry()``); then to each that was."""

    def __init__(self, stats: Callable[[], Stats]) -> None:
        self._stats = stats  # the store's figures, for the gauges
        #: What counts, or None (each hook is this one test until asked).
        self.counting: Prometheus | Meters | Both | None = None
        self._prometheus: Prometheus | None = None
        self._meters: Meters | None = None
        #: Whether a Celery worker process looked for OpenTelemetry's global provider.
        self.looked = False

    def added(self, names: Iterable[str]) -> None:
        """Jobs of these tasks were added (stored, or handed to this process's worker)."""
        if self.counting is not None:
            self.counting.added(names)

    def attempted(self, task: str, outcome: str, waited: float | None, ran: float) -> None:
        """An attempt ended: its outcome, how long its job waited for it to start (from
        when it was due), how long it ran."""
        if self.counting is not None:
            self.counting.attempted(task, outcome, waited, ran)

    def lost(self, names: Iterable[str]) -> None:
        """Attempts of these tasks were lost with their workers (found by their lease)."""
        if self.counting is not None:
            self.counting.lost(names)

    def prometheus(self) -> Prometheus:
        """Counting on, and the registry that serves it (once per instance)."""
        with _LOCK:
            if self._prometheus is None:
                self._prometheus = Prometheus(self._stats)
                self._sinks_changed()
            return self._prometheus

    def opentelemetry(self, provider: Any = None, *, gauges: bool = True) -> bool:
        """Count on OpenTelemetry's meter ``provider`` too (None: the global one, if the
        app set one); once per instance. Whether the instance now counts there.
        ``gauges=False``: the counts only (a Celery worker's process: its store's
        gauges are read where the jobs are added)."""
        self.looked = True
        with _LOCK:
            if self._meters is not None:
                return True
            found = configured_provider(provider)
            if found is None:
                return False
            try:
                self._meters = Meters(found, self._stats, BUCKETS, gauges=gauges)
            except Exception as exc:  # an OpenTelemetry too old, a provider that refuses
                logger.warning("errands' OpenTelemetry metrics are off: %s", exc)
                return False
            self._sinks_changed()
            return True

    def _sinks_changed(self) -> None:
        sinks = [s for s in (self._prometheus, self._meters) if s is not None]
        self.counting = sinks[0] if len(sinks) == 1 else Both(*sinks)


class Both:
    """Counts going to Prometheus and to OpenTelemetry alike."""

    def __init__(self, *sinks: Prometheus | Meters) -> None:
        self.sinks = sinks

    def added(self, names: Iterable[str]) -> None:
        names = list(names)
        for sink in self.sinks:
            sink.added(names)

    def attempted(self, task: str, outcome: str, waited: float | None, ran: float) -> None:
        for sink in self.sinks:
            sink.attempted(task, outcome, waited, ran)

    def lost(self, names: Iterable[str]) -> None:
        names = list(names)
        for sink in self.sinks:
            sink.lost(names)


class Prometheus:
    """The instance's prometheus-client metrics, in a registry of its own (or, with
    ``$PROMETHEUS_MULTIPROC_DIR``, counted in the files of prometheus-client's
    multiprocess mode, read back from every process of a server when scraped)."""

    def __init__(self, stats: Callable[[], Stats]) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigurationError(NEEDS) from None
        self.prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        on = self.registry
        self.jobs_added = prom.Counter(
            "errands_jobs_added", "Jobs added, by task.", ["task"], registry=on
        )
        self.attempts = prom.Counter(
            "errands_attempts", "Attempts that ended, by task and outcome.",
            ["task", "outcome"], registry=on,
        )  # fmt: skip
        self.wait = prom.Histogram(
            "errands_job_wait_seconds", "From when a job was due to when its attempt started.",
            ["task"], buckets=BUCKETS, registry=on,
        )  # fmt: skip
        self.run = prom.Histogram(
            "errands_attempt_duration_seconds", "How long each attempt ran.",
            ["task"], buckets=BUCKETS, registry=on,
        )  # fmt: skip
        self.store = StoreCollector(stats)
        self.registry.register(self.store)
        self._attempts: dict[tuple[str, str], Any] = {}
        self._times: dict[str, tuple[Any, Any]] = {}

    def added(self, names: Iterable[str]) -> None:
        for name in names:
            self.jobs_added.labels(name).inc()

    def attempted(self, task: str, outcome: str, waited: float | None, ran: float) -> None:
        # The labelled children, looked up once (prometheus-client's labels() locks).
        counter = self._attempts.get((task, outcome))
        if counter is None:
            counter = self._attempts[(task, outcome)] = self.attempts.labels(task, outcome)
        times = self._times.get(task)
        if times is None:
            times = self._times[task] = (self.wait.labels(task), self.run.labels(task))
        counter.inc()
        if waited is not None:
            times[0].observe(max(0.0, waited))
        times[1].observe(max(0.0, ran))

    def lost(self, names: Iterable[str]) -> None:
        for name in names:
            self.attempts.labels(name, "lost").inc()

    def exposition(self) -> Any:
        """The registry to expose: this process's, or every process's (multiprocess
        mode), with the store's gauges either way."""
        if not self.multiprocess:
            return self.registry
        from prometheus_client import multiprocess

        combined = self.prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        combined.register(self.store)
        return combined

    def app(self) -> ASGIApp:
        """An ASGI app serving the text format (OpenMetrics when the scraper asks). The
        scrape reads the store (``errands.stats()``), so it runs in a worker thread,
        never on the event loop of the app it is mounted in."""
        import anyio
        from prometheus_client.exposition import choose_encoder

        registry = self.exposition()

        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
            encoder, content_type = choose_encoder(accept)
            body = await anyio.to_thread.run_sync(encoder, registry)
            headers = [(b"content-type", content_type.encode("latin-1"))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return serve

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve them on their own port, from a thread (``errands worker --metrics-port``)."""
        self.prom.start_http_server(port, addr=host, registry=self.exposition())


class StoreCollector:
    """Gauges read from the store at each scrape (one ``errands.stats()``)."""

    def __init__(self, stats: Callable[[], Stats]) -> None:
        self.stats = stats

    def describe(self) -> list[Any]:
        return []  # gauges with no fixed set of series: described when collected

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily(
            "errands_store_up", "1 if the store answered this scrape, 0 if not (no gauges then)."
        )
        try:
            found = self.stats()
        except Exception:
            up.add_metric([], 0)
            yield up  # the counts of this process still go out
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily(
            "errands_jobs", "Jobs in the store, by task and status.", labels=["task", "status"]
        )
        for name, counts in sorted(found.tasks.items()):
            for status in JobStatus:
                jobs.add_metric([name, status.value], counts.get(status, 0))
        yield jobs
        waiting = GaugeMetricFamily(
            "errands_oldest_due_job_age_seconds",
            "How long the queued job due the longest has waited to start (0: none).",
        )
        oldest = found.activity.oldest_queued
        waiting.add_metric([], 0.0 if oldest is None else (utcnow() - oldest).total_seconds())
        yield waiting
        unrunnable = GaugeMetricFamily(
            "errands_unrunnable_jobs", "Queued jobs no live worker runs, by task.", labels=["task"]
        )
        for name, count in sorted(found.unrunnable.items()):
            unrunnable.add_metric([name], count)
        yield unrunnable
        workers = GaugeMetricFamily("errands_workers", "Live workers of the store.")
        workers.add_metric([], len(found.workers))
        yield workers
