"""The demo: a small signup service whose background work you can watch.

Run it with ``scripts/demo`` and open http://127.0.0.1:8000/ in a browser, or:

    curl -X POST http://127.0.0.1:8000/signup/ada@example.com
    curl http://127.0.0.1:8000/jobs/<id>

Jobs are kept in ``errands.db`` (the default store; ``$ERRANDS_URL`` picks another).
Stop the server in the middle of a job: the next start runs it. To run the jobs in
a process of their own: ``DEMO_WORKER=0 scripts/demo`` in one terminal and
``.venv/bin/errands worker docs.examples.demo:errands`` in another.
"""

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException

from errands import BackgroundTasks, Errands, JobRecord

errands = Errands(worker=os.environ.get("DEMO_WORKER", "1") == "1")
PORT = int(os.environ.get("PORT", "8000"))
log = logging.getLogger("demo")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with errands.lifespan(app):
        for email in ("ada@example.com", "grace@example.com", "linus@example.com"):
            errands.add_task(send_welcome, email)  # a few jobs to look at straight away
        log.warning(
            "errands demo on http://127.0.0.1:%d/  try: curl -X POST "
            "http://127.0.0.1:%d/signup/you@example.com",
            PORT,
            PORT,
        )
        yield


app = FastAPI(title="errands demo", lifespan=lifespan)


def write_log(message: str) -> None:
    log.warning(message)


# An explicit name: the same whether this module runs as __main__ (scripts/demo) or is
# imported by `errands worker docs.examples.demo:errands`.
@errands.task(name="send_welcome", retries=3, backoff=0.5, timeout=10)
async def send_welcome(email: str) -> str:
    await asyncio.sleep(1.0)  # talking to a slow mail server
    if random.random() < 0.3:
        raise ConnectionError("the mail server hung up")  # retried with backoff
    return f"welcome sent to {email}"


@app.post("/signup/{email}")
async def signup(email: str, tasks: BackgroundTasks) -> dict[str, str]:
    tasks.add_task(write_log, f"signup {email}")
    job = tasks.add_task(send_welcome, email)
    return {"job": job.id, "status": f"/jobs/{job.id}"}


@app.get("/jobs/{job_id}")
async def job_status(job_id: str) -> JobRecord:
    record = errands.get(job_id)
    if record is None:
        raise HTTPException(404, "no such job")
    return record


@app.get("/")
async def overview() -> dict[str, Any]:
    return {
        "try": f"curl -X POST http://127.0.0.1:{PORT}/signup/you@example.com",
        "backlog": errands.backlog,
        "jobs": [
            {
                "id": r.id,
                "task": r.name,
                "status": r.status,
                "attempts": f"{r.attempts}/{r.max_attempts}",
                "durable": r.durable,
                "result": r.result,
                "error": r.error,
            }
            for r in errands.jobs(limit=20)
        ],
    }


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=PORT)
