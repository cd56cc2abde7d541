"""Celery mode: errands against raw Celery, on one Redis broker, one run.

Three sides, taking turns in each round (the first one rotated each round), --rounds
rounds, medians and paired ratios:

- errands: errands' Celery mode (``celery_app.py``), ``errands.add_task(task, i)``;
- required: raw Celery configured as errands requires (``celery_raw_app.py``: Redis
  result backend, result_extended, JSON, acks_late, reject_on_worker_lost, prefetch
  1, errands' broker transport options), ``task.delay(i)``;
- defaults: raw Celery's defaults (no result backend, early acks), ``task.delay(i)``.

Every job is one INCR of a Redis counter (the same work on every side); a run ends
when the counter says all ran. Measures:

- enqueue: --jobs jobs added one at a time from a plain loop, no worker running;
- http: one uvicorn process, POST /errands (an ``async def`` endpoint, errands'
  ``BackgroundTasks``), /required and /defaults (``def`` endpoints calling
  ``delay``), each loaded by ``wrk -t1 -c16`` for --duration seconds;
- e2e: --jobs jobs added from a loop while one Celery worker of that side's app
  runs them (prefork -c 2, then threads -c 2), from the first add until all ran;
- commands: the Redis commands of --count-jobs jobs end to end (prefork -c 2), per
  job, read with MONITOR (not timed: MONITOR slows Redis down).

Broker Redis DB 12, result backend DB 13, one queue a side; both DBs are emptied
between runs. The machine is shared and noisy: read the paired ratios.

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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import celery_app as bench  # noqa: E402
from benchmarks import celery_raw_app as raw  # noqa: E402
from benchmarks import redis_monitor  # noqa: E402
from benchmarks.common import FAST, free_port, stop, uvicorn  # noqa: E402

SIDES = ("errands", "required", "defaults")
POOLS = ("prefork", "threads")
APPS = {
    "errands": "benchmarks.celery_app:celery_app",
    "required": "benchmarks.celery_raw_app:required_app",
    "defaults": "benchmarks.celery_raw_app:defaults_app",
}
CELERY_APPS = {
    "errands": bench.celery_app,
    "required": raw.required_app,
    "defaults": raw.defaults_app,
}
# A PYTHONPATH given runs another errands (an older build's src) in the workers too.
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
}
QUEUES = {"errands": bench.QUEUE, "required": raw.REQUIRED_QUEUE, "defaults": raw.DEFAULTS_QUEUE}
broker = redis.Redis.from_url(raw.BROKER)
backend = redis.Redis.from_url(raw.BACKEND)


def lists(queue: str) -> list[str]:
    """The Redis lists of a queue: kombu keeps a message of priority 3 to 9 in one of
    its own (errands publishes its default priority, 0, as kombu's 4)."""
    return [queue, *(f"{queue}\x06\x16{step}" for step in (3, 6, 9))]


def queued(side: str) -> int:
    return sum(broker.llen(name) for name in lists(QUEUES[side]))


def purge(worker_running: bool = False) -> None:
    """Empty the queues, the counter and the result backend (and, with no worker, the
    records of unacknowledged messages: kombu's, errands' and the required app's)."""
    broker.delete(*(name for queue in QUEUES.values() for name in lists(queue)), raw.COUNTER_KEY)
    if not worker_running:
        for prefix in ("", "errands_", "bench_required_"):
            broker.delete(*(prefix + key for key in ("unacked", "unacked_index", "unacked_mutex")))
    backend.flushdb()


def add_errands(i: int) -> str:
    return bench.errands.add_task(bench.errands_noop, i).id


def add_required(i: int) -> str:
    return str(raw.required_noop.delay(i).id)


def add_defaults(i: int) -> str:
    return str(raw.defaults_noop.delay(i).id)


ADD: dict[str, Callable[[int], str]] = {
    "errands": add_errands,
    "required": add_required,
    "defaults": add_defaults,
}


def check_configs() -> None:
    """The required app has what errands set on its own app (unacked keys aside)."""
    ours, theirs = bench.celery_app.conf, raw.required_app.conf

    def transport(conf: object) -> dict[str, object]:
        options = dict(conf.broker_transport_options)  # type: ignore[attr-defined]
        return {k: v for k, v in options.items() if not k.endswith("_key")}  # names

    for name in ("result_extended", "worker_prefetch_multiplier"):
        if ours[name] != theirs[name]:
            raise SystemExit(f"required app: {name}={theirs[name]!r}, errands set {ours[name]!r}")
    if transport(ours) != transport(theirs):
        raise SystemExit(f"required app: transport {transport(theirs)}, errands {transport(ours)}")
    task = bench.celery_app.tasks[bench.errands_noop.name]
    for name in ("acks_late", "reject_on_worker_lost", "serializer", "ignore_result"):
        if getattr(task, name) != getattr(raw.required_noop, name):
            raise SystemExit(f"required task: {name} differs from errands' task")


def enqueue_rate(side: str, n: int) -> float:
    add = ADD[side]
    purge()
    started = time.perf_counter()
    for i in range(n):
        add(i)
    elapsed = time.perf_counter() - started
    if (count := queued(side)) != n:
        raise RuntimeError(f"{side}: {count} messages in {QUEUES[side]}, expected {n}")
    purge()
    return n / elapsed


def wait_ran(n: int, timeout: float) -> None:
    """Poll the counter every 5 ms until n jobs ran."""
    deadline = time.monotonic() + timeout
    while int(broker.get(raw.COUNTER_KEY) or 0) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{broker.get(raw.COUNTER_KEY)} of {n} jobs ran after {timeout} s")
        time.sleep(0.005)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children (a worker's pool)."""
    process = psutil.Process(pid)
    times = [p.cpu_times() for p in (process, *process.children(recursive=True))]
    return sum(t.user + t.system for t in times)


def end_to_end(side: str, n: int, worker: int) -> tuple[float, float, float]:
    """jobs/s, and CPU µs a job of the worker (pid ``worker``) and of the adds."""
    add = ADD[side]
    purge(worker_running=True)
    worker_cpu = cpu_seconds(worker)
    started = time.perf_counter()
    producer_cpu = time.process_time()
    for i in range(n):
        add(i)
    producer_cpu = time.process_time() - producer_cpu
    wait_ran(n, timeout=60 + n / 50)
    elapsed = time.perf_counter() - started
    worker_cpu = cpu_seconds(worker) - worker_cpu
    purge(worker_running=True)
    return n / elapsed, worker_cpu * 1e6 / n, producer_cpu * 1e6 / n


def warm_up(side: str, n: int) -> None:
    """Pool processes, connections, first publishes."""
    purge(worker_running=True)
    for i in range(min(100, n)):
        ADD[side](i)
    wait_ran(min(100, n), timeout=60)
    time.sleep(0.2)  # the last results stored
    purge(worker_running=True)


def start_worker(side: str, pool: str, log: Path) -> "subprocess.Popen[bytes]":
    name = f"bench-{os.getpid()}-{side}-{pool}"
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                APPS[side],
                "worker",
                "-P",
                pool,
                "-c",
                "2",
                "-Q",
                QUEUES[side],
                "-n",
                f"{name}@%h",
                "-l",
                "warning",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its pool's children can be killed with it
        )
    deadline = time.monotonic() + 60
    while True:
        replies = CELERY_APPS[side].control.ping(timeout=1) or []
        if any(name in hostname for reply in replies for hostname in reply):
            return worker
        if worker.poll() is not None or time.monotonic() > deadline:
            stop_worker(worker)
            raise RuntimeError(f"celery worker did not start:\n{log.read_text(errors='replace')}")


def stop_worker(worker: "subprocess.Popen[bytes]") -> None:
    stop(worker, grace=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)  # pool processes left behind, if any


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
        uvicorn("benchmarks.celery_app:app", port, "warning", *FAST),
        cwd=ROOT,
        env=ENV,
    )
    base = f"http://127.0.0.1:{port}/"
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    try:
        for _ in range(200):
            try:
                httpx.post(base + "defaults", timeout=0.5).raise_for_status()
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
                if (count := queued(side)) < answered:
                    raise RuntimeError(f"{side}: {answered} requests answered, {count} queued")
                purge()
                rates[side].append(rate)
                show(f"http, round {number + 1}, {side}", f"{rate:9.0f} req/s")
    finally:
        stop(server, grace=5)
    return rates


def e2e_rates(
    pool: str, n: int, rounds: int, work: Path, cpu: dict[str, list[tuple[float, float]]]
) -> dict[str, list[float]]:
    """One worker of the side's app at a time, started for its turn and warmed up;
    the CPU µs a job of the worker and of the adds are appended to ``cpu``."""
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    for number in range(rounds):
        for side in order(number):
            worker = start_worker(side, pool, work / f"worker-{side}-{pool}.log")
            try:
                warm_up(side, n)
                rate, worker_us, producer_us = end_to_end(side, n, worker.pid)
            finally:
                stop_worker(worker)
            rates[side].append(rate)
            cpu[side].append((worker_us, producer_us))
            show(
                f"e2e {pool}, round {number + 1}, {side}",
                f"{rate:9.0f} jobs/s, CPU {worker_us:5.0f} + {producer_us:4.0f} µs a job",
            )
    return rates


def redis_commands(side: str, n: int, work: Path) -> dict[str, object]:
    """The Redis commands a job of n jobs end to end on the broker's and the result
    backend's DBs: sent by the producer (this process), by the worker, and run by Lua
    scripts; and each command's. The poll of the counter is left out."""
    worker = start_worker(side, "prefork", work / f"worker-{side}-commands.log")
    dbs = {str(r.connection_pool.connection_kwargs.get("db", 0)) for r in (broker, backend)}
    url = urlsplit(raw.BROKER)
    log = work / f"monitor-{side}.txt"
    try:
        warm_up(side, n)
        with redis_monitor.monitor(url.hostname or "127.0.0.1", url.port or 6379, log) as ours:
            for i in range(n):
                ADD[side](i)
            wait_ran(n, timeout=60 + n / 50)
            time.sleep(0.3)  # the last results stored, the last acks
    finally:
        stop_worker(worker)
        purge()
    counted = redis_monitor.count(log, dbs, ours, ("GET", raw.COUNTER_KEY))
    per_job = {k: v / n for k, v in counted.items() if isinstance(v, int)}
    per_job["commands"] = per_job["producer"] + per_job["worker"]
    by_command = counted["by_command"]
    assert isinstance(by_command, dict)
    return {**per_job, "by_command": {k: v / n for k, v in by_command.items()}}


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
    """Every side, the first one rotated each round (none always runs warmer)."""
    shift = number % len(SIDES)
    return SIDES[shift:] + SIDES[:shift]


def paired(rates: dict[str, list[float]], baseline: str) -> float:
    """The median of the rounds' own errands/baseline ratios."""
    ratios = [e / b for e, b in zip(rates["errands"], rates[baseline], strict=True)]
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per enqueue/e2e run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side, in turns")
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per http run")
    parser.add_argument("--count-jobs", type=int, default=1000, help="jobs of the commands count")
    parser.add_argument(
        "--only",
        default="enqueue,http,e2e,commands",
        help="comma-separated measures to run, of: enqueue, http, e2e, commands",
    )
    args = parser.parse_args()
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    if unknown := only - {"enqueue", "http", "e2e", "commands"}:
        parser.error(f"--only: unknown measure(s) {', '.join(sorted(unknown))}")
    if "http" in only and shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    if "commands" in only and shutil.which("redis-cli") is None:
        raise SystemExit("redis-cli is needed: apt-get install redis-tools")
    check_configs()
    n, rounds = args.jobs, args.rounds
    work = Path(tempfile.mkdtemp(prefix="errands-bench-celery-"))
    results: dict[str, object] = {"environment": environment(), "jobs": n, "rounds": rounds}
    # label, unit, medians of each side, paired errands/required, errands/defaults
    rows: list[tuple[str, str, list[float], float, float]] = []

    def report(key: str, label: str, unit: str, rates: dict[str, list[float]]) -> None:
        results[key] = rates
        medians = [statistics.median(rates[side]) for side in SIDES]
        rows.append((label, unit, medians, paired(rates, "required"), paired(rates, "defaults")))

    commands: dict[str, dict[str, object]] = {}
    cpus: dict[str, dict[str, list[tuple[float, float]]]] = {}
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
                label = f"end to end, {pool} -c 2 (N={n})"
                cpu = cpus[pool] = {side: [] for side in SIDES}
                report(f"e2e_{pool}", label, "jobs/s", e2e_rates(pool, n, rounds, work, cpu))
                results[f"e2e_{pool}_cpu_us"] = cpu

        if "commands" in only:
            for side in SIDES:
                commands[side] = redis_commands(side, args.count_jobs, work)
                show(f"commands, {side}", f"{commands[side]['commands']:6.2f} a job")
            results["commands"] = commands
    finally:
        purge()
    shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"medians of {rounds} round(s); in each round every side ran, one after another")
    print("(the first rotated each round); 'paired' is the median of the rounds' own ratios")
    print()
    print(
        f"| {'scenario':<46} | {'errands':>14} | {'raw, required':>14} | {'raw, defaults':>14} "
        f"| errands/required (paired) | errands/defaults (paired) |"
    )
    print(f"| {'-' * 46} | {'-' * 13}: | {'-' * 13}: | {'-' * 13}: | {'-' * 24}: | {'-' * 24}: |")
    for label, unit, medians, vs_required, vs_defaults in rows:
        cells = " | ".join(f"{m:>7,.0f} {unit:<6}" for m in medians)
        print(
            f"| {label:<46} | {cells} | {medians[0] / medians[1]:>12.2f} ({vs_required:.2f}) "
            f"| {medians[0] / medians[2]:>12.2f} ({vs_defaults:.2f}) |"
        )
    if cpus:
        print()
        print("CPU µs a job, end to end (medians): the worker's processes + the adds")
        print()
        print(f"| pool | {' | '.join(SIDES)} |")
        print(f"| --- |{' ---: |' * len(SIDES)}")
        for pool, cpu in cpus.items():
            cells = [
                f"{statistics.median(w for w, _ in cpu[side]):,.0f} + "
                f"{statistics.median(p for _, p in cpu[side]):,.0f}"
                for side in SIDES
            ]
            print(f"| {pool} -c 2 | {' | '.join(cells)} |")
    if commands:
        print()
        print(f"Redis commands a job, end to end, prefork -c 2 (N={args.count_jobs}, MONITOR)")
        print()
        print("| side | commands | by the producer | by the worker | in Lua scripts | most |")
        print("| --- | ---: | ---: | ---: | ---: | --- |")
        for side, counted in commands.items():
            most = ", ".join(
                f"{name} {count:.2f}"
                for name, count in list(counted["by_command"].items())[:8]  # type: ignore[attr-defined]
            )
            print(
                f"| {side} | {counted['commands']:.2f} | {counted['producer']:.2f} "
                f"| {counted['worker']:.2f} | {counted['lua']:.2f} | {most} |"
            )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "celery_mode.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
