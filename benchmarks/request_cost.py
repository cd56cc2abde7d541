"""What one request costs in CPU instructions, counted by valgrind (callgrind): not
timed, so the same on a busy machine. Each variant is one FastAPI app with one endpoint,
driven in-process (no server) with its lifespan running:

    none        no dependency, no task
    depends     one plain async Depends()
    fastapi     FastAPI's BackgroundTasks with one async no-op
    dep         errands' BackgroundTasks, no task added
    plain       errands' BackgroundTasks with one async no-op plain task
    registered  the same with a registered async no-op task (memory://)
    sqlite-web  the same on SQLite, this process only adds (worker=False)
    sqlite      the same on SQLite, the worker in this process

    .venv/bin/python benchmarks/request_cost.py [VARIANT ...] [-n 1000] [--src DIR]

Instructions per request = (a run of 200 + n requests - a run of 200) / n, so start-up
is not counted. ``--src``: count another checkout's errands (its ``src`` folder), for a
before/after pair."""

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ["none", "depends", "fastapi", "dep", "plain", "registered", "sqlite-web", "sqlite"]


def serve(variant: str, n: int) -> None:
    """Run ``n`` requests of ``variant`` (in the process valgrind watches)."""
    import fastapi
    from fastapi import Depends, FastAPI

    import errands as errands_lib

    sys.path.insert(0, str(ROOT))
    from benchmarks.request_path import drive

    if variant.startswith("sqlite"):
        path = f"/tmp/errands-request-cost-{os.getpid()}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
        errands = errands_lib.Errands(f"sqlite:///{path}", worker=variant == "sqlite")
    else:
        errands = errands_lib.Errands("memory://")
    app = FastAPI(lifespan=errands.lifespan)

    async def noop() -> None:
        pass

    @errands.task
    async def registered() -> None:
        pass

    async def provide() -> int:
        return 1

    if variant == "none":

        @app.get("/")
        async def none() -> dict[str, int]:
            return {"ok": 1}

    elif variant == "depends":

        @app.get("/")
        async def depends(value: Annotated[int, Depends(provide)]) -> dict[str, int]:
            return {"ok": value}

    elif variant == "fastapi":

        @app.get("/")
        async def fastapi_tasks(tasks: fastapi.BackgroundTasks) -> dict[str, int]:
            tasks.add_task(noop)
            return {"ok": 1}

    else:
        add = {"dep": None, "plain": noop}.get(variant, registered)

        @app.get("/")
        async def ours(tasks: errands_lib.BackgroundTasks) -> dict[str, int]:
            if add is not None:
                tasks.add_task(add)
            return {"ok": 1}

    async def main() -> None:
        async with app.router.lifespan_context(app):
            await drive(app, n)

            if variant != "sqlite-web":
                await errands.join(timeout=10)

    asyncio.run(main())
    if variant.startswith("sqlite"):
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)


def count(variant: str, n: int, src: str | None) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts each run
    if src:
        env["PYTHONPATH"] = src
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--serve", variant, "-n", str(n)],
        capture_output=True, text=True, env=env, check=True,
    ).stderr  # fmt: skip
    return int(re.search(r"Collected : (\d+)", out).group(1))  # type: ignore[union-attr]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=VARIANTS)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--src")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.n)
    else:
        for variant in args.variants:
            per = (count(variant, 200 + args.n, args.src) - count(variant, 200, args.src)) / args.n
            print(f"{variant:<11} {per:>9,.0f} instructions a request", flush=True)
