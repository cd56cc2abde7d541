"""FastAPI's own telemetry (``FastAPI(telemetry=...)``, FastAPI 0.165 and later) for a
request's plain tasks: FastAPI's ``BackgroundTasks`` runs each in a span
``fastapi.background_task`` under the request's span; errands' runs them itself (in its
worker, after the response), so it opens that same span with FastAPI's own code, in the
context the request had when the task was added. Imported only where FastAPI is: with
an older FastAPI, or with its telemetry off, nothing is recorded and nothing costs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

try:
    from fastapi.telemetry._api import _get_request_telemetry, _operation
    from opentelemetry import context as otel_context
    from opentelemetry import trace
except ImportError:  # FastAPI before 0.165: no telemetry of its own
    FASTAPI_TRACES = False
else:
    FASTAPI_TRACES = True


def request_trace() -> Any:
    """The OpenTelemetry context of the request this runs in, if FastAPI traces its
    operations (its background tasks among them); else None."""
    if not FASTAPI_TRACES:
        return None
    try:  # FastAPI's private API: should it change, no span rather than a broken add_task
        telemetry = _get_request_telemetry()
        if telemetry is None or telemetry.tracer is None or telemetry.span is None:
            return None
        # Under the request's span (FastAPI runs its tasks after the endpoint's has ended).
        return trace.set_span_in_context(telemetry.span, otel_context.get_current())
    except Exception:
        return None


def request_span() -> Any:
    """The span of the request this runs in, when FastAPI traces it; else None."""
    if not FASTAPI_TRACES:
        return None
    try:
        telemetry = _get_request_telemetry()
        return None if telemetry is None else telemetry.span
    except Exception:
        return None


@contextmanager
def background_task(context: Any, func: Callable[..., Any], id: str) -> Iterator[None]:
    """FastAPI's ``fastapi.background_task`` span around one plain task's run, a child
    of the span of the request that added it; errands adds the job's id."""
    token = otel_context.attach(context)
    try:
        with _operation(name="background_task", function=func):
            trace.get_current_span().set_attribute("errands.job.id", id)
            yield
    finally:
        otel_context.detach(token)
