"""Celery mode, the worker side of ``errands.cancel``: each worker process looks,
about once a second, for the cancel marks of the attempts it runs (one ``MGET`` on
the Redis result backend, only while it runs any), and tells their ``Stop``.

The publisher writes the mark (``_results.cancel_key``) whatever the job is doing:
a queued job is also revoked, and a worker that starts it before the revoke
reaches it (or that missed the revoke) still stops it here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from celery.backends.redis import RedisBackend
from celery.worker.control import control_command

from .._cancel import Stop
from .._tuning import CANCEL_POLL
from ._results import cancel_key

if TYPE_CHECKING:
    from ._publish import Publisher

logger = logging.getLogger("errands")


class Cancels:
    def __init__(self) -> None:
        self._reset()
        # A pool process starts afresh: its own lock, table and thread.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, tuple[Publisher, Stop]] = {}
        # Slots of task concurrency the running jobs hold: (sorted set, lease) each.
        self._slots: dict[str, tuple[str, float]] = {}
        self._marked: dict[str, str] = {}  # id -> when it was asked to stop
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._idle = True  # the thread waits for _wake (or is not started yet)

    def track(
        self, store: Publisher, id: str, stop: Stop, slot: tuple[str, float] | None = None
    ) -> None:
        """Look for ``id``'s mark until ``untrack``; meanwhile renew its ``slot`` of its
        task's concurrency (a sorted set, and how long a renewal lasts), if it holds one."""
        if not isinstance(store.app.backend, RedisBackend):
            return  # errands.cancel refuses running jobs there: nothing to look for
        with self._lock:
            self._running[id] = (store, stop)
            if slot is not None:
                self._slots[id] = slot
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="errands-cancels", daemon=True
                )
                self._thread.start()
            idle, self._idle = self._idle, False
        if idle:  # only then: while it looks every second by itself it needs no signal
            self._wake.set()

    def untrack(self, id: str) -> str | None:
        """Stop looking; when the job was asked to stop, if it was."""
        with self._lock:
            self._running.pop(id, None)
            self._slots.pop(id, None)
            return self._marked.pop(id, None)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                with self._lock:
                    running = dict(self._running)
                    if not running:
                        self._idle = True  # the next track wakes it
                        break
                self._look(running)
                # Not woken by the jobs that start meanwhile: they wait for the next
                # look, as the marks set meanwhile do (waking for each would cost a
                # round trip a job, as many as the jobs a second).
                time.sleep(CANCEL_POLL)

    def _look(self, running: dict[str, tuple[Publisher, Stop]]) -> None:
        by_store: dict[int, list[str]] = {}
        for job_id, (store, _) in running.items():
            by_store.setdefault(id(store), []).append(job_id)
        for ids in by_store.values():
            store = running[ids[0]][0]
            backend = store.app.backend
            assert isinstance(backend, RedisBackend)
            with self._lock:
                slots = [(job, *self._slots[job]) for job in ids if job in self._slots]
            try:
                pipe = backend.client.pipeline(transaction=False)
                pipe.mget([cancel_key(job) for job in ids])
                now = time.time()
                for job, key, lease in slots:  # still running: the slot is still ours
                    pipe.zadd(key, {job: now + lease}, xx=True)
                marks = pipe.execute()[0]
            except Exception as exc:  # the jobs run on; a later look may see the mark
                logger.error("looking for cancelled jobs failed: %s", exc)
                continue
            for job_id, mark in zip(ids, marks, strict=True):
                if not mark:
                    continue
                with self._lock:
                    if job_id not in self._running:
                        continue  # finished meanwhile
                    self._marked.setdefault(job_id, mark.decode())
                if running[job_id][1].request():
                    logger.info("job %s was asked to stop (errands.cancel)", job_id)


CANCELS = Cancels()


@control_command(args=[("ids", list)], signature="<id> [<id> ...]")
def errands_unrevoke(state: Any, ids: list[str], **kwargs: Any) -> dict[str, str]:
    """A Celery worker's control command: forget that these jobs were revoked.

    ``errands.retry`` publishes a cancelled job again under its id, and a worker
    that was told to revoke it would otherwise discard it again (Celery keeps
    revoked ids for hours); it asks every worker to forget them first.
    """
    from celery.worker import state as worker_state

    for id in ids:
        worker_state.revoked.discard(id)
    return {"ok": f"{len(ids)} job(s) may run again"}
