"""Which job a log record is about: ``job_id``, ``task`` and ``attempt``, as record
attributes (a JSON formatter shows them as fields). errands passes them with every
record it logs about a job; ``JobLogFilter`` adds them to the records a task logs
itself while it runs (a context variable set around each attempt, which ``def``
tasks' threads inherit)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

#: The fields, in the order a formatter would show them.
FIELDS = ("job_id", "task", "attempt")

_CURRENT: ContextVar[tuple[str, str, int] | None] = ContextVar("errands_job", default=None)


def fields(id: str, task: str, attempt: int) -> dict[str, Any]:
    """The ``extra`` of a record about one attempt of a job."""
    return {"job_id": id, "task": task, "attempt": attempt}


#: The attempt of a job starts running in this context: ``entering((id, task, attempt))``
#: gives the token that ``leaving`` takes to put back what was before. The context
#: variable's own methods: no Python frame on a job's path.
entering: Callable[[tuple[str, str, int]], Token[tuple[str, str, int] | None]] = _CURRENT.set
leaving: Callable[[Token[tuple[str, str, int] | None]], None] = _CURRENT.reset


class JobLogFilter(logging.Filter):
    """Gives every record ``job_id``, ``task`` and ``attempt``: those of the job whose
    attempt logged it (its task's own ``logging`` calls included), else None. Add it
    to a handler: ``handler.addFilter(errands.JobLogFilter())``; then a format may use
    ``%(job_id)s``, and a JSON formatter finds them on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = _CURRENT.get()
        for index, name in enumerate(FIELDS):
            if not hasattr(record, name):
                setattr(record, name, None if found is None else found[index])
        return True
