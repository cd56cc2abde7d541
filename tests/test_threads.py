"""The threads of def tasks: a timeout counts from the start, stuck threads are
replaced up to a cap, and a worker never claims def jobs it cannot start."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from errands import Errands, JobStatus, TaskTimeout
from errands._threads import Threads

pytestmark = pytest.mark.anyio


async def test_a_timeout_counts_from_when_the_function_starts() -> None:
    threads = Threads(1)
    release = threading.Event()
    first = asyncio.ensure_future(threads.run(release.wait, (5,), {}))
    # The second waits for the only thread longer than its timeout, then runs briefly.
    second = asyncio.ensure_future(threads.run(time.sleep, (0.05,), {}, timeout=0.3, name="b"))
    await asyncio.sleep(0.6)
    assert not second.done()
    release.set()
    assert await first is True
    assert await second is None  # it ran 0.05 s of its 0.3


async def test_a_call_past_its_timeout_is_abandoned_and_its_thread_replaced() -> None:
    threads = Threads(1)
    stuck = threading.Event()
    with pytest.raises(TaskTimeout, match=r"timed out after 0\.1 s"):
        await threads.run(stuck.wait, (10,), {}, timeout=0.1, name="stuck")
    assert threads.abandoned == 1 and threads.free() == 1
    assert await threads.run(lambda: "next", (), {}, timeout=1) == "next"
    stuck.set()
    for _ in range(100):
        if not threads.abandoned:
            break
        await asyncio.sleep(0.01)
    assert threads.abandoned == 0 and threads.free() == 1


async def test_past_the_cap_stuck_calls_take_the_pools_room_and_say_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    threads = Threads(2, spare=1)
    stuck = threading.Event()
    for _ in range(3):  # one replaced, two more past the cap
        with pytest.raises(TaskTimeout):
            await threads.run(stuck.wait, (10,), {}, timeout=0.05, name="stuck")
    assert threads.abandoned == 3
    assert threads.free() == 0  # 2 threads, 1 spare: 2 stuck past the cap
    assert "more than the 1 threads errands replaces" in caplog.text
    stuck.set()
    for _ in range(200):
        if threads.free() == 2:
            break
        await asyncio.sleep(0.01)
    assert threads.free() == 2
    assert await threads.run(lambda: 1, (), {}) == 1


@pytest.mark.parametrize("mode", ["memory", "sqlite"])
async def test_def_jobs_waiting_for_a_thread_do_not_time_out(mode: str, tmp_path: object) -> None:
    url = "memory://" if mode == "memory" else f"sqlite:///{tmp_path}/jobs.db"
    errands = Errands(url, threads=4)

    @errands.task(timeout=0.8)
    def nap(i: int) -> int:
        time.sleep(0.3)
        return i

    jobs = [errands.add_task(nap, i) for i in range(24)]  # six rounds of four
    await errands.join(timeout=30)
    records = [errands.get(job.id) for job in jobs]
    assert [r.status for r in records if r] == [JobStatus.SUCCEEDED] * 24


@pytest.mark.parametrize("mode", ["memory", "sqlite"])
async def test_a_worker_with_every_thread_stuck_leaves_def_jobs_queued_until_one_returns(
    mode: str, tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    url = "memory://" if mode == "memory" else f"sqlite:///{tmp_path}/jobs.db"
    errands = Errands(url, threads=1)
    gate = threading.Event()

    @errands.task(timeout=0.1)
    def stuck(i: int) -> int:
        gate.wait(30)
        return i

    caplog.set_level(logging.WARNING, "errands")
    async with errands.lifespan():
        # One thread and one replacement: after two time-outs, none is left.
        first = [errands.add_task(stuck, i) for i in range(2)]
        for job in first:
            assert (await job.wait(timeout=10)).status is JobStatus.FAILED
        waiting = errands.add_task(stuck, 2)
        await asyncio.sleep(0.5)
        record = errands.get(waiting.id)
        assert record is not None and record.status is JobStatus.QUEUED
        assert record.attempts == 0 and record.owner is None  # no lease held on it
        assert "runs fewer def jobs at once" in caplog.text
        gate.set()
        done = await waiting.wait(timeout=10)
    assert done.status is JobStatus.SUCCEEDED and done.result == 2


async def test_a_call_withdrawn_before_it_starts_never_runs() -> None:
    threads = Threads(1)
    gate, ran = threading.Event(), []
    first = asyncio.ensure_future(threads.run(gate.wait, (5,), {}))
    second = asyncio.ensure_future(threads.run(ran.append, (1,), {}))
    await asyncio.sleep(0.05)
    second.cancel()  # still waiting for the only thread
    await asyncio.sleep(0.05)
    gate.set()
    await first
    await asyncio.sleep(0.1)
    assert ran == [] and threads.free() == 1


async def test_a_task_that_calls_sys_exit_fails_and_the_worker_goes_on() -> None:
    import sys

    errands = Errands("memory://")

    @errands.task
    def quits() -> None:
        sys.exit(2)

    @errands.task
    async def quits_too() -> None:
        raise SystemExit(3)

    jobs = [errands.add_task(quits), errands.add_task(quits_too)]
    await errands.join(timeout=10)
    for job, code in zip(jobs, (2, 3), strict=True):
        record = errands.get(job.id)
        assert record is not None and record.status is JobStatus.FAILED
        assert record.error == (
            f"RuntimeError: the task raised SystemExit({code}), which would stop the process "
            f"running it; raise an exception instead"
        )


@pytest.mark.parametrize("mode", ["memory", "sqlite"])
async def test_a_worker_runs_no_more_def_jobs_at_once_than_it_has_threads(
    mode: str, tmp_path: object
) -> None:
    url = "memory://" if mode == "memory" else f"sqlite:///{tmp_path}/jobs.db"
    errands = Errands(url, threads=2)

    @errands.task
    def nap(i: int) -> int:
        time.sleep(0.5)
        return i

    jobs = [errands.add_task(nap, i) for i in range(10)]
    async with errands.lifespan():
        most = 0
        for _ in range(40):
            await asyncio.sleep(0.05)
            running = [errands.get(job.id) for job in jobs]
            most = max(most, sum(r is not None and r.status is JobStatus.RUNNING for r in running))
        await errands.join(timeout=30)
    assert most == 2  # claimed only when a thread is free: no lease held on a waiting job


@pytest.mark.parametrize("mode", ["memory", "sqlite"])
async def test_joining_twice_runs_the_def_jobs_added_between(mode: str, tmp_path: object) -> None:
    url = "memory://" if mode == "memory" else f"sqlite:///{tmp_path}/jobs.db"
    errands = Errands(url)

    @errands.task
    def double(i: int) -> int:
        return 2 * i

    for round in range(5):
        jobs = [errands.add_task(double, round), errands.add_task(lambda: None)]
        await errands.join(timeout=10)
        assert all((r := errands.get(j.id)) is not None and r.finished for j in jobs)


@pytest.mark.parametrize("mode", ["memory", "sqlite"])
async def test_every_kind_of_task_gets_slots_when_concurrency_is_below_the_threads(
    mode: str, tmp_path: object
) -> None:
    url = "memory://" if mode == "memory" else f"sqlite:///{tmp_path}/jobs.db"
    errands = Errands(url, concurrency=4)  # fewer slots than the 16 threads

    @errands.task
    def in_a_thread(i: int) -> int:
        return i

    @errands.task
    async def on_the_loop(i: int) -> int:
        return i

    jobs = [errands.add_task(t, i) for i in range(6) for t in (on_the_loop, in_a_thread)]
    async with errands.lifespan():
        for job in jobs:
            assert (await job.wait(timeout=20)).status is JobStatus.SUCCEEDED
