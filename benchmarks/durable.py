"""The SQLite store: enqueue rate, end to end through a worker process (beside Huey on
SQLite), enqueue-to-start latency, and worker memory. One invocation, one machine.

    .venv/bin/python benchmarks/durable.py [--jobs 20000]

Needs the benchmark extras: pip install huey psutil
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(tempfile.mkdtemp(prefix="errands-bench-"))
os.environ["ERRANDS_URL"] = f"sqlite:///{WORK}/jobs.db"
os.environ["HUEY_DB"] = str(WORK / "huey.db")
sys.path.insert(0, str(ROOT))

from benchmarks import durable_app  # noqa: E402
from benchmarks.common import stop  # noqa: E402

from errands import JobStatus  # noqa: E402

errands = durable_app.errands


backend = errands._core.backend


def fresh_store() -> None:
    backend.store.close()
    for path in WORK.glob("jobs.db*"):
        path.unlink()
    backend.store = type(backend.store)(WORK / "jobs.db")


def enqueue_sequential(n: int) -> float:
    fresh_store()
    started = time.perf_counter()
    for _ in range(n):
        errands.add_task(durable_app.noop)
    return n / (time.perf_counter() - started)


def enqueue_concurrent(n: int, concurrency: int = 32) -> float:
    """The request path: each coroutine commits one job at a time, as a request does."""
    fresh_store()

    async def one_client(count: int) -> None:
        for _ in range(count):
            record = errands._core.new_record(durable_app.noop, (), {})
            await backend.commit([record])

    async def main() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(one_client(n // concurrency) for _ in range(concurrency)))
        return (n // concurrency * concurrency) / (time.perf_counter() - started)

    return asyncio.run(main())


def start_worker(concurrency: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "errands",
            "worker",
            "benchmarks.durable_app:errands",
            "--concurrency",
            str(concurrency),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT}/src"},
    )


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def end_to_end(n: int) -> dict[str, float]:
    fresh_store()
    worker = start_worker(64)
    time.sleep(1.5)  # started and idle
    idle = rss_mb(worker.pid)
    started = time.perf_counter()
    for _ in range(n):
        errands.add_task(durable_app.noop)
    while backend.store.unfinished():  # all were stored before: none left means all ran
        time.sleep(0.01)
    assert backend.store.counts()[JobStatus.SUCCEEDED] == n
    elapsed = time.perf_counter() - started
    after = rss_mb(worker.pid)
    stop(worker)
    return {"jobs_per_s": n / elapsed, "rss_idle_mb": idle, "rss_after_mb": after}


def huey_end_to_end(n: int) -> float:
    huey = durable_app.huey
    huey.flush()
    consumer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "huey.bin.huey_consumer",
            "benchmarks.durable_app.huey",
            "-w",
            "4",
            "-k",
            "thread",
            "-q",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT}/src"},
    )
    time.sleep(1.5)
    started = time.perf_counter()
    for _ in range(n):
        durable_app.huey_noop()
    while huey.result_count() < n:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop(consumer)
    return n / elapsed


def latency_in_process(samples: int) -> tuple[float, float]:
    fresh_store()

    async def main() -> list[float]:
        delays = []
        async with errands.lifespan():
            for _ in range(samples):
                enqueued = time.time()
                job = errands.add_task(durable_app.stamp)
                record = await job.wait(timeout=10)
                delays.append((record.result - enqueued) * 1000)
        return delays

    delays = asyncio.run(main())
    return statistics.median(delays), statistics.quantiles(delays, n=100)[98]


def latency_across_processes(samples: int) -> tuple[float, float]:
    fresh_store()
    worker = start_worker(8)
    time.sleep(1.5)
    delays = []
    for _ in range(samples):
        enqueued = time.time()
        job = errands.add_task(durable_app.stamp)
        while (record := errands.get(job.id)) is None or not record.finished:
            time.sleep(0.0005)
        delays.append((record.result - enqueued) * 1000)
        time.sleep(0.005)
    stop(worker)
    return statistics.median(delays), statistics.quantiles(delays, n=100)[98]


def show(label: str, value: str) -> None:
    print(f"{label:<46} {value}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument(
        "--memory-jobs",
        type=int,
        help="only measure worker RSS, idle and after this many jobs (e.g. 1000000)",
    )
    args = parser.parse_args()
    if args.memory_jobs:
        e2e = end_to_end(args.memory_jobs)
        show(
            f"end to end via `errands worker` (N={args.memory_jobs})",
            f"{e2e['jobs_per_s']:8.0f} jobs/s",
        )
        show(
            "worker RSS idle / after the jobs",
            f"{e2e['rss_idle_mb']:.1f} / {e2e['rss_after_mb']:.1f} MB",
        )
        return
    n = args.jobs
    results: dict[str, object] = {}

    rate = results["enqueue_sequential_per_s"] = enqueue_sequential(n)
    show("durable enqueue, one add_task at a time", f"{rate:8.0f} jobs/s")
    rate = results["enqueue_32_concurrent_per_s"] = enqueue_concurrent(n)
    show("durable enqueue, 32 concurrent requests", f"{rate:8.0f} jobs/s")
    e2e = end_to_end(n)
    results["end_to_end"] = e2e
    show(f"end to end via `errands worker` (N={n})", f"{e2e['jobs_per_s']:8.0f} jobs/s")
    rate = results["huey_sqlite_end_to_end_per_s"] = huey_end_to_end(n)
    show(f"end to end via Huey SqliteHuey (N={n})", f"{rate:8.0f} jobs/s")
    show(
        "worker RSS idle / after the jobs",
        f"{e2e['rss_idle_mb']:.1f} / {e2e['rss_after_mb']:.1f} MB",
    )
    p50, p99 = latency_in_process(args.samples)
    results["latency_in_process_ms"] = {"p50": p50, "p99": p99}
    show("enqueue -> start, in process", f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    p50, p99 = latency_across_processes(args.samples)
    results["latency_across_processes_ms"] = {"p50": p50, "p99": p99}
    show("enqueue -> start, across processes", f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")

    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "durable.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
