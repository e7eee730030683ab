"""Preparing a PostgreSQL server for ``atrium run``: whether it is the private
cluster under the data directory or a team's own server (``ATRIUM_DATABASE_URL``).

On it: Atrium's database, Orthanc's index database beside it (or where
``ORTHANC_DATABASE_URL`` says), and Atrium's runtime role — a login role that is
neither superuser, nor the owner of Atrium's tables, nor a member of the owner, so
that it cannot change audit rows (sql/0007). Every failure is a
:class:`StartupError` whose message is one line naming the setting and what to do.
URLs are described as ``host:port/database as role``, never with the password.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = logging.getLogger(__name__)

__all__ = ["Databases", "StartupError", "describe", "ensure_login_role", "prepare",
           "runtime_role_name", "secret_file", "with_params"]

INDEX_DATABASE = "orthanc"
_MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1


class StartupError(RuntimeError):
    """``atrium run`` cannot start; the message is one line an operator can act on."""


# -- URLs ---------------------------------------------------------------------------
def _params(url: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        # The value is not echoed: it may hold a password.
        raise StartupError("a database URL is not a valid libpq URL") from None


def with_params(url: str, **changes: str) -> str:
    """``url`` with some connection parameters replaced, as a libpq ``key=value``
    string (which keeps every other parameter — sslmode, several hosts — as given)."""
    return make_conninfo("", **{**_params(url), **changes})


def describe(url: str) -> str:
    """``host:port/database as role``: what start-up lines and errors show of a URL."""
    params = _params(url)
    host = params.get("host") or params.get("hostaddr") or "the local socket"
    port = params.get("port") or "5432"
    user = params.get("user") or "(the system user)"
    database = params.get("dbname") or user
    return f"{host}:{port}/{database} as {user}"


def _database(url: str) -> str:
    params = _params(url)
    return str(params.get("dbname") or params.get("user") or "")


def _reason(exc: BaseException) -> str:
    """libpq's message on one line, without its hints on further lines."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    return reason.removeprefix("connection failed: ")


def secret_file(path: Path) -> str:
    """A random password kept in ``path`` (mode 0600), created on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def runtime_role_name(database: str) -> str:
    """Atrium's runtime role for ``database``: one per database, so that two Atriums
    on one server never take each other's role (``atrium`` → ``atrium_app``)."""
    return f"{database[:_MAX_IDENTIFIER - 4]}_app"


# -- connections --------------------------------------------------------------------
def connect(url: str, setting: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise StartupError(f"{setting}: cannot connect to PostgreSQL at {describe(url)}: "
                           f"{_reason(exc)}") from exc


def ensure_database(url: str, setting: str) -> None:
    """Create ``url``'s database when it is missing and its role may create databases."""
    try:
        connect(url, setting).close()
        return
    except StartupError as error:
        if not isinstance(error.__cause__, psycopg.OperationalError) or \
                "does not exist" not in str(error.__cause__):
            raise
    name = _database(url)
    with connect(with_params(url, dbname="postgres"), setting) as conn:
        row = conn.execute("SELECT rolcreatedb OR rolsuper, current_user FROM pg_roles "
                           "WHERE rolname = current_user").fetchone()
        if not row or not row[0]:
            role = row[1] if row else "?"
            raise StartupError(
                f"{setting}: database {name!r} does not exist on {describe(url)} and role "
                f"{role!r} may not create databases: have an administrator run "
                f"CREATE DATABASE {sql.Identifier(name).as_string(conn)} OWNER "
                f"{sql.Identifier(role).as_string(conn)};")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    log.info("created database %s", describe(url))


# -- roles --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Role:
    name: str
    superuser: bool
    create_role: bool
    tables_owner: str | None  # owner of Atrium's tables; None before the first migration


def _role(conn: psycopg.Connection[Any]) -> _Role:
    row = conn.execute(
        "SELECT r.rolname, r.rolsuper, r.rolcreaterole, "
        "       (SELECT tableowner FROM pg_tables WHERE schemaname = current_schema() "
        "        AND tablename = 'schema_migrations') "
        "FROM pg_roles r WHERE r.rolname = current_user").fetchone()
    assert row is not None  # noqa: S101 - current_user always has a pg_roles row
    return _Role(row[0], row[1], row[2], row[3])


def ensure_login_role(conn: psycopg.Connection[Any], name: str, password: str) -> None:
    """Create the login role ``name``, or reset its password to ``password``; as a role
    that may create roles."""
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    conn.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
        sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(name), sql.Literal(password)))


@dataclass(frozen=True)
class Databases:
    """Where ``atrium run`` keeps what, once the server is ready."""

    owner_url: str      # migrations and partition upkeep
    runtime_url: str    # Atrium inside Orthanc: cannot change audit rows
    runtime_role: str
    index_url: str      # Orthanc's index

    def lines(self) -> list[str]:
        owner = _params(self.owner_url).get("user") or "(the system user)"
        return [f"Atrium's rows on {describe(self.runtime_url)} (migrations as {owner})",
                f"Orthanc's index on {describe(self.index_url)}"]


def _runtime_for(conn: psycopg.Connection[Any], owner: _Role, owner_url: str, owner_setting: str,
                 password_file: Path) -> tuple[str, str]:
    """Create or update ``<database>_app`` when the owner may; otherwise say how."""
    role = runtime_role_name(_database(owner_url))
    if not (owner.superuser or owner.create_role):
        raise StartupError(
            f"{owner_setting}'s role {owner.name!r} may not create roles, and Atrium does not "
            "run as the owner of its audit log: have an administrator run "
            f"CREATE ROLE {sql.Identifier(role).as_string(conn)} LOGIN PASSWORD '...'; then "
            "set ATRIUM_DATABASE_OWNER_URL to this URL and ATRIUM_DATABASE_URL to the new "
            "role's")
    password = secret_file(password_file)
    ensure_login_role(conn, role, password)
    return with_params(owner_url, user=role, password=password), role


def _check_runtime(runtime_url: str, owner: _Role) -> str:
    """The runtime role's name, after making sure it cannot change audit rows."""
    with connect(runtime_url, "ATRIUM_DATABASE_URL") as conn:
        runtime = _role(conn)
        member = conn.execute("SELECT pg_has_role(%s, 'MEMBER')", (owner.name,)).fetchone()
    why = ("a superuser" if runtime.superuser
           else "the owner of Atrium's tables" if runtime.name == owner.name
           else f"a member of {owner.name!r}, the owner" if member and member[0] else None)
    if why:
        raise StartupError(
            f"ATRIUM_DATABASE_URL's role {runtime.name!r} is {why}, so it could change audit "
            "rows: give Atrium a role that is neither (CREATE ROLE atrium_app LOGIN PASSWORD "
            "'...') and keep the owner's URL in ATRIUM_DATABASE_OWNER_URL")
    return runtime.name


def prepare(*, owner_url: str, owner_setting: str, runtime_url: str | None,
            index_url: str | None, password_file: Path) -> Databases:
    """Make the server ready for ``atrium run``, short of the migrations.

    Parameters
    ----------
    owner_url:
        The URL migrations run with; its database is created when missing (and its
        role may create databases).
    owner_setting:
        The setting ``owner_url`` came from, as errors name it.
    runtime_url:
        Atrium's runtime URL when the operator gave one (``ATRIUM_DATABASE_OWNER_URL``
        set beside ``ATRIUM_DATABASE_URL``); ``None``: the role ``<database>_app`` is
        created (or its password reset) with the password in ``password_file``.
    index_url:
        Orthanc's index (``ORTHANC_DATABASE_URL``); ``None``: a database named
        ``orthanc`` on the same server, as the owner.

    Raises
    ------
    StartupError
        Unreachable server, refused credentials, a database that is missing and may
        not be created, a runtime role that could change audit rows or that cannot
        be created.
    """
    ensure_database(owner_url, owner_setting)
    with connect(owner_url, owner_setting) as conn:
        owner = _role(conn)
        if owner.tables_owner and owner.tables_owner != owner.name and not owner.superuser:
            raise StartupError(
                f"{owner_setting}'s role {owner.name!r} does not own Atrium's tables (their "
                f"owner is {owner.tables_owner!r}), so it cannot migrate them: set "
                f"ATRIUM_DATABASE_OWNER_URL to {owner.tables_owner!r}'s URL")
        if runtime_url is None:
            runtime_url, _ = _runtime_for(conn, owner, owner_url, owner_setting, password_file)
    role = _check_runtime(runtime_url, owner)
    index_setting = "ORTHANC_DATABASE_URL"
    if index_url is None:
        index_url = with_params(owner_url, dbname=INDEX_DATABASE)
        index_setting = f"Orthanc's index (default: database {INDEX_DATABASE!r} beside " \
                        "Atrium's; or set ORTHANC_DATABASE_URL)"
    if _same_database(index_url, owner_url):
        raise StartupError(f"{index_setting}: Orthanc's index needs a database of its own, "
                           f"not Atrium's ({describe(owner_url)})")
    ensure_database(index_url, index_setting)
    return Databases(owner_url, runtime_url, role, index_url)


def _same_database(a: str, b: str) -> bool:
    pa, pb = _params(a), _params(b)
    return all(pa.get(key) == pb.get(key) for key in ("host", "hostaddr", "port", "dbname"))


def grant_runtime(databases: Databases) -> None:
    """What the runtime role needs on Atrium's tables, now rather than when Atrium's
    worker gets to it, so that the first requests find it (sql/0007)."""
    with connect(databases.owner_url, "ATRIUM_DATABASE_OWNER_URL") as conn:
        conn.execute("SELECT atrium_grant_app_role(%s)", (databases.runtime_role,))
