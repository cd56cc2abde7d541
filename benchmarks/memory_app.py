"""The app and tasks of the memory benchmark (benchmarks/memory.py).

``errands`` is ``Errands()`` with its defaults, as a user would write it: its store is
``$ERRANDS_URL`` or, without it, ``errands.db`` in the current directory (SQLite). The
web process serves ``/`` (one plain async no-op task a request) and ``/registered``
(one registered no-op task a request) and ``/fastapi`` (a plain one on FastAPI's own
``BackgroundTasks``, the baseline); ``errands worker benchmarks.memory_app:errands``
runs the registered ones.
"""

import gc
import tracemalloc
from typing import Any

import fastapi
from fastapi import FastAPI

from errands import BackgroundTasks, Errands

errands = Errands()
app = FastAPI(lifespan=errands.lifespan)
counts = {"served": 0, "ran": 0}


async def noop() -> None:
    counts["ran"] += 1


@errands.task(name="noop")
async def registered_noop() -> None:
    counts["ran"] += 1  # in the process that runs it: the web one, or the worker


@app.get("/")
async def plain(tasks: BackgroundTasks) -> dict[str, int]:
    counts["served"] += 1
    tasks.add_task(noop)
    return {"ok": 1}


@app.get("/registered")
async def registered(tasks: BackgroundTasks) -> dict[str, int]:
    counts["served"] += 1
    tasks.add_task(registered_noop)
    return {"ok": 1}


@app.get("/fastapi")
async def fastapi_own(tasks: fastapi.BackgroundTasks) -> dict[str, int]:
    """The baseline: FastAPI's own BackgroundTasks, the same no-op."""
    counts["served"] += 1
    tasks.add_task(noop)
    return {"ok": 1}


@app.get("/count")
async def count(objects: bool = False) -> dict[str, Any]:
    """Requests served, tasks run in this process, and what errands holds in memory; with
    ``objects``, the garbage collector's count of live objects too."""
    plain = errands._core.plain
    return {
        **counts,
        "backlog": errands.backlog,
        "plain_records": len(plain._records),
        "objects": len(gc.get_objects()) if objects else None,
        "traced_mb": tracemalloc.get_traced_memory()[0] / 2**20
        if tracemalloc.is_tracing()
        else None,
    }


baseline: list[tracemalloc.Snapshot] = []


@app.get("/trace")
async def trace(top: int = 15) -> list[str]:
    """Under PYTHONTRACEMALLOC: the first call takes a snapshot; each later one lists
    the lines whose allocations grew most since it."""
    if not tracemalloc.is_tracing():
        return []
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    if not baseline:
        baseline.append(snapshot)
        return []
    grown = sorted(snapshot.compare_to(baseline[0], "lineno"), key=lambda s: -s.size_diff)
    return [str(stat) for stat in grown[:top]]
