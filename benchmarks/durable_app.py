"""Tasks for the durable benchmark: errands on $ERRANDS_URL, and Huey on SQLite."""

import os
import time

from huey import SqliteHuey

from errands import Errands

errands = Errands(concurrency=int(os.environ.get("BENCH_CONCURRENCY", "64")))
huey = SqliteHuey(filename=os.environ.get("HUEY_DB", "/tmp/errands-bench-huey.db"))


@errands.task(name="noop")
def noop() -> None:
    pass


@errands.task(name="stamp")
async def stamp() -> float:
    return time.time()  # when the attempt started


@huey.task()
def huey_noop() -> int:
    return 1
