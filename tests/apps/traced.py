"""A traced app (OpenTelemetry SDK, spans written as JSON lines to $TRACES_FILE) whose
registered jobs run in a separate `errands worker` process with its own exporter (or,
with $TRACED_QUEUE, in a Celery worker taking that queue): the test that a job's
attempt is a child of the request that added it, across processes."""

import json
import os
from collections.abc import Sequence

from celery import Celery
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from errands import BackgroundTasks, Errands
from tests.apps.counts import export_counts


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


export_counts()
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
