"""A process=True task that stays in its process, on the SQLite store ($ERRANDS_URL), for
tests that kill its worker. It writes its process's pid to a file once it runs."""

import os
import time

from errands import Errands

if os.environ.get("ORPHANS_PRCTL") == "0":
    # What platforms without prctl get: a thread in the task's process watches the worker.
    from errands import _process

    _process._PRCTL = False

errands = Errands(lease=1.0, hold=1.0)


@errands.task(process=True, name="linger")
def linger(pidfile: str, seconds: float) -> None:
    with open(f"{pidfile}.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(f"{pidfile}.tmp", pidfile)  # whole, or not there
    time.sleep(seconds)
