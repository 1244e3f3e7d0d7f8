"""``speakerops admin users add|remove|list`` and ``speakerops whoami``: people and their roles on the
shared PostgreSQL database (:mod:`speakerops.roles`). Changes are audited."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from speakerops.cli_common import DbUrl, JsonOut, _db_url, _emit, _fail, _runtime

admin_app = typer.Typer(help="Administration: database logins and their roles.", no_args_is_help=True)
users_app = typer.Typer(help="Database logins and their SpeakerOps roles (PostgreSQL).", no_args_is_help=True)
admin_app.add_typer(users_app, name="users")


@users_app.command("add")
def users_add(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Login name, e.g. kim.")],
              role: Annotated[str, typer.Option("--role", help="operator, technician, product_owner or admin.")],
              password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read a password from stdin "
                                                           "(else the login uses the server's other auth).")] = False,
              as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Create a login NAME with ROLE (admin only; the database refuses others)."""
    from speakerops import audit
    from speakerops.roles import RoleError, add_user

    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                user = add_user(session, name, role, password)
                audit.record(session, "user.add", "user", name, after={"role": role}, clock=rt.clock)
        except RoleError as exc:
            raise _fail(str(exc)) from exc
    _emit({"name": user.name, "role": user.role}, as_json, f"added {user.name} as {user.role}")


@users_app.command("remove")
def users_remove(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Login name.")],
                 as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Drop the login NAME (admin only)."""
    from speakerops import audit
    from speakerops.roles import RoleError, list_users, remove_user

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                before = next((u.role for u in list_users(session) if u.name == name), None)
                remove_user(session, name)
                audit.record(session, "user.remove", "user", name, before={"role": before}, clock=rt.clock)
        except RoleError as exc:
            raise _fail(str(exc)) from exc
    _emit({"name": name, "removed": True}, as_json, f"removed {name}")


@users_app.command("list")
def users_list(ctx: typer.Context, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Logins with a SpeakerOps role."""
    from speakerops.roles import RoleError, list_users

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        try:
            users = list_users(session)
        except RoleError as exc:
            raise _fail(str(exc)) from exc
    rows = [{"name": u.name, "role": u.role} for u in users]
    _emit(rows, as_json, "\n".join(f"{r['name']:<24} {r['role']}" for r in rows) or "no users")


def whoami(ctx: typer.Context, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """The database login you act as and its SpeakerOps role."""
    from speakerops.audit import current_actor
    from speakerops.roles import RoleError, current_role

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        try:
            data = {"login": current_actor(session), "role": current_role(session)}
        except RoleError as exc:
            raise _fail(str(exc)) from exc
    _emit(data, as_json, f"{data['login']} ({data['role']})")


def register(app: typer.Typer) -> None:
    app.add_typer(admin_app, name="admin")
    app.command("whoami")(whoami)
