"""Celery mode: errands' own, unfinished states of jobs in Celery's result backend
(``PENDING`` when published, ``STARTED`` when an attempt starts), written without
waiting for them.

On a Redis result backend the writes leave at once on a connection of the thread's
own, pipelined, and their replies are read when the caller settles them: their round
trip overlaps the work in between (the publish, the task). Elsewhere they are written
before returning.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery
from celery.backends.redis import RedisBackend

from ._results import FINAL, SET_UNLESS_FINAL, expires_args, meta

logger = logging.getLogger("errands")


class States:
    """Writing jobs' unfinished states to an app's result backend (``Publisher``'s)."""

    app: Celery
    publish_timeout: float

    def __init__(self) -> None:
        self._sha: str | None = None  # of the unless-final script, once loaded
        self._local = threading.local()

    def _connection(self, backend: RedisBackend) -> Any:
        """This thread's own connection to the Redis result backend (the pool's
        checkout costs more than the write). Each ``begin_states`` is settled before
        the same thread writes again, so its replies never mix with the next ones'."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # first use in this process
            pool = backend.client.connection_pool
            local.pid, local.connection = (
                os.getpid(),
                pool.connection_class(**pool.connection_kwargs),
            )
        return local.connection

    def _read(self, connection: Any, replies: int) -> None:
        """Read ``replies`` replies, in ``publish_timeout`` at most."""
        deadline = time.monotonic() + self.publish_timeout
        for _ in range(replies):
            if not connection.can_read(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"no answer in {self.publish_timeout:g} s")
            connection.read_response()

    def _script(self, connection: Any) -> tuple[str, ...]:
        """``EVALSHA`` of the unless-final script (loaded once a process), or ``EVAL``."""
        if self._sha is None:
            try:
                connection.send_command("SCRIPT", "LOAD", SET_UNLESS_FINAL)
                sha = connection.read_response()
                self._sha = sha.decode() if isinstance(sha, bytes) else str(sha)
            except Exception:
                return ("EVAL", SET_UNLESS_FINAL)
        return ("EVALSHA", self._sha)

    def begin_states(
        self,
        entries: Sequence[tuple[str, str, dict[str, Any]]],
        *,
        only_new: bool = False,
        unless_final: bool = False,
    ) -> Callable[[bool], None]:
        """Write errands' own, unfinished states of jobs (``PENDING`` when published,
        ``STARTED`` when an attempt starts): ``(id, state, errands' fields)`` each.
        ``only_new``: only where nothing is stored yet; ``unless_final``: not over a
        final state (a job delivered again after it finished stays finished).

        Returns what settles them: call it with True once the work they describe is
        under way, or False to take them back (calls after the first do nothing). On
        Redis the writes leave at once and their replies are read when settled, so
        their round trip overlaps the work in between (the publish, the task);
        elsewhere they are written before returning.
        Unlike ``store_result`` this does not read the old state first nor wake
        result waiters: no waiter wants an unfinished state.
        """
        backend = self.app.backend
        ids = [id for id, _, _ in entries]
        if not isinstance(backend, RedisBackend):
            for id, state, ours in entries:
                if unless_final and backend.get_task_meta(id).get("status") in FINAL:
                    continue
                backend.store_result(id, {"errands": ours}, state)

            def settle(keep: bool) -> None:
                if not keep:
                    for id in ids:
                        backend.forget(id)

            return settle
        connection = self._connection(backend)
        keys = [backend.get_key_for_task(id) for id in ids]
        expires = expires_args(getattr(backend, "expires", None))
        encode = encoder(backend)
        values = [encode(meta(id, state, ours)) for id, state, ours in entries]
        if unless_final:
            ttl = expires[1] if expires else 0
            script = self._script(connection)
            commands = [
                (*script, 1, key, value, ttl) for key, value in zip(keys, values, strict=True)
            ]
        else:
            tail = (*expires, *(("NX",) if only_new else ()))
            commands = [("SET", key, value, *tail) for key, value in zip(keys, values, strict=True)]
        try:
            connection.send_packed_command(connection.pack_commands(commands))
        except BaseException:
            connection.disconnect()
            raise
        settled = False

        def read(keep: bool) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            try:
                self._read(connection, len(commands))
                if not keep:
                    connection.send_command("DEL", *keys)
                    connection.read_response()
            except BaseException as exc:
                connection.disconnect()  # replies may be left unread on it
                if not isinstance(exc, Exception):
                    raise
                if "NOSCRIPT" in str(exc):
                    self._sha = None  # the server restarted: load it again next time
                # The work goes on; only the state that says so is missing.
                logger.error("recording the state of jobs %s failed: %s", ids, exc)

        return read


def encoder(backend: RedisBackend) -> Callable[[Any], Any]:
    """How the result backend's values are written: JSON results (the default) with
    the standard library (kombu's encoder costs several times more, for the same text),
    others with the backend's own serializer."""
    return json.dumps if getattr(backend, "serializer", None) == "json" else backend.encode
