"""What the dashboard's pages show, worked out from the library's own answers
(``errands.stats()``, ``errands.jobs()``, ``errands.get()``): plain data for the
templates, no HTML."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .._record import JobRecord, JobStatus, utcnow
from .._stats import Minute, Stats
from .._task import Task

#: Jobs a page of the list shows.
PAGE_SIZE = 50
#: Running jobs looked at for the stuck signals (the longest-running first matter most).
RUNNING_LOOKED_AT = 1000
#: A running job is long past its usual when it has run this many times its task's p95.
SLOW_FACTOR = 10
#: Ends of a request's sequence shown on a job's page.
SEQUENCE_SHOWN = 20
#: The deepest page of the list (5,000,000 jobs back).
MAX_PAGE = 100_000
#: The longest job id errands accepts (``options(job_id=)``); longer is no job.
MAX_ID = 200

CHART_WIDTH, CHART_HEIGHT = 600, 160
#: The least number of waiting jobs the chart's full height stands for.
QUEUE_FLOOR = 10


class Jobs(Protocol):
    """What the dashboard reads and does: an ``Errands`` instance's public API (a
    protocol, so that this package needs no import of the class that builds it)."""

    @property
    def url(self) -> str: ...

    def get(self, id: str) -> JobRecord | None: ...

    def jobs(
        self,
        status: JobStatus | str | None = None,
        limit: int = 100,
        task: str | None = None,
        *,
        offset: int = 0,
    ) -> list[JobRecord]: ...

    def stats(self) -> Stats: ...

    def metrics(self) -> Any: ...

    def cancel(self, id: str) -> JobRecord | None: ...

    def retry(self, id: str) -> JobRecord: ...

    def purge(
        self, older_than: float, statuses: Sequence[JobStatus | str] | None = None
    ) -> int: ...


def ago(at: datetime | None, now: datetime) -> str:
    """``"12s ago"``, ``"in 5m"``, ``"-"``."""
    if at is None:
        return "-"
    seconds = (now - at).total_seconds()
    text = span(abs(seconds))
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def span(seconds: float) -> str:
    """A duration as an operator reads it: ``"850ms"``, ``"42s"``, ``"3m 20s"``, ``"2h 5m"``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m"
    return f"{hours // 24}d {hours % 24}h"


def stamp(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def took(record: JobRecord) -> str:
    if record.started_at is None:
        return "-"
    end = record.finished_at
    if end is None:
        return span((utcnow() - record.started_at).total_seconds()) + " so far"
    return span((end - record.started_at).total_seconds())


def pretty(value: Any) -> str:
    """A value as indented JSON (what it would be stored as), for a ``<pre>``."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)


# -- the overview -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    """One minute of the chart, in the chart's own units (``CHART_WIDTH`` wide)."""

    x: float
    width: float
    succeeded_y: float
    succeeded_height: float
    failed_y: float
    failed_height: float
    minute: Minute
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    #: The queue's depth as an SVG polyline's points.
    queue_line: str
    most_finished: int
    most_queued: int
    #: The waiting jobs the chart's full height stands for.
    queue_top: int
    #: ``(x, "HH:MM")`` every 15 minutes.
    ticks: list[tuple[float, str]]
    total_succeeded: int
    total_failed: int


def chart(minutes: list[Minute]) -> Chart:
    """The last hour as stacked bars (succeeded, failed) and a line (queue depth), each
    scaled to its own largest value (the line to ``QUEUE_FLOOR`` at least)."""
    count = max(1, len(minutes))
    step = CHART_WIDTH / count
    most_finished = max((m.succeeded + m.failed for m in minutes), default=0)
    most_queued = max((m.queued for m in minutes), default=0)
    scale = (CHART_HEIGHT - 4) / max(1, most_finished)
    # A queue of a few jobs stays low: the line is scaled to 10 waiting jobs at least.
    queue_top = max(QUEUE_FLOOR, most_queued)
    queue_scale = (CHART_HEIGHT - 4) / queue_top
    bars, points, ticks = [], [], []
    for index, minute in enumerate(minutes):
        x = index * step
        ok_h = minute.succeeded * scale
        bad_h = minute.failed * scale
        label = (
            f"{minute.start.astimezone(UTC):%H:%M} UTC: {minute.succeeded} succeeded, "
            f"{minute.failed} failed, {minute.queued} queued"
        )
        bars.append(
            Bar(
                round(x + 1, 2),
                round(max(1.0, step - 2), 2),
                round(CHART_HEIGHT - ok_h, 2),
                round(ok_h, 2),
                round(CHART_HEIGHT - ok_h - bad_h, 2),
                round(bad_h, 2),
                minute,
                label,
            )
        )
        points.append(f"{x + step / 2:.1f},{CHART_HEIGHT - 2 - minute.queued * queue_scale:.1f}")
        if minute.start.minute % 15 == 0:
            ticks.append((round(x, 2), f"{minute.start.astimezone(UTC):%H:%M}"))
    return Chart(
        bars,
        " ".join(points),
        most_finished,
        most_queued,
        queue_top,
        ticks,
        sum(m.succeeded for m in minutes),
        sum(m.failed for m in minutes),
    )


@dataclass(frozen=True, slots=True)
class TaskRow:
    name: str
    counts: dict[str, int]
    failed_last_hour: int
    p50: str
    p95: str
    #: Queued jobs no live worker has registered (0: some worker runs the task).
    unrunnable: int


@dataclass(frozen=True, slots=True)
class Slow:
    """A running job past its timeout or long past its task's usual run time."""

    record: JobRecord
    running_for: str
    why: str


@dataclass(slots=True)
class Overview:
    counts: dict[str, int]
    total: int
    tasks: list[TaskRow]
    chart: Chart
    oldest_queued: str
    oldest_queued_seconds: float | None
    failing: list[tuple[str, int]]
    unrunnable: list[tuple[str, int]]
    slow: list[Slow]
    workers: list[dict[str, Any]]
    finished_per_minute: dict[str, float]
    knows_workers: bool
    #: False in Celery mode, whose results expire by themselves.
    purges: bool


def overview(errands: Jobs, tasks: Mapping[str, Task[Any, Any]]) -> Overview:
    found: Stats = errands.stats()
    now = utcnow()
    activity = found.activity
    rows = []
    for name in sorted(found.tasks):
        times = activity.run_times.get(name)
        rows.append(
            TaskRow(
                name,
                {status.value: found.tasks[name].get(status, 0) for status in JobStatus},
                activity.failing.get(name, 0),
                "-" if times is None else span(times.p50),
                "-" if times is None else span(times.p95),
                found.unrunnable.get(name, 0),
            )
        )
    oldest = activity.oldest_queued
    return Overview(
        counts={status.value: found.counts.get(status, 0) for status in JobStatus},
        total=sum(found.counts.values()),
        tasks=rows,
        chart=chart(activity.timeline),
        oldest_queued=span((now - oldest).total_seconds()) if oldest else "no job due is waiting",
        oldest_queued_seconds=None if oldest is None else (now - oldest).total_seconds(),
        failing=sorted(activity.failing.items(), key=lambda item: (-item[1], item[0])),
        unrunnable=sorted(found.unrunnable.items()),
        slow=slow_jobs(errands, tasks, found, now),
        workers=[
            {
                "id": w.id,
                "host": w.host,
                "pid": w.pid,
                "tasks": ", ".join(w.tasks),
                "seen": ago(w.seen_at, now) if w.seen_at else "-",
                "started": ago(w.started_at, now) if w.started_at else "-",
            }
            for w in found.workers
        ],
        finished_per_minute={
            f"{minutes}m": round(n / minutes, 2) for minutes, n in activity.finished.items()
        },
        knows_workers=not errands.url.startswith("memory:"),
        purges=not errands.url.startswith("celery:"),
    )


def slow_jobs(
    errands: Jobs, tasks: Mapping[str, Task[Any, Any]], found: Stats, now: datetime
) -> list[Slow]:
    """Running jobs past their task's timeout, or running ``SLOW_FACTOR`` times their task's
    p95 (over the last hour's jobs) and more."""
    if not found.counts.get(JobStatus.RUNNING):
        return []
    slow = []
    for record in errands.jobs(status=JobStatus.RUNNING, limit=RUNNING_LOOKED_AT):
        if record.started_at is None:
            continue
        running = (now - record.started_at).total_seconds()
        task = tasks.get(record.name)
        timeout = task.policy.timeout if task is not None else None
        times = found.activity.run_times.get(record.name)
        if timeout is not None and running > timeout:
            why = f"past its timeout ({span(timeout)})"
        elif times is not None and times.count >= 5 and running > SLOW_FACTOR * times.p95 > 0:
            why = f"over {SLOW_FACTOR} times its task's p95 ({span(times.p95)})"
        else:
            continue
        slow.append(Slow(record, span(running), why))
    slow.sort(key=lambda s: s.record.started_at or now)
    return slow


# -- the list ---------------------------------------------------------------------------


class BadInput(ValueError):
    """A query parameter the pages cannot use; its message says what would do."""


def page_number(value: str | None) -> int:
    if value is None or value == "":
        return 1
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1 or number > MAX_PAGE:
        raise BadInput(f"page must be a whole number from 1 up, got {value[:40]!r}")
    return number


def status_filter(value: str | None) -> JobStatus | None:
    if not value:
        return None
    try:
        return JobStatus.of(value)
    except ValueError as exc:
        raise BadInput(str(exc)[:300]) from None


def task_filter(value: str | None) -> str | None:
    if not value:
        return None
    if len(value) > 1000:
        raise BadInput("task must be a task name (at most 1,000 characters)")
    return value


@dataclass(frozen=True, slots=True)
class Listing:
    jobs: list[JobRecord]
    page: int
    more: bool
    status: JobStatus | None
    task: str | None


def listing(errands: Jobs, status: str | None, task: str | None, page: str | None) -> Listing:
    """A page of jobs as the query asks (BadInput for a query it cannot use)."""
    wanted, name, number = status_filter(status), task_filter(task), page_number(page)
    found = errands.jobs(
        status=wanted, task=name, limit=PAGE_SIZE + 1, offset=(number - 1) * PAGE_SIZE
    )
    return Listing(found[:PAGE_SIZE], number, len(found) > PAGE_SIZE, wanted, name)


# -- one job ----------------------------------------------------------------------------


def find(errands: Jobs, id: str) -> JobRecord | None:
    """The job with this id, or None (also for what cannot be one: too long, empty)."""
    if not id or len(id) > MAX_ID:
        return None
    return errands.get(id)


@dataclass(frozen=True, slots=True)
class Event:
    at: datetime
    what: str


def events(record: JobRecord) -> list[Event]:
    """What happened to the job, in order (the store keeps the latest attempt's times)."""
    found = [Event(record.created_at, "added")]
    started = record.started_at
    if record.scheduled_at is not None and (started is None or started >= record.scheduled_at):
        found.append(Event(record.scheduled_at, "due (delayed or scheduled)"))
    if record.started_at is not None:
        attempt = f"attempt {record.attempts} of {record.max_attempts} started"
        found.append(Event(record.started_at, attempt))
    if record.cancel_requested_at is not None:
        found.append(Event(record.cancel_requested_at, "cancel requested"))
    if record.finished_at is not None:
        found.append(Event(record.finished_at, record.status.value))
    found.sort(key=lambda event: event.at)
    return found


def sequence(errands: Jobs, record: JobRecord) -> list[JobRecord]:
    """The jobs its request added before it that it waits for (``after``), nearest
    last, at most ``SEQUENCE_SHOWN``."""
    chain: list[JobRecord] = []
    seen = {record.id}
    before = record.after
    while before is not None and before not in seen and len(chain) < SEQUENCE_SHOWN:
        seen.add(before)
        found = errands.get(before)
        if found is None:
            break
        chain.append(found)
        before = found.after
    chain.reverse()
    return chain


def actions(record: JobRecord) -> list[str]:
    """The buttons a job's page offers."""
    if record.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        return ["retry"]
    if record.status is JobStatus.QUEUED or (
        record.status is JobStatus.RUNNING and record.cancel_requested_at is None
    ):
        return ["cancel"]
    return []
