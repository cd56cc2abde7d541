"""HTTP cost of background tasks: FastAPI's own vs errands, side by side, one run.

Each scenario is served by its own uvicorn process (1 worker) on 127.0.0.1 and
loaded with wrk (Debian: apt-get install wrk) for --duration seconds at
--connections connections, after a short warm-up. Prints req/s, p50 and p99 and,
for the 100 ms sync task, how many accepted tasks were still waiting when the load
stopped. Ratios are what to read: this machine is shared and noisy.

    .venv/bin/pip install -e '.[bench]'     # psutil, for the CPU time
    .venv/bin/python benchmarks/http_overhead.py [--duration 10] [--connections 32] [--rounds 1]

With --rounds N every scenario runs N times, the scenarios taking turns, and each
figure is the median of its runs. "cpu/req" is the server process's CPU time (all its
threads) per request served: steadier than req/s on a shared machine.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import free_port, stop, uvicorn  # noqa: E402

SCENARIOS = [
    ("none", "no task (async endpoint)"),
    ("depends-only", "no task, one plain Depends() (reference)"),
    ("fastapi-noop", "FastAPI BackgroundTasks, async no-op"),
    ("errands-plain", "errands, async no-op plain task"),
    ("errands-registered", "errands, async no-op registered task (memory)"),
    ("errands-sqlite", "errands, async no-op registered task (SQLite)"),
    ("errands-sqlite-web", "  the same, web process only adds (worker=False)"),
    ("fastapi-noop-def", "FastAPI BackgroundTasks, def no-op"),
    ("errands-plain-def", "errands, def no-op plain task"),
    ("none-sync", "no task (sync endpoint)"),
    ("fastapi-sleep", "FastAPI, sync endpoint + def task sleeping 100 ms"),
    ("errands-sleep", "errands, sync endpoint + def task sleeping 100 ms"),
]


def to_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, duration: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}_ms"] = to_ms(match.group(1)) if match else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    return result


def run_scenario(
    name: str, duration: int, connections: int, server_args: list[str]
) -> dict[str, float]:
    port = free_port()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "BENCH_SCENARIO": name, "PYTHONPATH": path}
    server = subprocess.Popen(
        uvicorn("benchmarks.apps:app", port, "error", *server_args),
        cwd=ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(200):
            try:
                httpx.get(url + "pending", timeout=0.5)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        wrk(url, 1, connections)  # warm-up
        time.sleep(0.5 if "sleep" not in name else 0)
        process = psutil.Process(server.pid)
        before = sum(process.cpu_times()[:2])
        result = wrk(url, duration, connections)
        used = sum(process.cpu_times()[:2]) - before
        result["cpu_us_per_req"] = used * 1e6 / (result["rps"] * duration)
        result["waiting_at_stop"] = float(httpx.get(url + "pending", timeout=30).json())
        return result
    finally:
        stop(server, grace=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", nargs="*", help="scenario names to run")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each scenario (medians)")
    parser.add_argument(
        "--pure-python",
        action="store_true",
        help="serve with uvicorn's asyncio loop and h11 instead of uvloop and httptools",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")

    chosen = [(n, label) for n, label in SCENARIOS if not args.only or n in args.only]
    server_args = ["--loop", "asyncio", "--http", "h11"] if args.pure_python else []
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in chosen}
    for _ in range(args.rounds):
        for name, _ in chosen:
            runs[name].append(run_scenario(name, args.duration, args.connections, server_args))
    results = {
        name: {key: statistics.median(run[key] for run in done) for key in done[0]}
        for name, done in runs.items()
    }
    for name, label in chosen:
        r = results[name]
        print(
            f"{label:<52} {r['rps']:>7.0f} req/s  cpu/req {r['cpu_us_per_req']:>5.0f} us  "
            f"p50 {r['p50_ms']:>6.2f} ms  p99 {r['p99_ms']:>7.2f} ms  "
            f"waiting at stop {r['waiting_at_stop']:>6.0f}"
            + (f"  non-2xx {r['non_2xx']:.0f}" if r["non_2xx"] else ""),
            flush=True,
        )

    def ratio(a: str, b: str) -> str:
        if a in results and b in results:
            by_rps = results[a]["rps"] / results[b]["rps"]
            by_cpu = results[b]["cpu_us_per_req"] / results[a]["cpu_us_per_req"]
            return f"{by_rps:.1%} (by cpu/req {by_cpu:.1%})"
        return "n/a"

    print()
    print("no-op task, share of the no-task req/s:")
    print(f"  FastAPI async no-op   {ratio('fastapi-noop', 'none')}")
    print(f"  errands plain         {ratio('errands-plain', 'none')}")
    print(f"  errands registered    {ratio('errands-registered', 'none')}")
    print(
        f"  errands SQLite        {ratio('errands-sqlite', 'none')}"
        f"  ({ratio('errands-sqlite', 'fastapi-noop')} of FastAPI's own)"
    )
    print(
        f"  errands SQLite, web   {ratio('errands-sqlite-web', 'none')}"
        f"  ({ratio('errands-sqlite-web', 'fastapi-noop')} of FastAPI's own)"
    )
    print(f"  FastAPI def no-op     {ratio('fastapi-noop-def', 'none')}")
    print(f"  errands def no-op     {ratio('errands-plain-def', 'none')}")
    print(f"  any Depends() alone   {ratio('depends-only', 'none')}")
    if "none-sync" in results:
        base = results["none-sync"]["p99_ms"]
        for name in ("fastapi-sleep", "errands-sleep"):
            if name in results:
                print(
                    f"100 ms sync task, p99 vs no-task p99: {name:<14} "
                    f"{results[name]['p99_ms'] / base:.1f}x"
                )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    suffix = "-pure-python" if args.pure_python else ""
    (out / f"http_overhead{suffix}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
