"""The Celery-mode benchmark's app: raw Celery tasks and errands' ones on one Celery
app (so one worker serves both), and a FastAPI app with one endpoint for each.

Broker Redis DB 12, result backend DB 13, queue ``bench-q`` (``BENCH_BROKER``,
``BENCH_BACKEND`` and ``BENCH_QUEUE`` override them). The worker:

    celery -A benchmarks.celery_app:celery_app worker -Q bench-q ...
"""

import os

from celery import Celery
from fastapi import FastAPI

from errands import BackgroundTasks, Errands

BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/12")
BACKEND = os.environ.get("BENCH_BACKEND", "redis://127.0.0.1:6379/13")
QUEUE = os.environ.get("BENCH_QUEUE", "bench-q")

celery_app = Celery("bench", broker=BROKER, backend=BACKEND)
celery_app.conf.update(
    task_default_queue=QUEUE,
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)
# Sets result_extended=True on the app: raw tasks store extended results too.
errands = Errands(celery=celery_app)


@errands.task(name="bench.errands_noop")
def errands_noop(i: int) -> None:
    return None


@celery_app.task(name="bench.raw_noop")
def raw_noop(i: int) -> None:
    return None


app = FastAPI(lifespan=errands.lifespan)


@app.post("/errands")
async def errands_endpoint(tasks: BackgroundTasks) -> None:
    tasks.add_task(errands_noop, 1)  # published before the response


@app.post("/raw")
def raw_endpoint() -> None:
    raw_noop.delay(1)  # a def endpoint: the blocking publish runs in the threadpool
