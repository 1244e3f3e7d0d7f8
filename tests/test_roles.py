"""Roles enforced by PostgreSQL itself: each login may do what its role allows and the database
refuses the rest, even through the core's own functions; nobody rewrites the audit trail."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import sessionmaker

from fleet.models import Unit
from speakerops import audit
from speakerops.db import Base
from speakerops.roles import (
    ROLES, TABLE_PRIVILEGES, RoleError, add_user, current_role, is_refusal, list_users, refusal_message, remove_user,
)
from speakerops.runtime import build_runtime


def test_every_table_has_its_privileges_listed() -> None:
    import feedback.models  # noqa: F401
    import fleet.rollout_models  # noqa: F401

    missing = set(Base.metadata.tables) - set(TABLE_PRIVILEGES)
    assert not missing, f"add {sorted(missing)} to speakerops.roles.TABLE_PRIVILEGES"


def test_sqlite_local_user_is_admin(tmp_path) -> None:
    rt = build_runtime(f"sqlite:///{tmp_path / 'x.db'}")
    with rt.session_factory() as s:
        assert current_role(s) == "admin"
        with pytest.raises(RoleError, match="PostgreSQL"):
            add_user(s, "kim", "operator")
    rt.close()


@pytest.fixture
def pg(pg_url: str, clock) -> Iterator:
    rt = build_runtime(pg_url, clock=clock)
    made: list[str] = []
    suffix = uuid.uuid4().hex[:6]

    def login(role: str):
        name = f"t_{role}_{suffix}"
        with rt.session_factory.begin() as s:
            add_user(s, name, role)
        made.append(name)
        engine = create_engine(make_url(pg_url).set(username=name, password=None))
        return sessionmaker(engine), engine

    with rt.session_factory.begin() as s:
        now = clock()
        s.add(Unit(serial="SPK-1", agent_url="http://127.0.0.1:9/u/SPK-1", created_at=now, updated_at=now))
    yield rt, login
    with rt.session_factory.begin() as s:
        for name in made:
            s.execute(text(f'DROP ROLE IF EXISTS "{name}"'))
    rt.close()


def _refused(factory, sql: str, params: dict | None = None) -> ProgrammingError:
    with pytest.raises(ProgrammingError) as info, factory.begin() as s:
        s.execute(text(sql), params or {})
    assert is_refusal(info.value), info.value
    return info.value


@pytest.mark.postgres
def test_roles_are_enforced_by_the_database(pg, clock) -> None:
    rt, login = pg
    po, po_engine = login("product_owner")
    op, op_engine = login("operator")
    tech, tech_engine = login("technician")
    adm, adm_engine = login("admin")
    try:
        with po() as s:
            assert current_role(s) == "product_owner"
        with op() as s:
            assert current_role(s) == "operator"
        with rt.session_factory() as s:
            assert {(u.name.split("_")[1], u.role) for u in list_users(s) if u.name.startswith("t_")} >= {
                ("operator", "operator"), ("technician", "technician"), ("admin", "admin")}

        # product owner: reads units and feedback, never host keys; no fleet writes
        with po() as s:
            assert s.execute(text("SELECT count(*) FROM units")).scalar_one() == 1
            s.execute(text("SELECT count(*) FROM feedback"))
        err = _refused(po, "SELECT * FROM known_hosts")
        assert "known_hosts" in refusal_message(err) and "admin users add" in refusal_message(err)
        _refused(po, "UPDATE units SET site = 'x'")
        _refused(po, "DELETE FROM rollouts")
        # technician: pins and tickets yes, fleet no
        _refused(tech, "UPDATE units SET site = 'x'")
        _refused(tech, "INSERT INTO alert_rules (name) VALUES ('x')")
        # operator: runs the fleet, may not erase feedback
        with op.begin() as s:
            s.execute(text("UPDATE units SET site = 'busan-office'"))
        _refused(op, "DELETE FROM feedback")

        # everyone appends to the audit trail through the core; nobody rewrites it, not even admin
        for factory in (po, op, tech, adm):
            with factory.begin() as s:
                audit.record(s, "test.append", "unit", "SPK-1", clock=clock)
        with rt.session_factory() as s:
            actors = [e.actor for e in audit.entries(s, action_prefix="test.")]
            assert sorted(a.split("_")[1] for a in actors) == sorted(["product", "operator", "technician", "admin"])
        for factory in (op, adm):
            _refused(factory, "UPDATE audit_log SET actor = 'nobody'")
            _refused(factory, "DELETE FROM audit_log")
        with rt.session_factory() as s:
            assert audit.verify(s).ok
    finally:
        for engine in (po_engine, op_engine, tech_engine, adm_engine):
            engine.dispose()


@pytest.mark.postgres
def test_cli_users_add_list_remove_and_whoami(pg) -> None:
    rt, _ = pg
    name = f"t_cli_{uuid.uuid4().hex[:6]}"
    base = [sys.executable, "-m", "speakerops.cli", "--db-url", rt.db_url]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)

    try:
        added = run("admin", "users", "add", name, "--role", "technician", "--json")
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout) == {"name": name, "role": "technician"}
        again = run("admin", "users", "add", name, "--role", "technician")
        assert again.returncode == 1 and "exists already" in again.stderr
        bad = run("admin", "users", "add", "x; DROP TABLE units", "--role", "operator")
        assert bad.returncode == 1 and "not a valid login name" in bad.stderr
        assert run("admin", "users", "add", "y", "--role", "janitor").returncode == 1
        listed = json.loads(run("admin", "users", "list", "--json").stdout)
        assert {"name": name, "role": "technician"} in listed
        as_user = make_url(rt.db_url).set(username=name).render_as_string(hide_password=False)
        who = subprocess.run([sys.executable, "-m", "speakerops.cli", "--db-url", as_user, "whoami", "--json"],
                             capture_output=True, text=True, timeout=120)
        assert json.loads(who.stdout) == {"login": name, "role": "technician"}
        refused = subprocess.run([sys.executable, "-m", "speakerops.cli", "--db-url", as_user, "alerts", "add-rule",
                                  "--name", "x", "--metric", "temp_c", "--threshold", "80"],
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1 and "refused this for your role" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        removed = run("admin", "users", "remove", name)
        assert removed.returncode == 0
        with rt.session_factory() as s:
            assert name not in {u.name for u in list_users(s)}
            assert [e.action for e in audit.entries(s, target_kind="user", target_id=name)] == ["user.remove", "user.add"]
        assert run("admin", "users", "remove", name).returncode == 1
    finally:
        with rt.session_factory.begin() as s:
            s.execute(text(f'DROP ROLE IF EXISTS "{name}"'))


@pytest.mark.postgres
def test_group_roles_are_not_logins(pg) -> None:
    rt, _ = pg
    with rt.session_factory() as s:
        with pytest.raises(RoleError, match="group role"):
            remove_user(s, "speakerops_admin")
        with pytest.raises(RoleError, match="unknown role"):
            add_user(s, "kim", "janitor")
        roles = set(s.execute(text("SELECT rolname FROM pg_roles WHERE rolname LIKE 'speakerops_%'")).scalars())
        assert roles >= {f"speakerops_{r}" for r in ROLES}


@pytest.mark.postgres
def test_core_functions_are_refused_by_the_database_for_the_wrong_role(pg, clock, tmp_path) -> None:
    """Not the UI: the core's own functions, called with a product owner's or a technician's login."""
    from feedback import tickets
    from feedback.ingest import ingest_records
    from feedback.models import Feedback
    from fleet.rollout_control import create_rollout
    from fleet.rollout_plan import RolloutPlan

    rt, login = pg
    po, po_engine = login("product_owner")
    tech, tech_engine = login("technician")
    try:
        with rt.session_factory.begin() as s:  # a household without consent sends free text
            s.execute(text("UPDATE units SET consent_feedback_text = false, ssh_host = '127.0.0.1', ssh_port = 22, "
                           "ssh_user = 'root'"))
            report = ingest_records(s, [{"unit_serial": "SPK-1", "household_id": "hh-1",
                                         "submitted_at": clock().isoformat(), "feature": "weather", "rating": 2,
                                         "text": "call me at 010-1234-5678", "corrected": True}], clock,
                                    source="app", origin="test")
            assert report.imported == 1
        with po() as s:  # the product owner reads feedback, but there is no text to read
            assert [f.text for f in s.query(Feedback).all()] == [None]

        from fleet.registry import import_bundle, registry_root
        from fleet.signing import Signer
        from inference_core.bundles import write_manifest

        bundle = tmp_path / "b" / "stt" / "stt-9.9.9"
        bundle.mkdir(parents=True)
        (bundle / "lm.arpa").write_text("\\data\\\n")
        write_manifest(bundle, "stt", "stt-9.9.9", {})
        with rt.session_factory.begin() as s:  # registered by an operator
            import_bundle(s, bundle, registry_root(tmp_path / "data"), Signer.generate(), clock)
        plan = RolloutPlan(kind="stt", version="stt-9.9.9")
        with pytest.raises(ProgrammingError) as info, po.begin() as s:
            create_rollout(s, plan, clock=clock, override_reason="I want it", actor="po")
        assert is_refusal(info.value)
        with pytest.raises(ProgrammingError) as info, tech.begin() as s:
            add_user(s, "mallory", "admin")  # a technician cannot change roles
        assert is_refusal(info.value)
        with tech.begin() as s:  # but works tickets
            tickets.create_ticket(s, clock, title="no answer", unit_serial="SPK-1", actor="tech")
        with pytest.raises(ProgrammingError) as info, po.begin() as s:
            tickets.create_ticket(s, clock, title="from a product owner", unit_serial="SPK-1", actor="po")
        assert is_refusal(info.value)
        with rt.session_factory() as s:
            assert "mallory" not in {u.name for u in list_users(s)}
    finally:
        for engine in (po_engine, tech_engine):
            engine.dispose()
