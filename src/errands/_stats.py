"""What ``errands.stats()`` reports: jobs by status and task, the live workers, and
the jobs no live worker can run."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

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

    #: Since when the queued job that has waited longest has been due to start: the
    #: earliest ``run_at`` of the queued jobs due now (None: none is). Jobs delayed to
    #: later, waiting for a retry's time or held by their request do not count.
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


def _ts(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp()


class Tally:
    """What a store's jobs did in the last hour, counted job by job, with times in
    seconds since the epoch: the one count behind every store's ``Activity`` (SQLite
    feeds it rows read from its partial indexes; the others, their records)."""

    def __init__(self, now: datetime) -> None:
        self.now = now.timestamp()
        self.hour = self.now - 3600
        self.begins = timeline_start(now)
        #: When the timeline begins (never before ``hour``).
        self.start = self.begins.timestamp()
        self.oldest: float | None = None
        self.ended: list[float] = []
        self.samples: list[tuple[str, float]] = []
        self.failing: dict[str, int] = {}
        self.by_minute: dict[tuple[str, int], int] = {}
        #: The queue's depth: jobs waiting when the timeline begins, then those added
        #: and those that left the queue (started, or cancelled before) by minute.
        self.waiting = 0
        self.added: dict[int, int] = {}
        self.left: dict[int, int] = {}

    def minute(self, at: float) -> int:
        return int((at - self.start) // 60)

    def due(self, since: float) -> None:
        """A queued job due to start since ``since`` (its ``run_at``), or not yet."""
        if since <= self.now and (self.oldest is None or since < self.oldest):
            self.oldest = since

    def queued(self, created: float, count: int = 1) -> None:
        """``count`` jobs queued now, added at ``created`` (several: in one minute of
        the timeline, or before it)."""
        if created < self.start:
            self.waiting += count
        else:
            index = self.minute(created)
            self.added[index] = self.added.get(index, 0) + count

    def job(
        self, status: str, name: str, created: float, started: float | None, finished: float | None
    ) -> None:
        """A job running now, or one that finished (long ago: it counts for nothing)."""
        if finished is not None and finished >= self.hour:
            self.ended.append(finished)
            # Run times of attempts that ran to their end (a cancelled one was cut short).
            if started is not None and status != "cancelled":
                self.samples.append((name, finished - started))
            if status == "failed":
                self.failing[name] = self.failing.get(name, 0) + 1
            if finished >= self.start:
                key = (status, self.minute(finished))
                self.by_minute[key] = self.by_minute.get(key, 0) + 1
        leaves = started if started is not None else finished
        if leaves is None or leaves < self.start:
            return  # left the queue before the timeline begins
        if created < self.start:
            self.waiting += 1
        else:
            index = self.minute(created)
            self.added[index] = self.added.get(index, 0) + 1
        index = self.minute(leaves)
        self.left[index] = self.left.get(index, 0) + 1

    def activity(self) -> Activity:
        finished = {m: sum(at >= self.now - 60 * m for at in self.ended) for m in WINDOWS}
        minutes = []
        waiting = self.waiting
        for index in range(TIMELINE):
            waiting += self.added.get(index, 0) - self.left.get(index, 0)
            minutes.append(
                Minute(
                    self.begins + timedelta(minutes=index),
                    self.by_minute.get(("succeeded", index), 0),
                    self.by_minute.get(("failed", index), 0),
                    max(0, waiting),
                )
            )
        oldest = None if self.oldest is None else datetime.fromtimestamp(self.oldest, UTC)
        return Activity(oldest, finished, run_times(self.samples), minutes, self.failing)


def activity(records: Iterable[JobRecord], now: datetime) -> Activity:
    """``Activity`` from a listing of jobs (where the store cannot count them itself)."""
    tally = Tally(now)
    for record in records:
        if record.status is JobStatus.QUEUED:
            tally.queued(record.created_at.timestamp())
            if record.run_at is not None:
                tally.due(record.run_at.timestamp())
        else:
            tally.job(
                record.status.value,
                record.name,
                record.created_at.timestamp(),
                _ts(record.started_at),
                _ts(record.finished_at),
            )
    return tally.activity()
