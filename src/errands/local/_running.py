"""Running the local backend's claimed jobs: an attempt with its lease renewed
meanwhile, then the record of its outcome, the write tried again (keeping the job's
lease, never running the task again) should the store refuse it for a while; and a
job run in its own request (eager mode)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .._attempt import Outcome, attempt, log_outcome, round_failures
from .._cancel import CANCELLED_RUNNING, Stop
from .._metrics import outcome_of
from .._options import Runtime
from .._record import JobRecord, JobStatus, utcnow
from .._tracing import attempt_span, ended
from ..exceptions import StoreError
from ._claims import Backoff, next_delay
from ._outcomes import unrecordable, write_for
from ._store import Merging, Success

if TYPE_CHECKING:
    from ._backend import LocalBackend

logger = logging.getLogger("errands")


class Runner:
    def __init__(self, backend: LocalBackend, runtime: Runtime) -> None:
        self._backend = backend
        self._options = runtime.options
        self._metrics = runtime.metrics
        self._tracing = runtime.tracing
        self._recording = Backoff("recording job outcomes")

    async def run(self, job: JobRecord) -> float | None:
        """Run a claimed job's attempt and record it; when a retry is due
        (``time.monotonic()``), if there is one."""
        outcome = await self._attempt(job)
        return await self._record(job, outcome)

    async def _attempt(self, job: JobRecord) -> Outcome:
        """One attempt of a claimed job, its lease renewed meanwhile; given back (not
        counted) if it is cancelled, unless ``errands.cancel`` cancelled it."""
        backend = self._backend
        task = backend.tasks[job.name]  # claims take only registered names
        liveness = backend.liveness()
        stop = Stop()
        # A def attempt cannot be interrupted: it is only told (cancel_requested()).
        current = asyncio.current_task()
        if task.kind != "thread" and current is not None:
            stop.interrupt = functools.partial(current.cancel, "errands.cancel")
        liveness.track(job, stop)
        try:
            running = attempt(
                backend.calls,
                task,
                job.args,
                job.kwargs,
                failures=round_failures(job, task),
                max_result=self._options.max_result,
                stop=stop,
                job=(job.id, job.attempts),
            )
            if job.traceparent is None:  # (no span to open: the common case, at no cost)
                outcome = await running
            else:
                provider = self._tracing.provider
                with attempt_span(
                    job.traceparent, job.name, job.id, job.attempts, provider
                ) as span:
                    outcome = await running
                    ended(span, outcome)
        except asyncio.CancelledError:
            liveness.untrack(job)
            current = asyncio.current_task()
            if not stop.requested or current is None or current.cancelling() > 1:
                backend.give_back(job)  # a shutdown: not the job's own end
                raise
            current.uncancel()
            outcome = Outcome(JobStatus.CANCELLED, error=CANCELLED_RUNNING)
        # Over: a cancel from now on must not interrupt the write of its outcome (the
        # store ends the job cancelled all the same).
        stop.interrupt = None
        log_outcome(job.id, task, job.attempts, outcome)
        if self._metrics.counting is not None:
            # Waited: from when it was due (released, its delay or its retry's time).
            started, due = job.started_at, job.run_at or job.created_at
            waited = None if started is None else (started - due).total_seconds()
            self._metrics.attempted(task.name, outcome_of(outcome), waited, outcome.seconds)
        return outcome

    async def _record(
        self, job: JobRecord, outcome: Outcome, *, retry_at: datetime | None = None
    ) -> float | None:
        """Record ``outcome``; tried again while the store refuses (the lease kept
        meanwhile), never by running the task again. A retry is due ``retry_at``
        (default: after the outcome's backoff); returns when, as ``time.monotonic()``.

        Cancelled meanwhile (a shutdown), the job keeps its last state: running, until
        its lease runs out and another worker runs it again.
        """
        backend = self._backend
        liveness = backend.liveness()
        delay = 0.0
        fell_back = False
        kept: JobStatus | None = None
        while True:
            write = write_for(backend.store, backend.durable, job, outcome, retry_at)
            # The attempt is over: no renewal may race the write that records it (it
            # would read the job as lost).
            liveness.untrack(job)
            try:
                if isinstance(write, Success):
                    await asyncio.shield(backend.group().submit_bulk(self._merged, [write]))
                    kept = write.status
                elif not backend.durable:  # (self.write, without its coroutine)
                    kept = write()
                else:
                    kept = await backend.group().write(write)
            except StoreError as exc:
                liveness.track(job)
                delay = next_delay(delay)
                self._recording.note(exc, delay)
                await asyncio.sleep(delay)
                continue
            except Exception as exc:  # the store cannot take this outcome: fail the job
                logger.exception("recording the outcome of job %s failed", job.id)
                if fell_back:
                    return None  # not even that: its lease runs out, and it runs again
                fell_back = True
                outcome = unrecordable(outcome, exc)
                continue
            break
        if delay:
            self._recording.succeeded()
        if kept is JobStatus.QUEUED:
            assert outcome.retry_in is not None
            return time.monotonic() + outcome.retry_in
        if kept is not None and kept.finished:
            backend.finished(job.id)
        return None

    def _merged(self, successes: Sequence[Success]) -> None:
        backend = self._backend
        assert isinstance(backend.store, Merging)
        backend.store.complete_all(successes)

    async def run_here(self, record: JobRecord) -> None:
        backend = self._backend
        owner = f"{backend.process_id}-eager"
        while True:
            try:
                claimed = await backend.write(
                    functools.partial(backend.store.claim_ids, owner, backend.lease, [record.id])
                )
            except StoreError as exc:
                logger.error("running job %s in the request failed: %s", record.id, exc)
                return  # it stays in the store: a worker runs it
            if not claimed:
                # Cancelled meanwhile, or a worker has it; if it is still waiting (its
                # predecessor went to a worker), let the workers have it.
                await backend.release([record.id])
                return
            job = claimed[0]
            outcome = await self._attempt(job)
            if outcome.status is not JobStatus.QUEUED:
                await self._record(job, outcome)
                return
            # This request waits out the backoff itself; should this process die
            # meanwhile, any worker retries the job after the hold.
            assert outcome.retry_in is not None
            hold = timedelta(seconds=outcome.retry_in + self._options.hold)
            await self._record(job, outcome, retry_at=utcnow() + hold)
            await asyncio.sleep(outcome.retry_in)
