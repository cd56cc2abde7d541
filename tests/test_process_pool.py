"""process=True: registered def tasks in processes of their own; timeouts kill them."""

import asyncio
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from errands import ConfigurationError, Errands, JobStatus
from tests.apps import cpu
from tests.conftest import ROOT

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


def running(pid: int) -> bool:
    """Whether process ``pid`` has not exited (a zombie waiting to be reaped has)."""
    if not Path("/proc/self").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@pytest.mark.server
@pytest.mark.parametrize("prctl", ["1", "0"], ids=["prctl", "without-prctl"])
def test_a_process_task_dies_with_its_worker_when_the_worker_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prctl: str
) -> None:
    monkeypatch.setenv("ERRANDS_URL", f"sqlite:///{tmp_path}/jobs.db")
    from tests.apps import orphans

    orphans = importlib.reload(orphans)  # on this test's file
    pidfile = tmp_path / "task.pid"
    orphans.errands.add_task(orphans.linger, str(pidfile), 60)
    output = tmp_path / "worker.out"
    with output.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "errands", "worker", "tests.apps.orphans:errands"],
            cwd=ROOT,
            env={**os.environ, "ORPHANS_PRCTL": prctl},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    task_pid = None
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists():
            assert worker.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
        task_pid = int(pidfile.read_text())
        assert running(task_pid)
        worker.send_signal(signal.SIGKILL)  # the worker alone, not its process group
        worker.wait()
        deadline = time.monotonic() + 5
        while running(task_pid):
            assert time.monotonic() < deadline, (
                f"the task's process (pid {task_pid}) outlived its killed worker"
            )
            time.sleep(0.02)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if task_pid is not None and running(task_pid):
            os.kill(task_pid, signal.SIGKILL)  # leave no orphan behind a failure


async def test_a_process_tasks_result_json_cannot_carry_fails_it_once_without_a_crash() -> None:
    job = cpu.errands.add_task(cpu.huge_result)
    await cpu.errands.join(timeout=60)
    record = cpu.errands.get(job.id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error is not None and record.error.startswith("NotSerializable:")
    assert "digits" in record.error and record.attempts == 1  # refused, not retried
