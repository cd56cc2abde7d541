"""What observing costs (issue "Observe it"): with metrics and tracing off, the request
path and the worker must cost what they did before (within 2 %); with them on, the
cost per job is reported.

- request path: N requests through a FastAPI app (in process, httpx's ASGI transport),
  each adding a plain task and a registered one to errands' ``BackgroundTasks``;
- worker: N registered no-op jobs added outside requests and run by the worker here.

Both on ``memory://``. Scenarios, each measurement in a process of its own, taking
turns, medians of the rounds: ``before`` (the build before observability, ``--before``
REV), ``off`` (this build, nothing asked for), ``metrics`` (``errands.metrics()``
mounted), ``all`` (metrics, and FastAPI's own telemetry with an SDK tracer provider
whose spans go to a no-op exporter: a span per request, its operations and each plain
task).

    .venv/bin/python benchmarks/observe.py [--requests 3000] [--jobs 20000] [--rounds 5]
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


def one(scenario: str, requests: int, jobs: int) -> dict[str, float]:
    """In the child: both measurements on the build on sys.path (seconds per item)."""
    import asyncio

    import httpx
    from fastapi import FastAPI

    from errands import BackgroundTasks, Errands

    errands = Errands("memory://", max_backlog=10**7)
    kwargs = {}
    if scenario == "all":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter

        class Nowhere(SpanExporter):
            def export(self, spans):  # type: ignore[no-untyped-def]
                from opentelemetry.sdk.trace.export import SpanExportResult

                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Nowhere()))
        kwargs["telemetry"] = {"tracer_provider": provider}
    app = FastAPI(lifespan=errands.lifespan, **kwargs)  # type: ignore[arg-type]
    if scenario in ("metrics", "all"):
        app.mount("/metrics", errands.metrics())

    @errands.task(name="noop")
    def noop(i: int) -> int:
        return i

    def plain(i: int) -> None:
        pass

    @app.post("/add/{i}")
    async def add(i: int, tasks: BackgroundTasks) -> dict[str, int]:
        tasks.add_task(plain, i)
        tasks.add_task(noop, i)
        return {"i": i}

    async def main() -> dict[str, float]:
        async with errands.lifespan(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                for i in range(200):  # warm up
                    await client.post(f"/add/{i}")
                await errands.join(timeout=60)
                started = time.perf_counter()
                for i in range(requests):
                    await client.post(f"/add/{i}")
                await errands.join(timeout=120)
                per_request = (time.perf_counter() - started) / requests
            started = time.perf_counter()
            for i in range(jobs):
                errands.add_task(noop, i)
            await errands.join(timeout=300)
            per_job = (time.perf_counter() - started) / jobs
        return {"request": per_request, "job": per_job}

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", default="503f8fc")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.requests, args.jobs)))
        return
    before = Path(tempfile.mkdtemp(prefix="errands-before-"))
    subprocess.run(
        ["git", "worktree", "add", "-q", "--detach", str(before), args.before],
        cwd=ROOT, check=True,
    )  # fmt: skip
    try:
        results: dict[str, list[dict[str, float]]] = {}
        for round in range(args.rounds):
            for scenario in ("before", "off", "metrics", "all"):
                source = before if scenario == "before" else ROOT
                env = {**os.environ, "PYTHONPATH": f"{source / 'src'}:{ROOT}"}
                done = subprocess.run(
                    [sys.executable, str(ROOT / "benchmarks" / "observe.py"),
                     "--one", "off" if scenario == "before" else scenario,
                     "--requests", str(args.requests), "--jobs", str(args.jobs)],
                    env=env, capture_output=True, text=True, check=True,
                )  # fmt: skip
                results.setdefault(scenario, []).append(json.loads(done.stdout.splitlines()[-1]))
            print(f"round {round + 1} of {args.rounds} done", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT)
    base = {k: statistics.median(r[k] for r in results["before"]) for k in ("request", "job")}
    print(f"{'scenario':<10} {'µs/request':>11} {'vs before':>10} {'µs/job':>9} {'vs before':>10}")
    table = {}
    for scenario, runs in results.items():
        request = statistics.median(r["request"] for r in runs)
        job = statistics.median(r["job"] for r in runs)
        table[scenario] = {"request_us": request * 1e6, "job_us": job * 1e6}
        print(
            f"{scenario:<10} {request * 1e6:11.1f} {request / base['request']:10.3f} "
            f"{job * 1e6:9.1f} {job / base['job']:10.3f}"
        )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "observe.json").write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
