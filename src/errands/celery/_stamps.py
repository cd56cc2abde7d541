"""Celery mode: what an attempt leaves for the job record, on its Celery request.

A finished task's Celery result keeps its request's stamps (``result_extended``),
and a retry's message keeps the stamps of the request it came from
(``Task.retry`` -> ``signature_from_request`` -> ``as_execution_options``). So
what a record needs beyond Celery's own fields travels as stamps: set on the
request when an attempt starts or fails, read back by ``to_record``.

Stamps are message headers, and AMQP headers must stay small (RabbitMQ puts them
in one frame, 128 KiB by default): the error and traceback carried to the next
attempt are cut to ``CELERY_MAX_ERROR`` and ``CELERY_MAX_TRACEBACK`` (``_tuning``)
characters, with a marker.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery import states

from .._record import describe_error, utcnow
from .._tuning import CELERY_MAX_ERROR, CELERY_MAX_TRACEBACK
from ._cut import cut
from ._results import (
    AFTER,
    BEFORE,
    CANCEL_REQUESTED_AT,
    ERROR,
    FINISHED_AT,
    LOST,
    MAX_ATTEMPTS,
    PRIORITY,
    RUN_AT,
    SCHEDULED_AT,
    STARTED_AT,
    TRACEBACK,
    TRACEPARENT,
    count,
    errands_fields,
)

if TYPE_CHECKING:
    from .._task import Task
    from ._publish import Publisher


def begin(request: Any, task: Task[Any, Any], store: Publisher) -> dict[str, Any]:
    """Stamp the start of an attempt on ``request``; errands' fields of the job while
    it runs (its ``STARTED`` record)."""
    stamps = dict(getattr(request, "stamps", None) or {})
    lost = count(stamps.get(LOST))
    before = count(stamps.get(BEFORE))  # attempts of rounds before errands.retry
    if _redelivered(request):
        lost = max(lost, _lost_so_far(store, str(request.id), before + request.retries))
    stamps[STARTED_AT] = utcnow().isoformat()
    stamps[MAX_ATTEMPTS] = before + task.policy.max_attempts
    stamps[LOST] = lost
    _stamp(request, stamps)
    return {
        "name": task.name,
        "args": list(request.args or ()),
        "kwargs": dict(request.kwargs or {}),
        "attempts": before + request.retries + 1 + lost,
        "max_attempts": before + task.policy.max_attempts,
        "started_at": stamps[STARTED_AT],
        "owner": getattr(request, "hostname", None),
        "error": stamps.get(ERROR),
        "traceback": stamps.get(TRACEBACK),
        "run_at": stamps.get(RUN_AT) or stamps.get(SCHEDULED_AT),
        "scheduled_at": stamps.get(SCHEDULED_AT),
        "priority": stamps.get(PRIORITY),
        "after": stamps.get(AFTER),
        "lost": lost,
        "traceparent": _text(stamps.get(TRACEPARENT)),
    }


def failed(request: Any, exc: BaseException, countdown: float) -> None:
    """Stamp a failed attempt's error, and when the next one is due, on ``request``
    before it is retried: the retry's message carries them on."""
    error, traceback = describe_error(exc)
    stamps = dict(getattr(request, "stamps", None) or {})
    stamps[ERROR] = cut(error, CELERY_MAX_ERROR)
    stamps[TRACEBACK] = cut(traceback, CELERY_MAX_TRACEBACK, keep_end=True)
    stamps[RUN_AT] = (utcnow() + timedelta(seconds=countdown)).isoformat()
    _stamp(request, stamps)


def stopped(request: Any, when: str) -> None:
    """Stamp on ``request`` that errands.cancel asked its job to stop, ``when``."""
    stamps = dict(getattr(request, "stamps", None) or {})
    stamps[CANCEL_REQUESTED_AT] = when
    _stamp(request, stamps)


def ended(request: Any) -> None:
    """Stamp the end of a job's last attempt, before the next job of its request is
    published: Celery's own time (``date_done``) comes after, when the result is
    stored, and the next job may have started by then."""
    stamps = dict(getattr(request, "stamps", None) or {})
    stamps[FINISHED_AT] = utcnow().isoformat()
    _stamp(request, stamps)


def _stamp(request: Any, stamps: dict[str, Any]) -> None:
    request.stamps = stamps
    request.stamped_headers = [
        *(h for h in getattr(request, "stamped_headers", None) or () if h not in stamps),
        *stamps,
    ]


def _text(value: Any) -> str | None:
    """A header's value if it is text (a message may carry anything)."""
    return value if isinstance(value, str) else None


def _redelivered(request: Any) -> bool:
    info = getattr(request, "delivery_info", None) or {}
    return bool(info.get("redelivered"))


def _lost_so_far(store: Publisher, id: str, retries: int) -> int:
    """Attempts of a redelivered job lost with their workers, this one's included if
    it had already started on a worker that died (the ``STARTED`` record is of this
    very attempt): it counts as lost, as a job whose lease ran out does in the other
    modes. A message a dead worker had only reserved never started: not counted."""
    try:
        meta = store.app.backend.get_task_meta(id)
    except Exception:
        return 0  # not worth failing the attempt for: only the count is off
    fields = errands_fields(meta) if meta.get("status") == states.STARTED else None
    if not fields:
        return 0
    lost = count(fields.get("lost"))
    return lost + 1 if count(fields.get("attempts")) - lost == retries + 1 else 0
