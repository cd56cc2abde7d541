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
#: The minutes of ``Activity.timeline``: the last hour's, the current one last.
TIMELINE = 60


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
class Minute:
    """One minute of the last hour: the jobs that ended in it, and the queue after it."""

    #: When the minute began.
    start: datetime
    succeeded: int = 0
    failed: int = 0
    #: Jobs waiting at the minute's end (at the time of the snapshot for the current
    #: minute): added, and not yet started or cancelled. A job retried counts as waiting
    #: from when it was added until its latest attempt started.
    queued: int = 0


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
    #: The last hour, minute by minute (``TIMELINE`` of them, oldest first).
    timeline: list[Minute] = field(default_factory=list)
    #: By task: jobs that failed in the last hour (tasks with none left out).
    failing: dict[str, int] = field(default_factory=dict)


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


def timeline_start(now: datetime) -> datetime:
    """When the first minute of the timeline began: whole minutes, the current last."""
    whole = now.replace(second=0, microsecond=0)
    return whole - timedelta(minutes=TIMELINE - 1)


def timeline(
    start: datetime,
    ended: dict[tuple[str, int], int],
    waiting: int,
    added: dict[int, int],
    left: dict[int, int],
) -> list[Minute]:
    """The minutes from ``start``, from what a store counted by minute (index 0 the
    first): jobs that ended by ``(status, minute)``; jobs that were waiting at
    ``start``; jobs ``added`` by minute and jobs that ``left`` the queue (started, or
    cancelled before they did) by minute."""
    minutes = []
    for index in range(TIMELINE):
        waiting += added.get(index, 0) - left.get(index, 0)
        minutes.append(
            Minute(
                start + timedelta(minutes=index),
                ended.get(("succeeded", index), 0),
                ended.get(("failed", index), 0),
                max(0, waiting),
            )
        )
    return minutes


def activity(records: Iterable[JobRecord], now: datetime) -> Activity:
    """``Activity`` from a listing of jobs (where the store cannot count them itself)."""
    hour = now - timedelta(hours=1)
    start = timeline_start(now)
    oldest: datetime | None = None
    ended: list[tuple[str, datetime, datetime | None]] = []
    by_minute: dict[tuple[str, int], int] = {}
    failing: dict[str, int] = {}
    waiting = 0
    added: dict[int, int] = {}
    left: dict[int, int] = {}

    def minute(at: datetime) -> int:
        return int((at - start).total_seconds() // 60)

    for record in records:
        status, finished_at = record.status, record.finished_at
        if status is JobStatus.QUEUED and (oldest is None or record.created_at < oldest):
            oldest = record.created_at
        if finished_at is not None and finished_at >= hour:
            # Run times of attempts that ran to their end (a cancelled one was cut short).
            began = None if status is JobStatus.CANCELLED else record.started_at
            ended.append((record.name, finished_at, began))
            if status is JobStatus.FAILED:
                failing[record.name] = failing.get(record.name, 0) + 1
        if finished_at is not None and finished_at >= start:
            key = (status.value, minute(finished_at))
            by_minute[key] = by_minute.get(key, 0) + 1
        # The queue's depth: when the job was added, and when it left the queue.
        leaves = None if status is JobStatus.QUEUED else record.started_at or finished_at
        if leaves is not None and leaves < start:
            continue
        if record.created_at < start:
            waiting += 1
        else:
            added[minute(record.created_at)] = added.get(minute(record.created_at), 0) + 1
        if leaves is not None:
            left[minute(leaves)] = left.get(minute(leaves), 0) + 1
    finished = {
        minutes: sum(at >= now - timedelta(minutes=minutes) for _, at, _ in ended)
        for minutes in WINDOWS
    }
    samples = ((n, (at - began).total_seconds()) for n, at, began in ended if began)
    return Activity(
        oldest,
        finished,
        run_times(samples),
        timeline(start, by_minute, waiting, added, left),
        failing,
    )
