"""How long the operations views take on a big store: ``errands.stats()`` (what
``errands stats`` and the dashboard's overview read), the listings, and the dashboard's
pages (rendered in full, through its ASGI app, auth included), on a SQLite file of
1,000,000 jobs. Issue "Operate it": each must stay under a second.

    .venv/bin/python benchmarks/ops.py [--jobs 1000000] [--rounds 5]

The file is filled with rows as errands writes them (most finished over the last day,
some in the last hour, 1 % queued, a few running), 20 task names.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from starlette.testclient import TestClient  # noqa: E402

from errands import Errands  # noqa: E402
from errands.sqlite._schema import INSERT  # noqa: E402


def fill(path: Path, n: int) -> None:
    errands = Errands(f"sqlite:///{path}")
    store = errands._core.backend.store
    db = store._db()
    now = time.time()
    rng = random.Random(7)
    batch = []
    db.execute("PRAGMA synchronous=OFF")
    for i in range(n):
        name = f"task{i % 20}"
        roll = rng.random()
        created = now - rng.uniform(0, 86400)
        if roll < 0.01:
            status, started, finished = "queued", None, None
        elif roll < 0.011:
            status, started, finished = "running", now - 5, None
        else:
            status = "failed" if roll < 0.05 else "cancelled" if roll < 0.06 else "succeeded"
            started = created + 0.01
            finished = started + rng.uniform(0.001, 2)
        batch.append(
            (
                f"{i:032x}", name, status, "[1]", "{}", 1, 1, None, None, None,
                created, started, finished, created, None, None, None, 0, None, 0, None, None,
            )
        )  # fmt: skip
        if len(batch) == 50_000:
            db.execute("BEGIN")
            db.executemany(INSERT, batch)
            db.execute("COMMIT")
            batch.clear()
    if batch:
        db.execute("BEGIN")
        db.executemany(INSERT, batch)
        db.execute("COMMIT")
    db.execute("ANALYZE")
    store.close()


def timed(call: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="errands-ops-")) / "errands.db"
    started = time.perf_counter()
    fill(path, args.jobs)
    print(f"filled {args.jobs:,} jobs in {time.perf_counter() - started:.1f} s", flush=True)
    errands = Errands(f"sqlite:///{path}", worker=False)
    dashboard = TestClient(errands.dashboard(auth=("admin", "pw")))
    some_id = errands.jobs(status="failed", limit=1)[0].id

    def page(url: str) -> Callable[[], object]:
        def get() -> None:
            answer = dashboard.get(url, auth=("admin", "pw"))
            assert answer.status_code == 200, (url, answer.status_code)

        return get

    results = {
        "errands.stats()": timed(errands.stats, args.rounds),
        "errands.jobs(limit=50)": timed(lambda: errands.jobs(limit=50), args.rounds),
        "errands.jobs(status='failed', limit=50)": timed(
            lambda: errands.jobs(status="failed", limit=50), args.rounds
        ),
        "errands.jobs(task='task7', limit=50)": timed(
            lambda: errands.jobs(task="task7", limit=50), args.rounds
        ),
        "dashboard: the overview, GET /": timed(page("/"), args.rounds),
        "dashboard: GET /api/stats": timed(page("/api/stats"), args.rounds),
        "dashboard: the jobs, GET /jobs": timed(page("/jobs"), args.rounds),
        "dashboard: GET /jobs?status=failed&task=task7": timed(
            page("/jobs?status=failed&task=task7"), args.rounds
        ),
        "dashboard: page 200 of the jobs, GET /jobs?page=200": timed(
            page("/jobs?page=200"), args.rounds
        ),
        "dashboard: one job, GET /jobs/{id}": timed(page(f"/jobs/{some_id}"), args.rounds),
        "`errands --version` (a process: start-up and imports alone)": timed(
            lambda: subprocess.run(
                [sys.executable, "-m", "errands", "--version"],
                check=True,
                capture_output=True,
                env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
            ),
            args.rounds,
        ),
        "`errands stats --json` (a process, import included)": timed(
            lambda: subprocess.run(
                [sys.executable, "-m", "errands", "stats", f"sqlite:///{path}", "--json"],
                check=True,
                capture_output=True,
                env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
            ),
            args.rounds,
        ),
    }
    for label, seconds in results.items():
        print(f"{label:<55} {seconds * 1000:8.1f} ms (median of {args.rounds})")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "ops.json").write_text(json.dumps({"jobs": args.jobs, "seconds": results}, indent=2))


if __name__ == "__main__":
    main()
