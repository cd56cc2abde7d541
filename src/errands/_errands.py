"""``Errands``: one store, its registered tasks, and the worker that runs them."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, overload

import anyio

from ._backlog import Backlog
from ._group_commit import GroupCommit
from ._handover import Handover
from ._job import Job
from ._lifecycle import nothing, run_until_signalled, serving
from ._loops import PerLoop
from ._modes import open_store, resolve_url
from ._payload import decode_arguments, encode_arguments, plain_size
from ._policy import Policy
from ._process import ProcessRunner
from ._record import JobRecord, JobStatus, new_job_id, utcnow
from ._runner import LocalJob, Runner, new_local_job
from ._task import Task, callable_name, is_async_callable
from ._worker import Worker
from .exceptions import ConfigurationError, PayloadTooLarge, WaitTimeout
from .local._leases import Leases
from .local._store import Store

if TYPE_CHECKING:
    from celery import Celery


logger = logging.getLogger("errands")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: Seconds a durable store keeps a request's jobs held if the request never finishes.
HOLD = 60.0


class TaskDecorator(Protocol):
    def __call__(self, func: Callable[P, R], /) -> Task[P, R]: ...


class Errands(Handover):
    """Background tasks for one application: a store, registered tasks, a worker.

    ``url`` picks the store: ``"sqlite:///errands.db"`` (the default; a file in the
    current directory), ``"sqlite:////abs/path.db"`` or ``"memory://"``; when not given,
    ``$ERRANDS_URL``, then the default. ``concurrency`` bounds the jobs running at once
    in this process's worker, ``threads`` the pool that runs ``def`` tasks (its own, not
    the one serving sync endpoints). ``max_backlog`` bounds jobs held in memory; an
    ``add_task`` that finds it full waits up to ``backlog_timeout`` seconds, then raises
    ``BacklogFull``. ``lease`` is how long a claimed job stays its worker's without a
    heartbeat; ``drain_timeout`` how long shutdown waits for running jobs; ``hold`` how
    long a durable store keeps a request's jobs back if its response is never finished;
    ``max_payload`` the largest arguments (bytes of JSON); ``retention`` how long
    finished jobs are kept (seconds); ``processes`` how many ``process=True`` tasks
    run at once (default: the number of CPUs). ``worker=False`` makes the lifespan start no
    worker (this process only adds jobs). ``eager=True`` runs a request's tasks before
    its ASGI call returns (for tests).

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
        retention: float = 7 * 24 * 3600,
        processes: int | None = None,
        worker: bool = True,
        eager: bool = False,
        celery: Celery | None = None,
        publish_timeout: float = 5.0,
        only_registered: bool = False,
    ) -> None:
        _check_positive(
            concurrency=concurrency,
            threads=threads,
            max_backlog=max_backlog,
            lease=lease,
            hold=hold,
            max_payload=max_payload,
            retention=retention,
            publish_timeout=publish_timeout,
        )
        _check_not_negative(backlog_timeout=backlog_timeout, drain_timeout=drain_timeout)
        if celery is not None and url is not None:
            raise ConfigurationError(
                f"give either a URL ({url!r}) or celery=, not both: celery= picks the store"
            )
        self.hold = hold
        self.max_payload = max_payload
        self.retention = retention
        #: False: this process only adds jobs; ``errands worker`` processes run them.
        self.runs_worker = worker
        self.only_registered = only_registered
        if celery is not None:
            from .celery import CeleryStore

            self.store: Store = CeleryStore(celery, publish_timeout=publish_timeout)
            self.url = f"celery://{celery.main or 'celery'}"
        else:
            self.url = resolve_url(url)
            self.store = open_store(self.url, publish_timeout=publish_timeout)
        if eager and not self.store.claims:
            raise ConfigurationError(
                "eager=True runs jobs in this process, and in Celery mode Celery's workers "
                "run them; in tests, construct Errands('memory://', eager=True) instead "
                "(ERRANDS_URL=memory:// with Errands() does it without a code change)"
            )
        self.concurrency = concurrency
        self.lease = lease
        self.drain_timeout = drain_timeout
        self.eager = eager
        self.runner = Runner(threads)
        self.process_runner = ProcessRunner(processes or os.cpu_count() or 1)
        #: Plain-callable jobs waiting for this instance's worker, one list a request.
        #: (A lane of one job is kept as the job itself: one object less a request.)
        self.lanes: deque[LocalJob | list[LocalJob]] = deque()
        self._backlog = Backlog(max_backlog, backlog_timeout)
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._local: dict[str, JobRecord] = {}
        self._local_finished: deque[str] = deque()
        self._local_lock = threading.Lock()
        self._worker: Worker | None = None
        self._groups: PerLoop[GroupCommit] = weakref.WeakKeyDictionary()
        self._leases: PerLoop[Leases] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<Errands {self.url} tasks={len(self._tasks)}>"

    # -- registering ------------------------------------------------------------

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
    ) -> Task[Any, Any] | TaskDecorator:
        """Register a function (``def`` or ``async def``) as a task of this instance.

        Its jobs are stored under ``name`` (default ``module.qualname``), retried
        ``retries`` times with exponential backoff and full jitter from ``backoff``
        seconds, and each attempt is bounded by ``timeout`` seconds. Arguments and
        results must be JSON data. Calling the task still calls the function.
        With ``process=True`` (``def`` functions defined at module level) each attempt
        runs in a process of its own, and a timeout kills it.
        """
        policy = Policy(retries=retries, backoff=backoff, timeout=timeout)

        def register(fn: Callable[P, R], /) -> Task[P, R]:
            if isinstance(fn, Task):
                raise ConfigurationError(f"{fn!r} is already a registered task")
            if not callable(fn):
                raise ConfigurationError(f"@errands.task needs a function, got {fn!r}")
            task_name = name or callable_name(fn)
            if task_name in self._tasks:
                raise ConfigurationError(
                    f"a task named {task_name!r} is already registered on this Errands "
                    f"instance; give one of them another name with @errands.task(name=...)"
                )
            if process:
                self._check_process_task(fn, task_name)
                if self.celery is not None:
                    logger.warning(
                        "errands: task %r: process=True makes no difference in Celery mode; "
                        "Celery's prefork pool runs tasks in processes of their own",
                        task_name,
                    )
                else:
                    self.process_runner.preload(fn.__module__)
            task = Task(fn, name=task_name, policy=policy, errands=self, process=process)
            self._tasks[task_name] = task
            if self.celery is not None:
                from .celery import bind

                bind(self.celery_store, task)
            return task

        return register(func) if func is not None else register

    @staticmethod
    def _check_process_task(fn: Callable[..., Any], name: str) -> None:
        if is_async_callable(fn):
            raise ConfigurationError(
                f"task {name!r}: process=True runs def functions; an async def one already "
                f"leaves the event loop free while it awaits"
            )
        qualname = getattr(fn, "__qualname__", "")
        if "<locals>" in qualname or not getattr(fn, "__module__", None):
            raise ConfigurationError(
                f"task {name!r}: process=True needs a function defined at module level, so "
                f"that its process can import it"
            )

    def registered(self, name: str) -> Task[Any, Any] | None:
        """The task registered under ``name``, or None."""
        return self._tasks.get(name)

    # -- adding jobs outside a request -----------------------------------------

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
        if isinstance(func, Task):
            self.check_owner(func)
            record = self.new_stored(func, args, kwargs, run_at=utcnow(), after=None)
            if not record.durable:
                self._backlog.reserve_blocking(1)
            try:
                self.store.enqueue([record])
            except BaseException:
                if not record.durable:
                    self._backlog.release(1)
                raise
            self.offer(stored=True)
            return Job(record.id, record.name, self)
        local = new_local_job(func, args, kwargs)
        self.check_plain(local.name)
        self._backlog.reserve_blocking(1)
        self.adopt_local([local.record])
        self.submit_lane([local])
        return Job(local.record.id, local.record.name, self, local.record)

    # -- looking at jobs --------------------------------------------------------

    def get(self, id: str) -> JobRecord | None:
        """A snapshot of the job with this id, or None if it is not known."""
        local = self._local.get(id)
        if local is not None:
            return local.copy()
        return self.store.get(id)

    def jobs(self, status: JobStatus | None = None, limit: int = 100) -> list[JobRecord]:
        """Recent jobs, newest first: stored ones and this process's plain ones."""
        with self._local_lock:
            local = [r.copy() for r in self._local.values() if status in (None, r.status)]
        merged = self.store.jobs(status, limit) + local
        merged.sort(key=lambda r: r.created_at, reverse=True)
        return merged[:limit]

    @property
    def backlog(self) -> int:
        """Jobs held in memory, accepted and not yet finished."""
        return self._backlog.size

    # -- running ----------------------------------------------------------------

    def lifespan(self, app: object = None) -> AbstractAsyncContextManager[None]:
        """Run this instance's worker while the app runs: ``FastAPI(lifespan=errands.lifespan)``.

        On shutdown it stops claiming, waits up to ``drain_timeout`` for running
        jobs, then cancels the rest (registered ones go back to the queue).
        Inside your own lifespan: ``async with errands.lifespan(app): yield``.
        """
        if not self.runs_worker:
            return nothing()
        return self._serving()

    def _serving(self, drain_timeout: float | None = None) -> AbstractAsyncContextManager[None]:
        return serving(self, drain_timeout)

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
        if concurrency is not None:
            _check_positive(concurrency=concurrency)
            self.concurrency = concurrency
        if self.celery is not None:
            argv = ["worker", f"--loglevel={log_level}"]
            if concurrency is not None:
                argv.append(f"--concurrency={concurrency}")
            code: int | None = self.celery.start([*argv, *celery_args])
            if code:
                raise SystemExit(code)  # a supervisor restarts a worker that failed
            return
        if celery_args:
            raise ConfigurationError(
                f"Celery worker options {list(celery_args)} given, but this instance does "
                f"not run on Celery ({self.url})"
            )
        if processes is not None:
            _check_positive(processes=processes)
            self.process_runner.processes = processes
        asyncio.run(run_until_signalled(self))

    @property
    def worker_running(self) -> bool:
        """Whether this instance's worker runs in this process."""
        return self._worker is not None

    async def join(self, timeout: float | None = None) -> None:
        """Wait until every job has finished: in memory, and queued or running in the store.

        With no worker running in this process, runs one on the current event loop
        until then: ``errands.add_task(...); await errands.join()`` runs the jobs of a
        script or a test.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._worker is not None:
            left = await self._wait_idle(deadline)
        else:
            # The temporary worker stops at once: join's timeout bounds the whole call.
            async with self._serving(drain_timeout=0):
                left = await self._wait_idle(deadline)
        if left:
            raise WaitTimeout(f"{left} jobs were still waiting or running after {timeout:g} s")

    def _unfinished(self) -> int:
        if not self.store.durable:
            return self._backlog.size
        return self._backlog.size + self.store.unfinished()

    async def _wait_idle(self, deadline: float | None) -> int:
        while left := await self.read(self._unfinished):
            if deadline is not None and time.monotonic() >= deadline:
                return left
            await anyio.sleep(0.005 if not self.store.durable else 0.02)
        return 0

    # -- what requests and workers call -----------------------------------------

    @property
    def runs_inline(self) -> bool:
        """Whether a request's jobs run in the request itself (no worker here, or eager)."""
        return self.eager or (self._worker is None and not self.store.durable)

    @property
    def celery(self) -> Celery | None:
        """The Celery app whose workers run this instance's registered tasks, if any."""
        store = self.store
        return store.app if not store.claims and hasattr(store, "app") else None

    def check_plain(self, name: str) -> None:
        """Refuse a plain callable (named ``name``) if ``only_registered``."""
        if self.only_registered:
            raise ConfigurationError(
                f"{name} is not a registered task, and this Errands instance runs only "
                f"registered ones (only_registered=True): register it with @errands.task, "
                f"or add it to another instance"
            )

    def check_owner(self, task: Task[Any, Any]) -> None:
        if task.errands is not self:
            raise ConfigurationError(
                f"task {task.name!r} is registered on another Errands instance "
                f"({task.errands!r}); add it there, or with tasks.add_task()"
            )

    def new_stored(
        self,
        task: Task[Any, Any],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        run_at: Any,
        after: str | None,
    ) -> JobRecord:
        """A record for a registered task's job; checks the arguments first."""
        args = tuple(args)
        size = plain_size(args, kwargs)
        if size is not None and size <= self.max_payload and task.accepts(args, kwargs):
            json_args, json_kwargs = list(args), dict(kwargs)  # as JSON would give them back
        else:
            payload = encode_arguments(task.name, task.signature, args, kwargs)
            # len(str) <= bytes: only text that may be too large is encoded to measure it.
            if len(payload) > self.max_payload and (
                (size := len(payload.encode())) > self.max_payload
            ):
                raise PayloadTooLarge(
                    f"task {task.name!r}: its arguments are {size:,} bytes as "
                    f"JSON, over max_payload={self.max_payload:,}; store large data elsewhere "
                    f"(a file, a table) and pass a reference to it"
                )
            json_args, json_kwargs = decode_arguments(payload)
        return JobRecord(
            id=new_job_id(),
            name=task.name,
            args=json_args,
            kwargs=json_kwargs,
            max_attempts=task.policy.max_attempts,
            run_at=run_at,
            durable=self.store.durable,
            after=after,
        )

    async def run_inline(self, record: JobRecord) -> None:
        """Run a stored job here and now, retries included (the eager path)."""
        owner = f"inline-{new_job_id()[-12:]}"
        while True:
            claimed = self.store.claim(owner, 1, self.lease, ids=[record.id])
            if not claimed:
                # Cancelled meanwhile, or a worker has it; if it is still waiting (its
                # predecessor went to a worker), let the workers have it rather than
                # leave it held.
                self.store.release([record.id])
                self.offer(stored=True)
                return
            retry_at = await self.runner.run_stored(self, claimed[0], hold_retries=True)
            if retry_at is None:
                return
            await anyio.sleep(max(0.0, (retry_at - utcnow()).total_seconds()))


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ConfigurationError(f"{name} must be > 0, got {value!r}")


def _check_not_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ConfigurationError(f"{name} must be >= 0, got {value!r}")
