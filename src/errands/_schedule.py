"""Schedules: registered tasks that run at the ticks of a cron expression
(``@errands.cron``) or of a fixed interval (``@errands.every``).

Every process that runs the app's lifespan or ``errands worker`` keeps the
schedules: at each tick it adds the tick's job, with the id
``cron:<task name>:<tick in ISO 8601 UTC>``. However many processes do so, the store
keeps one job per id (``task.options(job_id=)``), so each tick runs once. A process
that starts adds the latest tick that has passed (its id, too, is added once): after
downtime, only the latest missed tick runs, if the store still keeps finished jobs
that old (``retention``; Celery's ``result_expires``), so that one that ran is known.

Interval ticks are whole multiples of the interval since the Unix epoch, so that
every process agrees on them; cron ticks are those of the expression in its time
zone (cronsim reads it, daylight saving time included).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
from cronsim import CronSim, CronSimError

from ._policy import is_seconds
from ._record import utcnow
from ._tuning import MAX_SECONDS, SCHEDULE_RETRY
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._core import Core
    from ._task import Task

logger = logging.getLogger("errands")

UTC_ZONE = ZoneInfo("UTC")

#: The nicknames of the usual cron expressions (cronsim reads five fields only).
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a task's jobs are added: at the ticks of ``cron`` in ``tz``, or every
    ``interval`` seconds."""

    task: Task[..., Any]  # one that takes no arguments (check_no_arguments)
    cron: str | None = None
    tz: ZoneInfo = UTC_ZONE
    interval: float | None = None
    catch_up: bool = True

    def after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment`` (aware), in UTC."""
        if self.interval is not None:
            ticks = math.floor(moment.timestamp() / self.interval) + 1
            return _utc(ticks * self.interval)
        assert self.cron is not None
        start = moment.astimezone(self.tz)
        tick: datetime = next(iter(CronSim(self.cron, start)))
        return tick.astimezone(UTC)

    def latest(self, moment: datetime) -> datetime:
        """The last tick at or before ``moment``, in UTC."""
        if self.interval is not None:
            return _utc(math.floor(moment.timestamp() / self.interval) * self.interval)
        assert self.cron is not None
        # cronsim's ticks are whole minutes; a start a second on keeps one at `moment`.
        start = (moment + timedelta(seconds=1)).astimezone(self.tz)
        tick: datetime = next(iter(CronSim(self.cron, start, reverse=True)))
        return tick.astimezone(UTC)

    def job_id(self, tick: datetime) -> str:
        spec = "seconds" if tick.microsecond == 0 else "milliseconds"
        stamp = tick.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=spec)
        return f"cron:{self.task.name}:{stamp}Z"


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def check_cron(expression: object, tz: object) -> tuple[str, ZoneInfo]:
    """A cron expression (five fields, or an alias) and a time zone, or an error
    naming what is wrong and what is valid."""
    if not isinstance(expression, str):
        raise ConfigurationError(f"a cron expression is a str, got {expression!r}")
    cron = ALIASES.get(expression.strip().lower(), expression.strip())
    fields = len(cron.split())
    if fields != 5:
        raise ConfigurationError(
            f"cron expression {expression!r} has {fields} field(s); give five: minute hour "
            f"day-of-month month day-of-week, e.g. '0 3 * * *' (03:00 every day), or one "
            f"of {', '.join(ALIASES)} (no seconds field: for shorter periods, use "
            f"@errands.every)"
        )
    zone = check_zone(tz)
    try:
        CronSim(cron, datetime.now(zone))
    except CronSimError as exc:
        raise ConfigurationError(
            f"cron expression {expression!r} is not valid, or names a day that never comes "
            f"(cronsim: {exc}); each of its five fields (minute 0-59, hour 0-23, "
            f"day-of-month 1-31, month 1-12, day-of-week 0-7) is *, a number, a range a-b, "
            f"a list a,b or a step */n (cronsim also reads L, W and #)"
        ) from None
    return cron, zone


def check_zone(tz: object) -> ZoneInfo:
    if isinstance(tz, ZoneInfo):
        return tz
    if not isinstance(tz, str):
        raise ConfigurationError(f"tz must be a time zone name such as 'Europe/Paris', got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"tz={tz!r} is no time zone this machine knows; give an IANA name such as "
            f"'UTC' or 'Europe/Paris' (pip install tzdata where the system has none)"
        ) from None


def check_interval(interval: object) -> float:
    if isinstance(interval, timedelta):
        seconds = interval.total_seconds()
    elif isinstance(interval, int | float) and not isinstance(interval, bool):
        seconds = float(interval)
    else:
        raise ConfigurationError(
            f"@errands.every needs a timedelta or a number of seconds, got {interval!r}"
        )
    if not is_seconds(seconds) or seconds < 1:
        raise ConfigurationError(
            f"@errands.every needs an interval of 1 second to {MAX_SECONDS:,} seconds (ten "
            f"years), got {interval!r}"
        )
    return seconds


def check_no_arguments(name: str, fn: Callable[..., Any]) -> None:
    """A scheduled function is called with no arguments (checked before it is
    registered as the task ``name``)."""
    signature = inspect.signature(fn)
    try:
        signature.bind()
    except TypeError:
        raise ConfigurationError(
            f"task {name!r} is scheduled, and a schedule calls it with no arguments, "
            f"but it takes some ({signature}); give them defaults, or read them inside"
        ) from None


class Scheduler:
    """Adds the ticks' jobs of an instance's schedules, on the event loop it runs on."""

    def __init__(self, core: Core) -> None:
        self._core = core

    async def run(self) -> None:
        schedules = list(self._core.schedules)
        if not schedules:
            return
        now = utcnow()
        due = {id(s): s.after(now) for s in schedules}
        # A tick older than the store keeps finished jobs may have run and been purged:
        # it is not caught up (it could run twice).
        kept = self._core.backend.keeps_finished or self._core.options.retention
        for schedule in schedules:
            latest = schedule.latest(now)
            if schedule.catch_up and (now - latest).total_seconds() < kept:
                await self._add(schedule, latest, due)
        while True:
            schedule = min(schedules, key=lambda s: due[id(s)])
            tick = due[id(schedule)]
            await asyncio.sleep(max(0.0, (tick - utcnow()).total_seconds()))
            await self._add(schedule, tick, due)
            due[id(schedule)] = schedule.after(tick)

    async def _add(self, schedule: Schedule, tick: datetime, due: dict[int, datetime]) -> None:
        """Add the tick's job; tried again while the store refuses, until the next tick
        of the schedule comes (then that one is the latest)."""
        task = schedule.task.options(job_id=schedule.job_id(tick))
        core = self._core
        while True:
            try:
                await anyio.to_thread.run_sync(core.add_now, task, (), {})
                return
            except Exception as exc:
                if utcnow() + timedelta(seconds=SCHEDULE_RETRY) >= due[id(schedule)]:
                    logger.error(
                        "adding the job of %s's tick %s failed (%s); its next tick is due",
                        schedule.task.name,
                        tick.isoformat(),
                        exc,
                    )
                    return
                logger.warning(
                    "adding the job of %s's tick %s failed (%s); trying again in %g s",
                    schedule.task.name,
                    tick.isoformat(),
                    exc,
                    SCHEDULE_RETRY,
                )
                await asyncio.sleep(SCHEDULE_RETRY)
