"""One app, every mode: the core behaviour tests run it on memory, SQLite and Celery.

``make(mode)`` builds the Errands instance, its tasks and a FastAPI app; only the
``Errands(...)`` construction differs between modes. A Celery worker started by
the tests imports this module with ``MODES_MODE`` set and finds ``celery_app``.

The tasks write what they do to the file ``$MODES_LOG`` (one line each), which
the tests read: the jobs may run in another process.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from errands import BackgroundTasks, Errands, StoreError, Task, cancel_requested

if os.environ.get("METRICS_FILE"):  # a worker whose counts a test reads
    from tests.apps.counts import export_counts

    export_counts()

REDIS_BROKER = "redis://127.0.0.1:6379/10"
REDIS_BACKEND = "redis://127.0.0.1:6379/11"
RABBITMQ_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


def log(line: str) -> None:
    with open(os.environ["MODES_LOG"], "a") as file:
        file.write(line + "\n")


def lines() -> list[str]:
    try:
        with open(os.environ["MODES_LOG"]) as file:
            return file.read().splitlines()
    except FileNotFoundError:
        return []


def record(tag: str) -> str:
    log(tag)
    return tag


def slow(tag: str, seconds: float) -> str:
    log(f"{tag} start")
    time.sleep(seconds)
    log(f"{tag} end")
    return tag


def long(tag: str, seconds: float) -> str:
    """Like ``slow``, and says which worker (``$MODES_WORKER``) ran it."""
    worker = os.environ.get("MODES_WORKER", "-")
    log(f"{tag} start {worker}")
    time.sleep(seconds)
    log(f"{tag} end {worker}")
    return worker


def boom(tag: str) -> None:
    log(tag)
    raise ValueError(f"boom {tag}")


def flaky(tag: str, fails: int) -> str:
    """Fails its first ``fails`` attempts: each attempt logs a line."""
    log(tag)
    if lines().count(tag) <= fails:
        raise RuntimeError(f"attempt {lines().count(tag)} of {tag} failed")
    return "ok"


def stubborn(tag: str, fails: int, seconds: float) -> str:
    """Fails its first ``fails`` attempts, then takes ``seconds`` to succeed."""
    log(tag)
    attempt = lines().count(tag)
    if attempt <= fails:
        raise RuntimeError(f"attempt {attempt} of {tag} failed")
    time.sleep(seconds)
    return "ok"


def wordy(tag: str, size: int) -> str:
    """Fails its first attempt with an error message of ``size`` characters."""
    log(tag)
    if lines().count(tag) == 1:
        raise RuntimeError("x" * size)
    return "ok"


async def sleepy(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "woke"


def sleepy_sync(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


async def nap(tag: str, seconds: float) -> str:
    """An async task that naps: an errands.cancel stops it where it runs."""
    log(f"{tag} start")
    await asyncio.sleep(seconds)
    log(f"{tag} end")
    return tag


def polite(tag: str, seconds: float) -> str:
    """A def task that looks whether it was asked to stop, and stops early."""
    log(f"{tag} start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cancel_requested():
            log(f"{tag} stopped early")
            return "stopped"
        time.sleep(0.02)
    log(f"{tag} end")
    return tag


async def narrow(tag: str, seconds: float) -> None:
    """Limited to two at once (concurrency=2): logs when it starts and ends."""
    log(f"{tag} start {time.time()}")
    await asyncio.sleep(seconds)
    log(f"{tag} end {time.time()}")


def paced(tag: str) -> None:
    """Limited to 20 attempts a second (rate="20/s"): logs when it starts."""
    log(f"{tag} start {time.time()}")


def tick() -> str:
    """Scheduled by the tests of schedules (never here: the other tests would see it)."""
    log("tick")
    return "tick"


def add(a: int, b: int) -> int:
    return a + b


def echo(value: Any) -> Any:
    return value


@dataclass
class Mode:
    name: str
    errands: Errands
    app: FastAPI
    celery: Celery | None
    record: Task[[str], str]
    slow: Task[[str, float], str]
    boom: Task[[str], None]
    flaky: Task[[str, int], str]
    sleepy: Task[[float], Any]
    sleepy_sync: Task[[float], str]
    add: Task[[int, int], int]


def make_celery(mode: str, queue: str) -> Celery:
    broker = REDIS_BROKER if mode == "celery-redis" else RABBITMQ_BROKER
    broker = os.environ.get("MODES_BROKER", broker)
    app = Celery(f"modes-{queue}", broker=broker, backend=REDIS_BACKEND)
    app.conf.update(
        task_default_queue=queue,
        task_routes={"modes.routed": {"queue": f"{queue}-routed"}},
        broker_connection_retry_on_startup=True,
    )
    if os.environ.get("MODES_CELERY_DEFAULTS"):
        return app  # what errands applies to an app that sets nothing more
    app.conf.update(
        # Redis: a job whose worker died is delivered again once its visibility
        # timeout has passed, looked for every second (kombu's default: 100 s).
        broker_transport_options={
            "visibility_timeout": float(os.environ.get("VISIBILITY", 5)),
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            # The lock of that sweep: a worker killed while holding it would otherwise
            # block every other worker's sweep for kombu's default 300 s.
            "unacked_mutex_expire": 5,
        },
        worker_prefetch_multiplier=1,
    )
    return app


def make(mode: str, *, path: str = "", queue: str = "errands-modes", url: str = "") -> Mode:
    celery_app = None
    if mode == "memory":
        errands = Errands("memory://")
    elif mode == "sqlite":
        errands = Errands(f"sqlite:///{path}")
    elif mode == "postgres":
        errands = Errands(url)  # postgresql://...: the test run's database
    else:
        celery_app = make_celery(mode, queue)
        lease = float(os.environ.get("MODES_LEASE", 30))  # a Redis test's shorter one
        # The one line that differs:
        errands = Errands(celery=celery_app, publish_timeout=5, lease=lease)

    tasks = Mode(
        mode,
        errands,
        FastAPI(lifespan=errands.lifespan),
        celery_app,
        errands.task(name="modes.record")(record),
        errands.task(name="modes.slow")(slow),
        errands.task(name="modes.boom")(boom),
        errands.task(name="modes.flaky", retries=3, backoff=0.05)(flaky),
        errands.task(name="modes.sleepy", timeout=0.5)(sleepy),
        errands.task(name="modes.sleepy_sync", timeout=0.5)(sleepy_sync),
        errands.task(name="modes.add")(add),
    )
    errands.task(name="modes.routed")(record)
    errands.task(name="modes.long")(long)
    errands.task(name="modes.stubborn", retries=3, backoff=0.05)(stubborn)
    errands.task(name="modes.wordy", retries=1, backoff=0.05)(wordy)
    # Its one retry waits up to an hour (full jitter): long enough to look at.
    errands.task(name="modes.patient", retries=1, backoff=3600)(flaky)
    echo_task = errands.task(name="modes.echo")(echo)
    errands.task(name="modes.nap", retries=2, backoff=0.05)(nap)
    errands.task(name="modes.tick")(tick)
    errands.task(name="modes.narrow", concurrency=2)(narrow)
    errands.task(name="modes.paced", rate="20/s")(paced)
    errands.task(name="modes.polite", retries=2, backoff=0.05)(polite)
    # No retries: flaky(tag, 1) fails, and an errands.retry (the dashboard's button) succeeds.
    errands.task(name="modes.fickle")(flaky)
    app = tasks.app
    app.mount("/errands", errands.dashboard(auth=("admin", "secret")))

    @app.exception_handler(StoreError)
    async def unavailable(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.post("/mixed/{tag}")
    async def mixed(tag: str, background: BackgroundTasks) -> dict[str, str]:
        plain = background.add_task(lambda: log(f"{tag}-plain"))  # cannot travel
        registered = background.add_task(tasks.record, f"{tag}-registered")
        return {"plain": plain.id, "registered": registered.id}

    @app.post("/awkward/{tag}")
    async def awkward(tag: str, background: BackgroundTasks) -> dict[str, list[str]]:
        """Later jobs of a request with what AMQP headers could not carry."""
        jobs = [
            background.add_task(tasks.record, tag),
            background.add_task(echo_task, "x" * 300_000),  # over AMQP's 128 KiB frame
            background.add_task(echo_task, {"k" * 300: 2**70}),  # long key, huge int
        ]
        return {"jobs": [job.id for job in jobs]}

    @app.post("/one/{tag}")
    async def one(tag: str, background: BackgroundTasks) -> dict[str, str]:
        return {"job": background.add_task(tasks.record, tag).id}

    @app.post("/sequence/{tag}")
    async def sequence(tag: str, background: BackgroundTasks) -> dict[str, list[str]]:
        jobs = [
            background.add_task(tasks.slow, f"{tag}-1", 0.3),
            background.add_task(tasks.boom, f"{tag}-2"),
            background.add_task(tasks.record, f"{tag}-3"),
        ]
        return {"jobs": [job.id for job in jobs]}

    @app.post("/pair/{tag}")
    async def pair(tag: str, background: BackgroundTasks) -> dict[str, list[str]]:
        """Two jobs in one request: the second waits for the first (1.5 s)."""
        jobs = [
            background.add_task(tasks.slow, f"{tag}-1", 1.5),
            background.add_task(tasks.record, f"{tag}-2"),
        ]
        return {"jobs": [job.id for job in jobs]}

    @app.post("/retried-pair/{tag}")
    async def retried_pair(tag: str, background: BackgroundTasks) -> dict[str, list[str]]:
        """Two jobs in one request: the first fails once, then succeeds."""
        jobs = [
            background.add_task(tasks.flaky, tag, 1),
            background.add_task(tasks.record, f"{tag}-next"),
        ]
        return {"jobs": [job.id for job in jobs]}

    @app.post("/delayed/{tag}")
    async def delayed(tag: str, delay: float, background: BackgroundTasks) -> dict[str, list[str]]:
        """A delayed job, and one after it in the same request (it waits for it)."""
        jobs = [
            background.add_task(tasks.record.options(delay=delay), f"{tag}-1"),
            background.add_task(tasks.record, f"{tag}-2"),
        ]
        return {"jobs": [job.id for job in jobs]}

    @app.post("/once/{key}")
    async def once(key: str, background: BackgroundTasks) -> dict[str, object]:
        """A job with a caller-chosen id, then one after it in the same request."""
        job = background.add_task(tasks.record.options(job_id=key), f"once-{key}")
        again = background.add_task(tasks.record.options(job_id=key), "never")
        return {"id": job.id, "created": job.created, "again": again.created}

    @app.post("/slow/{tag}")
    def slow_endpoint(tag: str, background: BackgroundTasks) -> dict[str, str]:
        return {"job": background.add_task(tasks.slow, tag, 1.0).id}

    @app.post("/raises/{tag}")
    async def raises(tag: str, background: BackgroundTasks) -> None:
        background.add_task(tasks.record, tag)
        raise RuntimeError("the endpoint failed")

    return tasks


if "MODES_MODE" in os.environ:  # a worker process of the tests
    _worker_mode = make(os.environ["MODES_MODE"], queue=os.environ.get("MODES_QUEUE", ""))
    errands = _worker_mode.errands
    celery_app = _worker_mode.celery
