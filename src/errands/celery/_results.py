"""Celery mode: what errands keeps in Celery's result backend and messages, and how
it reads a job record back from a Celery result. Shared by the web side
(``_publish.py``) and the worker side (``_task.py``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from celery import Celery, states
from celery.backends.base import DisabledBackend
from celery.backends.rpc import RPCBackend

from .._record import JobRecord, JobStatus, id_time
from ..exceptions import ConfigurationError

#: The message header that says where the jobs after this one are: ``[chain, index]``,
#: the id under which the request's later jobs are kept in the result backend, and
#: the position of the next one. (Kept there, not in the header: AMQP headers are
#: small and typed, and a request's jobs may carry up to ``max_payload`` each.)
CHAIN = "errands_chain"

#: The stamp that keeps when the last attempt started, in a finished task's result.
STARTED_AT = "errands_started_at"

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


def describe(job: JobRecord) -> dict[str, Any]:
    return {"id": job.id, "name": job.name, "args": job.args, "kwargs": job.kwargs}


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


def errands_fields(meta: dict[str, Any]) -> dict[str, Any] | None:
    """errands' own fields in a Celery result (written by ``meta``), or None.

    Only unfinished states carry them: a finished task's result is its own."""
    result = meta.get("result")
    if meta.get("status", states.PENDING) not in _OURS or not isinstance(result, dict):
        return None
    fields = result.get("errands")
    return fields if isinstance(fields, dict) else None


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
    if fields is not None:
        record.name = fields.get("name", record.name)
        record.args = fields.get("args", [])
        record.kwargs = fields.get("kwargs", {})
        record.attempts = fields.get("attempts", 0)
    else:
        record.args = meta.get("args") or []
        record.kwargs = meta.get("kwargs") or {}
    started = (fields or {}).get("started_at") or meta.get(STARTED_AT)
    if isinstance(started, str):
        record.started_at = datetime.fromisoformat(started)
    retries = meta.get("retries")
    if isinstance(retries, int):
        # RETRY is stored before the retry is sent: its count is of attempts made.
        record.attempts = max(record.attempts, retries + 1)
    if state == states.SUCCESS:
        record.result = result
    elif state in (states.FAILURE, states.RETRY, states.REVOKED, states.REJECTED):
        if isinstance(result, BaseException):
            message = str(result)
            kind = type(result).__name__
            record.error = f"{kind}: {message}" if message else kind
        elif result is not None:
            record.error = str(result)
        record.traceback = meta.get("traceback")
    done = meta.get("date_done")
    if status.finished and done:
        record.finished_at = datetime.fromisoformat(done) if isinstance(done, str) else done
    return record
