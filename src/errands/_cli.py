"""The ``errands`` command: ``errands worker`` (no extra needed), and the operations
commands of the ``cli`` extra (``_ops``), whose Typer app also answers ``--help``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ._worker_cli import OPERATIONS, worker


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["worker"]:
        # Everything but `worker` is the cli extra's; `worker` needs nothing more than
        # errands itself (pip install errands gives a working worker).
        try:
            from ._ops import run
        except ImportError as exc:
            if argv[:1] and argv[0] in OPERATIONS:
                raise SystemExit(
                    f"errands {argv[0]} needs the command line's extra, which is not "
                    f"installed ({exc.name} is missing): pip install 'errands[cli]'"
                ) from None
        else:
            run(argv)
            return
    worker(argv)
