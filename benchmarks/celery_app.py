"""The Celery-mode benchmark's errands app: errands' Celery mode on a Celery app of
its own (raw Celery's two apps are in ``celery_raw_app.py``), and a FastAPI app with
one endpoint for each of the three sides.

Broker Redis DB 12, result backend DB 13, queue ``bench-q`` (``BENCH_BROKER``,
``BENCH_BACKEND`` and ``BENCH_QUEUE`` override them). The worker:

    celery -A benchmarks.celery_app:celery_app worker -Q bench-q ...
"""

import os

from benchmarks.celery_raw_app import BACKEND, BROKER, defaults_noop, ran, required_noop
from celery import Celery
from fastapi import FastAPI

from errands import BackgroundTasks, Errands

QUEUE = os.environ.get("BENCH_QUEUE", "bench-q")

celery_app = Celery("bench", broker=BROKER, backend=BACKEND)
celery_app.conf.update(
    task_default_queue=QUEUE,
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)
# Sets result_extended, prefetch 1 and the Redis transport options on the app.
errands = Errands(celery=celery_app)


@errands.task(name="bench.errands_noop")
def errands_noop(i: int) -> None:
    ran()


app = FastAPI(lifespan=errands.lifespan)


@app.post("/errands")
async def errands_endpoint(tasks: BackgroundTasks) -> None:
    tasks.add_task(errands_noop, 1)  # published before the response


# def endpoints: the blocking publish runs in the threadpool
@app.post("/required")
def required_endpoint() -> None:
    required_noop.delay(1)


@app.post("/defaults")
def defaults_endpoint() -> None:
    defaults_noop.delay(1)
