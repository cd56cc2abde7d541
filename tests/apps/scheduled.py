"""An app with a schedule, on the SQLite store ($ERRANDS_URL), for the tests that run
several web and worker processes: ``tick`` runs every second, and logs each run to
$DURABLE_LOG. ``WORKER=0`` makes a web process that only keeps schedules and adds jobs.
"""

import os

from fastapi import FastAPI

from errands import Errands

errands = Errands(lease=1.0, worker=os.environ.get("WORKER", "1") != "0")
app = FastAPI(lifespan=errands.lifespan)


@errands.every(1, name="tick")
def tick() -> int:
    with open(os.environ["DURABLE_LOG"], "a") as f:
        f.write(f"tick pid={os.getpid()}\n")
    return os.getpid()


@app.get("/health")
async def health() -> str:
    return "ok"
