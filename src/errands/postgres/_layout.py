"""The PostgreSQL store's layout on a database: made on first use, upgraded by a later
errands, refused by an errands too old for it.

Every process that opens a store reads the layout's version (one statement). Only
when it is missing or older than this errands' does the process take the schema's
advisory lock, read the version again (another process may have done the work
meanwhile) and make the tables, or run each upgrade from the version found to this
one, in one transaction: a crash halfway leaves the layout as it was. A layout at
this errands' version is opened without DDL, so a role that may only read and write
can open it; an older one needs a role that may alter the schema (its owner), once.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from ..exceptions import ConfigurationError, StoreError
from ._schema import (
    READERS_FROM,
    TABLES,
    UPGRADE_LOCK_TIMEOUT,
    UPGRADES,
    VALIDATIONS,
    VERSION,
)

logger = logging.getLogger("errands")


def open_layout(db: psycopg.Connection[Any], schema: str, location: str) -> None:
    """Make the schema's tables and indexes, or bring them to this errands' version."""
    # Read outside the transaction (the connection is in autocommit): a read inside
    # it would hold its lock on the version table while waiting for the advisory lock,
    # and deadlock with the process that holds that lock and alters the table.
    version = found(db, schema, location)
    if version is not None and version >= VERSION:
        return  # the usual case: no lock, no DDL (newer: found said it may be used)
    # Keyed by the schema's name: other schemas' errands start on their own. Taken for
    # the session, before the transaction: a transaction begun after it sees what the
    # process that held it made (one begun before might not, PostgreSQL's catalog
    # caches being read at its start).
    db.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (schema,))
    try:
        _make_or_upgrade(db, schema, location)
    finally:
        db.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (schema,))


def _make_or_upgrade(db: psycopg.Connection[Any], schema: str, location: str) -> None:
    with db.transaction():
        version = found(db, schema, location)
        if version is not None and version >= VERSION:
            return  # another process made or upgraded it meanwhile
        if version is None:
            refuse_others(db, schema, location)
            db.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            db.execute(TABLES)
            db.execute(
                "INSERT INTO version (version, readers_from) VALUES (%s, %s)",
                (VERSION, READERS_FROM),
            )
            return
        db.execute(f"SET LOCAL lock_timeout = '{UPGRADE_LOCK_TIMEOUT}'")
        try:
            for step in range(version + 1, VERSION + 1):
                db.execute(UPGRADES[step])
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction) as exc:
            raise ConfigurationError(
                f"the PostgreSQL store {location} has the layout of version {version}, and "
                f"this errands needs version {VERSION}; this role may not alter the schema "
                f"to upgrade it ({exc.diag.message_primary}): start errands once as the "
                f"schema's owner, which upgrades it in place (nothing is lost)"
            ) from None
        except psycopg.errors.LockNotAvailable:
            raise StoreError(
                f"the PostgreSQL store {location} could not be upgraded from layout version "
                f"{version} to {VERSION}: another session held its tables for longer than "
                f"{UPGRADE_LOCK_TIMEOUT}; nothing was changed, and the next start tries again"
            ) from None
        db.execute("UPDATE version SET version = %s, readers_from = %s", (VERSION, READERS_FROM))
    logger.warning(
        "errands upgraded the PostgreSQL store %s from layout version %s to %s",
        location,
        version,
        VERSION,
    )
    for step in range(version + 1, VERSION + 1):
        for statement in VALIDATIONS.get(step, []):
            try:
                db.execute(statement)
            except psycopg.errors.CheckViolation as exc:
                logger.warning(
                    "the PostgreSQL store %s holds rows errands did not write (%s): the "
                    "check stays for new writes only; fix or delete those rows, then run "
                    "%r as the schema's owner",
                    location,
                    exc.diag.message_primary,
                    statement,
                )


def refuse_others(db: psycopg.Connection[Any], schema: str, location: str) -> None:
    """A schema errands has not made must hold nothing yet: errands' tables are named
    ``jobs``, ``limits``, ``processes``: in a schema of the application (``public``)
    they could be the application's own."""
    rows = db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1 LIMIT 4",
        (schema,),
    ).fetchall()
    if rows:
        names = ", ".join(str(name) for (name,) in rows[:3]) + (", ..." if len(rows) > 3 else "")
        raise ConfigurationError(
            f"the PostgreSQL store {location} would be made in schema {schema!r}, which "
            f"holds tables errands did not make ({names}); errands keeps its tables in a "
            f"schema of its own: leave ?schema= out (the schema 'errands') or name a new one"
        )


def found(db: psycopg.Connection[Any], schema: str, location: str) -> int | None:
    """The version of the schema's layout, None if it is not made yet; a
    ``ConfigurationError`` if it is newer than this errands may use."""
    row = db.execute("SELECT to_regclass(%s)", (f"{schema}.version",)).fetchone()
    if row is None or row[0] is None:
        return None
    # As JSON: a layout's version row has the columns of its own version.
    row = db.execute("SELECT row_to_json(v) FROM version v ORDER BY version DESC").fetchone()
    if row is None:
        return None
    fields = row[0] if isinstance(row[0], dict) else {}
    version, readers_from = fields.get("version"), fields.get("readers_from", 1)
    if not isinstance(version, int) or not isinstance(readers_from, int):
        raise ConfigurationError(
            f"the PostgreSQL store {location} has an unreadable layout version "
            f"({fields!r} in {schema}.version): restore that table, or use another schema"
        )
    if version > VERSION and readers_from > VERSION:
        raise ConfigurationError(
            f"the PostgreSQL store {location} has the layout of version {version}, which "
            f"errands older than its version {readers_from} cannot use; this one knows "
            f"version {VERSION}: upgrade errands"
        )
    return version
