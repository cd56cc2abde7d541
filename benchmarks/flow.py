"""Flow control must not slow the plain path (issue "Flow control"): end to end on
SQLite through one `errands worker` process, N no-op jobs added one at a time.

- plain: this build beside the build before flow control (``--before``, a git
  revision, default ac7cd5d), the scenarios taking turns, medians of the rounds;
- delayed: the same, with 1,000 jobs delayed an hour (not due) in the store;
- held: the same, with 10,000 jobs of a task held by ``concurrency=1`` (one runs for
  an hour, the rest wait) in the store.

    .venv/bin/python benchmarks/flow.py [--jobs 5000] [--rounds 3] [--before REV]

Each measurement runs in a process of its own, on the build it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one(scenario: str, n: int) -> float:
    """In the child: one measurement on the build on sys.path; jobs/s."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import flow_app
    from benchmarks.common import stop

    from errands import JobStatus

    errands = flow_app.errands
    store = errands._core.backend.store
    if scenario == "delayed":
        for _ in range(1000):
            errands.add_task(flow_app.noop.options(delay=3600))  # type: ignore[attr-defined]
    elif scenario == "held":
        assert flow_app.held is not None
        for _ in range(10_000):
            errands.add_task(flow_app.held)
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "errands", "worker", "benchmarks.flow_app:errands"),
            *("--concurrency", "64", "--log-level", "warning"),
        ],
        cwd=ROOT,
        env=os.environ,
    )
    try:
        time.sleep(1.5)  # started, idle (or running its one held job)
        if scenario == "held":
            assert store.counts()[JobStatus.RUNNING] == 1
        started = time.perf_counter()
        for _ in range(n):
            errands.add_task(flow_app.noop)
        while store.counts()[JobStatus.SUCCEEDED] < n:
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        stop(worker)
    return n / elapsed


def measure(src: Path, scenario: str, n: int) -> float:
    work = Path(tempfile.mkdtemp(prefix="errands-flow-"))
    env = {
        **os.environ,
        "ERRANDS_URL": f"sqlite:///{work}/jobs.db",
        "PYTHONPATH": f"{src}:{ROOT}",
    }
    done = subprocess.run(
        [sys.executable, __file__, "--one", scenario, "--jobs", str(n)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", default="ac7cd5d")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(one(args.one, args.jobs))
        return
    before = Path(tempfile.mkdtemp(prefix="errands-before-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(before), args.before],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    runs = {
        "plain, before flow control": (before / "src", "plain"),
        "plain, this build": (ROOT / "src", "plain"),
        "1,000 delayed jobs not due": (ROOT / "src", "delayed"),
        "10,000 jobs held by concurrency=1": (ROOT / "src", "held"),
    }
    rates: dict[str, list[float]] = {label: [] for label in runs}
    try:
        for round in range(args.rounds):
            for label, (src, scenario) in runs.items():
                rate = measure(src, scenario, args.jobs)
                rates[label].append(rate)
                print(f"round {round + 1}  {label:<36} {rate:8.0f} jobs/s", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT)
    medians = {label: statistics.median(values) for label, values in rates.items()}
    base = medians["plain, this build"]
    print(f"\nmedians of {args.rounds} rounds, N={args.jobs}:")
    for label, value in medians.items():
        print(f"  {label:<36} {value:8.0f} jobs/s  {value / base:6.1%} of plain, this build")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "flow.json").write_text(json.dumps({"rates": rates, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
