"""Smoke test of ``pip install 'errands[metrics]'`` alone, run by ``scripts/smoke`` in a
fresh venv: ``errands.metrics()`` serves the counts of a real run in Prometheus' text
format (prometheus-client is there), read back with its parser. Not collected by pytest."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

import errands as errands_package
from errands import Errands

EXTRA = "errands[metrics]"


def check(condition: bool, problem: str) -> None:
    if not condition:
        raise SystemExit(f"{EXTRA} smoke test failed: {problem}")


async def scrape(app: Any) -> str:
    """One GET of the ASGI app, without an HTTP client (none is installed here)."""
    sent: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))

    scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": []}
    await app(scope, receive, send)
    return b"".join(sent).decode()


def main() -> None:
    check(
        Path(errands_package.__file__).is_relative_to(sys.prefix),
        f"errands was imported from {errands_package.__file__}, not from the venv {sys.prefix}",
    )
    with tempfile.TemporaryDirectory() as tmp:
        errands = Errands(f"sqlite:///{tmp}/errands.db")

        @errands.task(name="smoke.add")
        def add(a: int, b: int) -> int:
            return a + b

        app = errands.metrics()

        async def run() -> str:
            async with errands.lifespan():
                errands.add_task(add, 2, 3)
                await errands.join(timeout=30)
            return await scrape(app)

        text = asyncio.run(run())
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    done = ("errands_attempts_total", (("outcome", "succeeded"), ("task", "smoke.add")))
    check(found.get(done) == 1, f"no succeeded attempt counted in:\n{text}")
    print(f"{EXTRA}: counted and served one job's attempt")


if __name__ == "__main__":
    main()
