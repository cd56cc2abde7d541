"""Registered tasks beside plain callables: handles, status, retries and timeouts."""

from fastapi import FastAPI, HTTPException

from errands import BackgroundTasks, Errands, JobRecord

errands = Errands("memory://")
app = FastAPI(lifespan=errands.lifespan)

sent: list[str] = []


def write_log(message: str) -> None:  # any callable, as in FastAPI
    print(message)


@errands.task(retries=3, backoff=0.5, timeout=30)
async def send_welcome(email: str) -> str:
    sent.append(email)
    return f"welcome sent to {email}"


@app.post("/signup/{email}")
async def signup(email: str, tasks: BackgroundTasks) -> dict[str, str]:
    tasks.add_task(write_log, f"signup {email}")
    job = tasks.add_task(send_welcome, email)  # a handle: job.id, job.status, await job.wait()
    return {"job": job.id}


@app.get("/jobs/{job_id}")
async def job_status(job_id: str) -> JobRecord:
    record = errands.get(job_id)
    if record is None:
        raise HTTPException(404, "no such job")
    return record
