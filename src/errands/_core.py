"""The inside of one Errands instance: its settings, its registered tasks, its
backend, its plain jobs, and the worker running in this process.

``Errands`` is the small public face of it; the request hook (``Tasks``) and the
worker's lifecycle work with this object and, through it, the backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio

from ._attempt import Calls
from ._backlog import Backlog
from ._job import Job
from ._limits import Limit
from ._metrics import Metrics
from ._modes import open_backend, resolve_url
from ._options import Options, Runtime
from ._payload import decode_arguments, encode_arguments, plain_size
from ._plain import Lane, PlainJobs, new_plain_job
from ._policy import Policy
from ._process import ProcessRunner
from ._record import JobRecord, JobStatus, new_job_id, utcnow
from ._schedule import Schedule
from ._task import Task, callable_name, is_async_callable
from ._threads import Threads
from ._tracing import Tracing, traceparent
from .exceptions import ConfigurationError, ErrandsError, JobNotFound, PayloadTooLarge

if TYPE_CHECKING:
    from celery import Celery

    from ._backend import Backend
    from ._worker import Worker
    from .local._store import Writer

logger = logging.getLogger("errands")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Core:
    def __init__(
        self, options: Options, *, url: str | None, celery: Celery | None, eager: bool
    ) -> None:
        self.options = options
        self.tasks: dict[str, Task[Any, Any]] = {}
        #: The schedules of tasks (``@errands.cron``, ``@errands.every``).
        self.schedules: list[Schedule] = []
        self.backlog = Backlog(options.max_backlog, options.backlog_timeout)
        self.threads = Threads(options.threads)
        self.processes = ProcessRunner(options.processes)
        self.calls = Calls(self.threads, self.processes)
        self.metrics = Metrics(lambda: self.backend.stats())
        self.tracing = Tracing()
        self.plain = PlainJobs(self.backlog, self.metrics)
        runtime = Runtime(options, self.tasks, self.calls, self.backlog, self.metrics, self.tracing)
        if celery is not None:
            if url is not None:
                raise ConfigurationError(
                    f"give either a URL ({url!r}) or celery=, not both: celery= picks the store"
                )
            from .celery import backend_for_app

            self.backend: Backend = backend_for_app(celery, runtime)
        else:
            self.backend = open_backend(resolve_url(url), runtime)
        self._eager = False
        self.eager = eager
        #: This instance's worker, while it runs in this process.
        self.worker: Worker | None = None

    @property
    def eager(self) -> bool:
        return self._eager

    @eager.setter
    def eager(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ConfigurationError(f"eager must be True or False, got {value!r}")
        if value:
            self.backend.check_eager()
        self._eager = value

    # -- tasks --------------------------------------------------------------------------

    def register(
        self,
        fn: Callable[P, R],
        *,
        name: str | None,
        policy: Policy,
        process: bool,
        priority: int = 0,
        limit: Limit | None = None,
    ) -> Task[P, R]:
        if isinstance(fn, Task):
            raise ConfigurationError(f"{fn!r} is already a registered task")
        if not callable(fn):
            raise ConfigurationError(f"@errands.task needs a function, got {fn!r}")
        task_name = check_task_name(callable_name(fn) if name is None else name)
        if task_name in self.tasks:
            raise ConfigurationError(
                f"a task named {task_name!r} is already registered on this Errands "
                f"instance; give one of them another name with @errands.task(name=...)"
            )
        if process:
            check_process_task(fn, task_name)
        task = Task(
            fn,
            name=task_name,
            policy=policy,
            core=self,
            process=process,
            priority=priority,
            limit=limit,
        )
        self.backend.register(task)
        self.tasks[task_name] = task
        return task

    def check_owner(self, task: Task[Any, Any]) -> None:
        if task._core is not self:
            raise ConfigurationError(
                f"task {task.name!r} is registered on another Errands instance; add it "
                f"with that instance's add_task(), or with tasks.add_task() in a request"
            )

    def check_plain(self, name: str) -> None:
        """Refuse a plain callable (named ``name``) if ``only_registered``."""
        if self.options.only_registered:
            raise ConfigurationError(
                f"{name} is not a registered task, and this Errands instance runs only "
                f"registered ones (only_registered=True): register it with @errands.task, "
                f"or add it to another instance"
            )

    # -- jobs ---------------------------------------------------------------------------

    def new_record(
        self,
        task: Task[Any, Any],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        after: str | None = None,
        traced: bool = True,
    ) -> JobRecord:
        """A record for a registered task's job; checks the arguments first. ``traced``:
        it keeps the trace context it is added in (unless the request is excluded)."""
        args = tuple(args)
        limit = self.options.max_payload
        size = plain_size(args, kwargs)
        if size is not None and size <= limit and task.accepts(args, kwargs):
            json_args, json_kwargs = list(args), dict(kwargs)  # as JSON would give them back
        else:
            payload = encode_arguments(task.name, task.signature, args, kwargs)
            # len(str) <= bytes: only text that may be too large is encoded to measure it.
            if len(payload) > limit and (size := len(payload.encode())) > limit:
                raise PayloadTooLarge(
                    f"task {task.name!r}: its arguments are {size:,} bytes as JSON, over "
                    f"max_payload={limit:,}; store large data elsewhere (a file, a table) "
                    f"and pass a reference to it"
                )
            json_args, json_kwargs = decode_arguments(payload)
        record = JobRecord(
            id=task.job_id or new_job_id(),
            name=task.name,
            args=json_args,
            kwargs=json_kwargs,
            max_attempts=task.policy.max_attempts,
            durable=self.backend.durable,
            after=after,
            priority=task.priority,
        )
        if task.start is not None:  # in a request, a delay counts again from the commit
            record.scheduled_at = task.start.scheduled(record.created_at)
        if traced:
            record.traceparent = traceparent(record.id, task.name)
        return record

    def add_now(
        self, func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> Job[Any]:
        """Add a job outside a request: registered ones to the backend at once, plain
        ones to this process's worker."""
        if isinstance(func, Task):
            self.check_owner(func)
            record = self.new_record(func, args, kwargs)
            chosen = {record.id} if func.job_id is not None else set()
            kept = self.backend.add([record], chosen=chosen)
            if not kept and self.metrics.counting is not None:
                self.metrics.added([record.name])
            return Job(record.id, record.name, self, created=not kept)
        job = new_plain_job(func, args, kwargs)
        self.check_plain(job.name)
        self.backlog.reserve_blocking(1)
        self.plain.adopt([job])
        if self.metrics.counting is not None:
            self.metrics.added([job.name])
        self.hand_over(job)
        return Job(job.id, job.name, self, job)

    def transactional(self, func: object, args: Sequence[Any], kwargs: dict[str, Any]) -> Writer:
        """What ``add_task_in`` writes on the caller's connection: the record, made as
        ``add_now`` makes it, and the PostgreSQL store it goes to."""
        from .local._store import Transactional

        store = getattr(self.backend, "store", None)
        if not isinstance(store, Transactional):
            kind = type(store).__name__ if store is not None else "Celery"
            raise ConfigurationError(
                f"add_task_in writes the job in your transaction, so the job must live in "
                f"the database of that transaction: it needs an Errands instance on a "
                f"PostgreSQL URL (postgresql://...) of that database, and this one's store "
                f"is {kind}; use add_task there instead (not transactional)"
            )
        if not isinstance(func, Task):
            raise ConfigurationError(
                f"add_task_in adds registered tasks only (the job is a row of the store), "
                f"got {func!r}: register it with @errands.task"
            )
        self.check_owner(func)
        record = self.new_record(func, args, kwargs)
        record.run_at = record.due(utcnow())
        return store.writer(record)

    def purge(
        self,
        seconds: float,
        statuses: Sequence[JobStatus] | None,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        """Delete finished jobs older than ``seconds`` (checked by ``Errands.purge``)."""
        before = utcnow() - timedelta(seconds=seconds)
        return self.backend.purge(before, statuses, progress)

    def cancel(self, id: str) -> JobRecord | None:
        if not check_id(id):
            return None
        plain = self.plain.get(id)
        if plain is not None:
            return self.plain.cancel_by_id(id) or plain
        return self.backend.cancel_job(id)

    def retry(self, id: str) -> JobRecord:
        if not check_id(id):
            raise JobNotFound(f"no job {id!r}: no id holds a lone surrogate")
        if self.plain.get(id) is not None:
            raise ErrandsError(
                f"job {id} is a plain callable's, which lives only in this process and "
                f"cannot be run again; register the function with @errands.task"
            )
        record = self.backend.get(id)
        if record is None:
            raise JobNotFound(f"no job {id}: never added, dropped with its request, or purged")
        task = self.tasks.get(record.name)
        if record.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise ErrandsError(
                f"job {id} ({record.name}) is {record.status.value}: only a failed or "
                f"cancelled job can be retried"
            )
        # One more round of the task's attempts; where the task is not registered (a
        # command given a store URL), of the job's own allowance.
        round = task.policy.max_attempts if task is not None else max(1, record.max_attempts)
        again = self.backend.retry_job(id, record.failures + round)
        if again is None:
            raise JobNotFound(f"no job {id}: purged meanwhile")
        if again.status is not JobStatus.QUEUED:
            raise ErrandsError(
                f"job {id} ({again.name}) is {again.status.value}: it was retried or "
                f"changed meanwhile"
            )
        return again

    @property
    def runs_inline(self) -> bool:
        """Whether a request's jobs run in the request itself (no worker here, or eager)."""
        return self._eager or (self.worker is None and not self.backend.durable)

    def hand_over(self, lane: Lane) -> None:
        """Give a request's plain jobs to this process's worker."""
        self.plain.lanes.append(lane)
        worker = self.worker  # read once: the lifespan may end in another thread
        if worker is not None:
            worker.offer()

    async def read(self, call: Callable[[], T]) -> T:
        """A read of the backend: off the event loop when it waits on the network."""
        if not self.backend.remote_reads:
            return call()
        return await anyio.to_thread.run_sync(call)

    def unfinished(self) -> int:
        """Jobs ``join`` waits for: in memory (plain ones), and queued or running in the
        backend (for the memory store, its jobs are both: counted once)."""
        plain = self.backlog.size
        if not self.backend.durable:
            return plain
        return plain + self.backend.unfinished()


def check_id(id: object) -> bool:
    """Refuse what is no job id; False for a str no job can have (a lone surrogate,
    which no store can hold)."""
    if not isinstance(id, str) or not id:
        raise ValueError(f"a job id is a non-empty str (job.id), got {id!r}")
    if id.isascii():
        return True
    try:
        id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_task_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(
            f"a task name must be a non-empty str, got {name!r}: leave name= out to use "
            f"module.qualname"
        )
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigurationError(
                f"task name {name!r} is not valid text (it holds a lone surrogate); "
                f"give it a name of plain characters"
            ) from None
    return name


def check_process_task(fn: Callable[..., Any], name: str) -> None:
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
