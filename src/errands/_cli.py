"""``errands worker module:attribute``: a thin shell over ``Errands.run_worker``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ._errands import Errands
from ._modes import import_attribute


def load(target: str) -> Errands:
    """The Errands instance named by ``module:attribute``, imported as uvicorn does."""
    try:
        instance = import_attribute(target)
    except ValueError:
        raise SystemExit(
            f"errands: expected module:attribute (e.g. app.main:errands), got {target!r}"
        ) from None
    except ImportError as exc:
        raise SystemExit(f"errands: could not import {target!r}: {exc}") from None
    if not isinstance(instance, Errands):
        raise SystemExit(
            f"errands: {target!r} is {type(instance).__name__}, not an Errands instance"
        )
    return instance


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="errands", description="Run errands workers.")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run the worker of an Errands instance")
    worker.add_argument("target", help="module:attribute of the Errands instance")
    worker.add_argument("--concurrency", type=int, help="jobs running at once")
    worker.add_argument(
        "--processes", type=int, help="process=True tasks running at once (default: CPUs)"
    )
    worker.add_argument("--log-level", default="info", help="logging level (default: info)")
    worker.epilog = "In Celery mode, options after -- go to the Celery worker (-Q, -P, -n...)."
    argv = list(sys.argv[1:] if argv is None else argv)
    # In Celery mode, what follows -- is the Celery worker's.
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1 :]

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    instance = load(args.target)
    if extra and instance.celery is None:
        parser.error(f"options after -- go to a Celery worker, and {args.target} is not on Celery")
    instance.run_worker(
        concurrency=args.concurrency,
        processes=args.processes,
        celery_args=extra,
        log_level=args.log_level,
    )
    # Drained. A def task abandoned at its timeout may still hold a thread, which
    # Python would wait for at exit; its job is already back in the queue.
    logging.shutdown()
    os._exit(0)
