"""One app, any backend: only the ``Errands(...)`` line picks where jobs run.

    errands = Errands("memory://")          # in this process, lost on restart
    errands = Errands("sqlite:///shop.db")  # durable in one file (the default store)
    errands = Errands(celery=celery_app)    # Celery workers, on any number of machines

Here the line is ``Errands()``, and ``$ERRANDS_URL`` chooses, so the same file runs
on each without an edit: ``memory://``, ``sqlite:///shop.db``, or
``celery://docs.examples.shop:celery_app``. Workers for it:

    errands worker docs.examples.shop:errands     # SQLite, or (Celery) a Celery worker
    celery -A docs.examples.shop:celery_app worker  # Celery mode, Celery's own command
"""

import os

from celery import Celery
from fastapi import FastAPI, HTTPException

from errands import BackgroundTasks, Errands, JobRecord

celery_app = Celery(
    "shop",
    broker=os.environ.get("SHOP_BROKER", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("SHOP_RESULTS", "redis://127.0.0.1:6379/1"),
)
celery_app.conf.task_default_queue = os.environ.get("SHOP_QUEUE", "shop")

errands = Errands()  # the one line: memory, SQLite or Celery
app = FastAPI(lifespan=errands.lifespan)


@errands.task(name="shop.charge", retries=3, backoff=0.5, timeout=30)
def charge(order: str, cents: int) -> str:
    return f"charged {cents} cents for {order}"


@errands.task(name="shop.send_receipt", retries=3)
async def send_receipt(order: str) -> str:
    return f"receipt for {order} sent"


@app.post("/orders/{order}")
async def place_order(order: str, cents: int, tasks: BackgroundTasks) -> dict[str, str]:
    charged = tasks.add_task(charge, order, cents)
    receipt = tasks.add_task(send_receipt, order)  # starts once the charge has finished
    return {"charge": charged.id, "receipt": receipt.id}


@app.get("/jobs/{job_id}")
async def job(job_id: str) -> JobRecord:
    record = errands.get(job_id)
    if record is None:
        raise HTTPException(404, "no such job")
    return record
