"""process=True: registered def tasks in processes of their own; timeouts kill them."""

import asyncio
import os
import time
from pathlib import Path

import pytest

from errands import ConfigurationError, Errands, JobStatus
from tests.apps import cpu

pytestmark = pytest.mark.anyio


async def test_a_process_task_runs_in_another_process_and_returns_json() -> None:
    job = cpu.errands.add_task(cpu.whoami, 7)
    await cpu.errands.join(timeout=30)
    record = await job.wait(timeout=1)
    assert record.status is JobStatus.SUCCEEDED, record.error
    assert record.result["square"] == 49
    assert record.result["pid"] != os.getpid()


async def test_a_timeout_kills_the_process_so_the_work_really_stops(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    job = cpu.errands.add_task(cpu.spin, str(marker))
    started = time.monotonic()
    await cpu.errands.join(timeout=30)
    record = await job.wait(timeout=1)
    assert record.status is JobStatus.FAILED
    assert record.error is not None and "timed out after 0.5 s" in record.error
    assert "killed" in record.error
    assert time.monotonic() - started < 3
    await asyncio.sleep(3.5)  # had it survived, it would have written by now
    assert not marker.exists()


async def test_a_childs_exception_is_recorded_with_its_type_and_traceback() -> None:
    job = cpu.errands.add_task(cpu.explode)
    await cpu.errands.join(timeout=30)
    record = await job.wait(timeout=1)
    assert record.status is JobStatus.FAILED and record.attempts == 2
    assert record.error == "ValueError: boom in a child"
    assert record.traceback is not None and "explode" in record.traceback


async def test_a_process_that_dies_fails_the_job_with_the_exit_code() -> None:
    job = cpu.errands.add_task(cpu.die)
    await cpu.errands.join(timeout=30)
    record = await job.wait(timeout=1)
    assert record.status is JobStatus.FAILED
    assert record.error is not None and "exited with code 3" in record.error


def test_process_tasks_must_be_module_level_def_functions() -> None:
    errands = Errands("memory://")
    with pytest.raises(ConfigurationError, match="module level"):

        @errands.task(process=True)
        def local() -> None: ...

    with pytest.raises(ConfigurationError, match="def functions"):

        @errands.task(process=True)
        async def coroutine() -> None: ...


def test_process_tasks_work_from_one_event_loop_after_another() -> None:
    async def batch() -> list[int]:
        jobs = [cpu.errands.add_task(cpu.whoami, n) for n in range(4)]  # more than 2 slots
        await cpu.errands.join(timeout=60)
        return [(await job.wait(1)).result["square"] for job in jobs]

    assert asyncio.run(batch()) == [0, 1, 4, 9]
    assert asyncio.run(batch()) == [0, 1, 4, 9]  # a new loop: slots of its own
