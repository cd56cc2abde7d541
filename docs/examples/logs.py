"""Logs with the job in every record: ``job_id``, ``task`` and ``attempt`` as fields,
with the standard library only (a JSON formatter would show them the same way)."""

import asyncio
import logging

from errands import Errands, JobLogFilter

handler = logging.StreamHandler()
handler.addFilter(JobLogFilter())  # the job's fields on every record, None outside jobs
handler.setFormatter(
    logging.Formatter(
        "%(levelname)s %(name)s job=%(job_id)s task=%(task)s #%(attempt)s %(message)s"
    )
)
logging.basicConfig(level=logging.INFO, handlers=[handler])
log = logging.getLogger("shop")

errands = Errands("memory://")


@errands.task(name="receipts.send")
def send_receipt(order: str) -> None:
    log.info("sending the receipt of %s", order)  # carries the job's fields


async def main() -> None:
    async with errands.lifespan():
        errands.add_task(send_receipt, "o-1")
        await errands.join(timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
