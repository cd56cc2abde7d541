"""The SQLite mode (the embedded default): jobs in one file, shared by every process
that opens it."""

from ._store import SQLiteStore

__all__ = ["SQLiteStore"]
