"""Flow control across real processes: the same job id from racing processes, job
priorities and cancellation seen by a worker process of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from errands import Errands, JobStatus
from tests.apps import modes
from tests.conftest import (
    ROOT,
    CeleryWorker,
    Server,
    delete_queues,
    postgres_url,
    require_service,
    wait_until,
)

pytestmark = pytest.mark.server


def race(mode: str, path: str, queue: str, key: str, processes: int, each: int) -> list[list]:
    """``processes`` processes add ``key`` ``each`` times at once; their handles."""
    start = time.time() + 3  # all processes up and waiting by then
    running = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.apps.racer",
                mode,
                path,
                queue,
                key,
                str(start),
                str(each),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    handles = []
    for process in running:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        handles += json.loads(out.strip().splitlines()[-1])
    return handles


@pytest.mark.parametrize(
    "mode",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("celery-redis", marks=pytest.mark.celery),
    ],
)
def test_processes_racing_with_one_job_id_make_one_job_that_runs_once(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    if mode.startswith("celery"):
        require_service("redis")
    log = tmp_path / "log"
    monkeypatch.setenv("MODES_LOG", str(log))
    path, queue, key = (
        str(tmp_path / "jobs.db"),
        f"errands-test-{uuid.uuid4().hex[:8]}",
        f"k-{uuid.uuid4().hex[:6]}",
    )
    if mode == "postgres":
        path = postgres_url(request.getfixturevalue("postgres_database"))
    handles = race(mode, path, queue, key, processes=2, each=10)
    assert len(handles) == 20 and {id for id, _ in handles} == {key}
    assert sum(created for _, created in handles) == 1  # outside a request, each knows
    reader = modes.make(mode, path=path, queue=queue, url=path if mode == "postgres" else "")
    record = reader.errands.get(key)
    assert record is not None and record.status is JobStatus.QUEUED
    won = record.args[0]  # whichever add was kept
    worker = None
    try:
        if reader.celery is not None:
            worker = CeleryWorker(mode, queue, log)
            wait_until(lambda: (r := reader.errands.get(key)) is not None and r.finished, 30)
        else:
            import asyncio

            asyncio.run(reader.errands.join(timeout=30))
        time.sleep(0.5)
        assert modes.lines() == [won]  # one job, run once
    finally:
        if worker is not None:
            worker.stop()
            delete_queues(reader.celery, queue)


def test_one_job_id_from_concurrent_requests_to_two_servers_is_one_job(tmp_path: Path) -> None:
    env = {"ERRANDS_URL": f"sqlite:///{tmp_path}/jobs.db", "DURABLE_LOG": str(tmp_path / "log")}
    (tmp_path / "log").touch()
    servers = [Server("tests.apps.durable:app", env=env) for _ in range(2)]
    try:
        key = f"order-{uuid.uuid4().hex[:6]}"

        def post(i: int) -> dict[str, object]:
            return httpx.post(f"{servers[i % 2].url}/once/{key}", timeout=10).json()

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(post, range(20)))
    finally:
        for server in servers:
            server.stop()
    assert {a["id"] for a in answers} == {key} and len(answers) == 20
    reader = Errands(env["ERRANDS_URL"])
    assert [r.id for r in reader.jobs(limit=100)] == [key]
    record = reader.get(key)
    assert record is not None and record.args == [key]


def test_cancel_reaches_an_async_job_running_in_a_worker_process(tmp_path: Path) -> None:
    from tests.test_processes import Worker

    env = {"ERRANDS_URL": f"sqlite:///{tmp_path}/jobs.db", "DURABLE_LOG": str(tmp_path / "log")}
    (tmp_path / "log").touch()
    errands = Errands(env["ERRANDS_URL"])

    @errands.task(name="slow")
    async def slow(token: str, seconds: float) -> str: ...

    @errands.task(name="slow_sync")
    def slow_sync(token: str, seconds: float) -> str: ...

    job = errands.add_task(slow, "nap", 60)
    blocking = errands.add_task(slow_sync, "sync", 3)
    worker = Worker(env)
    try:
        lines = lambda: (tmp_path / "log").read_text().splitlines()  # noqa: E731
        wait_until(lambda: any(line.startswith("start nap ") for line in lines()), 20)
        wait_until(lambda: any(line.startswith("start sync ") for line in lines()), 20)
        asked = time.monotonic()
        assert errands.cancel(job.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
        errands.cancel(blocking.id)
        wait_until(lambda: errands.get(job.id).finished, 10)  # type: ignore[union-attr]
        assert time.monotonic() - asked < 4  # about a second
        record = errands.get(job.id)
        assert record is not None and record.status is JobStatus.CANCELLED
        assert "done nap" not in lines()
        # The def one could not be interrupted: it ran to its end, and ended cancelled.
        wait_until(lambda: errands.get(blocking.id).finished, 10)  # type: ignore[union-attr]
        ended = errands.get(blocking.id)
        assert ended is not None and ended.status is JobStatus.CANCELLED
        assert ended.result is None and "done sync" in lines()
    finally:
        worker.signal(signal.SIGTERM)
