"""Smoke test of ``pip install 'errands[cli]'`` alone, run by ``scripts/smoke`` in a
fresh venv: the operations commands answer on a real SQLite store (Typer and Rich are
there), piped and as JSON. Not collected by pytest."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import errands as errands_package
from errands import Errands

EXTRA = "errands[cli]"


def check(condition: bool, problem: str) -> None:
    if not condition:
        raise SystemExit(f"{EXTRA} smoke test failed: {problem}")


def main() -> None:
    check(
        Path(errands_package.__file__).is_relative_to(sys.prefix),
        f"errands was imported from {errands_package.__file__}, not from the venv {sys.prefix}",
    )
    script = Path(sys.executable).with_name("errands")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/errands.db"
        errands = Errands(url)

        @errands.task(name="smoke.add")
        def add(a: int, b: int) -> int:
            return a + b

        job = errands.add_task(add, 2, 3)
        asyncio.run(errands.join(timeout=30))
        listed = subprocess.run(
            [str(script), "jobs", url, "--json"], capture_output=True, text=True, timeout=60
        )
        check(
            listed.returncode == 0,
            f"`errands jobs --json` exited {listed.returncode}: {listed.stderr}",
        )
        records = json.loads(listed.stdout)
        check(
            [r["id"] for r in records] == [job.id] and records[0]["result"] == 5,
            f"`errands jobs --json` printed {listed.stdout!r}",
        )
        shown = subprocess.run(
            [str(script), "stats", url], capture_output=True, text=True, timeout=60
        )
        check(
            shown.returncode == 0 and "succeeded\t1" in shown.stdout,
            f"`errands stats` exited {shown.returncode}:\n{shown.stdout}{shown.stderr}",
        )
    print(f"{EXTRA}: errands jobs and stats answer on a SQLite store")


if __name__ == "__main__":
    main()
