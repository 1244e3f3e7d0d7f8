"""The data layer on SQLite and PostgreSQL: migrations, aware UTC times, constraints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError, StatementError

from fleet.models import Heartbeat, Unit
from speakerops.db import current_revision, head_revision, make_engine, upgrade


def _unit(serial: str, now: datetime, **kw) -> Unit:
    return Unit(serial=serial, agent_url=f"http://127.0.0.1:1/units/{serial}", status="unknown",
                poll_failures=0, created_at=now, updated_at=now, **kw)


def test_migration_creates_tables_and_is_idempotent(runtime) -> None:
    tables = set(inspect(runtime.engine).get_table_names())
    assert {"units", "heartbeats", "collector_status", "alembic_version", "unit_rollups_1m", "unit_rollups_1h",
            "rollup_watermarks", "alert_rules", "alerts", "alert_events"} <= tables
    head = head_revision(runtime.engine)
    assert current_revision(runtime.engine) == head
    upgrade(runtime.engine)  # a second run changes nothing
    assert current_revision(runtime.engine) == head


def test_unit_round_trip_keeps_every_field(runtime, clock) -> None:
    now = clock()
    with runtime.session_factory.begin() as s:
        s.add(_unit("SPK-1", now, hardware_rev="hw-c", site="busan-office", region="kr-south",
                    timezone="Asia/Seoul", ssh_host="127.0.0.1", ssh_port=2222, ssh_user="root",
                    firmware_version="2.4.1", stt_version="stt-1.4.0", qa_version="qa-2.1.0",
                    tts_version="tts-1.0.3", tags=["lab", "canary"], consent_recordings=True,
                    consent_feedback_text=False, last_heartbeat_at=now))
    with runtime.session_factory() as s:
        u = s.scalar(select(Unit).where(Unit.serial == "SPK-1"))
        assert u.model_versions() == {"stt": "stt-1.4.0", "qa": "qa-2.1.0", "tts": "tts-1.0.3"}
        assert u.tags == ["lab", "canary"]
        assert (u.ssh_host, u.ssh_port, u.ssh_user) == ("127.0.0.1", 2222, "root")
        assert u.consent_recordings is True and u.consent_feedback_text is False
        assert u.last_heartbeat_at == now and u.last_heartbeat_at.tzinfo is not None


def test_times_are_stored_as_utc_whatever_zone_is_given(runtime, clock) -> None:
    seoul = timezone(timedelta(hours=9))
    local = datetime(2026, 11, 21, 15, 0, tzinfo=seoul)
    with runtime.session_factory.begin() as s:
        s.add(_unit("SPK-2", clock(), last_heartbeat_at=local))
    with runtime.session_factory() as s:
        got = s.scalar(select(Unit.last_heartbeat_at).where(Unit.serial == "SPK-2"))
    assert got == datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
    assert got.utcoffset() == timedelta(0)


def test_naive_datetime_is_refused_with_a_clear_error(runtime) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        with runtime.session_factory.begin() as s:
            s.add(_unit("SPK-3", datetime(2026, 1, 1)))


def test_serial_is_unique(runtime, clock) -> None:
    with runtime.session_factory.begin() as s:
        s.add(_unit("SPK-4", clock()))
    with pytest.raises(IntegrityError):
        with runtime.session_factory.begin() as s:
            s.add(_unit("SPK-4", clock()))


def test_heartbeats_cascade_with_their_unit(runtime, clock) -> None:
    now = clock()
    with runtime.session_factory.begin() as s:
        u = _unit("SPK-5", now)
        s.add(u)
        s.flush()
        for i in range(3):
            s.add(Heartbeat(unit_id=u.id, received_at=now + timedelta(seconds=10 * i), state="ok",
                            uptime_s=100.0 + i, cpu_pct=10, temp_c=40, mem_pct=30, disk_free_mb=900,
                            mic_noise_dbfs=-60, wifi_rssi_dbm=-55, wake_false_accepts_per_h=0.1,
                            requests=2, errors=0, latency_ms={"stt": [400.0, 420.0]}))
    with runtime.session_factory() as s:
        hbs = s.scalars(select(Heartbeat).order_by(Heartbeat.received_at)).all()
        assert [h.uptime_s for h in hbs] == [100.0, 101.0, 102.0]
        assert hbs[0].latency_ms == {"stt": [400.0, 420.0]}
    with runtime.session_factory.begin() as s:
        s.delete(s.scalar(select(Unit).where(Unit.serial == "SPK-5")))
    with runtime.session_factory() as s:
        assert s.scalars(select(Heartbeat)).all() == []


def test_sqlite_file_is_created_in_the_data_dir_by_default(tmp_path, monkeypatch) -> None:
    from speakerops.settings import CoreSettings

    monkeypatch.setenv("SPEAKEROPS_DATA_DIR", str(tmp_path / "nested" / "dir"))
    url = CoreSettings().resolved_db_url()
    assert url == f"sqlite:///{tmp_path / 'nested' / 'dir' / 'speakerops.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    assert (tmp_path / "nested" / "dir" / "speakerops.db").exists()


def test_db_url_setting_selects_the_database(monkeypatch) -> None:
    from speakerops.settings import CoreSettings

    monkeypatch.setenv("SPEAKEROPS_DB_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    assert CoreSettings().resolved_db_url() == "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def test_migrations_go_down_and_up_again(runtime) -> None:
    from alembic import command

    from speakerops.db import _alembic_config

    command.downgrade(_alembic_config(runtime.engine), "base")
    assert set(inspect(runtime.engine).get_table_names()) <= {"alembic_version"}
    upgrade(runtime.engine)
    assert current_revision(runtime.engine) == head_revision(runtime.engine)


def test_one_open_alert_per_rule_and_scope(runtime, clock) -> None:
    from fleet.models import Alert, AlertRule

    now = clock()
    with runtime.session_factory.begin() as s:
        rule = AlertRule(name="hot", metric="temp_c", comparison=">", threshold=70, created_at=now)
        s.add(rule)
        s.flush()
        s.add(Alert(rule_id=rule.id, scope_key="unit=SPK-1", severity="warning", opened_at=now, last_seen_at=now,
                    state="resolved"))
        s.add(Alert(rule_id=rule.id, scope_key="unit=SPK-1", severity="warning", opened_at=now, last_seen_at=now))
    with pytest.raises(IntegrityError):
        with runtime.session_factory.begin() as s:
            rid = s.scalar(select(AlertRule.id))
            s.add(Alert(rule_id=rid, scope_key="unit=SPK-1", severity="warning", opened_at=now, last_seen_at=now))
