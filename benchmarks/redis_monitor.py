"""Counting the Redis commands of a piece of work with ``redis-cli monitor`` (MONITOR
slows Redis down: count in a pass of its own, not while timing)."""

import collections
import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from benchmarks.common import stop

_MONITORED = re.compile(r'^[\d.]+ \[(\d+) ([^\]]+)\] "([^"]*)"(?: "([^"]*)")?')


@contextlib.contextmanager
def monitor(host: str, port: int, log: Path) -> Iterator[set[str]]:
    """MONITOR into ``log`` while the block runs; yields a set that is given, as the
    block ends, the addresses of this process's connections to that server."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["redis-cli", "-h", host, "-p", str(port), "monitor"], stdout=out
        )
    ours: set[str] = set()
    try:
        deadline = time.monotonic() + 10
        while not log.read_bytes().startswith(b"OK"):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-cli monitor did not start")
            time.sleep(0.01)
        yield ours
        ours.update(
            f"{c.laddr.ip}:{c.laddr.port}"
            for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port
        )
    finally:
        stop(process, grace=5)


def count(log: Path, dbs: set[str], ours: set[str], skip: tuple[str, str]) -> dict[str, object]:
    """The commands on ``dbs`` in a MONITOR log: sent by this process (``ours``), by the
    others, and run by Lua scripts; and each command's count. ``skip``: a command and
    its first argument left out (a poll of the benchmark's own)."""
    by: dict[str, int] = {"producer": 0, "worker": 0, "lua": 0}
    names: collections.Counter[str] = collections.Counter()
    for line in log.read_text(errors="replace").splitlines():
        match = _MONITORED.match(line)
        if not match or match.group(1) not in dbs:
            continue
        _, client, command, first = match.groups()
        if (command.upper(), first) == skip:
            continue
        where = "lua" if client == "lua" else "producer" if client in ours else "worker"
        by[where] += 1
        names[f"{command.upper()}{' (lua)' if where == 'lua' else ''}"] += 1
    return {**by, "by_command": dict(names.most_common())}
