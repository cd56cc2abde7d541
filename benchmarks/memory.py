"""Memory over a long run: the RSS of a web process serving --requests requests that
each add a task, and of an ``errands worker`` process running --jobs jobs, sampled
every --every requests or jobs, so that flat (or not) is visible.

    .venv/bin/pip install -e '.[bench]'     # psutil; wrk from apt-get install wrk
    .venv/bin/python benchmarks/memory.py                                # 1,000,000 each
    .venv/bin/python benchmarks/memory.py --requests 100000 --jobs 100000  # quick
    .venv/bin/python benchmarks/memory.py --only web --web-task registered

**web**: one uvicorn process (uvloop and httptools, as the other benchmarks), its
cwd a temporary folder and no ``$ERRANDS_URL``, so ``Errands()`` has its default
store: SQLite, ``errands.db`` there; its lifespan runs the worker. ``--web-task
plain`` (the default) serves ``/``, an ``async def`` endpoint that adds one plain
async no-op to errands' ``BackgroundTasks``; ``registered`` serves ``/registered``,
which adds a registered no-op (a job committed to SQLite before the response, run by
that worker); ``fastapi`` serves ``/fastapi``, the plain no-op on FastAPI's own
``BackgroundTasks`` (the baseline: the same process and stack without errands' part).
wrk (-t1, --connections) loads it in runs back to back, each sized for about --every
requests; after each the server's own count of requests served is read, then its RSS
(psutil). ``--trace`` runs the server under tracemalloc and adds its traced size to
each sample, and at the end the lines that grew most after warm-up (slow: a debug run).

**worker**: one ``errands worker benchmarks.memory_app:errands`` process (the
Errands() defaults: concurrency 100) on a SQLite file in a temporary folder. This
process adds registered no-op jobs to it in chunks while it runs, keeping at most
--ahead of them unfinished, and reads the worker's RSS each time another --every
jobs are done.

Each series starts with a sample before any load; "after warm-up" is from the first
sample at or past --every on. Prints the series, RSS after warm-up and at the end,
and max - min after warm-up. Every wait has a timeout (--timeout for a whole part),
processes are stopped on the way out, and the temporary folders removed.
"""

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import FAST, free_port, stop, uvicorn  # noqa: E402

Sample = dict[str, Any]


def rss_mb(pid: int) -> float:
    """The process's RSS and its children's (a worker has none unless a task runs in
    a process), in MiB."""
    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / 2**20


@contextlib.contextmanager
def temporary_folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="errands-bench-memory-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def child_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in os.environ.items() if k != "ERRANDS_URL"}
    return {**env, "PYTHONPATH": path, **extra}


def wrk_run(url: str, seconds: int, connections: int) -> tuple[int, int]:
    """One wrk run: (requests, non-2xx responses and socket errors)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    done = re.search(r"(\d+) requests in", out)
    if done is None:
        raise RuntimeError(f"wrk printed no request count:\n{out}")
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        bad += sum(int(n) for n in errors.groups())
    return int(done.group(1)), bad


def web(args: argparse.Namespace) -> list[Sample]:
    """Load one uvicorn process with wrk until --requests were served."""
    path = {"plain": "/", "registered": "/registered", "fastapi": "/fastapi"}[args.web_task]
    port = free_port()
    with temporary_folder() as folder:
        server = subprocess.Popen(
            uvicorn("benchmarks.memory_app:app", port, "error", *FAST),
            cwd=folder,  # Errands()'s default store: errands.db in the cwd
            env=child_env(**({"PYTHONTRACEMALLOC": "1"} if args.trace else {})),
        )
        base = f"http://127.0.0.1:{port}"
        try:
            client = httpx.Client(base_url=base, timeout=30)
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.get("/count")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the server did not start") from None
                    time.sleep(0.1)
            return load(args, server, client, base + path)
        finally:
            stop(server, grace=15)


def load(
    args: argparse.Namespace, server: "subprocess.Popen[bytes]", client: httpx.Client, url: str
) -> list[Sample]:
    def sample(started: float) -> Sample:
        state = client.get("/count", params={"objects": args.objects}).json()
        return {
            "done": state["served"],
            "rss_mb": rss_mb(server.pid),
            "threads": psutil.Process(server.pid).num_threads(),
            "seconds": time.monotonic() - started,
            **{k: v for k, v in state.items() if k != "served" and v is not None},
        }

    started = time.monotonic()
    series = [sample(started)]
    report(series[-1], "requests")
    rate, bad = 0.0, 0
    while series[-1]["done"] < args.requests:
        if time.monotonic() - started > args.timeout:
            raise RuntimeError(f"web: {series[-1]['done']} requests in {args.timeout} s")
        want = min(args.every, args.requests - series[-1]["done"])
        # The first run, 2 s, measures the rate; the others are sized on it.
        seconds = max(1, round(want / rate)) if rate else 2
        before = time.monotonic()
        served, failed = wrk_run(url, seconds, args.connections)
        bad += failed
        rate = served / (time.monotonic() - before)
        series.append(sample(started))
        report(series[-1], "requests")
        if args.trace and len(series) == 3:  # past warm-up: the baseline snapshot
            client.get("/trace")
    if args.trace:
        print("  grown most since the second run (tracemalloc):", flush=True)
        for line in client.get("/trace").json():
            print(f"    {line}", flush=True)
    series[-1]["bad_responses"] = bad
    return series


def worker(args: argparse.Namespace) -> list[Sample]:
    """Run --jobs registered no-op jobs through one ``errands worker`` process."""
    with temporary_folder() as folder:
        os.environ["ERRANDS_URL"] = f"sqlite:///{folder}/jobs.db"
        from benchmarks import memory_app  # its Errands() reads $ERRANDS_URL now

        errands = memory_app.errands
        store = errands._core.backend.store
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "errands",
                "worker",
                "benchmarks.memory_app:errands",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=child_env(ERRANDS_URL=os.environ["ERRANDS_URL"]),
        )
        try:
            time.sleep(2)  # started and idle
            if process.poll() is not None:
                raise RuntimeError("the worker did not start")
            return drain(args, process, errands, store, memory_app.registered_noop)
        finally:
            stop(process, grace=30)
            store.close()
            del os.environ["ERRANDS_URL"]


def drain(
    args: argparse.Namespace,
    process: "subprocess.Popen[bytes]",
    errands: Any,
    store: Any,
    task: Any,
) -> list[Sample]:
    started = time.monotonic()

    def sample(done: int, seconds: float) -> Sample:
        threads = psutil.Process(process.pid).num_threads()
        return {"done": done, "rss_mb": rss_mb(process.pid), "seconds": seconds, "threads": threads}

    series = [sample(0, 0.0)]
    report(series[-1], "jobs")
    added = done = 0
    progress_at, progress_done = started, 0
    while done < args.jobs:
        now = time.monotonic()
        if now - started > args.timeout:
            raise RuntimeError(f"worker: {done} jobs in {args.timeout} s")
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited ({process.returncode}) after {done} jobs")
        if done > progress_done:
            progress_at, progress_done = now, done
        elif now - progress_at > 60:
            raise RuntimeError(f"worker: no job done for 60 s (at {done})")
        unfinished = store.unfinished()  # every job was committed when added
        done = added - unfinished
        if added < args.jobs and unfinished < args.ahead:
            for _ in range(min(args.chunk, args.jobs - added)):
                errands.add_task(task)
            added += min(args.chunk, args.jobs - added)
        else:
            time.sleep(0.01)
        if done >= series[-1]["done"] + args.every or (done >= args.jobs > series[-1]["done"]):
            series.append(sample(done, now - started))
            report(series[-1], "jobs")
    return series


def report(sample: Sample, unit: str) -> None:
    extra = "  ".join(
        f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in sample.items()
        if k not in ("done", "rss_mb")
    )
    print(f"  {sample['done']:>9,} {unit}  RSS {sample['rss_mb']:7.1f} MB  {extra}", flush=True)


def summary(series: list[Sample], every: int) -> dict[str, float]:
    warm = [s for s in series if s["done"] >= every] or series[-1:]
    rss = [s["rss_mb"] for s in warm]
    last = series[-1]
    return {
        "rss_start_mb": series[0]["rss_mb"],
        "rss_warm_mb": warm[0]["rss_mb"],
        "rss_end_mb": last["rss_mb"],
        "spread_after_warmup_mb": max(rss) - min(rss),
        "growth_after_warmup_mb": last["rss_mb"] - warm[0]["rss_mb"],
        "per_s": last["done"] / last["seconds"] if last["seconds"] else 0.0,
    }


def versions() -> str:
    import fastapi
    import uvicorn as uvicorn_package

    import errands

    db = sqlite3.connect(":memory:")
    cache = db.execute("PRAGMA cache_size").fetchone()[0]
    db.close()
    return (
        f"Python {platform.python_version()}, errands {errands.__version__}, "
        f"FastAPI {fastapi.__version__}, uvicorn {uvicorn_package.__version__}, "
        f"SQLite {sqlite3.sqlite_version} (cache_size {cache}: "
        f"{-cache if cache < 0 else cache} {'KiB' if cache < 0 else 'pages'} a connection)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000, help="web: requests to serve")
    parser.add_argument("--jobs", type=int, default=1_000_000, help="worker: jobs to run")
    parser.add_argument("--every", type=int, default=50_000, help="requests or jobs a sample")
    parser.add_argument("--only", choices=["web", "worker"], help="run one part")
    parser.add_argument(
        "--web-task",
        choices=["plain", "registered", "fastapi"],
        default="plain",
        help="what each request adds: a plain async no-op, a registered one (SQLite), or "
        "the plain one to FastAPI's own BackgroundTasks (the baseline)",
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections")
    parser.add_argument("--chunk", type=int, default=5_000, help="worker: jobs added at once")
    parser.add_argument("--ahead", type=int, default=20_000, help="worker: most jobs unfinished")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a part may take")
    parser.add_argument(
        "--objects", action="store_true", help="web: count the server's live objects too"
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="web: run the server under tracemalloc and list what grew after warm-up (slow)",
    )
    parser.add_argument("--json", type=Path, help="write the series and summaries here")
    args = parser.parse_args(argv)
    for name in ("requests", "jobs", "every", "connections", "chunk", "ahead"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.only != "worker" and shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    # A SIGTERM (a timeout of the caller's) runs the finally blocks: children stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(versions(), flush=True)
    results: dict[str, Any] = {}
    parts = [("web", web, args.requests, "requests")]
    parts.append(("worker", worker, args.jobs, "jobs"))
    for name, run, n, unit in parts:
        if args.only not in (None, name):
            continue
        label = f"web, {args.web_task} task" if name == "web" else "worker, registered task"
        print(f"{label}: {n:,} {unit}, RSS every {args.every:,}", flush=True)
        series = run(args)
        figures = summary(series, args.every)
        results[name] = {"series": series, **figures}
        print(
            f"{label}: RSS at start {figures['rss_start_mb']:.1f} MB, after warm-up "
            f"{figures['rss_warm_mb']:.1f}, at the end {figures['rss_end_mb']:.1f}; "
            f"max - min after warm-up {figures['spread_after_warmup_mb']:.1f} MB; "
            f"{figures['per_s']:,.0f} {unit}/s",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
