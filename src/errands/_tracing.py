"""Traces of registered jobs, with OpenTelemetry (when the app uses it): a job added
in a request FastAPI traces keeps the request span's W3C ``traceparent`` (elsewhere,
the current span's); each of its
attempts, in whatever process runs it, is a span ``errands run <task>`` (kind CONSUMER)
whose parent is that span, so the job's work appears in the request's trace.

Adding a job is an event on the current span (``errands add``), not a span of its own.
Nothing here imports OpenTelemetry: a process that has not imported it (an app that does
not use it) pays one dictionary lookup per job."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._attempt import Outcome


def traceparent(id: str, task: str) -> str | None:
    """The context of the span current now, for a job added now (and an ``errands add``
    event on that span); None when there is none, or OpenTelemetry is not in use."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None  # nothing traces this (the common case: one lookup)
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if "fastapi.telemetry._api" in sys.modules:  # FastAPI traces the request: its span
        from ._telemetry import request_span

        span = request_span() or span
    if span.is_recording():
        span.add_event("errands add", {"messaging.message.id": id, "errands.task": task})
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


@contextmanager
def attempt_span(
    traceparent: str | None, task: str, id: str, attempt: int, provider: Any = None
) -> Iterator[Any]:
    """The span of one attempt of job ``id`` of ``task``, added under ``traceparent``,
    current while it runs (the task's own spans are its children); yields it (None when
    the job carries no trace), for ``ended``. ``provider``: the tracer provider the app
    gave FastAPI (``FastAPI(telemetry={"tracer_provider": ...})``), else the global one."""
    if traceparent is None or "opentelemetry.trace" not in sys.modules:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    try:  # a message's header may hold anything: then the span has no parent
        parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    except Exception:
        parent = None
    tracer = trace.get_tracer("errands", tracer_provider=provider)
    attributes: dict[str, str | int] = {
        "messaging.system": "errands",
        "messaging.operation.type": "process",
        "messaging.operation.name": "run",
        "messaging.destination.name": task,
        "messaging.message.id": id,
        "errands.attempt": attempt,
    }
    with tracer.start_as_current_span(
        f"errands run {task}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def ended(span: Any, outcome: Outcome) -> None:
    """What the attempt came to, on its span: a failure's exception and error status."""
    if span is None:
        return
    from opentelemetry.trace import StatusCode

    from ._metrics import outcome_of

    span.set_attribute("errands.outcome", outcome_of(outcome))  # as the metrics label it
    if outcome.exc is not None:
        span.record_exception(outcome.exc)
        span.set_attribute("error.type", type(outcome.exc).__qualname__)
        span.set_status(StatusCode.ERROR, outcome.error or None)


class Tracing:
    """Where an instance's attempt spans go: the tracer provider the app gave FastAPI
    (``FastAPI(telemetry={"tracer_provider": ...})``, seen when the app's lifespan
    runs), else (None) OpenTelemetry's global one."""

    __slots__ = ("provider",)

    def __init__(self) -> None:
        self.provider: Any = None


def fastapi_telemetry(app: object) -> dict[str, Any] | None:
    """The settings the app gave ``FastAPI(telemetry=...)`` (FastAPI 0.165 and later,
    which keeps them as ``app._telemetry``); None for another app or an older FastAPI."""
    config = getattr(app, "_telemetry", None)
    return config if isinstance(config, dict) else None


def excluded(scope: Any) -> bool:
    """Whether FastAPI's ``exclude`` setting skipped telemetry for this request (FastAPI
    marks its scope, for mounted apps too): then its jobs carry no trace either."""
    return "fastapi.telemetry" in scope and scope["fastapi.telemetry"] is None
