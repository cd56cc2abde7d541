"""The PostgreSQL mode (``postgresql://user:password@host:5432/database``): jobs in a
schema of one database (``errands``, or ``?schema=name``), shared by every process on
every host that opens it. Needs the postgres extra: ``pip install 'errands[postgres]'``."""

from __future__ import annotations

import difflib
import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import Conninfo

from .._options import Runtime
from ..exceptions import ConfigurationError
from ..local import LocalBackend
from ._store import PostgresStore

__all__ = ["PostgresStore", "masked", "open_backend", "parse_url"]

#: A schema name errands makes and names bare: no quoting needed, nor possible to misuse;
#: not PostgreSQL's own (pg_*), and short enough for its channel, ``errands_<schema>``
#: (identifiers are at most 63 bytes).
_SCHEMA = re.compile(r"(?!pg_)[a-z_][a-z0-9_]{0,54}")
#: Query parameters that hold secrets: shown as *** too.
_SECRETS = ("password", "sslpassword")


def parse_url(url: str) -> tuple[str, str, str]:
    """The connection string psycopg takes, the schema, and where the store is (the
    URL without its password) for logs and errors."""
    shown = masked(url)
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        parts, port = urlsplit(""), "?"
    if (
        parts.scheme not in ("postgresql", "postgres")
        or (not parts.hostname and not parts.path)
        or port == "?"
    ):
        raise ConfigurationError(
            f"invalid errands URL {shown!r}: give the database as "
            f"postgresql://user:password@host:5432/database (optionally ?schema=name)"
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    schema = schemas[-1] if schemas else "errands"
    if not _SCHEMA.fullmatch(schema):
        raise ConfigurationError(
            f"invalid errands URL {shown!r}: the schema {schema!r} must be lower-case letters, "
            f"digits and underscores (at most 55, not starting with a digit or pg_)"
        )
    if schema == "public":
        raise ConfigurationError(
            f"invalid errands URL {shown!r}: the schema 'public' is your application's (its "
            f"tables are there unless you say otherwise), and errands' tables (jobs, "
            f"limits, processes, version) could take its names: leave ?schema= out (the "
            f"schema 'errands') or name one of errands' own"
        )
    rest = urlencode([(k, v) for k, v in query if k != "schema"], quote_via=quote)
    # Built by hand: urlunsplit drops the // of a URL with no host (a Unix socket),
    # and libpq splits user and host at the first @, which a password may hold.
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username is not None:
        secret = "" if parts.password is None else ":" + quote(unquote(parts.password), safe="")
        netloc = f"{quote(unquote(parts.username), safe='')}{secret}@{netloc}"
    conninfo = f"postgresql://{netloc}{parts.path}" + (f"?{rest}" if rest else "")
    try:
        conninfo_to_dict(conninfo)  # libpq's own reading: a misspelt option fails here
    except psycopg.ProgrammingError as exc:
        known = [option.keyword.decode() for option in Conninfo.get_defaults()]
        # The option's name only: a value misspelt beside it may be a secret.
        close = [
            f"{match} for {key}"
            for key, _ in query
            if key != "schema" and key not in known
            for match in difflib.get_close_matches(key, known, n=1)
        ]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        said = str(exc).strip()
        # Every option's value hidden: which one holds a secret is not known here.
        hidden = re.sub(r"=[^&]*", "=***", shown.partition("?")[2])
        where = f"{shown.partition('?')[0]}?{hidden}"
        raise ConfigurationError(f"invalid errands URL {where!r}: {said}{hint}") from None
    user = f"{parts.username}@" if parts.username else ""
    location = f"postgresql://{user}{parts.hostname or 'localhost'}{port}{parts.path}"
    return conninfo, schema, f"{location} (schema {schema})"


def masked(url: str) -> str:
    """The URL with its password (if any, in the user part or the query) shown as
    ``***``: what logs and errors say."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://(a URL that cannot be read)"
    shown = url
    if "@" in parts.netloc:
        user, _, host = parts.netloc.rpartition("@")
        if ":" in user:
            shown = shown.replace(parts.netloc, f"{user.split(':', 1)[0]}:***@{host}", 1)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key in _SECRETS for key, _ in query):
        hidden = [(k, "***" if k in _SECRETS else v) for k, v in query]
        shown = shown.replace(f"?{parts.query}", "?" + urlencode(hidden, safe="*"), 1)
    return shown


def open_backend(url: str, runtime: Runtime) -> LocalBackend:
    conninfo, schema, location = parse_url(url)
    store = PostgresStore(conninfo, schema=schema, location=location)
    # errands.url, and the line a served app logs, never show the password.
    return LocalBackend(store, runtime, masked(url))
