"""An Errands instance's settings, checked once, and what its backend may use of it."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._tuning import HOLD, MAX_SECONDS, MIN_LEASE
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._attempt import Calls
    from ._backlog import Backlog
    from ._task import Task


@dataclass(slots=True)
class Options:
    """The settings of ``Errands(...)``; see its docstring for each."""

    concurrency: int = 100
    threads: int = 16
    max_backlog: int = 100_000
    backlog_timeout: float = 1.0
    lease: float = 30.0
    drain_timeout: float = 10.0
    hold: float = HOLD
    max_payload: int = 1024 * 1024
    max_result: int = 1024 * 1024
    retention: float = 7 * 24 * 3600
    processes: int = 0  # 0: the number of CPUs
    worker: bool = True
    publish_timeout: float = 5.0
    only_registered: bool = False

    def __post_init__(self) -> None:
        check_whole(
            concurrency=self.concurrency,
            threads=self.threads,
            max_backlog=self.max_backlog,
            max_payload=self.max_payload,
            max_result=self.max_result,
            processes=self.processes,
        )
        check_positive(
            concurrency=self.concurrency,
            threads=self.threads,
            max_backlog=self.max_backlog,
            lease=self.lease,
            hold=self.hold,
            max_payload=self.max_payload,
            max_result=self.max_result,
            retention=self.retention,
            publish_timeout=self.publish_timeout,
        )
        check_not_negative(
            backlog_timeout=self.backlog_timeout,
            drain_timeout=self.drain_timeout,
            processes=self.processes,
        )
        check_seconds(
            lease=self.lease,
            hold=self.hold,
            retention=self.retention,
            publish_timeout=self.publish_timeout,
            backlog_timeout=self.backlog_timeout,
            drain_timeout=self.drain_timeout,
        )
        if self.lease < MIN_LEASE:
            raise ConfigurationError(
                f"lease must be at least {MIN_LEASE} s (it is renewed every third of it), "
                f"got {self.lease!r}"
            )
        check_flags(worker=self.worker, only_registered=self.only_registered)
        if not self.processes:
            self.processes = os.cpu_count() or 1


def check_positive(**values: Any) -> None:
    for name, value in values.items():
        _check_number(name, value)
        if value <= 0:
            raise ConfigurationError(f"{name} must be > 0, got {value!r}")


def check_not_negative(**values: Any) -> None:
    for name, value in values.items():
        _check_number(name, value)
        if value < 0:
            raise ConfigurationError(f"{name} must be >= 0, got {value!r}")


def check_whole(**values: Any) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{name} must be a whole number (an int), got {value!r}")


def check_seconds(**values: Any) -> None:
    """Durations: at most ``MAX_SECONDS`` (times past it are beyond what a date holds)."""
    for name, value in values.items():
        _check_number(name, value)
        if value > MAX_SECONDS:
            raise ConfigurationError(
                f"{name} must be at most {MAX_SECONDS:,} s (ten years), got {value!r}"
            )


def check_flags(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, bool):
            raise ConfigurationError(f"{name} must be True or False, got {value!r}")


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a backend may use of its Errands instance, and nothing else."""

    options: Options
    #: The registered tasks by name (the instance's own table: tasks registered
    #: later appear in it).
    tasks: Mapping[str, Task[Any, Any]]
    #: How this process calls a task's function (threads, processes, timeouts).
    calls: Calls
    #: The bound on jobs held in memory (the memory store's jobs count against it).
    backlog: Backlog
