"""What a client gets when errands cannot take a request's jobs: ``503 Service
Unavailable`` with ``Retry-After``, unless the app has a handler of its own.

A full backlog (``BacklogFull``) or a store that cannot take the jobs
(``StoreError``) fails the request as a whole, before its response. Without a
handler, Starlette would answer 500 and log a traceback for every such request; the
client could not tell "try again" from a bug. The detail says nothing of the store
(no file path leaves the server); the log says what happened, a line every few
seconds however many requests are refused.
"""

from __future__ import annotations

import logging
import time

from starlette.exceptions import HTTPException

from .exceptions import BacklogFull, StoreError

logger = logging.getLogger("errands")

#: (detail, Retry-After seconds) for each error errands answers itself.
_REFUSALS: dict[type[Exception], tuple[str, int]] = {
    BacklogFull: ("too many background jobs are waiting; try again shortly", 1),
    StoreError: ("background jobs cannot be stored right now; try again later", 5),
}

#: How often the refusals are logged at most (seconds).
_LOG_EVERY = 5.0

_logged = {"at": 0.0, "count": 0}


def refuse(error: BaseException, app: object) -> HTTPException | None:
    """The 503 to answer ``error`` with, or None: it is not one errands answers, or the
    app has a handler for it (or for a class of it, ``ErrandsError`` say)."""
    found = next((v for k, v in _REFUSALS.items() if isinstance(error, k)), None)
    if found is None:
        return None
    detail, retry_after = found
    handlers = getattr(app, "exception_handlers", None) or {}
    for cls in type(error).__mro__:
        if cls in (Exception, BaseException):
            break
        if cls in handlers:
            return None
    _log(error)
    return HTTPException(503, detail=detail, headers={"Retry-After": str(retry_after)})


def _log(error: BaseException) -> None:
    now = time.monotonic()
    _logged["count"] += 1
    if now - _logged["at"] >= _LOG_EVERY:
        logger.warning(
            "answered %d request(s) with 503 since the last such line: %s",
            _logged["count"],
            error,
        )
        _logged["at"], _logged["count"] = now, 0
