"""A traced app (OpenTelemetry SDK, spans written as JSON lines to $TRACES_FILE) whose
registered jobs run in a separate `errands worker` process with its own exporter (or,
with $TRACED_QUEUE, in a Celery worker taking that queue): the test that a job's
attempt is a child of the request that added it, across processes."""

import json
import os
from collections.abc import Sequence

from celery import Celery
from fastapi import FastAPI
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from errands import BackgroundTasks, Errands


class Lines(SpanExporter):
    """Each span as a line of JSON in $TRACES_FILE."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(os.environ["TRACES_FILE"], "a") as file:
            for span in spans:
                file.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "trace": f"{span.context.trace_id:032x}",
                            "span": f"{span.context.span_id:016x}",
                            "parent": f"{span.parent.span_id:016x}" if span.parent else None,
                            "kind": span.kind.name,
                            "status": span.status.status_code.name,
                            "attributes": dict(span.attributes or {}),
                            "events": [event.name for event in span.events],
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS


class Sums(MetricExporter):
    """Each export of errands' counters as a line of JSON in $METRICS_FILE (if set)."""

    def export(
        self, data: MetricsData, timeout_millis: float = 10_000, **_: object
    ) -> MetricExportResult:
        found = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name in ("errands.attempts", "errands.jobs.added"):
                        for point in metric.data.data_points:
                            key = "|".join(
                                [metric.name, *sorted(map(str, point.attributes.values()))]
                            )
                            found[key] = point.value
        if found and (path := os.environ.get("METRICS_FILE")):
            with open(path, "a") as file:
                file.write(json.dumps(found) + "\n")
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **_: object) -> None:
        pass


metrics.set_meter_provider(
    MeterProvider([PeriodicExportingMetricReader(Sums(), export_interval_millis=200)])
)
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(Lines()))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("traced")

if queue := os.environ.get("TRACED_QUEUE"):
    redis = "redis://127.0.0.1:6379"
    celery_app = Celery("traced", broker=f"{redis}/10", backend=f"{redis}/11")
    celery_app.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=True)
    errands = Errands(celery=celery_app)
else:
    errands = Errands(f"sqlite:///{os.environ['TRACED_DB']}", worker=False)
app = FastAPI(lifespan=errands.lifespan, telemetry={"tracer_provider": provider})


@errands.task(name="traced.work")
def work(n: int) -> int:
    with tracer.start_as_current_span("inside work"):
        return n * 2


@errands.task(name="traced.fail", retries=1, backoff=0)
async def fail() -> None:
    raise ConnectionError("the mail server hung up")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"ok": "yes"}


@app.post("/go")
async def go(tasks: BackgroundTasks) -> dict[str, str]:
    return {"work": tasks.add_task(work, 21).id, "fail": tasks.add_task(fail).id}
