"""What ``errands.stats()`` reports: jobs by status and task, the live workers, and
the jobs no live worker can run."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ._record import JobRecord, JobStatus

#: The windows of ``Activity.finished`` (minutes).
WINDOWS = (1, 5, 15)


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
class RunTimes:
    """How long the last attempts of a task's jobs that ended in the last hour ran
    (seconds), over ``count`` jobs."""

    count: int
    p50: float
    p95: float


@dataclass(frozen=True, slots=True)
class Activity:
    """What the store's jobs have been doing lately."""

    #: When the oldest job still queued was added (None: none queued).
    oldest_queued: datetime | None = None
    #: Jobs finished (succeeded, failed or cancelled) in the last 1, 5 and 15 minutes,
    #: by the window's minutes.
    finished: dict[int, int] = field(default_factory=dict)
    #: By task: how long the last attempts of its jobs that ended in the last hour ran.
    run_times: dict[str, RunTimes] = field(default_factory=dict)


def run_times(samples: Iterable[tuple[str, float]]) -> dict[str, RunTimes]:
    """``(task, seconds)`` samples as percentiles by task."""
    by_task: dict[str, list[float]] = {}
    for name, seconds in samples:
        by_task.setdefault(name, []).append(max(0.0, seconds))
    found = {}
    for name, values in by_task.items():
        values.sort()
        p95 = (
            statistics.quantiles(values, n=20, method="inclusive")[18]
            if len(values) > 1
            else values[0]
        )
        found[name] = RunTimes(len(values), statistics.median(values), p95)
    return found


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
    #: The oldest queued job, jobs finished per window, run times by task.
    activity: Activity = field(default_factory=Activity)


def activity(records: Iterable[JobRecord], now: datetime) -> Activity:
    """``Activity`` from a listing of jobs (where the store cannot count them itself)."""
    hour = now - timedelta(hours=1)
    oldest: datetime | None = None
    ended: list[tuple[str, datetime, datetime | None]] = []
    for record in records:
        if record.status is JobStatus.QUEUED and (oldest is None or record.created_at < oldest):
            oldest = record.created_at
        if record.finished_at is not None and record.finished_at >= hour:
            ended.append((record.name, record.finished_at, record.started_at))
    finished = {
        minutes: sum(at >= now - timedelta(minutes=minutes) for _, at, _ in ended)
        for minutes in WINDOWS
    }
    samples = ((n, (at - start).total_seconds()) for n, at, start in ended if start)
    return Activity(oldest, finished, run_times(samples))
