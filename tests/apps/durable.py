"""An app on the store of $ERRANDS_URL (SQLite or PostgreSQL) for tests that kill real
processes.

Every task appends a line to $DURABLE_LOG, so a test can see what ran, and how often,
whichever process ran it. WEB_ONLY=1 serves it as a web process that only adds jobs
(``worker=False``, its lifespan running); SERVER_WORKER=1 runs a worker in the server.
"""

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse

from errands import BackgroundTasks, Errands, JobLogFilter

WEB_ONLY = os.environ.get("WEB_ONLY") == "1"

errands = Errands(
    worker=not WEB_ONLY,
    lease=float(os.environ.get("LEASE", "1.0")),
    hold=float(os.environ.get("HOLD", "1")),
    drain_timeout=float(os.environ.get("DRAIN", "10")),
    concurrency=int(os.environ.get("CONCURRENCY", "100")),
)

if "POLL_ANNOUNCED" in os.environ:  # how often a worker told of new jobs still looks
    type(errands._core.backend.store).poll_announced = float(  # type: ignore[attr-defined]
        os.environ["POLL_ANNOUNCED"]
    )

app = FastAPI(
    lifespan=errands.lifespan if WEB_ONLY or os.environ.get("SERVER_WORKER") == "1" else None
)


def log(line: str) -> None:
    with open(os.environ["DURABLE_LOG"], "a") as f:
        f.write(line + "\n")


def attempt() -> str:
    """The running job's id and attempt, as errands gives them to its log records."""
    record = logging.makeLogRecord({})
    JobLogFilter().filter(record)
    return f"job={record.job_id} attempt={record.attempt}"


@errands.task(name="note")
def note(token: str) -> None:
    time.sleep(float(os.environ.get("NOTE_SECONDS", "0")))
    log(f"note {token} pid={os.getpid()} {attempt()}")


@errands.task(name="slow")
async def slow(token: str, seconds: float) -> str:
    log(f"start {token} pid={os.getpid()} {attempt()}")
    await asyncio.sleep(seconds)
    log(f"done {token}")
    return token


@errands.task(name="slow_sync")
def slow_sync(token: str, seconds: float) -> str:
    log(f"start {token} pid={os.getpid()} {attempt()}")
    time.sleep(seconds)
    log(f"done {token}")
    return token


@app.get("/health")
async def health() -> str:
    return "ok"


@app.post("/note/{token}")
async def add_note(token: str, tasks: BackgroundTasks) -> str:
    job = tasks.add_task(note, token)
    if token.startswith("fail"):
        raise HTTPException(400, "refused")
    return job.id


@app.post("/once/{key}")
async def add_once(key: str, tasks: BackgroundTasks) -> dict[str, object]:
    job = tasks.add_task(note.options(job_id=key), key)
    return {"id": job.id, "created": job.created}


@app.post("/slow/{token}")
async def add_slow(token: str, seconds: float, tasks: BackgroundTasks) -> str:
    return tasks.add_task(slow, token, seconds).id


if os.environ.get("NEWER") == "1":  # a task only the newer deploy has

    @errands.task(name="newer")
    def newer(token: str) -> None:
        log(f"newer {token} pid={os.getpid()}")


@app.get("/stream/{token}")
async def stream(token: str, tasks: BackgroundTasks) -> StreamingResponse:
    """A response that takes a minute: its job waits for it (unreleased) all along."""
    tasks.add_task(note, token)

    async def body() -> AsyncIterator[bytes]:
        yield b"started\n"
        await asyncio.sleep(60)
        yield b"done\n"

    return StreamingResponse(body())
