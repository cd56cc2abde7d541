"""PostgreSQL's errors as errands' own: what happened to which database, and what to do.

As with SQLite (``errands.sqlite._errors``), the class says whether waiting helps:
``StoreCorrupt`` and ``StoreUnwritable`` will not pass by themselves (a worker stops on
them); a plain ``StoreError`` may (a request gets ``503``, a worker backs off and tries
again). A server that cannot be reached, a connection lost or a pool with no free
connection in time is a plain ``StoreError``: a restart or a failover ends it.
"""

from __future__ import annotations

import psycopg
from psycopg import errors

from ..exceptions import StoreCorrupt, StoreError, StoreUnwritable

#: Refusals that no retry will change: the role may not do this, or the login fails.
_REFUSED = (errors.InsufficientPrivilege, errors.InvalidAuthorizationSpecification)
#: The server found its own data damaged.
_DAMAGED = (errors.DataCorrupted, errors.IndexCorrupted)
#: Said by a server refusing a connection for good (not one that is down or busy).
_FOR_GOOD = ("password authentication failed", "does not exist", "no pg_hba.conf entry")


def store_error(exc: psycopg.Error, where: str) -> StoreError:
    """The errands error for ``exc``, raised by psycopg on the store ``where``."""
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    store = f"the PostgreSQL store {where}"
    if isinstance(exc, _REFUSED) or (
        isinstance(exc, psycopg.OperationalError) and any(s in said for s in _FOR_GOOD)
    ):
        return StoreUnwritable(
            f"{store} refused access ({said}); nothing of this call was stored. Check the "
            f"user, password and database of the URL, and that the role may use the schema."
        )
    if isinstance(exc, _DAMAGED):
        return StoreCorrupt(
            f"{store} reports damaged data ({said}). Restore the database from a backup "
            f"(or REINDEX a damaged index)."
        )
    if isinstance(exc, errors.DiskFull):
        return StoreError(
            f"{store} could not be written: the server's disk is full ({said}). Nothing of "
            f"this call was stored. Free some space (or purge old jobs)."
        )
    if isinstance(exc, errors.TransactionRollback):
        # A deadlock or a serialization failure: PostgreSQL chose this transaction.
        return StoreError(
            f"{store} rolled back this call for a concurrent one ({said}); nothing of it "
            f"was stored. Trying again succeeds."
        )
    if isinstance(exc, psycopg.OperationalError):
        # Refused or lost connections, a server shutting down, the pool's timeout.
        return StoreError(
            f"{store} cannot be reached ({said}); nothing of this call was stored. It "
            f"passes when the server answers again."
        )
    name = type(exc).__name__
    return StoreError(f"{store} failed ({name}: {said}); nothing of this call was stored.")
