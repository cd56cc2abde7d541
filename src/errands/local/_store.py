"""The Store protocol: where the local backend's jobs wait, and who may run them.

A store keeps job records and hands them to workers. It knows nothing about
functions: a worker finds the function by the job's registered name, and claims
only the names it has registered. Every method is synchronous and must be safe
to call from any thread; each is one short step (one transaction in a database
store, or one savepoint of the transaction that ``batch`` opens). Records handed
out are copies; records handed to ``enqueue`` belong to the store from then on.

The life of a job, as the store sees it::

    enqueue ──► queued ──claim──► running ──complete──► succeeded
    (unreleased    ▲                │ ──fail───────► failed
     while it has  └──retry─────────┘ ──requeue────► queued (not the task's fault)
     an owner)
    queued ──cancel──► cancelled ──requeue_finished──► queued (errands.retry)
    running ──request_cancel──► running, to end cancelled (however its attempt ends)

A job is *claimable* when it is queued, its ``run_at`` has come, and the job named
by its ``after`` (the one added before it in the same request) has finished.

A request's jobs are *unreleased* until its response has been sent: they are
enqueued with ``owner`` set to the process that added them and ``run_at`` set to
when they may run should that process never release them (the ``hold``). They
become claimable at once by ``release``, or when their owner is gone: a process
that stops ``beat``-ing for longer than a lease is gone (``release_orphans``).

A running job whose lease has expired (its worker died) is claimable again, as a
new attempt that does not count against the task's retries (``lost`` counts them);
after ``MAX_LOST_LEASES`` such losses the job is failed as a poison job instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from .._limits import Limit
from .._record import JobRecord, JobStatus
from .._stats import Activity


def poison_error(lost: int) -> str:
    return f"PoisonJob: its worker died (lease lost) {lost} times while running it; not run again"


#: What a claim asks for: up to ``limit`` claimable jobs whose name is in ``names``.
Want = tuple[Collection[str], int]


@dataclass(slots=True)
class ProcessInfo:
    """A process that uses the store: a worker (it claims jobs), or a web process
    that only adds them. Kept by the store so that others can tell whether it lives."""

    id: str
    role: Literal["worker", "web"]
    host: str
    pid: int
    #: The task names a worker runs (empty for a web process).
    tasks: tuple[str, ...]
    started_at: datetime
    #: The last ``beat``; the process is gone once this is older than a lease.
    seen_at: datetime
    #: Set when the process stopped (cleanly) or was found gone.
    stopped_at: datetime | None = None


class Store(Protocol):
    #: Whether jobs survive this process. False for the memory store: its jobs count
    #: against the in-memory backlog and its records are marked ``durable=False``.
    durable: bool

    #: The task names of attempts found lost (their lease ran out, see the module's
    #: docstring), for the backend to count and take out.
    lost: deque[str]

    #: Where the jobs are kept, for logs and errors: an absolute path, or ``memory``.
    location: str

    # -- writing ----------------------------------------------------------------

    def batch(self) -> AbstractContextManager[None]:
        """One transaction around the writes this thread makes inside it (group
        commit); a write that fails inside it is undone alone."""

    def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        """Add new jobs (their ``owner`` set: unreleased, see the module's docstring).

        A job whose id is already kept (a caller-chosen id, ``task.options(job_id=)``,
        or the same id twice in ``jobs``) is not added: those are returned, the others
        added. Whatever is kept under that id, queued, running or finished, stands."""

    def release(self, ids: Collection[str]) -> None:
        """Make unreleased jobs claimable now (their request's response has been
        sent): ``run_at`` becomes now (or the job's ``scheduled_at``, if later), ``owner``
        None. Other jobs are left alone. Releasing a gone process's jobs does the same."""

    def cancel(self, ids: Collection[str], reason: str) -> list[str]:
        """Cancel the given jobs that are still queued; returns the ids cancelled."""

    def claim(
        self,
        owner: str,
        lease: float,
        wants: Sequence[Want],
        limit: int | None = None,
        limits: Mapping[str, Limit] | None = None,
    ) -> list[JobRecord]:
        """Take claimable jobs for ``owner`` for ``lease`` seconds: at most ``limit``
        in all (if given); for each ``(names, most)`` of ``wants`` in turn, up to ``most`` (and
        what is left of ``limit``) jobs whose name is in ``names``, highest priority
        first, then by due time, then in the order added. Wants may ask for more than
        ``limit`` together: the claim takes what is due (a worker offers each kind of
        task all it could run, and takes no more than it has room for).

        ``limits`` (by task name, see ``_limits``): no more of a name's jobs than its
        concurrency allows, counting those running anywhere on the store, and one
        token of its bucket, kept in the store, an attempt.

        Claiming marks a job running, sets its owner, lease and ``started_at``, and
        counts an attempt. Expired leases are dealt with first (see the module's
        docstring). A claim that finds nothing due should not take a write lock.
        """

    def claim_ids(self, owner: str, lease: float, ids: Collection[str]) -> list[JobRecord]:
        """Take these jobs if they are queued and not waiting for the job before
        them, due or not, released or not (a request running its own jobs eagerly)."""

    def renew(self, jobs: Sequence[JobRecord], lease: float) -> list[str]:
        """Extend the leases of running jobs; returns the ids whose claim was lost."""

    def complete(self, job: JobRecord, result: Any) -> JobStatus | None:
        """Record a success; the job's status after it (``CANCELLED`` if it was asked
        to stop meanwhile: see ``request_cancel``), or None if ``job``'s claim is no
        longer the current one (nothing is written then)."""

    def retry(
        self, job: JobRecord, error: str, traceback: str, run_at: datetime
    ) -> JobStatus | None:
        """Record a failed attempt that will be tried again at ``run_at``; as ``complete``."""

    def fail(self, job: JobRecord, error: str, traceback: str | None) -> JobStatus | None:
        """Record a final failure; as ``complete``."""

    def requeue(self, job: JobRecord) -> JobStatus | None:
        """Give a claimed job back (its worker is shutting down), runnable at once,
        without counting the attempt; as ``complete``."""

    def request_cancel(self, id: str) -> tuple[JobRecord | None, bool]:
        """``errands.cancel``: a queued job is cancelled at once (``CANCELLED_QUEUED``);
        a running one is marked (``cancel_requested_at``) and ends cancelled
        (``CANCELLED_RUNNING``) however its attempt ends, with no retry; a finished
        one is left as it is. The record after, or None for an unknown id, and
        whether it was cancelled by this call (it was queued)."""

    def cancelling(self, ids: Collection[str]) -> list[str]:
        """Of these jobs, those running and asked to stop (a cheap read)."""

    def requeue_finished(self, id: str, max_attempts: int) -> JobRecord | None:
        """``errands.retry``: a failed or cancelled job is queued again, due now, for
        up to ``max_attempts`` attempts in all (its ``attempts`` and last ``error``
        kept); any other job is left as it is. The record after, or None for an
        unknown id."""

    def purge(
        self,
        before: datetime,
        statuses: Collection[JobStatus] | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        """Delete jobs that finished before ``before`` (only those in ``statuses``, all
        three final ones by default); how many were deleted. Never a queued or running
        job. ``progress`` is told how many so far, as the deletion goes."""

    # -- processes --------------------------------------------------------------

    def beat(self, process: ProcessInfo) -> None:
        """Record that ``process`` lives: add it, or set its ``seen_at`` to now."""

    def stopped(self, id: str) -> None:
        """The process stopped cleanly: mark it, and release its unreleased jobs."""

    def release_orphans(self, seen_before: datetime) -> list[str]:
        """Processes not stopped and last seen before ``seen_before`` are gone: mark
        them stopped and release their unreleased jobs; returns their ids."""

    def processes(self) -> list[ProcessInfo]:
        """Every process the store knows, stopped ones included, latest first."""

    # -- reading ----------------------------------------------------------------

    def get(self, id: str) -> JobRecord | None:
        """The job with this id, or None."""

    def jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        name: str | None = None,
        offset: int = 0,
    ) -> list[JobRecord]:
        """Jobs, newest first (by when they were stored), optionally only those with
        ``status`` or of the task ``name``, skipping the ``offset`` newest. A row that
        cannot be read is listed as failed, with a ``CorruptJob`` error."""

    def activity(self, now: datetime) -> Activity:
        """The oldest queued job, jobs finished in the last 1, 5 and 15 minutes, and
        the run times of attempts that ended in the last hour, by task."""

    def counts(self) -> dict[JobStatus, int]:
        """How many jobs are in each status."""

    def counts_by_task(self) -> dict[str, dict[JobStatus, int]]:
        """How many jobs of each task name are in each status (statuses with none
        left out)."""

    def unfinished(self) -> int:
        """How many jobs are queued or running (cheap: ``join`` polls it)."""

    def close(self) -> None:
        """Release the store's resources. Further calls are not allowed."""


@runtime_checkable
class ClaimsNow(Protocol):
    """A durable store that can claim in the calling thread without waiting (the
    SQLite store: a claim there is a short local write). A worker whose event loop
    runs nothing else claims so when idle: no hop to the commit thread and back."""

    def claim_now(
        self,
        owner: str,
        lease: float,
        wants: Sequence[Want],
        limit: int | None = None,
        limits: Mapping[str, Limit] | None = None,
    ) -> list[JobRecord] | None:
        """``claim`` now, or None if another writer holds the store (never waits for
        it): the caller then claims through its commit thread."""


@runtime_checkable
class Announcing(Protocol):
    """A store that tells this process when other processes add claimable jobs (the
    PostgreSQL store, through LISTEN/NOTIFY; the SQLite store, through sockets beside
    its file): its worker polls less often."""

    #: How often a worker that listens still polls (seconds).
    poll_announced: float

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` whenever jobs may have become claimable (on the event loop
        that called this, or from a thread of the store's); returns the function that
        stops it, or None if it cannot listen here (the worker then polls as often as
        without)."""


@runtime_checkable
class Counting(Protocol):
    """A store only this process uses (the memory store) that counts the times it made
    jobs claimable (released, due again, unblocked): while the count stands, a job
    that ends here has made nothing claimable for its worker to ask for, but a slot
    of a limited task."""

    #: Goes up each time some job becomes claimable.
    changes: int


class Writer(Protocol):
    """One job to write with the caller's own connection, in the caller's transaction."""

    record: JobRecord

    def write(self, conn: object) -> bool:
        """Write it on ``conn`` (sync); whether it was added (not an id kept already)."""

    async def write_async(self, conn: object) -> bool:
        """Write it on ``conn`` (async); whether it was added."""


@runtime_checkable
class Transactional(Protocol):
    """A store whose jobs can be written in the caller's transaction (``add_task_in``:
    the PostgreSQL store, on the database of the caller's connection)."""

    def writer(self, record: JobRecord) -> Writer:
        """What writes ``record`` with a connection of the caller's."""


@dataclass(slots=True)
class Success:
    """A claimed job's attempt that succeeded, to record (``Merging.complete_all``). The
    store sets ``status`` as ``complete`` returns it."""

    job: JobRecord
    result: Any
    status: JobStatus | None = None


@runtime_checkable
class Merging(Protocol):
    """A store whose writes cost round trips more than statements (PostgreSQL): the
    successes recorded in one group commit go to it as one call, one statement."""

    def complete_all(self, successes: Sequence[Success]) -> None:
        """``complete`` each of ``successes``, in one write; sets each one's ``status``."""
