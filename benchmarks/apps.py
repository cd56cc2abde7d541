"""The apps the HTTP benchmark serves, one scenario per process (BENCH_SCENARIO)."""

import os
import time
from typing import Annotated, Any

import fastapi
from fastapi import Depends, FastAPI

import errands as errands_lib

SCENARIO = os.environ.get("BENCH_SCENARIO", "none")
errands = errands_lib.Errands(
    os.environ.get("BENCH_SQLITE", "sqlite:////tmp/errands-bench-http.db")
    if SCENARIO.startswith("errands-sqlite")
    else "memory://",
    # errands-sqlite-web: this process only adds jobs (a worker process would run them).
    worker=SCENARIO != "errands-sqlite-web",
)
uses_errands = SCENARIO.startswith("errands")
app = FastAPI(lifespan=errands.lifespan if uses_errands else None)
pending = [0]  # FastAPI's tasks accepted and not yet run


async def noop() -> None:
    pass


def noop_sync() -> None:
    pass


def sleep_100ms() -> None:
    time.sleep(0.1)


@errands.task
async def registered_noop() -> None:
    pass


def counted(func: Any) -> Any:
    """FastAPI has no backlog count of its own: count around the task."""

    if func is sleep_100ms:

        def wrapper() -> None:
            try:
                func()
            finally:
                pending[0] -= 1

        return wrapper

    async def async_wrapper() -> None:
        try:
            await func()
        finally:
            pending[0] -= 1

    return async_wrapper


@app.get("/pending")
async def get_pending() -> int:
    return errands.backlog if uses_errands else pending[0]


FastAPITasks = fastapi.BackgroundTasks
ErrandsTasks = errands_lib.BackgroundTasks

if SCENARIO == "none":

    @app.get("/")
    async def none() -> dict[str, int]:
        return {"ok": 1}

elif SCENARIO == "fastapi-noop":

    @app.get("/")
    async def fastapi_noop(tasks: FastAPITasks) -> dict[str, int]:
        tasks.add_task(noop)
        return {"ok": 1}

elif SCENARIO == "fastapi-noop-def":

    @app.get("/")
    async def fastapi_noop_def(tasks: FastAPITasks) -> dict[str, int]:
        tasks.add_task(noop_sync)
        return {"ok": 1}

elif SCENARIO == "errands-plain":

    @app.get("/")
    async def errands_plain(tasks: ErrandsTasks) -> dict[str, int]:
        tasks.add_task(noop)
        return {"ok": 1}

elif SCENARIO == "errands-plain-def":

    @app.get("/")
    async def errands_plain_def(tasks: ErrandsTasks) -> dict[str, int]:
        tasks.add_task(noop_sync)
        return {"ok": 1}

elif SCENARIO == "errands-registered":

    @app.get("/")
    async def errands_registered(tasks: ErrandsTasks) -> dict[str, int]:
        tasks.add_task(registered_noop)
        return {"ok": 1}

elif SCENARIO in ("errands-sqlite", "errands-sqlite-web"):

    @app.get("/")
    async def errands_sqlite(tasks: ErrandsTasks) -> dict[str, int]:
        tasks.add_task(registered_noop)
        return {"ok": 1}

elif SCENARIO == "none-sync":

    @app.get("/")
    def none_sync() -> dict[str, int]:
        return {"ok": 1}

elif SCENARIO == "fastapi-sleep":

    @app.get("/")
    def fastapi_sleep(tasks: FastAPITasks) -> dict[str, int]:
        pending[0] += 1
        tasks.add_task(counted(sleep_100ms))
        return {"ok": 1}

elif SCENARIO == "errands-sleep":

    @app.get("/")
    def errands_sleep(tasks: ErrandsTasks) -> dict[str, int]:
        tasks.add_task(sleep_100ms)
        return {"ok": 1}

elif SCENARIO == "depends-only":
    # What any FastAPI dependency costs, for reference: errands' injection is one.

    async def provide() -> int:
        return 1

    @app.get("/")
    async def depends_only(value: Annotated[int, Depends(provide)]) -> dict[str, int]:
        return {"ok": value}

else:
    raise SystemExit(f"unknown BENCH_SCENARIO {SCENARIO!r}")
