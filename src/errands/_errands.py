"""``Errands``: an application's background tasks: their store (or Celery), their
registered functions, and the worker that runs them. Only what the README documents
is public here; the rest is ``Core`` (``_core.py``) and the backend behind it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, overload

from ._core import Core, check_id
from ._job import Job
from ._lifecycle import join, web_lifespan
from ._limits import check_limit
from ._options import Options, check_count, check_flag, check_seconds
from ._policy import Policy
from ._record import JobRecord, JobStatus, finished_statuses
from ._schedule import Schedule, check_cron, check_interval, check_no_arguments
from ._stats import Stats
from ._task import Task, callable_name
from ._tuning import HOLD
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from celery import Celery
    from starlette.types import ASGIApp

    from ._dashboard._guard import Auth as DashboardAuth

P = ParamSpec("P")
R = TypeVar("R")


class TaskDecorator(Protocol):
    def __call__(self, func: Callable[P, R], /) -> Task[P, R]: ...


class Errands:
    """Background tasks for one application: a store, registered tasks, a worker.

    ``url`` picks the store: ``"sqlite:///errands.db"`` (the default; a file in the
    current directory), ``"sqlite:////abs/path.db"`` or ``"memory://"``; when not given,
    ``$ERRANDS_URL``, then the default. ``concurrency`` bounds the jobs running at once
    in this process's worker, ``threads`` the pool that runs ``def`` tasks (its own, not
    the one serving sync endpoints). ``max_backlog`` bounds jobs held in memory; an
    ``add_task`` that finds it full waits up to ``backlog_timeout`` seconds, then raises
    ``BacklogFull``. ``lease`` is how long a claimed job stays its worker's without a
    renewal; ``drain_timeout`` how long shutdown waits for running jobs; ``hold`` how
    long a request's jobs wait for its response to be sent before any worker may run
    them (while the process that added them lives); ``max_payload`` the largest
    arguments and ``max_result`` the largest result (bytes of JSON); ``retention`` how
    long finished jobs are kept (seconds); ``processes`` how many ``process=True``
    tasks run at once (default: the number of CPUs). ``worker=False`` makes the
    lifespan start no worker (this process only adds jobs). ``eager=True`` runs a
    request's tasks before its ASGI call returns (for tests).

    ``celery=app`` (or the URL ``celery://module:attribute``) runs registered tasks on
    that Celery app's workers: each becomes a Celery task of the same name, and a
    request's jobs are published before its response, within ``publish_timeout``
    seconds or ``BrokerUnavailable``. ``only_registered=True`` refuses plain callables
    (which cannot leave this process) instead of running them here.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        concurrency: int = 100,
        threads: int = 16,
        max_backlog: int = 100_000,
        backlog_timeout: float = 1.0,
        lease: float = 30.0,
        drain_timeout: float = 10.0,
        hold: float = HOLD,
        max_payload: int = 1024 * 1024,
        max_result: int = 1024 * 1024,
        retention: float = 7 * 24 * 3600,
        processes: int | None = None,
        worker: bool = True,
        eager: bool = False,
        celery: Celery | None = None,
        publish_timeout: float = 5.0,
        only_registered: bool = False,
    ) -> None:
        options = Options(
            concurrency=concurrency,
            threads=threads,
            max_backlog=max_backlog,
            backlog_timeout=backlog_timeout,
            lease=lease,
            drain_timeout=drain_timeout,
            hold=hold,
            max_payload=max_payload,
            max_result=max_result,
            retention=retention,
            processes=0 if processes is None else processes,
            worker=worker,
            publish_timeout=publish_timeout,
            only_registered=only_registered,
        )
        if processes is not None:
            check_count("processes", processes, least=1)
        self._core = Core(options, url=url, celery=celery, eager=eager)

    def __repr__(self) -> str:
        return f"<Errands {self.url} tasks={len(self._core.tasks)}>"

    @property
    def url(self) -> str:
        """Where jobs go: the store's URL (``celery://<app>`` in Celery mode)."""
        return self._core.backend.url

    @property
    def eager(self) -> bool:
        """Run a request's tasks before its ASGI call returns (for tests); settable."""
        return self._core.eager

    @eager.setter
    def eager(self, value: bool) -> None:
        self._core.eager = value

    @property
    def backlog(self) -> int:
        """Jobs held in memory, accepted and not yet finished."""
        return self._core.backlog.size

    # -- registering ------------------------------------------------------------------

    @overload
    def task(self, func: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        timeout: float | None = None,
        process: bool = False,
        priority: int = 0,
        concurrency: int | None = None,
        rate: str | None = None,
    ) -> TaskDecorator: ...

    def task(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        timeout: float | None = None,
        process: bool = False,
        priority: int = 0,
        concurrency: int | None = None,
        rate: str | None = None,
    ) -> Task[Any, Any] | TaskDecorator:
        """Register a function (``def`` or ``async def``) as a task of this instance.

        Its jobs are stored under ``name`` (default ``module.qualname``), retried
        ``retries`` times with exponential backoff and full jitter from ``backoff``
        seconds, and each attempt is bounded by ``timeout`` seconds. Arguments and
        results must be JSON data. Calling the task still calls the function.
        With ``process=True`` (``def`` functions defined at module level) each attempt
        runs in a process of its own, and a timeout kills it. Among jobs that are due,
        those of higher ``priority`` run first (``task.options(priority=)`` for a call).
        At most ``concurrency`` of its jobs run at once, and at most ``rate`` attempts
        start (``"10/s"``, ``"100/m"``, ``"1000/h"``), across every worker on the store;
        jobs held back stay queued, and other tasks' jobs run meanwhile.
        """
        policy = Policy(retries=retries, backoff=backoff, timeout=timeout)

        def register(fn: Callable[P, R], /) -> Task[P, R]:
            task_name = name if name is not None else callable_name(fn)
            limit = check_limit(str(task_name), concurrency, rate)
            return self._core.register(
                fn, name=name, policy=policy, process=process, priority=priority, limit=limit
            )

        return register(func) if func is not None else register

    def cron(
        self,
        expression: str,
        /,
        *,
        tz: str = "UTC",
        catch_up: bool = True,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        timeout: float | None = None,
        process: bool = False,
        priority: int = 0,
        concurrency: int | None = None,
        rate: str | None = None,
    ) -> TaskDecorator:
        """Register a task that takes no arguments, and run it at each tick of the cron
        ``expression`` (five fields, or ``@hourly``, ``@daily``, ``@weekly``,
        ``@monthly``, ``@yearly``) in the time zone ``tz``.

        One job per tick, however many processes run the app's lifespan or ``errands
        worker`` on the store: its id is ``cron:<name>:<tick in ISO 8601 UTC>``. A
        process that starts adds the latest tick that has passed, if it has not run
        (``catch_up``): after downtime, only the latest missed tick runs. The other
        options are ``task``'s.
        """
        cron, zone = check_cron(expression, tz)
        register = self.task(
            name=name,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            process=process,
            priority=priority,
            concurrency=concurrency,
            rate=rate,
        )
        return self._scheduled(register, name, catch_up, cron=cron, tz=zone)

    def every(
        self,
        interval: timedelta | float,
        /,
        *,
        catch_up: bool = True,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        timeout: float | None = None,
        process: bool = False,
        priority: int = 0,
        concurrency: int | None = None,
        rate: str | None = None,
    ) -> TaskDecorator:
        """Register a task that takes no arguments, and run it every ``interval`` (a
        ``timedelta`` or seconds, at least one): at each whole multiple of it since
        the Unix epoch, so that every process agrees. As ``cron`` otherwise."""
        seconds = check_interval(interval)
        register = self.task(
            name=name,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            process=process,
            priority=priority,
            concurrency=concurrency,
            rate=rate,
        )
        return self._scheduled(register, name, catch_up, interval=seconds)

    def _scheduled(
        self, register: TaskDecorator, name: str | None, catch_up: bool, **when: Any
    ) -> TaskDecorator:
        """What ``cron`` and ``every`` return: ``register`` (``task``'s decorator), then
        the schedule (``Schedule``'s fields ``when``)."""
        check_flag("catch_up", catch_up)

        def scheduled(fn: Callable[P, R], /) -> Task[P, R]:
            check_no_arguments(callable_name(fn) if name is None else name, fn)
            task = register(fn)
            self._core.schedules.append(Schedule(task, catch_up=catch_up, **when))
            return task

        return scheduled

    # -- adding jobs outside a request ------------------------------------------------

    @overload
    def add_task(
        self, func: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]: ...

    @overload
    def add_task(self, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Job[R]: ...

    def add_task(self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Job[Any]:
        """Add a job now, from anywhere: a script, a startup hook, another task.

        Registered tasks go to the store at once; plain callables to this process's
        worker. They run when a worker runs: the app's lifespan, or ``await join()``.
        """
        return self._core.add_now(func, args, kwargs)

    # -- adding jobs in the caller's transaction (PostgreSQL) ----------------------------

    @overload
    def add_task_in(
        self, conn: object, func: Task[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]: ...

    @overload
    def add_task_in(
        self, conn: object, func: Task[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]: ...

    def add_task_in(
        self, conn: object, func: Task[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[Any]:
        """Add a registered task's job in the transaction open on ``conn``: it exists
        if, and only if, that transaction commits, and no worker starts it before.

        ``conn`` is a psycopg 3 ``Connection`` (or ``Cursor``), or a SQLAlchemy
        ``Connection`` or ``Session`` on the psycopg driver (``postgresql+psycopg://``),
        on the database of this instance's PostgreSQL store. Workers are woken at the
        commit (``NOTIFY``). A ``job_id`` kept already adds nothing (``job.created`` is
        False). For ``AsyncConnection`` and ``AsyncSession``: ``add_task_in_async``.
        """
        writer = self._core.transactional(func, args, kwargs)
        added = writer.write(conn)
        return Job(writer.record.id, writer.record.name, self._core, created=added)

    @overload
    async def add_task_in_async(
        self, conn: object, func: Task[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]: ...

    @overload
    async def add_task_in_async(
        self, conn: object, func: Task[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]: ...

    async def add_task_in_async(
        self, conn: object, func: Task[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[Any]:
        """``add_task_in`` on an async connection: a psycopg 3 ``AsyncConnection`` (or
        ``AsyncCursor``), or a SQLAlchemy ``AsyncConnection`` or ``AsyncSession`` on the
        psycopg driver."""
        writer = self._core.transactional(func, args, kwargs)
        added = await writer.write_async(conn)
        return Job(writer.record.id, writer.record.name, self._core, created=added)

    # -- looking at jobs --------------------------------------------------------------

    def get(self, id: str) -> JobRecord | None:
        """A snapshot of the job with this id, or None if it is not known."""
        if not check_id(id):
            return None
        return self._core.plain.get(id) or self._core.backend.get(id)

    def jobs(
        self,
        status: JobStatus | str | None = None,
        limit: int = 100,
        task: str | None = None,
        *,
        offset: int = 0,
    ) -> list[JobRecord]:
        """Recent jobs, newest first: stored ones and this process's plain ones.

        ``status`` is a ``JobStatus`` or its value (``"failed"``); ``task`` a task name;
        ``offset`` skips that many of the newest (pages: ``offset=(page - 1) * limit``)."""
        wanted = None if status is None else JobStatus.of(status)
        for name, value in (("limit", limit), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if task is not None and not isinstance(task, str):
            raise ValueError(f"task must be a task name (a str), got {task!r}")
        end = offset + limit
        plain = [r for r in self._core.plain.jobs(wanted, end) if task in (None, r.name)]
        if not plain:  # the store's own order, and its own offset: pages neither skip nor repeat
            return self._core.backend.jobs(wanted, limit, task, offset)
        merged = self._core.backend.jobs(wanted, end, task) + plain
        merged.sort(key=lambda r: r.created_at, reverse=True)
        return merged[offset:end]

    # -- acting on jobs ---------------------------------------------------------------

    def cancel(self, id: str) -> JobRecord | None:
        """Cancel the job with this id; its record after, or None if no job has it.

        A queued job (delayed, waiting for a retry, or for the job before it) is
        ``cancelled`` at once and never runs. A running one is asked to stop: an
        ``async def`` attempt is cancelled where it runs, in any process, within
        about a second; a ``process=True`` attempt's process is killed; a ``def``
        attempt runs on (it may check ``errands.cancel_requested()``). Either way
        the job ends ``cancelled``, its result discarded, with no retry. A finished
        job is left as it is.
        """
        return self._core.cancel(id)

    def retry(self, id: str) -> JobRecord:
        """Run a failed or cancelled job again: it is ``queued`` at once for one more
        round of its task's attempts (same id; ``attempts`` counts on; its last
        error stays until an attempt succeeds); its record after.

        ``JobNotFound`` for an unknown id; ``ErrandsError`` for a job that is queued,
        running or succeeded, saying so.
        """
        return self._core.retry(id)

    def purge(
        self,
        older_than: float | timedelta,
        statuses: Sequence[JobStatus | str] | None = None,
    ) -> int:
        """Delete finished jobs (``statuses``: succeeded, failed, cancelled by default)
        that finished more than ``older_than`` ago (seconds or a ``timedelta``); how
        many were deleted. Never a queued or running job. (Finished jobs are purged
        after ``retention`` anyway; in Celery mode, results expire by themselves.)"""
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
        check_seconds("older_than", seconds, zero=True)
        return self._core.purge(seconds, finished_statuses(statuses))

    def dashboard(self, *, auth: DashboardAuth) -> ASGIApp:
        """The web dashboard of this instance's jobs, an ASGI app to mount in your own:
        ``app.mount("/errands", errands.dashboard(auth=("admin", secret)))``.

        ``auth`` must be written out: ``("user", "password")`` for HTTP Basic (compared
        in constant time), a callable ``(request) -> bool`` (sync or async) for your own
        scheme (False: 403), or ``None`` when the app around the mount protects it.
        Every POST (retry, cancel, purge) from another site is refused. Needs the
        ``dashboard`` extra: ``pip install 'errands[dashboard]'``.
        """
        try:
            from ._dashboard import build, check_auth
        except ImportError as exc:
            raise ConfigurationError(
                f"the dashboard needs its extra, which is not installed ({exc.name} is "
                f"missing): pip install 'errands[dashboard]'"
            ) from None
        return build(self, self._core.tasks, check_auth(auth))

    def metrics(self) -> ASGIApp:
        """This instance's metrics in Prometheus' text format, an ASGI app to mount:
        ``app.mount("/metrics", errands.metrics())``. Counting starts with the first
        call (jobs added, attempts by outcome, waits and run times, counted in this
        process); jobs by status, the longest wait of a due job and jobs no live worker
        runs are read from the store at each scrape. Needs the ``metrics`` extra:
        ``pip install 'errands[metrics]'``."""
        return self._core.metrics.prometheus().app()

    def stats(self) -> Stats:
        """Counts by status and by task, the live workers, and the jobs no live
        worker can run (their task is registered in none)."""
        return self._core.backend.stats()

    # -- running ------------------------------------------------------------------------

    def lifespan(self, app: object = None) -> AbstractAsyncContextManager[None]:
        """Run this instance's worker while the app runs: ``FastAPI(lifespan=errands.lifespan)``.

        On shutdown it stops claiming, waits up to ``drain_timeout`` for running
        jobs, then cancels the rest (registered ones go back to the queue). It also
        answers ``BacklogFull`` and ``StoreError`` with ``503`` and ``Retry-After``
        unless the app has handlers of its own for them.
        Inside your own lifespan: ``async with errands.lifespan(app): yield``.
        """
        core = self._core
        return web_lifespan(core, app, worker=core.options.worker)

    def run_worker(
        self,
        *,
        concurrency: int | None = None,
        processes: int | None = None,
        celery_args: Sequence[str] = (),
        log_level: str = "info",
    ) -> None:
        """Run this instance's worker in this process until SIGINT or SIGTERM.

        What ``errands worker module:attribute`` runs. On the signal it stops claiming,
        lets running jobs finish for up to ``drain_timeout`` seconds, then gives the
        rest back to the queue, and returns. In Celery mode it runs a Celery worker
        instead (``celery_args`` are that worker's options, e.g. ``["-Q", "emails"]``).
        """
        core = self._core
        if concurrency is not None:
            check_count("concurrency", concurrency, least=1)
            core.options.concurrency = concurrency
        if processes is not None:
            check_count("processes", processes, least=1)
            core.processes.processes = processes
        core.backend.run_worker(
            core, concurrency=concurrency, extra=celery_args, log_level=log_level
        )

    async def join(self, timeout: float | None = None) -> None:
        """Wait until every job has finished: in memory, and queued or running in the store.

        With no worker running in this process, runs one on the current event loop
        until then: ``errands.add_task(...); await errands.join()`` runs the jobs of a
        script or a test.
        """
        await join(self._core, timeout)
