"""The handle ``add_task`` returns: a job's id, and a way to look at it or wait for it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio

from ._record import JobRecord, JobStatus
from ._tuning import WAIT_POLL
from ._waiters import WAITERS
from .exceptions import ErrandsError, WaitTimeout

if TYPE_CHECKING:
    from ._core import Core

R = TypeVar("R")


class Job(Generic[R]):
    """A job added with ``add_task``. ``R`` is the task's return type.

    ``id`` is a string, stable across processes: hand it to a client and look the job
    up later with ``errands.get(id)``.
    """

    __slots__ = ("_core", "_local", "created", "id", "name")

    def __init__(
        self,
        id: str,
        name: str,
        core: Core | None,
        local: JobRecord | None = None,
        *,
        created: bool = True,
    ) -> None:
        self.id = id
        self.name = name
        self._core = core
        self._local = local
        #: False when a job with this id (``task.options(job_id=...)``) was already
        #: kept: this call added nothing, and the handle is that job's. In a request,
        #: decided when ``add_task`` is called, and made sure when the endpoint
        #: returns (a request racing with the same id may have stored it meanwhile).
        self.created = created

    @property
    def durable(self) -> bool:
        """Whether the job survives this process (registered, on a durable store)."""
        return self._local is None and self._core is not None and self._core.backend.durable

    def info(self) -> JobRecord | None:
        """A snapshot of the job's record, or None if it is not (or no longer) known.

        A job added by an endpoint that then raised was never stored: None.
        """
        if self._local is not None:
            return self._local.copy()
        assert self._core is not None
        return self._core.backend.get(self.id)

    @property
    def status(self) -> JobStatus | None:
        record = self.info()
        return record.status if record is not None else None

    async def wait(self, timeout: float | None = None) -> JobRecord:
        """Wait until the job has finished (succeeded, failed or cancelled); its record.

        Raises ``WaitTimeout`` after ``timeout`` seconds; the job itself goes on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            finished = WAITERS.subscribe(self.id)
            try:
                core = self._core
                record = await core.read(self.info) if core is not None else self.info()
                if record is None:
                    raise ErrandsError(
                        f"job {self.id} is not known: not stored (yet: a request's jobs are "
                        f"stored when its endpoint returns), or purged"
                    )
                if record.finished:
                    return record
                pause = WAIT_POLL
                if deadline is not None:
                    pause = min(pause, deadline - time.monotonic())
                    if pause <= 0:
                        raise WaitTimeout(
                            f"job {self.id} ({self.name}) is still {record.status.value} "
                            f"after {timeout:g} s"
                        )
                with anyio.move_on_after(pause):
                    await finished
            finally:
                WAITERS.unsubscribe(self.id, finished)

    async def cancel(self) -> JobRecord | None:
        """Cancel the job (``errands.cancel``, off the event loop); its record after."""
        core = self._core
        if core is None:  # a plain job of a request with no Errands instance around
            return self.info()
        return await anyio.to_thread.run_sync(core.cancel, self.id)

    def __repr__(self) -> str:
        return f"<Job {self.name} id={self.id}>"
