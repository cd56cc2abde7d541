"""Adds one job id many times at once, from threads of this process, for the tests
that race processes: ``python -m tests.apps.racer MODE PATH QUEUE KEY START N`` (PATH:
the SQLite file, or the store's URL on PostgreSQL).

Waits until ``START`` (a ``time.time()``), then ``N`` threads each add the task
``modes.record`` with the job id ``KEY``; prints one JSON line: each handle's id and
whether it said it was new.
"""

import json
import sys
import threading
import time

from tests.apps import modes

mode_name, path, queue, key, start, n = sys.argv[1:]
# PATH: the SQLite file, or PostgreSQL's URL.
mode = modes.make(mode_name, path=path, queue=queue, url=path if mode_name == "postgres" else "")
handles: list[tuple[str, bool]] = []
lock = threading.Lock()


def add(i: int) -> None:
    job = mode.errands.add_task(mode.record.options(job_id=key), f"{key} {i}")
    with lock:
        handles.append((job.id, job.created))


threads = [threading.Thread(target=add, args=(i,)) for i in range(int(n))]
time.sleep(max(0.0, float(start) - time.time()))
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(handles))
