"""People and roles on the shared PostgreSQL database, enforced by the database itself.

Four group roles (``NOLOGIN``), created by migration 0007 and kept in step by
:func:`apply_grants` (every migration that adds a table calls it again):

==================  =====================================================================
``operator``        fleet, alerts, model registry, rollouts (read everything but secrets)
``technician``      diagnosis, tickets, unit pins; reads the fleet, registry and feedback
``product_owner``   feedback and trends, tickets read-only; no SSH host keys, no fleet writes
``admin``           everything (users, data erasure), except rewriting the audit trail
==================  =====================================================================

Each person logs in with their own database login that is a member of exactly one group role
(:func:`add_user`); the console and the CLI only *read* the role to hide what it cannot do
(:func:`current_role`) — the GRANTs below are what refuse it, even to someone calling the core or
SQL directly. Nobody, not even ``admin``, may UPDATE or DELETE the audit trail: its hash chain
(``speakerops.audit``) detects the superuser who does. On the embedded SQLite there is one local
user, and it is ``admin``.

Role names are cluster-wide in PostgreSQL, so the group roles carry a prefix
(``speakerops_operator`` …); GRANTs are per database.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

ROLES: tuple[str, ...] = ("operator", "technician", "product_owner", "admin")
#: Prefix of the PostgreSQL group roles (role names are cluster-wide).
ROLE_PREFIX = "speakerops_"
_WRITE = "SELECT, INSERT, UPDATE, DELETE"

#: Per table, the privileges of each role (``admin`` has all on every table but the audit
#: trail). A table missing here is readable and writable by ``admin`` only — a test checks that
#: every table of the schema is listed.
TABLE_PRIVILEGES: dict[str, dict[str, str]] = {
    # fleet: operators run it, technicians and product owners read it
    "units": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "heartbeats": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "collector_status": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "unit_rollups_1m": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "unit_rollups_1h": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "cohort_rollups_1m": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "rollup_watermarks": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "alert_rules": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "alerts": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "alert_events": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "offline_policies": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    # registry and rollouts: operators; technicians pin units (through unit_pins) and read
    "model_versions": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "model_aliases": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "rollouts": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "rollout_groups": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "rollout_units": {"operator": _WRITE, "technician": "SELECT", "product_owner": "SELECT"},
    "unit_pins": {"operator": _WRITE, "technician": _WRITE, "product_owner": "SELECT"},
    # SSH host keys reach the fleet: not for product owners
    "known_hosts": {"operator": _WRITE, "technician": "SELECT, INSERT, UPDATE"},
    # feedback: product owners import and read it; technicians read it; erasure is admin's
    "feedback": {"operator": "SELECT", "technician": "SELECT", "product_owner": "SELECT, INSERT, UPDATE"},
    "feedback_imports": {"operator": "SELECT", "technician": "SELECT", "product_owner": "SELECT, INSERT, UPDATE"},
    # tickets: technicians work them; product owners read them
    "tickets": {"operator": "SELECT, INSERT, UPDATE", "technician": _WRITE, "product_owner": "SELECT"},
    "ticket_events": {"operator": "SELECT, INSERT", "technician": "SELECT, INSERT", "product_owner": "SELECT"},
    "ticket_attachments": {"operator": "SELECT", "technician": "SELECT, INSERT", "product_owner": "SELECT"},
    # technician workbench (issue #7): technicians diagnose, everyone else reads
    "unit_selftests": {"operator": "SELECT", "technician": _WRITE, "product_owner": "SELECT"},
    "workbench_runs": {"operator": "SELECT", "technician": _WRITE, "product_owner": "SELECT"},
    # the audit trail: everyone appends and reads; nobody rewrites
    "audit_log": {"operator": "SELECT, INSERT", "technician": "SELECT, INSERT",
                  "product_owner": "SELECT, INSERT", "admin": "SELECT, INSERT"},
    "alembic_version": {"operator": "SELECT", "technician": "SELECT", "product_owner": "SELECT"},
}

_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,62}$")


class RoleError(Exception):
    """A user or role request that cannot be done; the message says why and what to do."""


def group_role(role: str) -> str:
    """``"operator"`` → ``"speakerops_operator"``.

    Raises
    ------
    RoleError
        For a role not in :data:`ROLES`.
    """
    if role not in ROLES:
        raise RoleError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    return ROLE_PREFIX + role


def _quote(name: str) -> str:
    if not _NAME.match(name):
        raise RoleError(f"{name!r} is not a valid login name: use lower-case letters, digits, '_', '.', '-' "
                        "(at most 63, starting with a letter or '_')")
    return '"' + name + '"'


def ensure_group_roles(conn: Connection) -> None:
    """Create the four group roles if missing (PostgreSQL; cluster-wide, idempotent)."""
    for role in ROLES:
        name = group_role(role)
        conn.execute(text(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '%s') THEN "
            "CREATE ROLE %s NOLOGIN; END IF; END $$" % (name, _quote(name))))


def apply_grants(conn: Connection, tables: Iterable[str] | None = None) -> None:
    """GRANT each role its privileges of :data:`TABLE_PRIVILEGES` on the existing tables (PostgreSQL).

    Revokes first, so a narrowed privilege takes effect; ``admin`` gets all privileges on every
    table except UPDATE/DELETE on ``audit_log``. Sequences: USAGE for every role that inserts.
    """
    if conn.dialect.name != "postgresql":
        return
    ensure_group_roles(conn)
    existing = set(conn.execute(text(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars())
    wanted = existing if tables is None else existing & set(tables)
    everyone = ", ".join(_quote(group_role(r)) for r in ROLES)
    conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {everyone}"))
    for table in sorted(wanted):
        quoted = '"' + table + '"'
        conn.execute(text(f"REVOKE ALL ON {quoted} FROM {everyone}"))
        privileges = TABLE_PRIVILEGES.get(table, {})
        for role in ROLES:
            granted = privileges.get(role, "ALL" if role == "admin" else None)
            if granted:
                conn.execute(text(f"GRANT {granted} ON {quoted} TO {_quote(group_role(role))}"))
    conn.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {everyone}"))
    logger.info("granted role privileges on %d tables", len(wanted))


@dataclass(frozen=True)
class DbUser:
    """A database login and its SpeakerOps role."""

    name: str
    role: str | None


def add_user(session: Session, name: str, role: str, password: str | None = None) -> DbUser:
    """Create login ``name`` as a member of ``role``'s group role (PostgreSQL; admin only).

    Raises
    ------
    RoleError
        On SQLite, an invalid name or role, or a login that exists already.
    """
    _require_postgres(session)
    quoted, group = _quote(name), _quote(group_role(role))
    if session.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name}).first():
        raise RoleError(f"a login named {name!r} exists already; remove it first or pick another name")
    ensure_group_roles(session.connection())
    statement = f"CREATE ROLE {quoted} LOGIN IN ROLE {group}"
    if password:
        literal = session.execute(text("SELECT quote_literal(:p)"), {"p": password}).scalar_one()
        statement += f" PASSWORD {literal}"
    session.execute(text(statement))
    return DbUser(name, role)


def remove_user(session: Session, name: str) -> None:
    """Drop login ``name`` (PostgreSQL; admin only). Group roles cannot be removed this way.

    Raises
    ------
    RoleError
        On SQLite, a group role's name, or an unknown login.
    """
    _require_postgres(session)
    if name.startswith(ROLE_PREFIX):
        raise RoleError(f"{name!r} is a group role, not a person's login")
    if not session.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name}).first():
        raise RoleError(f"no login named {name!r}; `speakerops admin users list` shows them")
    session.execute(text(f"DROP ROLE {_quote(name)}"))


def list_users(session: Session) -> list[DbUser]:
    """Every login that is a member of a SpeakerOps group role, with its role."""
    _require_postgres(session)
    rows = session.execute(text(
        "SELECT m.rolname, g.rolname FROM pg_auth_members a "
        "JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member "
        "WHERE g.rolname LIKE :prefix AND m.rolcanlogin ORDER BY m.rolname"),
        {"prefix": ROLE_PREFIX + "%"}).all()
    return [DbUser(member, group.removeprefix(ROLE_PREFIX)) for member, group in rows]


def current_role(session: Session) -> str:
    """The acting person's role: on PostgreSQL the group role of the login (a superuser is
    ``admin``); on SQLite always ``admin`` (the one local user).

    Raises
    ------
    RoleError
        If a PostgreSQL login belongs to no SpeakerOps group role (ask an admin to add it).
    """
    if session.get_bind().dialect.name != "postgresql":
        return "admin"
    if session.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar_one():
        return "admin"
    groups = set(session.execute(text(
        "SELECT rolname FROM pg_roles WHERE rolname LIKE :prefix AND pg_has_role(current_user, oid, 'member')"),
        {"prefix": ROLE_PREFIX + "%"}).scalars())
    for role in ("admin", "operator", "technician", "product_owner"):
        if group_role(role) in groups:
            return role
    user = session.execute(text("SELECT current_user")).scalar_one()
    raise RoleError(f"database login {user!r} has no SpeakerOps role; an admin adds it with "
                    f"`speakerops admin users add {user} --role ROLE`")


def _require_postgres(session: Session) -> None:
    if session.get_bind().dialect.name != "postgresql":
        raise RoleError("users and roles live on the shared PostgreSQL database; on the embedded SQLite "
                        "the local user is admin. Set SPEAKEROPS_DB_URL to a PostgreSQL URL.")


def is_refusal(exc: BaseException) -> bool:
    """True if ``exc`` is the database refusing the login's role (SQLSTATE 42501,
    ``insufficient_privilege``), e.g. a product owner starting a rollout."""
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) == "42501" or getattr(orig, "pgcode", None) == "42501"


def refusal_message(exc: BaseException) -> str:
    """One line for a refused action: what the database said and what to do."""
    orig = getattr(exc, "orig", exc)
    said = (str(orig).strip().splitlines() or ["permission denied"])[0]
    return (f"The database refused this for your role ({said}). Ask an admin for a role that may do it "
            "(`speakerops admin users add NAME --role ROLE`).")


#: What each console action needs, mirroring :data:`TABLE_PRIVILEGES` (the console hides what a
#: role may not do; the database refuses it regardless).
CAPABILITIES: dict[str, tuple[str, ...]] = {
    "alerts.write": ("operator", "admin"),
    "models.write": ("operator", "admin"),
    "rollouts.write": ("operator", "admin"),
    "units.pin": ("technician", "operator", "admin"),
    "tickets.write": ("technician", "operator", "admin"),
    "feedback.write": ("product_owner", "admin"),
    "users.write": ("admin",),
}


def may(role: str | None, capability: str) -> bool:
    """True if ``role`` may do ``capability`` (a key of :data:`CAPABILITIES`); None (no role) may nothing.

    Raises
    ------
    KeyError
        For an unknown capability (a typo in the caller).
    """
    return role is not None and role in CAPABILITIES[capability]
