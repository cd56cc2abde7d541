"""Jobs in your transaction: an order and the job that sends its receipt are committed
together, or neither is (PostgreSQL, SQLAlchemy on psycopg).

    DATABASE_URL=postgresql://app:secret@db:5432/app python docs/examples/orders.py

prints ``409 True succeeded``: the refused order left no job, the placed one's receipt
was sent.
"""

import os
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from errands import Errands

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
errands = Errands(DATABASE_URL)  # the jobs live in the app's own database
engine = create_engine(DATABASE_URL.replace("postgresql://", "postgresql+psycopg://", 1))
app = FastAPI(lifespan=errands.lifespan)

with engine.begin() as db:
    db.execute(text("CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, item text)"))

sent: list[int] = []


class Order(BaseModel):
    item: str
    quantity: int


@errands.task(retries=3)
def send_receipt(order_id: int) -> None:
    sent.append(order_id)  # (an email, in a real app)


@app.post("/orders")
def place_order(order: Order) -> dict[str, Any]:
    with Session(engine) as session, session.begin():
        order_id = session.execute(
            text("INSERT INTO orders (item) VALUES (:item) RETURNING id"), {"item": order.item}
        ).scalar_one()
        # Written in this transaction: it exists if and only if the order does, and
        # no worker starts it before the commit.
        job = errands.add_task_in(session, send_receipt, order_id)
        if order.quantity > 10:
            raise HTTPException(409, "not enough stock")  # rolled back: no order, no job
    return {"order": order_id, "receipt": job.id}


if __name__ == "__main__":
    import anyio
    from fastapi.testclient import TestClient

    client = TestClient(app)  # no lifespan here: errands.join() runs the jobs below
    placed = client.post("/orders", json={"item": "book", "quantity": 1}).json()
    refused = client.post("/orders", json={"item": "piano", "quantity": 99})
    anyio.run(errands.join)
    receipt = errands.get(placed["receipt"])
    assert receipt is not None
    print(refused.status_code, sent == [placed["order"]], receipt.status.value)
