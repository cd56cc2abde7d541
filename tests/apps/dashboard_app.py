"""The app the dashboard's browser tests drive: a SQLite store with a worker in the
process, the dashboard at /errands behind Basic auth (admin/pw), and /seed, which adds
jobs that end in every way: succeeded, failed (one that succeeds once $DASHBOARD_FLAG
exists), failed with HTML in its arguments and error, and delayed an hour."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fastapi import FastAPI

from errands import Errands

errands = Errands(f"sqlite:///{os.environ['DASHBOARD_DB']}")
app = FastAPI(lifespan=errands.lifespan)
app.mount("/errands", errands.dashboard(auth=("admin", "pw")))

XSS = "<script>alert('xss')</script><img src=x onerror=alert('img')>"


@errands.task(name="mail", retries=1)
async def mail(to: str) -> str:
    await asyncio.sleep(0.01)
    return f"sent to {to}"


@errands.task(name="fickle")
def fickle(tag: str) -> str:
    if not Path(os.environ["DASHBOARD_FLAG"]).exists():
        raise ConnectionError(f"the mail server hung up on {tag}")
    return f"{tag} done"


@errands.task(name="bad")
def bad(value: str) -> None:
    raise ValueError(f"cannot take {value}")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"ok": "yes"}


@app.post("/seed")
async def seed() -> dict[str, str]:
    for i in range(12):
        errands.add_task(mail, f"user{i}@example.com")
    return {
        "fickle": errands.add_task(fickle, "signup-42").id,
        "bad": errands.add_task(bad, XSS).id,
        "later": errands.add_task(mail.options(delay=3600), "later@example.com").id,
    }
