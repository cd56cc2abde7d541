"""Tasks for benchmarks/workers.py: one job, an INCR of a Redis key, for each system.

``build(system, prefix, tmp)`` makes one system's app, its task and a producer. A worker
process finds its app as ``benchmarks.workers_app:target`` (Huey:
``benchmarks.workers_app.target``), built on first access from the environment that
workers.py sets for the turn (``BENCH_SYSTEM``, ``BENCH_PREFIX``, ``BENCH_TMP``), so a
worker imports only its own system's library.

The counter is on Redis DB 14 (``BENCH_COUNTER_URL``), the Redis brokers on DB 15
(``BENCH_BROKER_URL``); every key a turn makes has its prefix in its name.
"""

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import redis

COUNTER_URL = os.environ.get("BENCH_COUNTER_URL", "redis://127.0.0.1:6379/14")
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/15")

SYSTEMS = (
    "errands-sqlite",
    "huey-redis",
    "huey-sqlite",
    "taskiq-redis",
    "dramatiq-redis",
    "celery-prefork",
    "celery-threads",
)


@cache
def counter() -> "redis.Redis":
    return redis.Redis.from_url(COUNTER_URL)


def incr(key: str) -> None:
    """The job: one INCR (redis-py, synchronous, one client per process)."""
    counter().incr(key)


def stamp(key: str) -> None:
    """The latency job: when it started (``time.time()``, its first step), pushed to a
    list the benchmark waits on."""
    started = time.time()
    counter().rpush(key, repr(started))


async def stamp_async(key: str) -> None:
    """The same as an ``async def`` (what a FastAPI app's tasks mostly are)."""
    started = time.time()
    counter().rpush(key, repr(started))


@dataclass
class Built:
    target: Any  # what the worker command is given
    produce: Callable[[str, int], None]  # add n jobs incrementing key, one at a time
    close: Callable[[], None] = field(default=lambda: None)
    #: add one latency job (``stamp``) pushing to key; with "async", its async form
    add_stamp: Callable[[str, bool], None] = field(default=lambda key, kind: None)


def _errands(prefix: str, tmp: str) -> Built:
    from errands import Errands

    errands = Errands(f"sqlite:///{tmp}/jobs.db")
    task = errands.task(name="incr")(incr)
    stamps = {
        False: errands.task(name="stamp")(stamp),
        True: errands.task(name="astamp")(stamp_async),
    }

    def produce(key: str, n: int) -> None:
        for _ in range(n):
            errands.add_task(task, key)

    def close() -> None:
        errands._core.backend.store.close()

    return Built(errands, produce, close, lambda key, a: errands.add_task(stamps[a], key))


def _huey(kind: str, prefix: str, tmp: str) -> Built:
    from huey import RedisHuey, SqliteHuey

    if kind == "redis":
        huey: Any = RedisHuey(name=prefix, url=BROKER_URL, results=False)
    else:
        huey = SqliteHuey(name=prefix, filename=f"{tmp}/huey.db", results=False)
    task = huey.task(name="incr")(incr)
    stamped = huey.task(name="stamp")(stamp)

    def produce(key: str, n: int) -> None:
        for _ in range(n):
            task(key)

    def close() -> None:
        if kind == "sqlite":
            huey.storage.close()  # the producer's connection (absent in older Huey)

    return Built(huey, produce, close, lambda key, _: stamped(key))


def _taskiq(prefix: str, tmp: str) -> Built:
    from taskiq_redis import ListQueueBroker

    broker = ListQueueBroker(BROKER_URL, queue_name=prefix)
    task = broker.task(task_name="incr")(incr)
    stamps = {
        False: broker.task(task_name="stamp")(stamp),
        True: broker.task(task_name="astamp")(stamp_async),
    }
    # The producer's loop, kept (the broker's pool lives on it), started on first use:
    # the worker process builds this too, and starts the broker itself.
    loops: list[asyncio.AbstractEventLoop] = []

    def run(coroutine: Any) -> None:
        if not loops:
            loops.append(asyncio.new_event_loop())
            loops[0].run_until_complete(broker.startup())
        loops[0].run_until_complete(coroutine)

    async def add_all(key: str, n: int) -> None:
        for _ in range(n):
            await task.kiq(key)

    def produce(key: str, n: int) -> None:
        run(add_all(key, n))

    def add_stamp(key: str, kind: bool) -> None:
        run(stamps[kind].kiq(key))

    def close() -> None:
        if loops:
            loops[0].run_until_complete(broker.shutdown())
            loops[0].close()

    return Built(broker, produce, close, add_stamp)


def _dramatiq(prefix: str, tmp: str) -> Built:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=BROKER_URL, namespace=prefix)
    dramatiq.set_broker(broker)
    actor = dramatiq.actor(incr, actor_name="incr", queue_name="bench", max_retries=0)
    stamped = dramatiq.actor(stamp, actor_name="stamp", queue_name="bench", max_retries=0)

    def produce(key: str, n: int) -> None:
        for _ in range(n):
            actor.send(key)

    return Built(broker, produce, broker.close, lambda key, _: stamped.send(key))


def _celery(prefix: str, tmp: str) -> Built:
    from celery import Celery

    app = Celery("bench", broker=BROKER_URL)
    app.conf.update(
        task_default_queue=prefix,
        task_ignore_result=True,  # no result backend
        broker_transport_options={"global_keyprefix": f"{prefix}:"},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    task = app.task(name="incr", ignore_result=True)(incr)
    stamped = app.task(name="stamp", ignore_result=True)(stamp)

    def produce(key: str, n: int) -> None:
        for _ in range(n):
            task.delay(key)

    def close() -> None:
        app.close()

    return Built(app, produce, close, lambda key, _: stamped.delay(key))


def build(system: str, prefix: str, tmp: str) -> Built:
    name, _, kind = system.partition("-")
    if name == "errands":
        return _errands(prefix, tmp)
    if name == "huey":
        return _huey(kind, prefix, tmp)
    if name == "taskiq":
        return _taskiq(prefix, tmp)
    if name == "dramatiq":
        return _dramatiq(prefix, tmp)
    if name == "celery":
        return _celery(prefix, tmp)
    raise ValueError(f"unknown system {system!r}")


@cache
def _from_environment() -> Built:
    return build(os.environ["BENCH_SYSTEM"], os.environ["BENCH_PREFIX"], os.environ["BENCH_TMP"])


def __getattr__(name: str) -> Any:
    if name == "target":
        return _from_environment().target
    raise AttributeError(name)
