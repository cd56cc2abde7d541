"""Smoke test of ``pip install 'errands[celery]'`` alone, run by ``scripts/smoke`` in a
fresh venv.

A registered task goes through a real Celery worker on the local Redis (broker on DB
12, result backend on DB 13, a queue of its own), started the way users start one:
``python -m errands worker smoke_celery:errands``. Not collected by pytest: the test
suite runs in the dev venv, where the dev tools can hide a missing dependency (kombu's
Redis transport imports ``packaging``, which only ``celery[redis]`` brings).

Exits 77 (skipped) when Redis does not answer, except under CI=true, where that fails.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import NoReturn

from celery import Celery

import errands as errands_package
from errands import Errands, Job, JobRecord, JobStatus, WaitTimeout

EXTRA = "errands[celery]"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
SKIPPED = 77  # the exit status test harnesses read as "skipped"
DEADLINE = 60  # seconds for the worker to start and run the job
# Chosen by the publishing process and inherited by the worker it starts, so that both
# use it; a queue of its own keeps other runs' workers off this run's job.
QUEUE = os.environ.setdefault("ERRANDS_SMOKE_QUEUE", f"errands-smoke-{uuid.uuid4().hex[:12]}")

celery_app = Celery(
    "errands_smoke",
    broker=f"redis://{REDIS_HOST}:{REDIS_PORT}/12",
    backend=f"redis://{REDIS_HOST}:{REDIS_PORT}/13",
)
celery_app.conf.task_default_queue = QUEUE
celery_app.conf.result_expires = 600  # the job's records leave DB 13 by themselves
errands = Errands(celery=celery_app)


@errands.task(name="errands_smoke.add")
def add(a: int, b: int) -> int:
    return a + b


def fail(problem: str) -> NoReturn:
    raise SystemExit(f"{EXTRA} smoke test failed: {problem}")


def redis_answers() -> bool:
    try:
        socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=2).close()
    except OSError:
        return False
    return True


def start_worker(log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "errands", "worker", "smoke_celery:errands", "--"]
    command += ["-P", "threads", "-c", "2", "-n", f"{QUEUE}@%h"]
    # Talking to other workers only slows the start of one that has nothing to ask them.
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=Path(__file__).parent, stdout=out, stderr=subprocess.STDOUT
        )


def stop_worker(worker: subprocess.Popen[bytes]) -> int | None:
    """The worker's exit status after a warm shutdown, or None if it had to be killed."""
    worker.terminate()
    try:
        return worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        return None


def delete_queue() -> None:
    """Each run's queue is new: delete its bindings, else Redis keeps a set per run."""
    with celery_app.connection_for_write() as connection:
        queue = celery_app.amqp.queues[QUEUE](connection.default_channel)
        queue.declare()  # makes this connection know the bindings it deletes
        queue.delete()


async def finish(job: Job[int], worker: subprocess.Popen[bytes]) -> JobRecord | None:
    """The job's record once it has finished; None if the worker exits or time runs out."""
    for _ in range(DEADLINE):
        if worker.poll() is not None:
            return None
        try:
            return await job.wait(timeout=1)
        except WaitTimeout:
            pass
    return None


def main() -> None:
    # Else a stray PYTHONPATH=src would test the source tree instead of the install.
    if not Path(errands_package.__file__).is_relative_to(sys.prefix):
        fail(f"errands was imported from {errands_package.__file__}, not the venv {sys.prefix}")
    if not redis_answers():
        problem = f"Redis does not answer on {REDIS_HOST}:{REDIS_PORT}"
        if os.environ.get("CI") == "true":
            fail(f"{problem} (scripts/services starts it)")
        print(f"{EXTRA} smoke test skipped: {problem}")
        raise SystemExit(SKIPPED)

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "worker.log"
        worker = start_worker(log)
        try:
            job = errands.add_task(add, 2, 3)
            record = asyncio.run(finish(job, worker))
            exited = worker.poll()
        finally:
            status = stop_worker(worker)
            delete_queue()
        if record is None and exited is not None:
            fail(f"the worker exited with status {exited}:\n{log.read_text()}")
        if record is None:
            fail(
                f"job {job.id} was still {errands.get(job.id)} after {DEADLINE} s; "
                f"the worker's log:\n{log.read_text()}"
            )
        if record.status is not JobStatus.SUCCEEDED or record.result != 5:
            fail(
                f"the job ended {record.status.value} with result {record.result!r} "
                f"(error: {record.error}), expected succeeded with 5"
            )
        stored = errands.get(record.id)
        if stored is None or stored.result != 5:
            fail(f"errands.get({record.id!r}) reads {stored!r}, expected the result 5")
        if status != 0:
            stopped = "did not stop within 30 s of SIGTERM" if status is None else "exited"
            fail(f"the worker {stopped} (status {status}):\n{log.read_text()}")
    print(f"{EXTRA}: a task ran on a Celery worker over Redis, its result read back")


if __name__ == "__main__":
    main()
