"""Celery mode: what errands keeps in Celery's result backend and messages, and how
it reads a job record back from a Celery result. Shared by the web side
(``_publish.py``) and the worker side (``_task.py``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from celery import Celery, states
from celery.app.task import Context
from celery.backends.base import DisabledBackend
from celery.backends.rpc import RPCBackend

from .._record import JobRecord, JobStatus, id_time
from ..exceptions import ConfigurationError

#: The message header that says where the jobs after this one are: ``[chain, index]``,
#: the id under which the request's later jobs are kept in the result backend, and
#: the position of the next one. (Kept there, not in the header: AMQP headers are
#: small and typed, and a request's jobs may carry up to ``max_payload`` each.)
CHAIN = "errands_chain"

#: Stamps (see ``_stamps.py``): what a job record needs that Celery's result does not
#: keep. When the latest attempt started, and when the last one ended; the task's
#: ``max_attempts``; attempts lost
#: with their workers; the last failed attempt's error and traceback, and when the
#: attempt after it was due; the job added before this one in its request.
STARTED_AT = "errands_started_at"
FINISHED_AT = "errands_finished_at"
MAX_ATTEMPTS = "errands_max_attempts"
LOST = "errands_lost"
ERROR = "errands_error"
TRACEBACK = "errands_traceback"
RUN_AT = "errands_run_at"
AFTER = "errands_after"
SCHEDULED_AT = "errands_scheduled_at"
PRIORITY = "errands_priority"
#: When errands.cancel asked the job to stop while it ran.
CANCEL_REQUESTED_AT = "errands_cancel_requested_at"
#: Attempts made before this round (errands.retry publishes a finished job again:
#: Celery's count of retries starts over, errands' goes on).
BEFORE = "errands_before"
#: The W3C trace context of the span the job was added under (a stamp of errands'
#: own, not the ``traceparent`` header: Celery's OpenTelemetry instrumentation
#: replaces that one with its publish span, from whatever thread publishes).
TRACEPARENT = "errands_traceparent"


def cancel_key(id: str) -> str:
    """The result backend's key that says errands.cancel was called for job ``id``
    (its value: when, in ISO 8601)."""
    return f"errands-cancel-{id}"


_STATUS = {
    states.PENDING: JobStatus.QUEUED,
    states.RECEIVED: JobStatus.QUEUED,
    states.RETRY: JobStatus.QUEUED,
    states.STARTED: JobStatus.RUNNING,
    states.SUCCESS: JobStatus.SUCCEEDED,
    states.FAILURE: JobStatus.FAILED,
    states.REVOKED: JobStatus.CANCELLED,
    states.REJECTED: JobStatus.FAILED,
}

_OURS = {states.PENDING, states.STARTED}

FINAL = {states.SUCCESS, states.FAILURE, states.REVOKED}

#: SET KEYS[1] to ARGV[1] (expiring in ARGV[2] s, if not 0), unless it holds a final
#: Celery state.
SET_UNLESS_FINAL = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and (meta.status == 'SUCCESS' or meta.status == 'FAILURE'
      or meta.status == 'REVOKED') then
    return 0
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""

_PICKLE = {"pickle", "application/x-python-serialize"}


def check_app(app: Celery) -> None:
    """Refuse a Celery app errands cannot keep its promises on, naming the setting."""
    conf = app.conf
    accepted = {str(c).lower() for c in conf.accept_content or ()}
    if accepted & _PICKLE:
        raise ConfigurationError(
            "this Celery app accepts pickle (accept_content); errands' tasks carry JSON "
            "only and its workers must refuse pickle: set accept_content=['json']"
        )
    if conf.task_always_eager:
        raise ConfigurationError(
            "this Celery app has task_always_eager set, so Celery would run errands' tasks "
            "in the caller; in tests, construct Errands('memory://', eager=True) instead "
            "(or set ERRANDS_URL=memory://)"
        )
    backend = app.backend
    if isinstance(backend, DisabledBackend):
        raise ConfigurationError(
            "this Celery app has no result backend, and errands.get() and Job.wait() read "
            "job status from it: set result_backend, e.g. "
            "Celery(..., backend='redis://127.0.0.1:6379/1')"
        )
    if isinstance(backend, RPCBackend):
        raise ConfigurationError(
            "the rpc:// result backend keeps results for the process that published the "
            "task only; errands.get() must work from any process: set result_backend to "
            "a store such as redis://"
        )


def expires_args(expires: Any) -> tuple[str | int, ...]:
    seconds = int(expires.total_seconds()) if hasattr(expires, "total_seconds") else expires
    return ("EX", int(seconds)) if seconds else ()


def ours(name: str, args: list[Any], kwargs: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "kwargs": kwargs, **more}


def meta(id: str, state: str, ours: dict[str, Any]) -> dict[str, Any]:
    """A Celery result whose ``result`` is errands' own record of a job not finished."""
    return {
        "status": state,
        "result": {"errands": ours},
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": id,
    }


def message_body(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "args": job.args,
        "kwargs": job.kwargs,
        "max_attempts": job.max_attempts,
        "after": job.after,
        "scheduled_at": job.scheduled_at.isoformat() if job.scheduled_at else None,
        "priority": job.priority,
        "traceparent": job.traceparent,
    }


def broker_priority(priority: int, driver: str) -> int:
    """A job's priority as a message priority: Celery's brokers have ten levels, and
    errands' -5 to 4 map onto them (lower and higher ones to the ends), so that the
    default, 0, leaves room on both sides. RabbitMQ runs higher levels first (its
    queue needs ``x-max-priority``); kombu's Redis transport, lower ones."""
    level = min(9, max(0, priority + 5))
    return 9 - level if driver == "redis" else level


def chains(jobs: Iterable[JobRecord]) -> list[list[JobRecord]]:
    """Jobs grouped by request order: each job joins the chain of the one it follows."""
    chains: list[list[JobRecord]] = []
    chain_of: dict[str, list[JobRecord]] = {}
    for job in jobs:
        chain = chain_of.get(job.after) if job.after else None
        if chain is None:
            chain = []
            chains.append(chain)
        chain.append(job)
        chain_of[job.id] = chain
    return chains


def revoked_request(id: str, record: JobRecord | None) -> Context:
    """The request to revoke a queued job with: its Celery result then keeps the job's
    name and arguments, and what its earlier attempts left (as a worker's would)."""
    if record is None:
        return Context(id=id, task=None)
    stamps: dict[str, Any] = {
        MAX_ATTEMPTS: record.max_attempts,
        LOST: record.lost,
        AFTER: record.after,
        PRIORITY: record.priority,
        STARTED_AT: record.started_at.isoformat() if record.started_at else None,
        TRACEBACK: record.traceback,
    }
    return Context(
        id=id,
        task=record.name,
        args=record.args,
        kwargs=record.kwargs,
        # A revoked message's retries are the attempts made before it (see to_record).
        retries=record.attempts - record.lost,
        stamps=stamps,
        stamped_headers=list(stamps),
    )


def errands_fields(meta: dict[str, Any]) -> dict[str, Any] | None:
    """errands' own fields in a Celery result (written by ``meta``), or None.

    Only unfinished states carry them: a finished task's result is its own."""
    result = meta.get("result")
    if meta.get("status", states.PENDING) not in _OURS or not isinstance(result, dict):
        return None
    fields = result.get("errands")
    return fields if isinstance(fields, dict) else None


#: The stamp that keeps each of errands' fields in a Celery result.
_STAMP = {
    "max_attempts": MAX_ATTEMPTS,
    "lost": LOST,
    "after": AFTER,
    "started_at": STARTED_AT,
    "run_at": RUN_AT,
    "scheduled_at": SCHEDULED_AT,
    "priority": PRIORITY,
    "cancel_requested_at": CANCEL_REQUESTED_AT,
    "before": BEFORE,
    "error": ERROR,
    "traceback": TRACEBACK,
    "traceparent": TRACEPARENT,
}


# What each field of a job record holds in Celery mode. Those Celery's result keeps
# (status, args, kwargs, result, finished_at) come from it; the rest from errands'
# own PENDING/STARTED records, then from the stamps a finished task's result keeps:
#
# - attempts: attempts started, those lost with their workers included (as in the
#   other modes). A finished, failed or retrying task's count is Celery's
#   ``retries + 1`` plus the stamp ``errands_lost``; a revoked one's, the attempts
#   made before its message (``retries``). An attempt counts as lost when its
#   message comes back redelivered and its STARTED record is of that attempt (so
#   one that died within its first 10 ms, before STARTED is written, is not).
# - max_attempts: the task's ``retries + 1``: from the record the web process wrote
#   when it published the job, then from the worker's stamp (the worker's policy is
#   the one that retries it).
# - error, traceback: a failed or retrying attempt's, from Celery's result; a
#   success after retries keeps the last failed attempt's, stamped on the retry's
#   message (cut to 2,000 and 8,000 characters, with a marker: AMQP headers are
#   small). A cancelled job's error is the reason it was revoked for; once a worker
#   has discarded its message, Celery's own reason, "revoked".
# - created_at: from the job's id (errands ids start with their creation time, in
#   ms). started_at: the latest attempt's start. finished_at: when the last attempt
#   ended (a stamp, set before the next job of the request is published, so that it
#   starts after it as in the other modes), else Celery's date_done.
# - durable: True: the job is on the broker and its record in the result backend.
#
# And those Celery cannot give as the other modes do:
#
# - owner: the Celery worker's node name (``celery@host``) while an attempt runs
#   (and has run 10 ms, like ``running``); None otherwise, as in the other modes
#   once a job is no longer running.
# - lease_until: always None. Celery holds a job by its message: on RabbitMQ until
#   the worker's connection drops, on Redis by the visibility timeout, which errands'
#   workers renew for the messages they hold (see ``_redis.py``), not per job.
# - lost: see attempts.
# - after: the job added before this one in the same request (None for the first):
#   in the records the web process writes, then a stamp on the message the worker
#   that finished that job published.
# - run_at: when the job was due: its creation (jobs are published before the
#   response, never held back) or its scheduled time, or after a failed attempt
#   when its retry is due. Never None.
# - scheduled_at: from the records the web process writes, then a stamp.
#
# A job whose worker died reads ``running`` until another worker starts it again:
# Celery keeps no lease that could say the attempt is over.


def to_record(id: str, meta: dict[str, Any]) -> JobRecord | None:
    """A job record from a Celery result, or None for a task nobody published."""
    state = meta.get("status", states.PENDING)
    result = meta.get("result")
    fields = errands_fields(meta)  # while the job waits or runs
    if fields is None and state == states.PENDING:
        return None
    status = _STATUS.get(state, JobStatus.QUEUED)
    record = JobRecord(id=id, name=meta.get("name") or "", status=status, durable=True)
    record.created_at = id_time(id) or record.created_at
    # errands' own fields while the job waits or runs; else the stamps of the last
    # request, which a finished (or retrying, or revoked) task's result keeps.
    known = fields if fields is not None else {f: meta.get(s) for f, s in _STAMP.items()}
    if fields is not None:
        record.name = fields.get("name", record.name)
        record.args = fields.get("args", [])
        record.kwargs = fields.get("kwargs", {})
        record.attempts = count(fields.get("attempts"))
        record.owner = fields.get("owner") if state == states.STARTED else None
    else:
        record.args = meta.get("args") or []
        record.kwargs = meta.get("kwargs") or {}
    record.max_attempts = count(known.get("max_attempts")) or 1
    record.lost = count(known.get("lost"))
    record.after = known.get("after")
    record.started_at = _time(known.get("started_at"))
    record.scheduled_at = _time(known.get("scheduled_at"))
    record.priority = count(known.get("priority"), signed=True)
    record.cancel_requested_at = _time(known.get("cancel_requested_at"))
    record.run_at = _time(known.get("run_at")) or max(
        record.created_at, record.scheduled_at or record.created_at
    )
    retries = meta.get("retries")
    if fields is None and isinstance(retries, int):
        # RETRY is stored before the retry is sent: its count is of attempts made; a
        # revoked message's, of those made before it.
        made = retries if state == states.REVOKED else retries + 1
        record.attempts = count(known.get("before")) + made + record.lost
    record.error = known.get("error")
    record.traceback = known.get("traceback")
    traceparent = known.get("traceparent")
    record.traceparent = traceparent if isinstance(traceparent, str) else None
    if state == states.SUCCESS:
        record.result = result
    elif state == states.REVOKED:
        record.error = str(result) if isinstance(result, BaseException) else record.error
    elif state in (states.FAILURE, states.RETRY, states.REJECTED):
        if isinstance(result, BaseException):
            message = str(result)
            kind = type(result).__name__
            record.error = f"{kind}: {message}" if message else kind
        elif result is not None:
            record.error = str(result)
        # A retry's own stamp is the attempt's traceback alone; Celery's adds the
        # Retry exception raised from it.
        record.traceback = (state == states.RETRY and record.traceback) or meta.get("traceback")
    if status.finished:
        record.finished_at = _time(meta.get(FINISHED_AT)) or _time(meta.get("date_done"))
    return record


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def count(value: Any, *, signed: bool = False) -> int:
    """``value`` if it is a count (an int, >= 0 unless ``signed``), else 0."""
    if isinstance(value, int) and not isinstance(value, bool) and (signed or value >= 0):
        return value
    return 0
