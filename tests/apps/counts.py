"""errands' counters as a process exports them through OpenTelemetry's metrics SDK on
its global meter provider, written to $METRICS_FILE: for tests whose jobs run in other
processes (an errands worker, a Celery worker)."""

import json
import os

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)


class Sums(MetricExporter):
    """Each export of errands' counters as a line of JSON in $METRICS_FILE (if set),
    keyed "instrument|task|outcome"."""

    def export(
        self, data: MetricsData, timeout_millis: float = 10_000, **_: object
    ) -> MetricExportResult:
        found = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name in ("errands.attempts", "errands.jobs.added"):
                        for point in metric.data.data_points:
                            attributes = dict(point.attributes or {})
                            found["|".join([metric.name, *map(str, attributes.values())])] = (
                                point.value
                            )
        if found and (path := os.environ.get("METRICS_FILE")):
            with open(path, "a") as file:
                file.write(json.dumps(found) + "\n")
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **_: object) -> None:
        pass


def export_counts() -> None:
    """Set the global meter provider, exporting every 200 ms."""
    reader = PeriodicExportingMetricReader(Sums(), export_interval_millis=200)
    metrics.set_meter_provider(MeterProvider([reader]))


def exported(path: str) -> dict[str, int]:
    """The latest export written to ``path`` (empty if none)."""
    try:
        with open(path) as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        return {}
    return json.loads(lines[-1]) if lines else {}
