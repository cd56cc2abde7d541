"""errands: FastAPI's background tasks, made real.

Same API as FastAPI's ``BackgroundTasks`` (change the import), plus job handles
and status, failure isolation, registered tasks with retries and timeouts, and a
worker of its own off the request path.
"""

from ._background import BackgroundTask, BackgroundTasks, Tasks
from ._cancel import cancel_requested
from ._errands import Errands
from ._job import Job
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

__version__ = "0.1.0"

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
