"""What the benchmark scripts share."""

import subprocess


def stop(process: "subprocess.Popen[bytes]", grace: float = 30) -> None:
    """SIGTERM (a drain), then SIGKILL after ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
