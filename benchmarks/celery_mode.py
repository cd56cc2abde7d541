"""Celery mode: raw Celery vs errands on the same Celery app and Redis broker, one run.

Three measures, raw and errands alternated in each round, --rounds rounds, medians:

- enqueue: --jobs jobs added one at a time from a plain loop, no worker running
  (raw ``task.delay(i)``, errands ``errands.add_task(task, i)``);
- http: POST /raw (a ``def`` endpoint calling ``delay``) and POST /errands (an
  ``async def`` endpoint, errands' ``BackgroundTasks``) on one uvicorn process,
  each loaded by ``wrk -t1 -c16`` for --duration seconds;
- e2e: --jobs jobs added from a loop while a Celery worker runs them (prefork -c 2,
  then threads -c 2), from the first add to the last SUCCESS in the result backend.

Broker Redis DB 12, result backend DB 13, queue bench-q (see celery_app.py); both
are emptied between runs. The machine is shared and noisy: read the ratios.

    .venv/bin/python benchmarks/celery_mode.py [--jobs 3000] [--rounds 3]
"""

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import celery_app as bench  # noqa: E402
from benchmarks.common import stop  # noqa: E402

SIDES = ("raw", "errands")
POOLS = ("prefork", "threads")
broker = redis.Redis.from_url(bench.BROKER)
backend = redis.Redis.from_url(bench.BACKEND)


def purge(worker_running: bool = False) -> None:
    """Empty the queue and the result backend (and, with no worker, its unacked set)."""
    broker.delete(bench.QUEUE)
    if not worker_running:  # kombu's records, and errands' own (celery/_redis.py)
        broker.delete("unacked", "unacked_index", "unacked_mutex")
        broker.delete("errands_unacked", "errands_unacked_index", "errands_unacked_mutex")
    backend.flushdb()


def add_raw(i: int) -> str:
    return str(bench.raw_noop.delay(i).id)


def add_errands(i: int) -> str:
    return bench.errands.add_task(bench.errands_noop, i).id


ADD: dict[str, Callable[[int], str]] = {"raw": add_raw, "errands": add_errands}


def enqueue_rate(side: str, n: int) -> float:
    add = ADD[side]
    purge()
    started = time.perf_counter()
    for i in range(n):
        add(i)
    elapsed = time.perf_counter() - started
    queued = broker.llen(bench.QUEUE)
    if queued != n:
        raise RuntimeError(f"{side}: {queued} messages in {bench.QUEUE}, expected {n}")
    purge()
    return n / elapsed


def wait_succeeded(ids: list[str], timeout: float) -> None:
    """Poll the result backend every ~50 ms until every task's status is SUCCESS."""
    keys = [f"celery-task-meta-{id}" for id in ids]
    deadline = time.monotonic() + timeout
    while keys:
        values = backend.mget(keys)
        keys = [
            key
            for key, value in zip(keys, values, strict=True)
            if value is None or json.loads(value).get("status") != "SUCCESS"
        ]
        if not keys:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(keys)} of {len(ids)} jobs not SUCCESS after {timeout} s")
        time.sleep(0.05)


def end_to_end_rate(side: str, n: int) -> float:
    add = ADD[side]
    purge(worker_running=True)
    started = time.perf_counter()
    ids = [add(i) for i in range(n)]
    wait_succeeded(ids, timeout=60 + n / 50)
    elapsed = time.perf_counter() - started
    purge(worker_running=True)
    return n / elapsed


def start_worker(pool: str, log: Path) -> "subprocess.Popen[bytes]":
    name = f"bench-{os.getpid()}-{pool}"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "benchmarks.celery_app:celery_app",
                "worker",
                "-P",
                pool,
                "-c",
                "2",
                "-Q",
                bench.QUEUE,
                "-n",
                f"{name}@%h",
                "-l",
                "warning",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its pool's children can be killed with it
        )
    deadline = time.monotonic() + 60
    while True:
        replies = bench.celery_app.control.ping(timeout=1) or []
        if any(name in hostname for reply in replies for hostname in reply):
            return worker
        if worker.poll() is not None or time.monotonic() > deadline:
            stop_worker(worker)
            raise RuntimeError(f"celery worker did not start:\n{log.read_text(errors='replace')}")


def stop_worker(worker: "subprocess.Popen[bytes]") -> None:
    stop(worker, grace=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)  # pool processes left behind, if any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wrk(url: str, duration: int, script: Path) -> tuple[float, int]:
    """req/s, and how many requests were answered."""
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{duration}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx responses\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rate, int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]


def http_rates(rounds: int, duration: int, work: Path) -> dict[str, list[float]]:
    script = work / "post.lua"
    script.write_text('wrk.method = "POST"\n')
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.celery_app:app",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    base = f"http://127.0.0.1:{port}/"
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    try:
        for _ in range(200):
            try:
                httpx.post(base + "raw", timeout=0.5).raise_for_status()
                break
            except httpx.TransportError:
                if server.poll() is not None:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.05)
        for side in SIDES:  # warm-up
            wrk(base + side, 1, script)
            purge()
        for number in range(rounds):
            for side in order(number):
                rate, answered = wrk(base + side, duration, script)
                queued = broker.llen(bench.QUEUE)
                if queued < answered:
                    raise RuntimeError(f"{side}: {answered} requests answered, {queued} queued")
                purge()
                rates[side].append(rate)
                show(f"http, round {number + 1}, {side}", f"{rate:9.0f} req/s")
    finally:
        stop(server, grace=5)
    return rates


def show(label: str, value: str) -> None:
    print(f"{label:<40} {value}", flush=True)


def environment() -> dict[str, str]:
    info = {
        "python": platform.python_version(),
        **{name: version(name) for name in ("celery", "kombu", "redis", "fastapi", "uvicorn")},
        "redis server": str(broker.info("server")["redis_version"]),
        "CPUs": str(os.cpu_count()),
    }
    print("  ".join(f"{key} {value}" for key, value in info.items()), flush=True)
    return info


def order(number: int) -> tuple[str, ...]:
    """Both sides, the first one swapped each round (neither always runs warmer)."""
    return SIDES if number % 2 == 0 else SIDES[::-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per enqueue/e2e run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side, alternated")
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per http run")
    parser.add_argument(
        "--only",
        default="enqueue,http,e2e",
        help="comma-separated measures to run, of: enqueue, http, e2e",
    )
    args = parser.parse_args()
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    if unknown := only - {"enqueue", "http", "e2e"}:
        parser.error(f"--only: unknown measure(s) {', '.join(sorted(unknown))}")
    if "http" in only and shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    n, rounds = args.jobs, args.rounds
    work = Path(tempfile.mkdtemp(prefix="errands-bench-celery-"))
    results: dict[str, object] = {"environment": environment(), "jobs": n, "rounds": rounds}
    # label, unit, raw median, errands median, median of the rounds' errands/raw
    rows: list[tuple[str, str, float, float, float]] = []

    def report(key: str, label: str, unit: str, rates: dict[str, list[float]]) -> None:
        results[key] = rates
        medians = [statistics.median(rates[side]) for side in SIDES]
        paired = statistics.median(e / r for r, e in zip(*(rates[s] for s in SIDES), strict=True))
        rows.append((label, unit, medians[0], medians[1], paired))

    purge()
    try:
        if "enqueue" in only:
            for side in SIDES:  # warm-up: connections, first publish
                for i in range(min(100, n)):
                    ADD[side](i)
            purge()
            rates: dict[str, list[float]] = {side: [] for side in SIDES}
            for number in range(rounds):
                for side in order(number):
                    rates[side].append(enqueue_rate(side, n))
                    show(f"enqueue, round {number + 1}, {side}", f"{rates[side][-1]:9.0f} jobs/s")
            report("enqueue", f"enqueue from a loop (N={n})", "jobs/s", rates)

        if "http" in only:
            report(
                "http",
                f"enqueue from an endpoint (wrk -c16, {args.duration} s)",
                "req/s",
                http_rates(rounds, args.duration, work),
            )

        if "e2e" in only:
            for pool in POOLS:
                worker = start_worker(pool, work / f"worker-{pool}.log")
                try:
                    for side in SIDES:  # warm-up: pool processes, connections
                        wait_succeeded([ADD[side](i) for i in range(min(100, n))], timeout=60)
                    rates = {side: [] for side in SIDES}
                    for number in range(rounds):
                        for side in order(number):
                            rates[side].append(end_to_end_rate(side, n))
                            show(
                                f"e2e {pool}, round {number + 1}, {side}",
                                f"{rates[side][-1]:9.0f} jobs/s",
                            )
                    report(f"e2e_{pool}", f"end to end, {pool} -c 2 (N={n})", "jobs/s", rates)
                finally:
                    stop_worker(worker)
    finally:
        purge()
    shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"medians of {rounds} round(s); in each round both sides ran, one after the other")
    print("(the order swapped each round); 'paired' is the median of the rounds' own ratios")
    print()
    header = f"| {'scenario':<46} | {'raw':>14} | {'errands':>14} | errands/raw | paired |"
    print(header)
    print(f"| {'-' * 46} | {'-' * 13}: | {'-' * 13}: | {'-' * 10}: | {'-' * 5}: |")
    for label, unit, raw, errands, paired in rows:
        print(
            f"| {label:<46} | {raw:>7,.0f} {unit:<6} | {errands:>7,.0f} {unit:<6} "
            f"| {errands / raw:>11.2f} | {paired:>6.2f} |"
        )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "celery_mode.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
