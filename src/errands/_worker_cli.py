"""``errands worker module:attribute``: a thin shell over ``Errands.run_worker`` that
needs nothing beyond errands itself (argparse); and ``load``, which finds the Errands
instance a command names."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from types import ModuleType, TracebackType

from . import __version__
from ._errands import Errands
from ._modes import import_attribute
from .exceptions import ErrandsError

LEVELS = ("debug", "info", "warning", "error", "critical")
# Frames of errands and importlib above the user's module say nothing about their bug.
OURS = (
    "<frozen importlib",
    os.path.join(os.path.dirname(__file__), ""),
    os.path.join(os.path.dirname(str(importlib.__file__)), ""),
)


def load(target: str) -> Errands:
    """The Errands instance named by ``module:attribute``, imported as uvicorn does;
    else SystemExit with what to fix."""
    module_name, _, attribute = target.partition(":")
    try:
        found = import_attribute(target)
    except ModuleNotFoundError as exc:
        if exc.name is None or not f"{module_name}.".startswith(f"{exc.name}."):
            raise SystemExit(failed_import(target, exc)) from None  # theirs, not the target
        raise SystemExit(
            f"errands: could not import {target!r}: no module named {exc.name!r} (errands "
            f"looks in the current directory, {os.getcwd()}, then on sys.path)"
        ) from None
    except ErrandsError as exc:  # errands' own words say what to fix: no traceback
        raise SystemExit(f"errands: {exc}") from None
    except Exception as exc:
        raise SystemExit(failed_import(target, exc)) from None
    module = sys.modules[module_name]
    if found is None and not hasattr(module, attribute):
        problem = f"module {module_name!r} has no attribute {attribute!r}"
    elif not isinstance(found, Errands):
        kind = type(found).__name__
        what = "None" if found is None else f"{'an' if kind[0] in 'AEIOUaeiou' else 'a'} {kind}"
        problem = f"{target!r} is {what}, not an Errands instance"
    else:
        return found
    raise SystemExit(f"errands: {problem}{instances_in(module)}")


def failed_import(target: str, exc: Exception) -> str:
    """Prints the traceback of the user's code; returns the one-line summary to exit with."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(OURS):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)
    return f"errands: could not import {target!r}: {type(exc).__name__}: {exc} (traceback above)"


def instances_in(module: ModuleType) -> str:
    names = [name for name, value in vars(module).items() if isinstance(value, Errands)]
    if not names:
        return f" (and {module.__name__} holds no Errands instance)"
    return "; its Errands instances: " + ", ".join(f"{module.__name__}:{n}" for n in names)


def port_number(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"expected a port, 1 to 65535, got {value!r}")
    return port


def module_attribute(value: str) -> str:
    # Checked here: once the user's module runs, any exception is theirs.
    module_name, _, attribute = value.partition(":")
    if not module_name or not attribute or "/" in value:
        raise argparse.ArgumentTypeError(f"expected e.g. app.main:errands, got {value!r}")
    return value


def positive(value: str) -> int:
    if not value.isdecimal() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number, 1 or more; got {value!r}")
    return int(value)


#: The commands of the ``cli`` extra (``_ops``: Typer and Rich).
OPERATIONS = ("jobs", "show", "stats", "cancel", "retry", "purge", "dashboard")


def worker(argv: list[str]) -> None:
    """``errands worker ...`` (``argv`` starts with ``worker``)."""
    parser = argparse.ArgumentParser(
        prog="errands",
        description="Run errands workers (pip install 'errands[cli]' adds "
        f"{', '.join(OPERATIONS)}).",
    )
    parser.add_argument("--version", action="version", version=f"errands {__version__}")
    command = parser.add_subparsers(dest="command", required=True).add_parser(
        "worker",
        help="run the worker of an Errands instance",
        description="Run the worker of an Errands instance until SIGINT or SIGTERM, then "
        "let running jobs finish (for up to its drain_timeout) and exit.",
        epilog="In Celery mode, options after -- go to the Celery worker (-- -Q emails).",
    )
    command.add_argument(
        "target",
        type=module_attribute,
        metavar="module:attribute",
        help="the Errands instance, e.g. app.main:errands, imported as uvicorn imports an "
        "app (the current directory first on sys.path)",
    )
    command.add_argument(
        "--concurrency",
        type=positive,
        metavar="N",
        help="jobs this worker runs at once (default: the instance's concurrency=, 100 "
        "unless set); in Celery mode, the Celery worker's --concurrency",
    )
    command.add_argument(
        "--processes",
        type=positive,
        metavar="N",
        help="process=True tasks running at once, each in a process of its own (default: "
        "the number of CPUs; not used in Celery mode)",
    )
    command.add_argument(
        "--log-level",
        type=str.lower,
        choices=LEVELS,
        default="info",
        metavar="LEVEL",
        help="the least severe messages logged: %(choices)s (default: %(default)s)",
    )
    command.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="serve this worker's metrics in Prometheus' text format on PORT (needs "
        "pip install 'errands[metrics]')",
    )
    command.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        metavar="HOST",
        help="the address of --metrics-port (default: %(default)s)",
    )
    # In Celery mode, what follows -- is the Celery worker's.
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1 :]

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    instance = load(args.target)
    if instance.url.startswith("memory:"):
        raise SystemExit(
            f"errands: {args.target} keeps its jobs in this process's memory ({instance.url}), "
            f"where a worker in another process never sees them. Give it a SQLite URL "
            f"(Errands('sqlite:///errands.db'), or ERRANDS_URL=sqlite:///errands.db), or run "
            f"its worker in the app: FastAPI(lifespan={args.target.partition(':')[2]}.lifespan)."
        )
    if extra and not instance.url.startswith("celery:"):
        command.error(f"options after -- go to a Celery worker, and {args.target} is not on Celery")
    if args.metrics_port is not None:
        try:
            counting = instance._core.metrics.prometheus()
            counting.serve(args.metrics_port, args.metrics_host)
        except ErrandsError as exc:
            raise SystemExit(f"errands: {exc}") from None
        except OSError as exc:
            raise SystemExit(
                f"errands: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}"
            ) from None
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
