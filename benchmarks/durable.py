"""The durable stores: enqueue rate, end to end through worker processes, enqueue-to-start
latency, and worker memory. One invocation, one machine.

    .venv/bin/python benchmarks/durable.py [--jobs 20000]
    .venv/bin/python benchmarks/durable.py --store postgres [--jobs 5000] [--rounds 3]

``--store sqlite`` (the default) measures the SQLite store beside Huey on SQLite, once,
as this script always did. ``--store postgres`` measures the PostgreSQL store beside the
SQLite store and Celery+Redis in one run: each measurement in a process of its own, all
of them taking turns (the order rotated each round), medians of ``--rounds`` rounds (see
``compare``). PostgreSQL: a database of the benchmark's own, ``errands_bench_<random>``
on the server of ``--postgres`` (a schema a measurement), dropped at the end. Celery:
celery_mode.py's apps, broker and result backend (Redis DBs 12 and 13, emptied); its raw side is
raw Celery configured as errands requires (celery_raw_app.py's required_app).
``--before REV`` runs the PostgreSQL measurements on that build too (a git worktree).

Needs the benchmark extras: pip install -e '.[bench]' (Huey, psutil, Celery)
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(tempfile.mkdtemp(prefix="errands-bench-"))
# A measurement of ``compare`` gets its store's URL from its parent.
os.environ["ERRANDS_URL"] = os.environ.get("BENCH_DURABLE_URL") or f"sqlite:///{WORK}/jobs.db"
os.environ["HUEY_DB"] = str(WORK / "huey.db")
sys.path.insert(0, str(ROOT))

from benchmarks import durable_app  # noqa: E402
from benchmarks.common import stop  # noqa: E402

import errands as package  # noqa: E402
from errands import JobStatus  # noqa: E402

#: The errands the workers run: the one this process runs (this tree's, or --before's).
SRC = Path(package.__file__).resolve().parent.parent

errands = durable_app.errands


backend = errands._core.backend
POSTGRES = errands.url.startswith("postgres")


def fresh_store() -> None:
    if POSTGRES:  # a schema of this measurement's own: emptied
        with backend.store._write() as db:
            db.execute("TRUNCATE jobs, processes, limits")
        return
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
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{SRC}"},
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
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{SRC}"},
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


# -- --store postgres: each measurement in a process of its own ------------------------


def start_workers(count: int, concurrency: int) -> list[subprocess.Popen[bytes]]:
    """``count`` worker processes, once each has said so in the store (its first beat)."""
    workers = [start_worker(concurrency) for _ in range(count)]
    deadline = time.monotonic() + 60
    while sum(p.role == "worker" for p in backend.store.processes()) < count:
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            for worker in workers:
                stop(worker, grace=5)
            raise RuntimeError(f"{count} errands worker(s) did not start")
        time.sleep(0.05)
    return workers


def run_jobs(n: int) -> float:
    """Add ``n`` no-op jobs one ``add_task`` at a time; return once all have succeeded.
    How long the adds took (seconds)."""
    before = backend.store.counts()[JobStatus.SUCCEEDED]
    added = add_jobs(n)
    wait_succeeded(before, n)
    return added


def add_jobs(n: int) -> float:
    """Add ``n`` no-op jobs one ``add_task`` at a time; how long it took (seconds)."""
    started = time.perf_counter()
    for _ in range(n):
        errands.add_task(durable_app.noop)
    return time.perf_counter() - started


def wait_succeeded(before: int, n: int) -> None:
    """Until no job is left unfinished; then ``n`` more have succeeded than ``before``."""
    deadline = time.monotonic() + 60 + n / 50
    while backend.store.unfinished():  # all were stored before: none left means all ran
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs left unfinished after {60 + n / 50:.0f} s")
        time.sleep(0.01)
    assert backend.store.counts()[JobStatus.SUCCEEDED] == before + n


class CpuTimes:
    """User + system CPU seconds of some processes (and their children), and of this
    one, from now on: ``spent()``. With PostgreSQL, of the server processes serving
    this measurement's database too (its backends: the pools', the listeners')."""

    def __init__(self, pids: list[int]) -> None:
        self._pids = pids
        self._mine = time.process_time()
        self._start = self._sample()
        self._server = self._server_sample()

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def _sample(self) -> float:
        total = 0.0
        for pid in self._pids:
            process = psutil.Process(pid)
            total += self._cpu(process) + sum(map(self._cpu, process.children(recursive=True)))
        return total

    def _server_sample(self) -> dict[int, float]:
        if not POSTGRES:
            return {}
        with backend.store._read() as db:
            rows = db.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchall()
        found = {}
        for (pid,) in rows:
            with contextlib.suppress(psutil.Error):
                found[pid] = self._cpu(psutil.Process(pid))
        return found

    def spent(self) -> dict[str, float]:
        """CPU seconds since made: the processes', this one's, the server's."""
        server = sum(cpu - self._server.get(pid, 0.0) for pid, cpu in self._server_sample().items())
        return {
            "workers": self._sample() - self._start,
            "producer": time.process_time() - self._mine,
            "server": server,
        }


def per_job_us(cpu: dict[str, float], n: int) -> dict[str, float]:
    return {f"cpu_{part}_us_per_job": seconds / n * 1e6 for part, seconds in cpu.items()}


def measure_end_to_end(n: int, workers: int, drain: bool) -> dict[str, float]:
    """``n`` jobs added one ``add_task`` at a time while ``workers`` separate ``errands
    worker`` processes (concurrency 64 each) run them: from the first add to the last
    success, after 200 jobs of warm-up (imports, connections, first claims). With
    ``drain``, the jobs are added while the workers are stopped (SIGSTOP), and timed
    from when they go on (SIGCONT): what the workers do, without the adds' pace."""
    fresh_store()
    processes = start_workers(workers, 64)
    try:
        run_jobs(200)
        if drain:
            before = backend.store.counts()[JobStatus.SUCCEEDED]
            for process in processes:
                process.send_signal(signal.SIGSTOP)
            add_jobs(n)
            cpu = CpuTimes([p.pid for p in processes])
            started = time.perf_counter()
            for process in processes:
                process.send_signal(signal.SIGCONT)
            wait_succeeded(before, n)
            figures = {}
        else:
            cpu = CpuTimes([p.pid for p in processes])
            started = time.perf_counter()
            added = run_jobs(n)
            figures = {"adds_per_s": n / added}
        elapsed = time.perf_counter() - started
        spent = cpu.spent()
    finally:
        for process in processes:
            process.send_signal(signal.SIGCONT)
            stop(process)
    return {"jobs_per_s": n / elapsed, **figures, **per_job_us(spent, n)}


def measure_celery(n: int, side: str, drain: bool) -> dict[str, float]:
    """celery_mode.py's end to end (``side``: raw ``delay`` on the app configured as
    errands requires, or errands' Celery mode), on one worker ``-P prefork -c 2``, after
    100 jobs of warm-up. With ``drain``, as ``measure_end_to_end``'s (the worker's
    process group stopped while they are added)."""
    from benchmarks import celery_mode

    side = "required" if side == "raw" else side
    celery_mode.purge()
    worker = celery_mode.start_worker(side, "prefork", WORK / "celery-worker.log")
    try:
        add = celery_mode.ADD[side]
        celery_mode.warm_up(side, n)
        if drain:
            os.killpg(worker.pid, signal.SIGSTOP)  # the worker and its pool
            for i in range(n):
                add(i)
            cpu = CpuTimes([worker.pid])
            started = time.perf_counter()
            os.killpg(worker.pid, signal.SIGCONT)
            celery_mode.wait_ran(n, timeout=60 + n / 50)
            rate = n / (time.perf_counter() - started)
        else:
            cpu = CpuTimes([worker.pid])
            rate = celery_mode.end_to_end(side, n, worker.pid)[0]
        spent = cpu.spent()
        del spent["server"]  # (Redis serves other sessions too: not told apart)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGCONT)
        celery_mode.stop_worker(worker)
        celery_mode.purge()
    return {"jobs_per_s": rate, **per_job_us(spent, n)}


def measure_latency(samples: int, path: str, idle: float) -> dict[str, float]:
    """Enqueue -> start, one job in flight, this process -> one separate worker left
    idle between jobs for ``idle`` seconds: each job is looked for only a third of it
    after it was added (then every ms), and the next is added the rest of it after it
    finished, so that nothing of this process competes with the worker's wake-up.
    ``path``: ``add_task`` (one write, the job free at once), or ``request`` (a
    request's two writes: stored held before the response, released after it; the
    release wakes the workers)."""
    fresh_store()
    [worker] = start_workers(1, 8)

    async def one() -> float:
        if path == "add_task":
            enqueued = time.time()
            job_id = errands.add_task(durable_app.stamp).id
        else:
            record = errands._core.new_record(durable_app.stamp, (), {})
            enqueued = time.time()
            await backend.commit([record])
            await backend.release([record.id])
            job_id = record.id
        await asyncio.sleep(idle / 3)
        while (found := errands.get(job_id)) is None or not found.finished:
            await asyncio.sleep(0.001)
        await asyncio.sleep(idle * 2 / 3)
        return float(found.result - enqueued) * 1000

    async def main() -> list[float]:
        for _ in range(20):  # warm-up
            await one()
        return [await one() for _ in range(samples)]

    try:
        delays = asyncio.run(main())
        floor = idle_floor(samples // 5, idle) if POSTGRES and path == "add_task" else {}
    finally:
        stop(worker)
    quantiles = statistics.quantiles(delays, n=100)
    return {
        "p50_ms": statistics.median(delays),
        "p90_ms": quantiles[89],
        "p99_ms": quantiles[98],
        **floor,
    }


def idle_floor(samples: int, idle: float) -> dict[str, float]:
    """What the server charges any statement after the same idle time as the jobs had
    (medians, ms): a round trip (``SELECT 1``), and a committed one-row insert (a WAL
    flush); a job's latency holds two commits, the add's and the claim's."""
    trip, commit = [], []
    with backend.store._connection() as db:
        db.execute("CREATE TABLE bench_floor (x integer)")
        for _ in range(samples):
            for statement, times in (
                ("SELECT 1", trip),
                ("INSERT INTO bench_floor VALUES (1)", commit),
            ):
                time.sleep(idle)
                started = time.perf_counter()
                db.execute(statement)
                times.append((time.perf_counter() - started) * 1000)
    return {
        "idle_round_trip_ms": statistics.median(trip),
        "idle_commit_ms": statistics.median(commit),
    }


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One measurement, in a child of ``compare``."""
    if args.one == "enqueue":
        return {"jobs_per_s": enqueue_concurrent(args.enqueue_jobs)}
    if args.one in ("e2e", "drain"):
        return measure_end_to_end(args.jobs, args.workers, args.one == "drain")
    if args.one in ("celery", "celery-drain"):
        return measure_celery(args.jobs, args.side, args.one == "celery-drain")
    return measure_latency(args.samples, args.one.removeprefix("latency-"), args.idle_ms / 1000)


#: What ``compare`` runs each round: name, store, the child's options. With ``--before``,
#: each PostgreSQL one runs on that build too.
SCENARIOS: list[tuple[str, str, list[str]]] = [
    ("enqueue, 32 concurrent requests: SQLite", "sqlite", ["enqueue"]),
    ("enqueue, 32 concurrent requests: PostgreSQL", "postgres", ["enqueue"]),
    ("end to end, 1 worker: SQLite", "sqlite", ["e2e", "--workers", "1"]),
    ("end to end, 2 workers: SQLite", "sqlite", ["e2e", "--workers", "2"]),
    ("end to end, 1 worker: PostgreSQL", "postgres", ["e2e", "--workers", "1"]),
    ("end to end, 2 workers: PostgreSQL", "postgres", ["e2e", "--workers", "2"]),
    ("end to end, Celery prefork -c 2: raw delay()", "celery", ["celery", "--side", "raw"]),
    ("end to end, Celery prefork -c 2: errands", "celery", ["celery", "--side", "errands"]),
    ("drain, 1 worker: SQLite", "sqlite", ["drain", "--workers", "1"]),
    ("drain, 1 worker: PostgreSQL", "postgres", ["drain", "--workers", "1"]),
    ("drain, 2 workers: PostgreSQL", "postgres", ["drain", "--workers", "2"]),
    ("drain, Celery prefork -c 2: raw delay()", "celery", ["celery-drain", "--side", "raw"]),
    ("drain, Celery prefork -c 2: errands", "celery", ["celery-drain", "--side", "errands"]),
    ("latency, add_task: SQLite", "sqlite", ["latency-add_task"]),
    ("latency, add_task: PostgreSQL", "postgres", ["latency-add_task"]),
    ("latency, request: SQLite", "sqlite", ["latency-request"]),
    ("latency, request: PostgreSQL", "postgres", ["latency-request"]),
]


#: ``--only``'s words, and the scenarios each stands for.
MEASURES = {"enqueue": "enqueue", "e2e": "end to end", "drain": "drain", "latency": "latency"}


def database_url(server: str, database: str, schema: str) -> str:
    parts = urlsplit(server)
    return urlunsplit(parts._replace(path=f"/{database}", query=f"schema={schema}"))


def compare(args: argparse.Namespace) -> None:
    """Every scenario each round, each in a process of its own, in the order of
    ``SCENARIOS`` and backwards every other round (each pair of stores swaps who goes
    first); the medians of the rounds."""
    import psycopg
    from psycopg import sql

    database = f"errands_bench_{secrets.token_hex(4)}"
    wanted = [
        (name, store, options)
        for name, store, options in SCENARIOS
        if not args.only or any(name.startswith(MEASURES[m]) for m in args.only.split(","))
    ]
    scenarios = [(name, store, options, ROOT / "src") for name, store, options in wanted]
    before = Path(tempfile.mkdtemp(prefix="errands-before-"))
    if args.before:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.before],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        scenarios += [
            (f"{name} (before)", store, options, before / "src")
            for name, store, options in wanted
            if store == "postgres"
        ]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in scenarios}
    loads: list[float] = []
    common = ["--jobs", str(args.jobs), "--enqueue-jobs", str(args.enqueue_jobs)]
    common += ["--samples", str(args.samples), "--idle-ms", str(args.idle_ms)]
    info = {"CPUs": str(os.cpu_count()), "python": platform.python_version()}
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        info["postgresql"] = str(admin.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        try:
            for number in range(args.rounds):
                order = scenarios if number % 2 == 0 else scenarios[::-1]
                for index, (name, store, options, src) in enumerate(order):
                    env = {**os.environ, "PYTHONPATH": f"{src}:{ROOT}"}
                    env.pop("BENCH_DURABLE_URL", None)
                    if store == "postgres":
                        schema = f"run_{number}_{index}"
                        env["BENCH_DURABLE_URL"] = database_url(args.postgres, database, schema)
                    load = os.getloadavg()[0]
                    loads.append(load)
                    done = subprocess.run(
                        [sys.executable, str(Path(__file__).resolve()), "--one", *options, *common],
                        env=env, capture_output=True, text=True, cwd=ROOT,
                    )  # fmt: skip
                    if done.returncode:
                        raise RuntimeError(f"{name} failed:\n{done.stdout}\n{done.stderr}")
                    result = json.loads(done.stdout.splitlines()[-1])
                    runs[name].append(result)
                    figures = "  ".join(f"{k} {v:,.2f}" for k, v in result.items())
                    show(f"round {number + 1}, {name}", f"{figures}  (load {load:.2f})")
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
            if args.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT)
    medians = {
        name: {key: statistics.median(run[key] for run in results) for key in results[0]}
        for name, results in runs.items()
    }
    print()
    print("  ".join(f"{key} {value}" for key, value in info.items()))
    low, high = min(loads), max(loads)
    print(f"medians of {args.rounds} rounds; load average (1 min) {low:.2f}-{high:.2f}")
    for name, figures in medians.items():
        show(name, "  ".join(f"{key} {value:,.2f}" for key, value in figures.items()))
    if "end to end, 1 worker: PostgreSQL" in runs:
        celery = [
            max(raw["jobs_per_s"], ours["jobs_per_s"])
            for raw, ours in zip(
                runs["end to end, Celery prefork -c 2: raw delay()"],
                runs["end to end, Celery prefork -c 2: errands"],
                strict=True,
            )
        ]
        for workers in (1, 2):
            pg = [
                run["jobs_per_s"]
                for run in runs[f"end to end, {workers} worker{'s' * (workers > 1)}: PostgreSQL"]
            ]
            paired = statistics.median(p / c for p, c in zip(pg, celery, strict=True))
            show(f"PostgreSQL {workers} worker(s) / the faster Celery, paired", f"{paired:.2f}x")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "durable_postgres.json").write_text(
        json.dumps({"environment": info, "loads": loads, "runs": runs, "medians": medians})
    )


def show(label: str, value: str) -> None:
    print(f"{label:<46} {value}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, help="jobs a run (default 20000)")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument(
        "--memory-jobs",
        type=int,
        help="only measure worker RSS, idle and after this many jobs (e.g. 1000000)",
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="sqlite: the SQLite store beside Huey; postgres: PostgreSQL beside SQLite and "
        "Celery+Redis, in rounds (--jobs defaults to 5000)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="--store postgres: rounds")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="--store postgres: a server where the benchmark may make a database of its own",
    )
    parser.add_argument(
        "--before",
        metavar="REV",
        help="--store postgres: run the PostgreSQL measurements on that build too",
    )
    parser.add_argument(
        "--idle-ms",
        type=float,
        default=30,
        help="--store postgres: how long the worker idles between two jobs of the latency",
    )
    parser.add_argument(
        "--only",
        help="--store postgres: comma-separated measures to run, of: enqueue, e2e, drain, latency",
    )
    parser.add_argument("--enqueue-jobs", type=int, default=20_000, help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--side", default="raw", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args)), flush=True)
        return
    if args.store == "postgres":
        if args.jobs is None:
            args.jobs = 5_000
        compare(args)
        return
    if args.jobs is None:
        args.jobs = 20_000
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
