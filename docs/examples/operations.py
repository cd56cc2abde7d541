"""Looking at jobs from the app: one job, the latest failures, and the workers."""

from fastapi import FastAPI, HTTPException

from errands import Errands, JobRecord, JobStatus

errands = Errands("memory://")
app = FastAPI(lifespan=errands.lifespan)


@errands.task(name="reports.build")
def build_report(month: str) -> str:
    return f"report for {month}"


@app.get("/jobs/{job_id}")
def job(job_id: str) -> JobRecord:
    record = errands.get(job_id)
    if record is None:
        raise HTTPException(404, "no such job")
    return record


@app.get("/failures")
def failures() -> list[JobRecord]:
    return errands.jobs(status="failed", limit=20)  # a JobStatus or its name


@app.get("/health/jobs")
def job_health() -> dict[str, object]:
    stats = errands.stats()
    return {
        "queued": stats.counts[JobStatus.QUEUED],
        "failed": stats.counts[JobStatus.FAILED],
        "workers": [worker.id for worker in stats.workers],
        # Jobs of tasks that no live worker has registered: a rolling deploy not done
        # yet, or a task no worker imports.
        "unrunnable": stats.unrunnable,
    }
