"""One worker process draining N jobs, errands on SQLite beside Huey, Taskiq, Dramatiq
and Celery. Each job is one Redis INCR (DB 14, a key of the turn's own).

For each system and round: a fresh temp dir and key prefix, one worker process started
(its command below), one warm-up job run through it, then N jobs added one at a time
from this process while the worker runs. Measured from just before the first add:

- jobs/s: N over the time from the first add to the counter reaching N (polled);
- worker CPU per job: user + system CPU of the worker process and its children (psutil),
  from just before the first add to the counter reaching N, over N;
- RSS: the worker process and its children, summed, at the end.

Then the worker is stopped (SIGTERM, SIGKILL after --grace seconds, the same for any
child left) and the turn's files and Redis keys are removed. The systems take turns,
in a rotated order each round; medians over --rounds are printed and written to
benchmarks/results/workers.json. The machine is shared: compare ratios within a run.

    .venv/bin/python benchmarks/workers.py [--jobs 5000] [--rounds 3] [--systems a,b]
    .venv/bin/python benchmarks/workers.py --jobs 20000 --profile /tmp/worker.txt
    .venv/bin/python benchmarks/workers.py --latency 300 [--idle-ms 30] [--rounds 3]

--latency measures enqueue -> start instead, one job in flight, the worker idle
between jobs (see ``latency_turn``).

--profile runs errands alone, once, with py-spy (in the bench extra) sampling every
thread of the worker while it drains, and prints the functions by own samples. (The
worker command under ``python -m cProfile -o`` writes nothing: ``errands worker`` ends
with ``os._exit``, and cProfile would see only the event loop's thread.)
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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import workers_app  # noqa: E402

PY = sys.executable
TARGET = "benchmarks.workers_app:target"

# Each system's worker: one process (with the children it makes itself).
HUEY = [PY, "-m", "huey.bin.huey_consumer", TARGET.replace(":", "."), "-k", "thread", "-w", "8"]
CELERY = [PY, "-m", "celery", "-A", TARGET, "worker", "--loglevel", "WARNING"]
COMMANDS: dict[str, list[str]] = {
    "errands-sqlite": [PY, "-m", "errands", "worker", TARGET, "--log-level", "warning"],
    "huey-redis": [*HUEY, "-q"],
    "huey-sqlite": [*HUEY, "-q"],
    "taskiq-redis": [
        PY,
        "-m",
        "taskiq",
        "worker",
        TARGET,
        "--workers",
        "1",
        "--log-level",
        "WARNING",
    ],
    "dramatiq-redis": [PY, "-m", "dramatiq", TARGET, "--processes", "1", "--threads", "8"],
    "celery-prefork": [*CELERY, "-P", "prefork"],
    "celery-threads": [*CELERY, "-P", "threads", "-c", "8"],
}
#: The systems whose latency is measured with an ``async def`` job too (they run one on
#: their event loop; the others would run it in a thread, or not at all).
ASYNC_JOBS = ("errands-sqlite", "taskiq-redis")
PACKAGES = ("errands", "huey", "taskiq", "taskiq-redis", "dramatiq", "celery", "kombu", "redis")

counter = redis.Redis.from_url(workers_app.COUNTER_URL)
brokers = redis.Redis.from_url(workers_app.BROKER_URL)


def tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu(process: psutil.Process) -> tuple[float, float]:
    """(user, system) seconds of the process and its children, live or reaped."""
    user = system = 0.0
    for p in tree(process):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            user += t.user + t.children_user
            system += t.system + t.children_system
    return user, system


def tree_rss(process: psutil.Process) -> tuple[float, float]:
    """(the process's RSS, the sum over it and its children), in MB."""
    sizes = []
    for p in tree(process):
        with contextlib.suppress(psutil.NoSuchProcess):
            sizes.append(p.memory_info().rss / 2**20)
    return (sizes[0] if sizes else 0.0), sum(sizes)


def stop(worker: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; then the same for any child left."""
    children = tree(psutil.Process(worker.pid))[1:] if worker.poll() is None else []
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(grace)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(10)
    left = [c for c in children if c.is_running()]
    for child in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(left, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=5)


def wait_for(key: str, n: int, timeout: float, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while int(counter.get(key) or 0) < n:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode})")
        if time.monotonic() > deadline:
            got = int(counter.get(key) or 0)
            raise TimeoutError(f"{got} of {n} jobs done after {timeout:.0f} s")
        time.sleep(0.002)


def spy(pid: int, path: str) -> subprocess.Popen[bytes]:
    """py-spy sampling every thread of ``pid`` into ``path`` (collapsed stacks)."""
    spy_bin = Path(PY).with_name("py-spy")
    # --gil: only the thread holding the GIL, i.e. running Python (not one waiting).
    command = [str(spy_bin), "record", "--pid", str(pid), "--rate", "250", "--gil"]
    command += ["--format", "raw", "--output", path]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def own_time(path: str, top: int = 25) -> list[tuple[str, int, float]]:
    """(function, own samples, share) from py-spy's collapsed stacks, most first; then
    the same by the own frame's package (errands, asyncio, redis, ...)."""
    own: dict[str, int] = {}
    where: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frame = re.sub(r":\d+\)$", ")", stack.rpartition(";")[2])  # lines merged
        own[frame] = own.get(frame, 0) + int(count)
        file = frame.rpartition("(")[2]
        parts = file.removesuffix(")").split("/")
        package = "/".join(parts[:2] if parts[0] == "errands" else parts[:1])
        package = package.removesuffix(".py")
        where[f"[{package}]"] = where.get(f"[{package}]", 0) + int(count)
    total = sum(own.values()) or 1
    ranked = sorted(own.items(), key=lambda item: -item[1])[:top]
    ranked += sorted(where.items(), key=lambda item: -item[1])[:12]
    return [(frame, samples, samples / total) for frame, samples in ranked]


@dataclass
class Turn:
    prefix: str  # of the turn's keys
    built: workers_app.Built
    worker: subprocess.Popen[bytes]

    def warm_up(self, args: argparse.Namespace) -> None:
        """Return once the worker is up and has run one job."""
        self.built.produce(f"{self.prefix}:ready", 1)
        wait_for(f"{self.prefix}:ready", 1, args.start_timeout, self.worker)


@contextlib.contextmanager
def running(system: str, args: argparse.Namespace, result: dict[str, Any]) -> Iterator[Turn]:
    """One turn's worker: a fresh temp dir and key prefix, the worker process started;
    afterwards, whatever happened (an error goes in ``result``, with the end of the
    worker's log), the worker stopped, its files and keys removed."""
    prefix = f"wbench-{uuid.uuid4().hex[:12]}"
    tmp = tempfile.mkdtemp(prefix="errands-workers-")
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT}/src",
        "BENCH_SYSTEM": system,
        "BENCH_PREFIX": prefix,
        "BENCH_TMP": tmp,
    }
    built = workers_app.build(system, prefix, tmp)
    log = open(f"{tmp}/worker.log", "wb")  # noqa: SIM115 (closed below)
    worker = subprocess.Popen(
        COMMANDS[system], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield Turn(prefix, built, worker)
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        stop(worker, args.grace)
        log.close()
        if "error" in result:
            tail = Path(f"{tmp}/worker.log").read_bytes()[-2000:].decode(errors="replace")
            result["log_tail"] = tail
        with contextlib.suppress(Exception):
            built.close()
        keys = list(counter.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            counter.delete(*keys)
        stale = list(brokers.scan_iter(match=f"*{prefix}*", count=1000))
        if stale:
            brokers.delete(*stale)
        shutil.rmtree(tmp, ignore_errors=True)


def turn(system: str, n: int, args: argparse.Namespace, profile: str | None = None) -> dict:
    result: dict[str, Any] = {"system": system}
    with running(system, args, result) as this:
        this.warm_up(args)
        key, worker = f"{this.prefix}:count", this.worker
        process = psutil.Process(worker.pid)
        sampler = spy(worker.pid, profile) if profile else None
        cpu_before = tree_cpu(process)
        started = time.perf_counter()
        this.built.produce(key, n)
        added = time.perf_counter()
        wait_for(key, n, args.timeout, worker)
        elapsed = time.perf_counter() - started
        (user, system_), (user_before, system_before) = tree_cpu(process), cpu_before
        user, system_ = user - user_before, system_ - system_before
        if sampler:
            sampler.send_signal(signal.SIGINT)  # writes its file and exits
            sampler.wait(30)
        rss_main, rss_tree = tree_rss(process)
        result |= {
            "jobs_per_s": n / elapsed,
            "add_per_s": n / (added - started),
            "cpu_us_per_job": (user + system_) / n * 1e6,
            "user_us_per_job": user / n * 1e6,
            "system_us_per_job": system_ / n * 1e6,
            "rss_mb": rss_tree,
            "rss_main_mb": rss_main,
            "processes": len(tree(process)),
        }
    return result


def latency_turn(system: str, args: argparse.Namespace, *, asynchronous: bool) -> dict:
    """Enqueue -> start, one job in flight: the worker idles ``--idle-ms`` between
    jobs; each job pushes ``time.time()`` as its first step to a list this process waits
    on (BLPOP: woken at once, no poll); the latency is that stamp less the time just
    before the add. With ``asynchronous``, the job is an ``async def`` (where the system
    has one)."""
    result: dict[str, Any] = {"system": f"{system}{' (async def)' if asynchronous else ''}"}
    idle = args.idle_ms / 1000
    with running(system, args, result) as this:
        this.warm_up(args)
        stamps = f"{this.prefix}:stamps"
        delays = []
        for sample in range(args.latency + 20):  # the first 20: warm-up
            time.sleep(idle)
            before = time.time()
            this.built.add_stamp(stamps, asynchronous)
            popped = counter.blpop([stamps], timeout=10)
            if popped is None:
                raise TimeoutError(f"latency job {sample} did not start within 10 s")
            if sample >= 20:
                delays.append((float(popped[1]) - before) * 1000)
        quantiles = statistics.quantiles(delays, n=100)
        result |= {
            "p50_ms": statistics.median(delays),
            "p90_ms": quantiles[89],
            "p99_ms": quantiles[98],
        }
    return result


def latencies(systems: list[str], args: argparse.Namespace) -> None:
    """``--latency``: each system's turn in a rotated order each round (errands twice:
    its job a ``def``, then an ``async def``); the medians of the rounds' p50/p90/p99."""
    turns = [(system, False) for system in systems]
    turns += [(system, True) for system in systems if system in ASYNC_JOBS]
    runs: list[dict] = []
    for round_ in range(args.rounds):
        shift = round_ % len(turns)
        for system, asynchronous in turns[shift:] + turns[:shift]:
            result = latency_turn(system, args, asynchronous=asynchronous)
            runs.append(result)
            if "error" in result:
                print(f"round {round_} {result['system']:<28} FAILED {result['error']}")
                print(result["log_tail"], flush=True)
            else:
                print(
                    f"round {round_} {result['system']:<28} p50 {result['p50_ms']:6.3f} ms "
                    f"p90 {result['p90_ms']:6.3f} p99 {result['p99_ms']:6.3f}",
                    flush=True,
                )
    print(f"\nmedians, {args.latency} jobs a turn, worker idle {args.idle_ms:g} ms between jobs")
    medians = {}
    for name in dict.fromkeys(r["system"] for r in runs):
        ok = [r for r in runs if r["system"] == name and "error" not in r]
        if ok:
            medians[name] = {
                k: statistics.median(r[k] for r in ok) for k in ("p50_ms", "p90_ms", "p99_ms")
            }
            m = medians[name]
            print(
                f"{name:<28} p50 {m['p50_ms']:6.3f} ms  p90 {m['p90_ms']:6.3f}  "
                f"p99 {m['p99_ms']:6.3f}  ({len(ok)} rounds)"
            )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "samples": args.latency,
        "idle_ms": args.idle_ms,
        "medians": medians,
        "runs": runs,
    }
    (out / "workers_latency.json").write_text(json.dumps(report, indent=2))


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--systems", default=",".join(workers_app.SYSTEMS))
    parser.add_argument("--timeout", type=float, default=240, help="per drain, seconds")
    parser.add_argument("--start-timeout", type=float, default=60, help="worker start-up")
    parser.add_argument("--grace", type=float, default=15, help="SIGTERM to SIGKILL")
    parser.add_argument("--profile", help="only profile the errands worker, py-spy's stacks here")
    parser.add_argument(
        "--latency",
        type=int,
        metavar="SAMPLES",
        help="measure enqueue -> start instead, SAMPLES jobs one at a time a turn",
    )
    parser.add_argument(
        "--idle-ms", type=float, default=30, help="--latency: the worker's idle time between jobs"
    )
    args = parser.parse_args()
    if args.profile:
        result = turn("errands-sqlite", args.jobs, args, profile=args.profile)
        print(json.dumps(result, indent=2))
        if "error" not in result:
            for frame, samples, share in own_time(args.profile):
                print(f"{share:6.1%} {samples:6d}  {frame}")
        return
    systems = args.systems.split(",")
    for system in systems:
        if system not in COMMANDS:
            parser.error(f"unknown system {system!r}; known: {', '.join(COMMANDS)}")
    print(json.dumps(versions()), flush=True)
    if args.latency:
        latencies(systems, args)
        return
    runs: list[dict] = []
    for round_ in range(args.rounds):
        shift = round_ % len(systems)
        for system in systems[shift:] + systems[:shift]:
            result = turn(system, args.jobs, args)
            result["round"] = round_
            runs.append(result)
            if "error" in result:
                print(f"round {round_} {system:<16} FAILED {result['error']}", flush=True)
                print(result["log_tail"], flush=True)
            else:
                print(
                    f"round {round_} {system:<16} {result['jobs_per_s']:8.0f} jobs/s "
                    f"{result['cpu_us_per_job']:7.0f} µs CPU/job {result['rss_mb']:6.1f} MB",
                    flush=True,
                )

    medians: dict[str, dict[str, float | int]] = {}
    for system in systems:
        ok = [r for r in runs if r["system"] == system and "error" not in r]
        if ok:
            medians[system] = {
                measure: statistics.median(r[measure] for r in ok)
                for measure in (
                    "jobs_per_s",
                    "cpu_us_per_job",
                    "user_us_per_job",
                    "system_us_per_job",
                    "rss_mb",
                    "add_per_s",
                )
            } | {"rounds": len(ok)}
    print(f"\nmedians, N = {args.jobs}, {args.rounds} rounds")
    print(
        f"{'system':<16} {'jobs/s':>8} {'CPU µs/job':>11} {'user':>6} {'sys':>6} "
        f"{'RSS MB':>7} {'adds/s':>7} {'rounds':>6}"
    )
    for system, m in medians.items():
        print(
            f"{system:<16} {m['jobs_per_s']:8.0f} {m['cpu_us_per_job']:11.0f} "
            f"{m['user_us_per_job']:6.0f} {m['system_us_per_job']:6.0f} "
            f"{m['rss_mb']:7.1f} {m['add_per_s']:7.0f} {m['rounds']:6d}"
        )
    if "errands-sqlite" in medians and "huey-redis" in medians:
        ratio = medians["errands-sqlite"]["jobs_per_s"] / medians["huey-redis"]["jobs_per_s"]
        print(f"errands on SQLite / Huey on Redis, jobs/s: {ratio:.2f}x (target >= 1.5x)")

    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "jobs": args.jobs,
        "rounds": args.rounds,
        "versions": versions(),
        "commands": {s: [c.replace(PY, "python") for c in COMMANDS[s]] for s in systems},
        "medians": medians,
        "runs": runs,
    }
    (out / "workers.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
