"""Smoke test of ``pip install errands`` alone, run by ``scripts/smoke`` in a fresh venv.

A registered task on a SQLite file runs through ``join()``, its result survives in the
file, and the ``errands`` console script answers. Not collected by pytest: the test
suite runs in the dev venv, where the dev tools can hide a missing dependency.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import errands as errands_package
from errands import Errands, JobStatus

EXTRA = "errands (core install)"


def check(condition: bool, problem: str) -> None:
    if not condition:
        raise SystemExit(f"{EXTRA} smoke test failed: {problem}")


def main() -> None:
    # Else a stray PYTHONPATH=src would test the source tree instead of the install.
    check(
        Path(errands_package.__file__).is_relative_to(sys.prefix),
        f"errands was imported from {errands_package.__file__}, not from the venv {sys.prefix}",
    )
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/errands.db"
        errands = Errands(url)

        @errands.task(name="smoke.add", retries=1)
        def add(a: int, b: int) -> int:
            return a + b

        job = errands.add_task(add, 2, 3)
        asyncio.run(errands.join(timeout=30))
        record = errands.get(job.id)
        check(record is not None, f"errands.get({job.id!r}) found no job after join()")
        assert record is not None
        check(
            record.status is JobStatus.SUCCEEDED and record.result == 5,
            f"the job ended {record.status.value} with result {record.result!r} "
            f"(error: {record.error}), expected succeeded with 5",
        )
        # Another instance on the same file reads what the worker recorded there.
        stored = Errands(url).get(job.id)
        check(
            stored is not None and stored.result == 5,
            f"a second Errands({url!r}) reads {stored!r} for the job, expected its result 5",
        )

    script = Path(sys.executable).with_name("errands")
    check(script.exists(), f"pip installed no console script at {script}")
    answer = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    check(
        answer.returncode == 0 and "worker" in answer.stdout,
        f"`errands --help` exited {answer.returncode}:\n{answer.stdout}{answer.stderr}",
    )
    print(f"{EXTRA}: a task ran on SQLite through join(); `errands --help` answers")


if __name__ == "__main__":
    main()
