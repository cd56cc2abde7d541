"""An Errands instance's settings, checked once, and what its backend may use of it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._policy import is_seconds
from ._tuning import HOLD, MAX_SECONDS, MIN_LEASE
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._attempt import Calls
    from ._backlog import Backlog
    from ._metrics import Metrics
    from ._task import Task
    from ._tracing import Tracing


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
        for name in ("concurrency", "threads", "max_backlog", "max_payload", "max_result"):
            check_count(name, getattr(self, name), least=1)
        check_count("processes", self.processes, least=0)
        for name in ("lease", "hold", "retention", "publish_timeout"):
            check_seconds(name, getattr(self, name), zero=False)
        for name in ("backlog_timeout", "drain_timeout"):
            check_seconds(name, getattr(self, name), zero=True)
        if self.lease < MIN_LEASE:
            raise ConfigurationError(
                f"lease must be at least {MIN_LEASE} s (it is renewed every third of it), "
                f"got {self.lease!r}"
            )
        for name in ("worker", "only_registered"):
            check_flag(name, getattr(self, name))
        if not self.processes:
            self.processes = os.cpu_count() or 1


def check_count(name: str, value: Any, *, least: int) -> None:
    """A whole number of things (jobs, threads, bytes), ``least`` or more."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be a whole number (an int), got {value!r}")
    if value < least:
        raise ConfigurationError(f"{name} must be >= {least}, got {value!r}")


def check_seconds(name: str, value: Any, *, zero: bool) -> None:
    """A duration in seconds: > 0 (or >= 0 with ``zero``), at most ``MAX_SECONDS``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if not is_seconds(value):
        raise ConfigurationError(
            f"{name} must be a finite number of seconds, at most {MAX_SECONDS:,} (ten "
            f"years), got {value!r}"
        )
    if value < 0 or (value == 0 and not zero):
        raise ConfigurationError(f"{name} must be {'>=' if zero else '>'} 0, got {value!r}")


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")


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
    #: Where attempts' outcomes are counted (nowhere until metrics are asked for).
    metrics: Metrics
    #: Where attempts' spans go (the app's tracer provider, else the global one).
    tracing: Tracing
