"""The Store protocol: where jobs wait, and who may run them.

A store keeps job records and hands them to workers. It knows nothing about
functions: a worker finds the function by the job's registered name. Every method
is synchronous and must be safe to call from any thread; each is one short step
(one transaction in a database store). Records handed out are copies; records
handed to ``enqueue`` belong to the store from then on.

The life of a job, as the store sees it::

    enqueue ──► queued ──claim──► running ──complete──► succeeded
      (held until      ▲             │ ──fail───────► failed
       release)        └──retry──────┘ ──requeue────► queued (not the task's fault)
    queued ──cancel──► cancelled

A job is claimable when it is queued, its ``run_at`` has come, and the job named by
its ``after`` (the one added before it in the same request) has finished. A running
job whose lease has expired (its worker died) is claimable again, as a new attempt
that does not count against the task's retries (``lost`` counts them); after
``MAX_LOST_LEASES`` such losses the job is failed as a poison job instead.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Protocol

from .._record import JobRecord, JobStatus

#: A job whose worker died this many times is failed, not offered to another worker.
MAX_LOST_LEASES = 5


def poison_error(lost: int) -> str:
    return f"PoisonJob: its worker died (lease lost) {lost} times while running it; not run again"


class Store(Protocol):
    #: Whether jobs survive this process. False for the memory store: its jobs count
    #: against the in-memory backlog and its records are marked ``durable=False``.
    durable: bool

    #: Whether this process's worker claims the store's jobs. False when another
    #: system's workers run them (Celery): the store only publishes and reports.
    claims: bool

    def enqueue(self, jobs: Sequence[JobRecord]) -> None:
        """Add new jobs. Jobs with ``run_at=None`` are held until ``release``."""

    def release(self, ids: Collection[str]) -> None:
        """Make held jobs runnable now (their request's response has been sent)."""

    def cancel(self, ids: Collection[str], reason: str) -> list[str]:
        """Cancel the given jobs that are still queued; returns the ids cancelled."""

    def claim(
        self, owner: str, limit: int, lease: float, ids: Collection[str] | None = None
    ) -> list[JobRecord]:
        """Take up to ``limit`` claimable jobs for ``owner`` for ``lease`` seconds.

        Claiming marks a job running and counts an attempt. With ``ids``, only those
        jobs are considered, and a held or not-yet-due job among them is taken too
        (this is how a request runs its own jobs eagerly).
        """

    def heartbeat(self, jobs: Sequence[JobRecord], lease: float) -> list[str]:
        """Extend the leases of running jobs; returns the ids whose lease was lost."""

    def complete(self, job: JobRecord, result: Any) -> bool:
        """Record a success. False if ``job``'s claim is no longer the current one."""

    def retry(self, job: JobRecord, error: str, traceback: str, run_at: datetime | None) -> bool:
        """Record a failed attempt that will be tried again at ``run_at`` (None: held)."""

    def fail(self, job: JobRecord, error: str, traceback: str | None) -> bool:
        """Record a final failure."""

    def requeue(self, job: JobRecord) -> bool:
        """Give a claimed job back (its worker is shutting down), runnable at once."""

    def purge(self, before: datetime) -> int:
        """Delete jobs that finished before ``before``; how many were deleted."""

    def get(self, id: str) -> JobRecord | None:
        """The job with this id, or None."""

    def jobs(self, status: JobStatus | None = None, limit: int = 100) -> list[JobRecord]:
        """Jobs, newest first, optionally only those with ``status``."""

    def counts(self) -> dict[JobStatus, int]:
        """How many jobs are in each status."""

    def unfinished(self) -> int:
        """How many jobs are queued or running (cheap: ``join`` polls it)."""

    def close(self) -> None:
        """Release the store's resources. Further calls are not allowed."""
