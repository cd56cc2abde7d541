"""The Backend: the one interface between an Errands instance and its mode.

A mode is one folder that implements it (``errands/celery/``), or one ``Store`` for
the local backend that memory, SQLite (and any store after them) share
(``errands/local/``). The request hook, ``Errands``, the worker in this process and
the command line talk to a backend only through these methods::

    add_task in a request ──► commit (endpoint returned) ──► release (response sent)
                                  └─ cancel (the request failed after all)
    errands.add_task ───────► add
    this process's worker ──► source (what it claims; None when others deliver)
    eager / no worker ──────► run_here
    errands.get / jobs / stats / join ──► get, jobs, stats, unfinished
    errands worker ─────────► run_worker

How an attempt runs is not the backend's business: every mode calls ``_attempt``
and records its ``Outcome`` in its own way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ._record import JobRecord, JobStatus
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._core import Core
    from ._stats import Stats
    from ._task import Task
    from ._worker import Worker


class Source(Protocol):
    """Where this process's worker gets stored jobs: it is offered free slots and
    starts jobs in them (``Worker.start``)."""

    #: How long an idle worker sleeps before offering slots again.
    poll_interval: float

    def fill(self, free: int, *, batch: bool) -> None:
        """Offer ``free`` slots; with ``batch``, only worth a claim if there are
        enough of them (a finished job frees one slot at a time)."""

    def wanted(self) -> None:
        """New work may be claimable now (jobs were released or added here)."""


class Backend(ABC):
    #: Whether jobs survive this process (records say ``durable``).
    durable: bool
    #: Whether reads wait on the network: then they leave the event loop.
    remote_reads: bool = False
    #: Where jobs go, for logs and ``errands.url`` (no password).
    url: str
    #: Where they are kept, for the log lines at start: a file's absolute path, a
    #: broker's address (no password), or ``memory``.
    location: str
    #: How long a finished job (and so its id) is kept, in seconds, where the mode
    #: decides it (Celery: ``result_expires``); None: the instance's ``retention``.
    keeps_finished: float | None = None

    # -- tasks --------------------------------------------------------------------

    def register(self, task: Task[Any, Any]) -> None:  # noqa: B027 (optional)
        """A task was registered on the instance (Celery makes it a Celery task)."""

    # -- adding jobs ----------------------------------------------------------------

    @abstractmethod
    def add(self, records: Sequence[JobRecord], *, chosen: Collection[str] = ()) -> list[JobRecord]:
        """Add jobs now, runnable at once (outside a request; any thread). Returns the
        records not added because a job with their id is kept. ``chosen``: the ids
        that callers chose (``job_id``); others are new ids, which no job has yet."""

    @abstractmethod
    async def commit(
        self, records: Sequence[JobRecord], *, chosen: Collection[str] = ()
    ) -> list[JobRecord]:
        """Keep a request's jobs before its response leaves, in order (each record's
        ``after`` names the one before it). Raises ``StoreError`` if they could not
        be kept: then nothing of them is. Returns, as ``add``, the records not added
        because a job with their id is kept: those are not this request's to
        release or cancel."""

    @abstractmethod
    async def release(self, ids: Sequence[str]) -> None:
        """The request's response has been sent in full: its jobs may run."""

    @abstractmethod
    async def cancel(self, ids: Sequence[str], reason: str) -> list[str]:
        """Cancel the jobs that are still queued (a request failed after its jobs were
        committed: none of them runs); returns the ids cancelled."""

    # -- acting on jobs ---------------------------------------------------------------

    @abstractmethod
    def cancel_job(self, id: str) -> JobRecord | None:
        """``errands.cancel``: a queued job is cancelled; a running one is asked to stop
        (it ends cancelled when its attempt does); a finished one is left alone.
        The job's record after, or None for an unknown id. Any thread."""

    @abstractmethod
    def retry_job(self, id: str, max_attempts: int) -> JobRecord | None:
        """``errands.retry``: a failed or cancelled job is queued again for up to
        ``max_attempts`` attempts in all; others are left alone. The record after,
        or None for an unknown id. Any thread."""

    # -- reading ----------------------------------------------------------------------

    @abstractmethod
    def get(self, id: str) -> JobRecord | None: ...

    @abstractmethod
    def jobs(
        self, status: JobStatus | None, limit: int, task: str | None = None, offset: int = 0
    ) -> list[JobRecord]: ...

    @abstractmethod
    def purge(
        self,
        before: datetime,
        statuses: Collection[JobStatus] | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        """Delete finished jobs (of ``statuses``, all final ones by default) that
        finished before ``before``; how many. Never a queued or running job.
        ``progress`` is told how many so far (a bar on a terminal)."""

    @abstractmethod
    def unfinished(self) -> int:
        """How many of the jobs ``join`` waits for are queued or running."""

    @abstractmethod
    def stats(self) -> Stats: ...

    # -- running ----------------------------------------------------------------------

    def source(self, worker: Worker) -> Source | None:
        """What ``worker`` (this process's) claims jobs from; None when another
        system delivers the registered jobs (it then runs plain callables only)."""
        return None

    async def started(self, worker: Worker) -> None:  # noqa: B027 (optional)
        """This process's worker has started (on the running event loop)."""

    async def stopped(self) -> None:  # noqa: B027 (optional)
        """This process's worker has stopped, or its app that ran none: finish what it
        left (on its loop)."""

    def check_eager(self) -> None:  # noqa: B027 (optional)
        """Refuse ``eager=True`` if the mode cannot run jobs in the request."""

    async def run_here(self, record: JobRecord) -> None:
        """Run a committed job in this request, now, retries included (eager)."""
        raise ConfigurationError(f"{self.url} cannot run jobs in the request")

    @abstractmethod
    def run_worker(
        self, core: Core, *, concurrency: int | None, extra: Sequence[str], log_level: str
    ) -> None:
        """Run a worker in this process until SIGINT or SIGTERM (``errands worker``)."""
