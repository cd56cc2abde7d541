"""Where a request's microseconds go: one scenario of ``apps.py`` driven in-process
(no server, no sockets: the ASGI app called directly, as uvicorn would) for N requests,
its lifespan (and worker) running. Prints µs per request of the whole app, and with
``--profile`` the functions that take them (cProfile, sorted by own time).

    .venv/bin/python benchmarks/request_path.py errands-plain -n 20000 [--profile]

Compare scenarios within one run; the server's own cost (uvicorn, httptools) is not
in these figures, so the shares are lower than http_overhead.py's."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def drive(app: Any, n: int) -> float:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip
    body = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return body

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise SystemExit(f"the endpoint answered {message['status']}: fix the app")

    for _ in range(200):  # warm up
        await app(dict(scope), receive, send)
    start = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
        await asyncio.sleep(0)  # as a server yields between requests: the worker runs
    return (time.perf_counter() - start) / n


async def main(scenario: str, n: int, profile: bool) -> None:
    os.environ["BENCH_SCENARIO"] = scenario
    os.environ.setdefault("BENCH_SQLITE", "sqlite:////tmp/errands-bench-path.db")
    apps = importlib.import_module("benchmarks.apps")
    app = apps.app
    async with app.router.lifespan_context(app):
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
        took = await drive(app, n)
        if profile:
            profiler.disable()
        # Let the worker finish what the requests added.
        for _ in range(500):
            if not apps.errands.backlog:
                break
            await asyncio.sleep(0.01)
    print(f"{scenario}: {took * 1e6:.1f} µs a request (n={n})")
    if profile:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    for suffix in ("", "-wal", "-shm"):
        Path(f"/tmp/errands-bench-path.db{suffix}").unlink(missing_ok=True)
    asyncio.run(main(args.scenario, args.n, args.profile))
