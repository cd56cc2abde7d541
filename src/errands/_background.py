"""``BackgroundTasks`` for FastAPI and ``BackgroundTask`` for Starlette responses.

FastAPI injects its own ``BackgroundTasks`` for any subclass of Starlette's, so
errands' is an ``Annotated`` alias over ``Tasks`` with a dependency that hooks the
request's two FastAPI exit stacks (FastAPI >= 0.121):

- the *function* stack closes when the endpoint has returned, before the response
  is sent: a request's registered jobs are committed to the store there, or dropped
  if the endpoint raised (as FastAPI drops its tasks);
- the *request* stack closes after the response has been sent in full (the last
  chunk of a StreamingResponse, or the end of a WebSocket endpoint): the jobs are
  released to the worker there, or run right there when no worker runs in this
  process (FastAPI's own behaviour) or the instance is ``eager``.

One plain async dependency that pushes two callbacks costs far less per request
than two ``yield`` dependencies, and unlike a function-scoped dependency it may be
used by request-scoped ``yield`` dependencies too.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar, overload

import anyio
import starlette.background
from fastapi import Depends
from starlette.requests import HTTPConnection

from ._job import Job
from ._lifecycle import running_core
from ._plain import PlainJob, cancel_plain, new_plain_job, run_plain
from ._record import JobRecord, utcnow
from ._refusals import refuse
from ._task import Task
from ._telemetry import request_trace
from ._threads import Threads
from ._tracing import excluded
from ._waiters import WAITERS
from .exceptions import ConfigurationError, ErrandsError

if TYPE_CHECKING:
    from ._core import Core

logger = logging.getLogger("errands")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: Runs a request's plain callables when no Errands instance is around at all.
_DEFAULT_THREADS = Threads(16, "errands-inline")

_OPEN, _ACCEPTED, _RELEASED, _DROPPED = range(4)


@dataclass(slots=True)
class _Entry:
    record: JobRecord
    plain: PlainJob | None  # set for plain callables
    core: Core | None  # the task's instance; for plain ones, the running one
    committed: bool = False
    delay: float | None = None  # task.options(delay=...): counted from the commit
    job: Job[Any] | None = None  # the handle given out (registered tasks)
    #: Its id is the caller's (job_id=): at most one job is kept with it.
    chosen: bool = False
    #: Not stored at the commit: a job with its id was kept already.
    duplicate: bool = False


class Tasks:
    """The background tasks of one request (annotate with ``errands.BackgroundTasks``).

    One instance per request, shared by the endpoint and all its dependencies.
    ``add_task`` returns a ``Job`` handle. Plain callables keep their order among
    themselves, and so do registered tasks; the two sequences run side by side.
    """

    __slots__ = ("_app", "_entries", "_fastapi_traces", "_last_stored", "_phase", "_untraced")

    def __init__(
        self, app: object = None, *, untraced: bool = False, fastapi_traces: bool = True
    ) -> None:
        self._entries: list[_Entry] = []
        self._last_stored: dict[int, str] = {}
        self._phase = _OPEN
        self._app = app  # whose exception handlers say what a client gets if storing fails
        self._untraced = untraced  # FastAPI's telemetry excludes the request: so do its jobs
        #: Whether FastAPI's telemetry may trace the request (its plain jobs' spans).
        self._fastapi_traces = fastapi_traces

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        raise ConfigurationError(
            "annotate the parameter with errands.BackgroundTasks, not errands.Tasks: "
            "BackgroundTasks is the dependency that gives each request its Tasks"
        )

    @overload
    def add_task(
        self, func: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]: ...

    @overload
    def add_task(self, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Job[R]: ...

    def add_task(self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Job[Any]:
        """Run ``func(*args, **kwargs)`` after the response has been sent; its handle."""
        if self._phase == _RELEASED:
            return self._add_now(func, args, kwargs)
        if isinstance(func, Task):
            core = func._core
            if func.job_id is not None and (kept := self._kept(func)) is not None:
                # The request's next job waits for the one kept under this id (it
                # stands for this call), as it would for one added here.
                self._last_stored[id(core)] = kept.id
                return kept
            after = self._last_stored.get(id(core))
            record = core.new_record(func, args, kwargs, after=after, traced=not self._untraced)
            self._last_stored[id(core)] = record.id
            delay = func.start.delay if func.start is not None else None
            handle: Job[Any] = Job(record.id, record.name, core)
            chosen = func.job_id is not None
            self._entries.append(_Entry(record, None, core, delay=delay, job=handle, chosen=chosen))
            return handle
        # Sync endpoints and dependencies call this from a thread: the running
        # instance is looked up in _commit, on the event loop (and checked there too).
        job = new_plain_job(func, args, kwargs)
        if self._fastapi_traces:
            job.trace = request_trace()
        # On the event loop, its instance now (checked once); from a thread, at the commit.
        running = running_core()
        if running is not None and running.options.only_registered:
            running.check_plain(job.name)  # raises
        self._entries.append(_Entry(job, job, running))
        return Job(job.id, job.name, None, job)

    def _kept(self, task: Task[Any, Any]) -> Job[Any] | None:
        """A handle to the job kept under the task's ``job_id``, added earlier in this
        request or stored already; None if there is none (yet)."""
        id = task.job_id
        assert id is not None
        for entry in self._entries:
            if entry.record.id == id and entry.core is task._core:
                return Job(id, entry.record.name, task._core, created=False)
        record = task._core.backend.get(id)
        if record is None:
            return None
        return Job(id, record.name, task._core, created=False)

    def _add_now(self, func: Callable[..., Any], args: Any, kwargs: Any) -> Job[Any]:
        # Added after the response was sent (e.g. in a dependency's teardown).
        core = func._core if isinstance(func, Task) else running_core()
        if core is None:
            raise ErrandsError(
                "this request's tasks have already run; add later work with "
                "errands.add_task() on an Errands instance"
            )
        return core.add_now(func, args, kwargs)

    def __len__(self) -> int:
        return len(self._entries)

    # -- the request's exit stacks call these ------------------------------------

    async def function_exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is not None:
            await self._drop(self._entries, f"dropped: the endpoint raised {exc!r}")
            return False
        try:
            if not self._commit_now():
                await self._commit()
        except BaseException as error:
            # The response will be an error: nothing of this request is kept.
            await self._drop(
                self._entries, f"dropped: storing the request's jobs failed: {error!r}"
            )
            if (refusal := refuse(error, self._app)) is not None:
                raise refusal from error
            raise
        self._phase = _ACCEPTED
        return False

    async def request_exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._phase == _DROPPED:
            return False
        if exc is not None and self._phase != _ACCEPTED:
            await self._drop(self._entries, f"dropped: the request failed with {exc!r}")
            return False
        # The endpoint returned and its jobs were stored: a client may hold their ids,
        # so they run even if something fails after the response (a dependency's
        # teardown, a broken stream). Tasks added since (by teardown code) are stored
        # now, or dropped alone if that fails.
        try:
            if not self._commit_now():
                await self._commit()
        except Exception as error:
            late = [e for e in self._entries if not e.committed]
            reason = f"dropped: storing tasks added after the endpoint failed: {error!r}"
            await self._drop(late, reason)
            logger.error("%d task(s) added after the endpoint were dropped: %s", len(late), error)
        if not self._hand_over_now():
            await self._release()
        return False

    def _commit_now(self) -> bool:
        """``_commit`` of the common cases, with no coroutine: nothing new, or one plain
        job added on the event loop, with backlog room. False: ``_commit`` must do it."""
        entries = self._entries
        # Entries are committed in the order added: the last one says whether all are.
        if not entries or entries[-1].committed:
            return True
        if len(entries) != 1:
            return False
        entry = entries[0]
        job, core = entry.plain, entry.core
        if job is None or core is None or not core.backlog.try_reserve(1):
            return False
        core.plain.adopt((job,))
        entry.committed = True
        if core.metrics.counting is not None:
            core.metrics.added((job.name,))
        return True

    def _hand_over_now(self) -> bool:
        """``_release`` of the common cases, with no coroutine: no job, or one plain job
        for this process's worker. False: ``_release`` must do it."""
        entries = self._entries
        if self._phase == _RELEASED or not entries:
            self._phase = _RELEASED
            return True
        if len(entries) != 1:
            return False
        entry = entries[0]
        core = entry.core
        if (
            entry.plain is None
            or not entry.committed
            or core is None
            or core.worker is None
            or core.eager
        ):
            return False
        self._phase = _RELEASED
        core.hand_over(entry.plain)
        return True

    async def _commit(self) -> None:
        entries = self._entries
        # Entries are committed in the order added: the last one says whether all are.
        if not entries or entries[-1].committed:
            return
        if len(entries) == 1 and entries[0].plain is None:  # one registered job: shorter
            core = entries[0].core
            assert core is not None
            await _store(core, entries)
            return
        pending = [e for e in entries if not e.committed]
        running = running_core()
        for entry in pending:
            if entry.plain is not None and entry.core is None:
                if running is not None:
                    running.check_plain(entry.plain.name)
                entry.core = running
            if entry.core is None:
                entry.committed = True  # nothing to store, no backlog to count against
        for core, group in _by_instance((e.core, e) for e in pending if e.core is not None):
            plain = [e for e in group if e.plain is not None]
            stored = [e for e in group if e.plain is None]
            if plain:  # first: their room is given back without a write, should storing fail
                if not core.backlog.try_reserve(len(plain)):
                    await core.backlog.reserve(len(plain))
                core.plain.adopt([job for e in plain if (job := e.plain) is not None])
                for entry in plain:
                    entry.committed = True
                if core.metrics.counting is not None:
                    core.metrics.added(e.record.name for e in plain)
            if stored:
                await _store(core, stored)

    async def _release(self) -> None:
        if self._phase == _RELEASED:
            return
        self._phase = _RELEASED
        if len(self._entries) == 1:  # the common case: one registered job, to a worker
            entry = self._entries[0]
            core = entry.core
            if (
                entry.plain is None
                and entry.committed
                and not entry.duplicate
                and core is not None
                and not core.runs_inline
            ):
                await core.backend.release((entry.record.id,))
                return
        inline: list[_Entry] = []
        to_release: list[tuple[Core, str]] = []
        to_worker: list[tuple[Core, PlainJob]] = []
        now = utcnow()
        for entry in self._entries:
            if not entry.committed or entry.duplicate:
                continue  # dropped, or another request's job
            core = entry.core
            if entry.plain is None:
                assert core is not None
                if core.eager or (core.runs_inline and not _later(entry.record, now)):
                    inline.append(entry)  # eager runs delayed jobs now, as Celery's does
                else:
                    to_release.append((core, entry.record.id))
            elif core is None or core.worker is None or core.eager:
                inline.append(entry)
            else:
                to_worker.append((core, entry.plain))
        for core, lane in _by_instance(to_worker):
            core.hand_over(lane[0] if len(lane) == 1 else lane)
        for core, ids in _by_instance(to_release):
            await core.backend.release(ids)
        if inline:
            # Like FastAPI, in the request itself; unlike it, a client that goes away
            # does not cancel them.
            with anyio.CancelScope(shield=True):
                await _run_inline(inline)

    async def _drop(self, entries: list[_Entry], reason: str) -> None:
        if entries is self._entries:
            self._phase = _DROPPED
        committed_stored = (
            (e.core, e.record)
            for e in entries
            if e.plain is None and e.committed and e.core is not None and not e.duplicate
        )
        for core, records in _by_instance(committed_stored):
            try:
                await core.backend.cancel([r.id for r in records], reason)
            except Exception as exc:  # the request fails either way; say what may still run
                ids = ", ".join(r.id for r in records)
                logger.error("taking back jobs %s of a failed request failed: %s", ids, exc)
        for entry in entries:
            if entry.plain is not None:
                if entry.committed and entry.core is not None:
                    entry.core.plain.cancel(entry.plain, reason)  # gives its room back
                elif cancel_plain(entry.plain, reason):
                    WAITERS.notify(entry.plain.id)
            entry.committed = False  # never released


async def _store(core: Core, stored: list[_Entry]) -> None:
    """Commit the registered jobs of ``stored`` (all of ``core``) to its backend."""
    now = None
    records: list[JobRecord] = []
    chosen: set[str] = set()
    for entry in stored:  # one loop: a comprehension is a call of its own
        record = entry.record
        if entry.delay is not None:
            now = now or utcnow()
            record.scheduled_at = now + timedelta(seconds=entry.delay)
        if entry.chosen:
            chosen.add(record.id)
        records.append(record)
    kept = await core.backend.commit(records, chosen=chosen)
    for entry in stored:
        entry.committed = True
    if kept:  # another request stored these ids first: theirs, not ours
        _duplicates(stored, kept)
    if core.metrics.counting is not None:
        taken = {record.id for record in kept}
        core.metrics.added(e.record.name for e in stored if e.record.id not in taken)


def _duplicates(entries: list[_Entry], kept: list[JobRecord]) -> None:
    """Mark the entries whose record was not stored (their id was kept already)."""
    not_added = {id(record) for record in kept}
    for entry in entries:
        if id(entry.record) in not_added:
            entry.duplicate = True
            if entry.job is not None:
                entry.job.created = False


def _later(record: JobRecord, now: datetime) -> bool:
    """Whether a job is delayed past ``now`` (then it waits in the store, even with no
    worker in this process: ``join`` or a worker runs it when it is due)."""
    return record.scheduled_at is not None and record.scheduled_at > now


def _by_instance(pairs: Iterable[tuple[Core, T]]) -> list[tuple[Core, list[T]]]:
    """The items of each Errands instance, in the order given (instances by identity)."""
    groups: dict[int, tuple[Core, list[T]]] = {}
    for core, item in pairs:
        groups.setdefault(id(core), (core, []))[1].append(item)
    return list(groups.values())


async def _run_inline(entries: list[_Entry]) -> None:
    for entry in entries:
        core = entry.core
        if entry.plain is None:
            assert core is not None
            await core.backend.run_here(entry.record)
        elif core is not None:
            await core.plain.run(entry.plain, core.threads)
        else:
            await run_plain(entry.plain, _DEFAULT_THREADS)
            WAITERS.notify(entry.plain.id)


async def _provide_tasks(connection: HTTPConnection) -> Tasks:
    scope = connection.scope
    # FastAPI's telemetry marks the scope of a request it traces (or excludes).
    telemetry = "fastapi.telemetry" in scope
    tasks = Tasks(
        scope.get("app"),
        untraced=telemetry and excluded(scope),
        fastapi_traces=telemetry and scope["fastapi.telemetry"] is not None,
    )
    try:
        function_stack = scope["fastapi_function_astack"]
        request_stack = scope["fastapi_inner_astack"]
    except KeyError:
        raise ConfigurationError(
            "errands.BackgroundTasks needs FastAPI >= 0.121 (its per-request exit stacks "
            "were not found); upgrade FastAPI"
        ) from None
    if (
        _PUSH_EXIT is not None
        and type(request_stack) is AsyncExitStack
        and type(function_stack) is AsyncExitStack
    ):
        _PUSH_EXIT(request_stack, tasks.request_exit, False)
        _PUSH_EXIT(function_stack, tasks.function_exit, False)
    else:
        request_stack.push_async_exit(tasks.request_exit)
        function_stack.push_async_exit(tasks.function_exit)
    return tasks


def _private_push_exit() -> Callable[[AsyncExitStack, Any, bool], None] | None:
    push = getattr(AsyncExitStack, "_push_exit_callback", None)
    try:
        names = list(inspect.signature(push).parameters) if push is not None else []
    except (TypeError, ValueError):
        return None
    return push if names == ["self", "callback", "is_sync"] else None


#: ``push_async_exit`` tells a callback from a context manager by looking up
#: ``__aexit__`` on its type: a method has none, and the AttributeError raised and
#: caught costs more than the rest of the push (two a request). Where the stacks are
#: contextlib's own, its primitive registers the callbacks, as push_async_exit would.
#: (A private method: used only while it has the signature it has had since Python 3.7,
#: ``(callback, is_sync)``, else the public call.)
_PUSH_EXIT = _private_push_exit()


#: Annotate endpoint and dependency parameters with this, as with FastAPI's own.
BackgroundTasks = Annotated[Tasks, Depends(_provide_tasks)]


class BackgroundTask(starlette.background.BackgroundTask):
    """One task for a Starlette response: ``Response(background=BackgroundTask(f, x))``.

    Runs after the response has been sent, with errands' failure isolation; ``job``
    is its handle. A registered task is stored when the response's background runs.
    """

    def __init__(self, func: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> None:
        super().__init__(func, *args, **kwargs)
        self._tasks = Tasks()
        self.job: Job[Any] = self._tasks.add_task(func, *args, **kwargs)

    async def __call__(self) -> None:
        await self._tasks.request_exit(None, None, None)
