"""errands: FastAPI's background tasks, made real.

Same API as FastAPI's ``BackgroundTasks`` (change the import), plus job handles
and status, failure isolation, registered tasks with retries and timeouts, and a
worker of its own off the request path.
"""

from typing import TYPE_CHECKING, Any

from ._cancel import cancel_requested
from ._errands import Errands
from ._job import Job
from ._logs import JobLogFilter
from ._record import JobRecord, JobStatus
from ._stats import Stats, WorkerInfo
from ._task import Task
from .exceptions import (
    BacklogFull,
    BrokerUnavailable,
    ConfigurationError,
    ErrandsError,
    InvalidArguments,
    InvalidOption,
    JobNotFound,
    NotSerializable,
    PayloadTooLarge,
    ResultTooLarge,
    StoreCorrupt,
    StoreError,
    StoreUnwritable,
    TaskTimeout,
    WaitTimeout,
)

if TYPE_CHECKING:
    from ._background import BackgroundTask, BackgroundTasks, Tasks

__version__ = "0.1.0"

#: Imported when first used: they bring FastAPI, which `errands worker` and the
#: command line do not need (it is most of their start-up time).
_REQUEST_HOOK = ("BackgroundTask", "BackgroundTasks", "Tasks")


def __getattr__(name: str) -> Any:
    if name in _REQUEST_HOOK:
        from . import _background

        value = getattr(_background, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'errands' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_REQUEST_HOOK})


__all__ = [
    "BackgroundTask",
    "BackgroundTasks",
    "BacklogFull",
    "BrokerUnavailable",
    "ConfigurationError",
    "Errands",
    "ErrandsError",
    "InvalidArguments",
    "InvalidOption",
    "Job",
    "JobLogFilter",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "NotSerializable",
    "PayloadTooLarge",
    "ResultTooLarge",
    "Stats",
    "StoreCorrupt",
    "StoreError",
    "StoreUnwritable",
    "Task",
    "TaskTimeout",
    "Tasks",
    "WaitTimeout",
    "WorkerInfo",
    "cancel_requested",
]
