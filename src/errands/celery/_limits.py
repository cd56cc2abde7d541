"""Celery mode, the worker side of task limits (``@errands.task(concurrency=,
rate=)``): Celery's own ``rate_limit`` is per worker, so errands keeps the limits in
the Redis result backend, the same for every worker.

Before an attempt starts, one Lua script takes a slot of the task's ``concurrency``
(a sorted set of the jobs running it, each with the time its slot lapses, renewed
while it runs: a worker that dies gives its slot back a ``lease`` later) and a token
of its bucket (refilled at the rate, holding a tenth of a second's worth). A job
that gets neither is published again, unchanged and without counting an attempt,
to come back after a pause that grows with each time it was held back (up to two
seconds, jittered), and its message is acknowledged: it takes no worker slot while it
waits. Held-back jobs therefore lose their place in the queue (their FIFO and
priority order): the limits are kept, not the order.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from celery.backends.redis import RedisBackend

from .._tuning import CELERY_HELD_MAX_PAUSE, CELERY_HELD_PAUSE
from ..exceptions import ConfigurationError

if TYPE_CHECKING:
    import celery

    from .._limits import Limit
    from .._task import Task
    from ._publish import Publisher

#: How many times a job was held back by its task's limits (a stamp).
HELD = "errands_held"

#: KEYS: the running set, the bucket. ARGV: job id, now, when the slot lapses,
#: concurrency (0: none), rate a second (0: none), burst. Returns "0" when taken, "-1"
#: when every slot is taken, or the seconds until a token comes.
_ACQUIRE = """
local now = tonumber(ARGV[2])
local concurrency = tonumber(ARGV[4])
local rate = tonumber(ARGV[5])
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if not redis.call('ZSCORE', KEYS[1], ARGV[1])
      and redis.call('ZCARD', KEYS[1]) >= concurrency then
    return '-1'
  end
end
if rate > 0 then
  local burst = tonumber(ARGV[6])
  local bucket = redis.call('HMGET', KEYS[2], 'tokens', 'updated')
  local tokens = tonumber(bucket[1]) or burst
  local updated = tonumber(bucket[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
  if tokens < 1 then
    return tostring((1 - tokens) / rate)
  end
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - 1), 'updated', ARGV[2])
  redis.call('EXPIRE', KEYS[2], 86400)
end
if concurrency > 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('EXPIRE', KEYS[1], 86400)
end
return '0'
"""


def check(store: Publisher, task: Task[Any, Any]) -> None:
    """Refuse limits that this app's result backend cannot keep."""
    if task.limit is not None and not isinstance(store.app.backend, RedisBackend):
        raise ConfigurationError(
            f"task {task.name!r}: concurrency= and rate= need a Redis result backend in "
            f"Celery mode (errands keeps them there, for every worker); this app's is "
            f"{type(store.app.backend).__name__}"
        )


def running_key(name: str) -> str:
    return f"errands-running-{name}"


def acquire(store: Publisher, task: Task[Any, Any], id: str, lease: float) -> float | None:
    """Take a slot and a token for job ``id``: None if taken, else how long to wait
    (roughly) before trying again."""
    limit: Limit | None = task.limit
    assert limit is not None
    backend = store.app.backend
    assert isinstance(backend, RedisBackend)
    now = time.time()
    answer = backend.client.eval(
        _ACQUIRE,
        2,
        running_key(task.name),
        f"errands-bucket-{task.name}",
        id,
        repr(now),
        repr(now + lease),
        limit.concurrency or 0,
        repr(limit.rate or 0),
        repr(limit.burst if limit.rate else 0),
    )
    wait = float(answer.decode() if isinstance(answer, bytes) else answer)
    if wait == 0:
        return None
    return wait if wait > 0 else 0.0


def release(store: Publisher, task: Task[Any, Any], id: str) -> None:
    if task.limit is not None and task.limit.concurrency:
        backend = store.app.backend
        assert isinstance(backend, RedisBackend)
        backend.client.zrem(running_key(task.name), id)


def hold(ctask: celery.Task[Any, Any], wait: float) -> None:
    """Publish the job again, unchanged, to come back later (see the module's
    docstring); the caller then ends this delivery with ``Ignore``."""
    request = ctask.request
    stamps = dict(getattr(request, "stamps", None) or {})
    held = stamps.get(HELD)
    held = held + 1 if isinstance(held, int) else 1
    stamps[HELD] = held
    request.stamps = stamps
    request.stamped_headers = list(stamps)
    pause = min(CELERY_HELD_MAX_PAUSE, max(wait, CELERY_HELD_PAUSE * 2 ** min(held, 8)))
    countdown = pause * random.uniform(0.5, 1.5)
    again = ctask.signature_from_request(request, countdown=countdown, retries=request.retries)
    again.apply_async()
