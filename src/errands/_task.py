"""Registered tasks: functions an Errands instance can store, retry and run by name."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

from ._policy import Policy

if TYPE_CHECKING:
    from ._core import Core

P = ParamSpec("P")
R = TypeVar("R")

Kind = Literal["async", "thread", "process"]


def is_async_callable(func: Any) -> bool:
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


class Task(Generic[P, R]):
    """A function registered with ``@errands.task``.

    Calling it calls the function, unchanged. Passing it to ``add_task`` makes a job
    that is stored under ``name``, retried and timed out by ``policy``, and run by
    the workers of the Errands instance it was registered on.
    """

    def __init__(
        self,
        func: Callable[P, R],
        *,
        name: str,
        policy: Policy,
        core: Core,
        process: bool = False,
    ) -> None:
        self.func = func
        self.name = name
        self.policy = policy
        self._core = core
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

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<errands task {self.name!r}>"
