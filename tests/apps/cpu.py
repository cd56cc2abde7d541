"""Registered tasks that run in processes of their own (process=True)."""

import os
import time

from errands import Errands

errands = Errands("memory://", processes=2)


@errands.task(process=True)
def whoami(n: int) -> dict[str, int]:
    return {"pid": os.getpid(), "square": n * n}


@errands.task(process=True, timeout=0.5)
def spin(marker: str) -> None:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # CPU-bound: no thread timeout could stop this
        pass
    with open(marker, "w") as f:
        f.write("still ran")


@errands.task(process=True, retries=1, backoff=0)
def explode() -> None:
    raise ValueError("boom in a child")


@errands.task(process=True)
def die() -> None:
    os._exit(3)


@errands.task(process=True, retries=2, backoff=0)
def huge_result() -> int:
    return 10**5000  # more digits than JSON may carry
