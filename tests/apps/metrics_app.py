"""A web app whose jobs run in its own processes (uvicorn --workers N), with errands'
metrics at /metrics/: the test of prometheus-client's multiprocess mode."""

import os

from fastapi import FastAPI

from errands import BackgroundTasks, Errands

errands = Errands("memory://")
app = FastAPI(lifespan=errands.lifespan)
app.mount("/metrics", errands.metrics())


@errands.task(name="work")
def work(n: int) -> int:
    return n


@app.get("/health")
async def health() -> dict[str, str]:
    return {"ok": "yes"}


@app.post("/add/{n}")
async def add(n: int, tasks: BackgroundTasks) -> dict[str, str]:
    return {"job": tasks.add_task(work, n).id, "pid": str(os.getpid())}
