"""Task limits: @errands.task(concurrency=N, rate="n/s"), across workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from errands import ConfigurationError, Errands, JobStatus
from errands._limits import Limit
from tests.apps import modes
from tests.conftest import (
    ROOT,
    CeleryWorker,
    delete_queues,
    postgres_url,
    require_service,
    wait_finished,
)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"concurrency": 0}, "concurrency must be an int >= 1"),
        ({"concurrency": 1.5}, "concurrency must be an int >= 1"),
        ({"concurrency": True}, "concurrency must be an int >= 1"),
        ({"rate": "ten per second"}, "rate must be a str like '10/s', '100/m' or '1000/h'"),
        ({"rate": "0/s"}, "more than 0), got '0/s'"),
        ({"rate": 10}, "rate must be a str like"),
        ({"rate": "10/d"}, "got '10/d'"),
    ],
)
def test_bad_limits_are_refused_at_decoration(options: dict[str, object], says: str) -> None:
    errands = Errands("memory://")
    with pytest.raises(ConfigurationError) as caught:
        errands.task(name="t", **options)(lambda: None)  # type: ignore[call-overload]
    assert says in str(caught.value) and "'t'" in str(caught.value)
    assert errands._core.tasks == {}


def test_rates_read_as_attempts_a_second_and_the_bucket_is_a_tenth_of_a_second() -> None:
    errands = Errands("memory://")
    for rate, per_second in [("10/s", 10), ("120/m", 2), ("3600 / h", 1), ("2.5/sec", 2.5)]:
        task = errands.task(name=f"t{rate}", rate=rate)(lambda: None)
        assert task.limit == Limit(None, per_second)
    assert Limit(None, 10).burst == 1 and Limit(None, 1000).burst == 100
    assert Limit(None, 10).refill(0, 100.0, 100.05) == pytest.approx(0.5)
    assert Limit(2, None).allowed(1, None) == 1 and Limit(2, None).allowed(3, None) == 0


def spans(errands: Errands, name: str) -> list[tuple[float, float]]:
    return sorted(
        (j.started_at.timestamp(), j.finished_at.timestamp())  # type: ignore[union-attr]
        for j in errands.jobs(limit=10_000)
        if j.name == name
    )


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)


def store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The URL of a fresh store of this kind: memory://, a SQLite file, a PostgreSQL
    schema of the test run's database."""
    if kind == "postgres":
        return postgres_url(request.getfixturevalue("postgres_database"))
    return kind if kind == "memory://" else f"sqlite:///{tmp_path}/j.db"


@pytest.mark.parametrize("url", ["memory://", "sqlite", POSTGRES])
def test_concurrency_holds_a_tasks_jobs_and_lets_the_others_pass(
    url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    errands = Errands(store_url(url, tmp_path, request))

    @errands.task(name="narrow", concurrency=2)
    async def narrow() -> None:
        await asyncio.sleep(0.1)

    @errands.task(name="free")
    async def free() -> None:
        await asyncio.sleep(0.01)

    held = [errands.add_task(narrow) for _ in range(10)]
    others = [errands.add_task(free) for _ in range(20)]
    asyncio.run(errands.join(timeout=30))
    assert most_at_once(spans(errands, "narrow")) == 2  # never 3, and both slots used
    # The free jobs ran while narrow's waited: all done before the last narrow began.
    last_free = max(b for _, b in spans(errands, "free"))
    assert last_free < max(a for a, _ in spans(errands, "narrow"))
    assert all(errands.get(j.id).status is JobStatus.SUCCEEDED for j in held + others)  # type: ignore[union-attr]


@pytest.mark.parametrize("url", ["memory://", "sqlite", POSTGRES])
def test_a_rate_spreads_attempts_evenly(
    url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    errands = Errands(store_url(url, tmp_path, request))

    @errands.task(name="paced", rate="20/s")
    async def paced() -> None: ...

    for _ in range(30):
        errands.add_task(paced)
    started = time.monotonic()
    asyncio.run(errands.join(timeout=30))
    took = time.monotonic() - started
    assert 1.2 <= took <= 3.5  # 30 at 20 a second, the first at once: about 1.5 s
    starts = [a for a, _ in spans(errands, "paced")]
    for first, later in zip(starts, starts[3:], strict=False):  # never 4 within 0.1 s
        assert later - first >= 0.1


WORKER_APP = """
import asyncio, os, time
from errands import Errands

errands = Errands(os.environ["ERRANDS_URL"], lease=2.0)


@errands.task(name="narrow", concurrency=2)
async def narrow(i: int) -> None:
    await asyncio.sleep(0.2)


@errands.task(name="paced", rate="20/s")
async def paced(i: int) -> None: ...
"""


@pytest.mark.server
@pytest.mark.parametrize("kind", ["sqlite", POSTGRES])
def test_limits_hold_across_two_worker_processes(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    (tmp_path / "limited_app.py").write_text(WORKER_APP)
    url = store_url(kind, tmp_path, request)
    env = {**os.environ, "ERRANDS_URL": url, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    errands = Errands(url)

    @errands.task(name="narrow")
    async def narrow(i: int) -> None: ...

    @errands.task(name="paced")
    async def paced(i: int) -> None: ...

    for i in range(12):
        errands.add_task(narrow, i)
    for i in range(100):
        errands.add_task(paced, i)
    started = time.monotonic()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "errands", "worker", "limited_app:errands"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 30
        while errands._core.backend.unfinished() and time.monotonic() < deadline:
            time.sleep(0.05)
        took = time.monotonic() - started
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
    assert errands._core.backend.unfinished() == 0
    assert most_at_once(spans(errands, "narrow")) == 2
    assert 4.0 <= took <= 9.0  # 100 paced at 20 a second on two workers: about 5 s


@pytest.mark.celery
def test_limits_hold_across_two_celery_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_service("redis")
    log = tmp_path / "log"
    monkeypatch.setenv("MODES_LOG", str(log))
    queue = f"errands-test-{uuid.uuid4().hex[:8]}"
    mode = modes.make("celery-redis", queue=queue)
    workers = [CeleryWorker("celery-redis", queue, log, name=f"w{i}") for i in range(2)]
    try:
        narrow = mode.errands._core.tasks["modes.narrow"]
        paced = mode.errands._core.tasks["modes.paced"]
        jobs = [mode.errands.add_task(narrow, f"n-{i}", 0.3) for i in range(6)]
        jobs += [mode.errands.add_task(paced, f"p-{i}") for i in range(40)]
        for job in jobs:
            assert wait_finished(mode.errands, job.id, 60).status is JobStatus.SUCCEEDED
    finally:
        for worker in workers:
            worker.stop()
        delete_queues(mode.celery, queue)
    lines = [line.split() for line in log.read_text().splitlines()]
    narrow_spans = sorted(
        (float(start[2]), float(end[2]))
        for start in lines
        if start[0].startswith("n-") and start[1] == "start"
        for end in lines
        if end[0] == start[0] and end[1] == "end"
    )
    assert most_at_once(narrow_spans) == 2
    paced_starts = sorted(float(w[2]) for w in lines if w[0].startswith("p-"))
    assert len(paced_starts) == 40
    assert 1.5 <= paced_starts[-1] - paced_starts[0] <= 6.0  # 40 at 20 a second: about 2 s
