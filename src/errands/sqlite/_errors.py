"""SQLite's errors as errands' own: what happened to which file, and what to do.

The class says whether waiting helps: ``StoreCorrupt`` and ``StoreUnwritable`` will
not pass by themselves (a worker stops on them), a plain ``StoreError`` may (a worker
backs off and tries again). SQLite's result code decides (``sqlite_errorcode``, whose
low byte is the primary code); the message of an error without one decides the rest.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..exceptions import StoreCorrupt, StoreError, StoreUnwritable

_RESTORE = (
    "Restore it from a backup, or move it away (with its -wal and -shm files) to start "
    "with an empty store; `sqlite3 {path} .recover` may save some of its jobs."
)


def busy(exc: BaseException | None) -> bool:
    """Whether ``exc`` is SQLite's "another connection holds the lock"."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return True
    return "locked" in str(exc)


def store_error(exc: sqlite3.Error, path: str, busy_timeout: float) -> StoreError:
    """The errands error for ``exc``, raised by SQLite on the store at ``path``."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    said = str(exc)
    where = f"the SQLite store {path}"
    if primary == sqlite3.SQLITE_NOTADB or "file is not a database" in said:
        return StoreCorrupt(
            f"{where} is not a database ({said}): errands cannot read it. "
            + _RESTORE.format(path=path)
        )
    if primary == sqlite3.SQLITE_CORRUPT or "malformed" in said:
        return StoreCorrupt(f"{where} is damaged ({said}). " + _RESTORE.format(path=path))
    if primary == sqlite3.SQLITE_CANTOPEN or "unable to open" in said:
        directory = Path(path).parent
        if not directory.is_dir():
            return StoreUnwritable(
                f"{where} cannot be opened: the directory {directory} does not exist: "
                f"create it, or point errands at a file in an existing directory."
            )
        return StoreUnwritable(
            f"{where} cannot be opened ({said}). Check that this user may read and write "
            f"the file and its directory (SQLite creates {path}-wal and {path}-shm beside it)."
        )
    if primary == sqlite3.SQLITE_READONLY or "readonly" in said:
        return StoreUnwritable(
            f"{where} is read-only ({said}); nothing of this call was stored. Make the file "
            f"and its directory writable by this user (SQLite also writes {path}-wal and "
            f"{path}-shm beside it), or point errands at a file it may write."
        )
    if primary in (sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
        return StoreUnwritable(
            f"{where} refused access ({said}); nothing of this call was stored. Check the "
            f"permissions of the file and its directory for this user."
        )
    if busy(exc):
        return StoreError(
            f"{where} was locked by another process for longer than the busy timeout "
            f"({busy_timeout:g} s); nothing of this call was stored. It passes when that "
            f"process ends its transaction (a backup, or a sqlite3 shell left inside one)."
        )
    if primary == sqlite3.SQLITE_FULL or "disk is full" in said:
        return StoreError(
            f"{where} could not be written: the disk is full ({said}). Nothing of this call "
            f"was stored. Free some space on the disk (or purge old jobs)."
        )
    if primary == sqlite3.SQLITE_IOERR or "disk I/O error" in said:
        return StoreError(
            f"{where} met an I/O error ({said}); nothing of this call was stored. Check the "
            f"disk and the file system (SQLite's locking does not work on network file "
            f"systems such as NFS)."
        )
    if primary == sqlite3.SQLITE_CONSTRAINT:
        return StoreError(f"{where} refused the write ({said}); nothing of this call was stored.")
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    return StoreError(f"{where} failed ({name}: {said}); nothing of this call was stored.")
