"""Registered tasks: functions an Errands instance can store, retry and run by name."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from inspect import CO_COROUTINE
from types import FunctionType
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

from ._limits import Limit
from ._policy import Policy, is_seconds
from ._tuning import MAX_PRIORITY, MAX_SECONDS
from .exceptions import InvalidOption

if TYPE_CHECKING:
    from ._core import Core

P = ParamSpec("P")
R = TypeVar("R")

Kind = Literal["async", "thread", "process"]


def is_async_callable(func: Any) -> bool:
    if type(func) is FunctionType and func.__code__.co_flags & CO_COROUTINE:
        return True  # an ``async def``: the common case, at a third of inspect's cost
    while isinstance(func, functools.partial):
        func = func.func
    if isinstance(func, Task):
        return func.is_async
    return inspect.iscoroutinefunction(func) or (
        callable(func) and inspect.iscoroutinefunction(getattr(func, "__call__", None))  # noqa: B004
    )


def callable_name(func: Any) -> str:
    """A readable name for any callable: ``module.qualname`` where it has one."""
    while isinstance(func, functools.partial):
        func = func.func
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    module = getattr(func, "__module__", None)
    return f"{module}.{qualname}" if module else qualname


@dataclass(frozen=True, slots=True)
class Start:
    """When the jobs of a call may start (``Task.options``): ``delay`` seconds after
    the job is kept (in a request: committed, as the endpoint returns), or ``at``."""

    delay: float | None = None
    at: datetime | None = None

    def scheduled(self, now: datetime) -> datetime:
        """The earliest start of a job kept at ``now``."""
        if self.at is not None:
            return self.at
        assert self.delay is not None
        return now + timedelta(seconds=self.delay)


def check_start(name: str, delay: object, at: object) -> Start | None:
    """The ``Start`` of ``task.options(delay=, at=)``, or an error naming what is wrong."""
    if delay is not None and at is not None:
        raise InvalidOption(
            f"task {name!r}: give delay= or at=, not both (delay={delay!r}, at={at!r})"
        )
    if delay is not None:
        if isinstance(delay, timedelta):
            seconds = delay.total_seconds()
        elif isinstance(delay, int | float) and not isinstance(delay, bool):
            seconds = float(delay)
        else:
            raise InvalidOption(
                f"task {name!r}: delay must be seconds (an int or a float) or a timedelta, "
                f"got {delay!r}"
            )
        if not is_seconds(seconds) or seconds < 0:
            raise InvalidOption(
                f"task {name!r}: delay must be 0 or more seconds, at most {MAX_SECONDS:,} "
                f"(ten years), got {delay!r}; for a time of day, give at= an aware datetime"
            )
        return Start(delay=seconds)
    if at is not None:
        if not isinstance(at, datetime):
            raise InvalidOption(
                f"task {name!r}: at must be a datetime with a time zone, got {at!r}"
            )
        if at.utcoffset() is None:
            raise InvalidOption(
                f"task {name!r}: at={at!r} is a naive datetime (no time zone), which could "
                f"mean any zone; give an aware one, e.g. datetime(..., tzinfo=UTC)"
            )
        latest = datetime.now(UTC) + timedelta(seconds=MAX_SECONDS)
        if at > latest:
            raise InvalidOption(
                f"task {name!r}: at={at.isoformat()} is more than ten years ahead (the "
                f"latest is {latest:%Y-%m-%d}); a job that should never run is better not "
                f"added, or cancelled"
            )
        return Start(at=at)
    return None


#: The longest ``job_id`` a caller may choose.
MAX_JOB_ID = 200


def check_job_id(name: str, job_id: object) -> str:
    """A caller-chosen job id: a non-empty str of at most ``MAX_JOB_ID`` characters."""
    if not isinstance(job_id, str):
        raise InvalidOption(f"task {name!r}: job_id must be a str, got {job_id!r}")
    if not job_id or len(job_id) > MAX_JOB_ID:
        raise InvalidOption(
            f"task {name!r}: job_id must be 1 to {MAX_JOB_ID} characters, got "
            f"{len(job_id)} ({job_id[:40]!r}{'...' if len(job_id) > 40 else ''}); e.g. "
            f'f"charge:{{order_id}}"'
        )
    if not job_id.isprintable() or not _encodable(job_id):
        raise InvalidOption(
            f"task {name!r}: job_id {job_id!r} holds a control character or a lone "
            f'surrogate; use printable text, e.g. f"charge:{{order_id}}"'
        )
    return job_id


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_priority(name: str, priority: object) -> int:
    """A job's priority: an int from ``-MAX_PRIORITY`` to ``MAX_PRIORITY``."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidOption(
            f"task {name!r}: priority must be an int (higher runs first, default 0), "
            f"got {priority!r}"
        )
    if abs(priority) > MAX_PRIORITY:
        raise InvalidOption(
            f"task {name!r}: priority must be from {-MAX_PRIORITY:,} to {MAX_PRIORITY:,}, "
            f"got {priority!r}"
        )
    return priority


class Task(Generic[P, R]):
    """A function registered with ``@errands.task``.

    Calling it calls the function, unchanged. Passing it to ``add_task`` makes a job
    that is stored under ``name``, retried and timed out by ``policy``, and run by
    the workers of the Errands instance it was registered on.
    """

    #: When the jobs of this call may start: set by ``options``, None for at once.
    start: Start | None = None
    #: The id the job of this call gets (``options(job_id=)``), None for a new one.
    job_id: str | None = None

    def __init__(
        self,
        func: Callable[P, R],
        *,
        name: str,
        policy: Policy,
        core: Core,
        process: bool = False,
        priority: int = 0,
        limit: Limit | None = None,
    ) -> None:
        self.func = func
        self.name = name
        self.policy = policy
        self._core = core
        #: Among jobs that are due, higher runs first (``options(priority=)`` for a call).
        self.priority = check_priority(name, priority)
        #: Its concurrency and rate limits, across every worker on the store.
        self.limit = limit
        #: Each attempt runs in a process of its own.
        self.process = process
        self.is_async = is_async_callable(func)
        #: What runs it, and so what bounds how many run at once: the event loop
        #: (``async``), errands' thread pool (``thread``), or a process (``process``).
        self.kind: Kind = "process" if process else "async" if self.is_async else "thread"
        self.signature = inspect.signature(func)
        params = self.signature.parameters.values()
        #: For the quick check of a call's arguments, when every parameter is a plain
        #: one (no *args, **kwargs, positional- or keyword-only): names, and how many
        #: leading ones have no default (defaults can only trail).
        self._names: tuple[str, ...] | None = None
        if all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
            self._names = tuple(p.name for p in params)
        self._required = sum(p.default is inspect.Parameter.empty for p in params)
        functools.update_wrapper(self, func)

    def accepts(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether the function takes these arguments, where a quick check can tell;
        False means "not known": ``signature.bind`` then decides, and explains."""
        names = self._names
        if names is None or len(args) > len(names):
            return False
        if not kwargs:
            return len(args) >= self._required
        rest = names[len(args) :]
        if not all(key in rest for key in kwargs):
            return False
        return all(name in kwargs for name in names[len(args) : self._required])

    def options(
        self,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        job_id: str | None = None,
        priority: int | None = None,
    ) -> Task[P, R]:
        """This task, for one call with options: pass what it returns to ``add_task``.

        ``delay`` (seconds, or a ``timedelta``): the job starts no sooner, counted from
        when it is kept (in a request, when the endpoint returns). ``at`` (an aware
        ``datetime``): no sooner than then; a time already past means at once.
        ``job_id``: the job's id; while a job with that id is kept, adding another
        adds nothing and gives a handle to it (``job.created`` is False).
        ``priority``: among due jobs, higher runs first (default: the task's).
        """
        bound = copy.copy(self)
        bound.start = check_start(self.name, delay, at)
        bound.job_id = None if job_id is None else check_job_id(self.name, job_id)
        if priority is not None:
            bound.priority = check_priority(self.name, priority)
        return bound

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<errands task {self.name!r}>"
