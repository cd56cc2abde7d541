"""Adding jobs outside a request (a script, a startup hook), then draining them."""

import asyncio

from errands import Errands

errands = Errands("memory://")


@errands.task(retries=1)
async def resize(image: str, width: int) -> str:
    await asyncio.sleep(0)
    return f"{image}@{width}"


async def main() -> list[str]:
    jobs = [errands.add_task(resize, f"img{i}.png", width=320) for i in range(3)]
    await errands.join(timeout=10)  # no worker running here: join runs one until done
    return [str((await job.wait()).result) for job in jobs]


if __name__ == "__main__":
    print(asyncio.run(main()))
