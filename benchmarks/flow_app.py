"""Tasks for the flow-control benchmark (benchmarks/flow.py), on $ERRANDS_URL. It also
loads on builds from before task limits (then ``held`` is None)."""

import asyncio
import os

from errands import Errands

errands = Errands(concurrency=int(os.environ.get("BENCH_CONCURRENCY", "64")), drain_timeout=1)


@errands.task(name="noop")
def noop() -> None:
    pass


try:

    @errands.task(name="held", concurrency=1)  # type: ignore[call-overload]
    async def _held() -> None:
        await asyncio.sleep(3600)

    held = _held
except TypeError:  # a build before task limits
    held = None
