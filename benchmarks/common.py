"""What the benchmark scripts share."""

import socket
import subprocess
import sys


def stop(process: "subprocess.Popen[bytes]", grace: float = 30) -> None:
    """SIGTERM (a drain), then SIGKILL after ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uvicorn(app: str, port: int, log_level: str, *options: str) -> list[str]:
    """The command of one uvicorn process serving ``app`` on 127.0.0.1:``port``, no
    access log; ``options``: the loop and HTTP parser, say."""
    command = [sys.executable, "-m", "uvicorn", app, "--port", str(port)]
    return [*command, "--log-level", log_level, "--no-access-log", *options]


#: uvicorn's fastest loop and HTTP parser (the default of the benchmarks' servers).
FAST = ("--loop", "uvloop", "--http", "httptools")
