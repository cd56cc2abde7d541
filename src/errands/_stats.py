"""What ``errands.stats()`` reports: jobs by status and task, the live workers, and
the jobs no live worker can run."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ._record import JobStatus


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker process that runs this instance's jobs, as it last reported itself."""

    #: The worker's id (in Celery mode, its node name).
    id: str
    host: str
    pid: int | None
    #: The task names it runs: it claims (or is delivered) only these.
    tasks: tuple[str, ...]
    started_at: datetime | None
    #: When it last said it was alive.
    seen_at: datetime | None


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of the jobs and workers of one Errands instance's store."""

    #: How many jobs are in each status (every status present, zeros included).
    counts: dict[JobStatus, int]
    #: How many jobs of each task are in each status (statuses with none left out).
    tasks: dict[str, dict[JobStatus, int]]
    #: The workers alive now, latest seen first.
    workers: list[WorkerInfo]
    #: Queued jobs, by task name, that no live worker has registered: they wait
    #: until a worker that knows the task starts (e.g. during a rolling deploy), or
    #: forever if none ever will (a typo, a task registered under ``__main__``).
    unrunnable: dict[str, int] = field(default_factory=dict)
