"""Alert rules on a real database (SQLite and PostgreSQL), with a frozen clock. No Qt."""

from __future__ import annotations

import json
import sys
import types
from datetime import datetime, timedelta

import pytest

from speakerops import audit
from sqlalchemy import func, select
from typer.testing import CliRunner

from fleet import alerts
from fleet.alerts import (
    AlertNotFound,
    AlertRuleError,
    AlertStateError,
    acknowledge,
    add_rule,
    alert_events,
    ensure_builtin_rules,
    evaluate,
    list_alerts,
    open_count,
    resolve,
)
from fleet.models import Alert, AlertEvent, AlertRule, Heartbeat, Unit


def add_unit(session, serial: str, now: datetime, *, status: str = "online", tags=(),
             site: str = "seoul") -> Unit:
    unit = Unit(serial=serial, hardware_rev="hw-b", site=site, region="kr", timezone="UTC",
                agent_url=f"http://127.0.0.1:9/{serial}", tags=list(tags), status=status,
                created_at=now, updated_at=now)
    session.add(unit)
    session.flush()
    return unit


def beat(session, unit: Unit, at: datetime, *, temp_c: float = 50.0, requests: int = 10,
         errors: int = 0, noise: float = -60.0) -> None:
    session.add(Heartbeat(unit_id=unit.id, received_at=at, unit_time=at, state="ok", uptime_s=60.0,
                          cpu_pct=20.0, temp_c=temp_c, mem_pct=40.0, disk_free_mb=1800.0,
                          mic_noise_dbfs=noise, wifi_rssi_dbm=-60.0, wake_false_accepts_per_h=0.2,
                          requests=requests, errors=errors, latency_ms={}))
    session.flush()


@pytest.fixture
def no_slo(monkeypatch):
    """fleet.slo not importable: SLO rules are skipped."""
    monkeypatch.setitem(sys.modules, "fleet.slo", None)


def by_rule(session, name: str) -> list[Alert]:
    rule_id = session.scalar(select(AlertRule.id).where(AlertRule.name == name))
    return list(session.scalars(select(Alert).where(Alert.rule_id == rule_id).order_by(Alert.id)))


def test_builtins_inserted_once(runtime, clock, no_slo) -> None:
    with runtime.session_factory.begin() as s:
        assert ensure_builtin_rules(s, clock()) == len(alerts.BUILTIN_RULES)
    with runtime.session_factory.begin() as s:
        assert ensure_builtin_rules(s, clock()) == 0
        rules = {r.name: r for r in s.scalars(select(AlertRule))}
    assert len(rules) == len(alerts.BUILTIN_RULES) == 7  # 7th: "unit flapping" (fleet.unit_states)
    assert (rules["slo fast burn"].threshold, rules["slo fast burn"].severity) == (14.4, "critical")
    assert (rules["hot unit"].duration_s, rules["hot unit"].threshold) == (300.0, 75.0)


def test_hot_unit_fires_after_300_s_dedups_resolves_and_fires_again(runtime, clock, no_slo) -> None:
    with runtime.session_factory.begin() as s:
        ensure_builtin_rules(s, clock())
        unit = add_unit(s, "SPK-1", clock())
        add_unit(s, "SPK-2", clock())
        beat(s, unit, clock(), temp_c=80.0)
        summary = evaluate(s, clock())
        assert (summary.opened, summary.pending) == (0, 1)
        assert list_alerts(s) == []
    with runtime.session_factory.begin() as s:  # a new unit of work: pending was persisted
        clock.advance(299)
        unit = s.scalar(select(Unit).where(Unit.serial == "SPK-1"))
        beat(s, unit, clock(), temp_c=81.0)
        assert evaluate(s, clock()).opened == 0
        clock.advance(1)
        summary = evaluate(s, clock())
        assert (summary.opened, summary.still_open, summary.pending) == (1, 1, 0)
        for _ in range(3):  # stays one alert while hot
            clock.advance(60)
            assert evaluate(s, clock()).opened == 0
        [hot] = by_rule(s, "hot unit")
        assert (hot.state, hot.scope_key, hot.value) == ("open", "unit=SPK-1", 81.0)
        assert hot.last_seen_at == clock()
        assert open_count(s) == 1
        clock.advance(10)
        beat(s, unit, clock(), temp_c=60.0)
        assert evaluate(s, clock()).resolved == 1
        assert (hot.state, hot.resolved_by) == ("resolved", "auto")
        clock.advance(10)
        beat(s, unit, clock(), temp_c=90.0)
        evaluate(s, clock())
        clock.advance(300)
        assert evaluate(s, clock()).opened == 1
        first, second = by_rule(s, "hot unit")
        assert (first.state, second.state) == ("resolved", "open")
        assert [e["kind"] for e in alert_events(s, first.id)] == ["opened", "resolved"]


def test_cooling_before_the_duration_leaves_no_alert(runtime, clock, no_slo) -> None:
    with runtime.session_factory.begin() as s:
        ensure_builtin_rules(s, clock())
        unit = add_unit(s, "SPK-1", clock())
        beat(s, unit, clock(), temp_c=80.0)
        evaluate(s, clock())
        clock.advance(100)
        beat(s, unit, clock(), temp_c=70.0)
        summary = evaluate(s, clock())
        assert summary.pending == 0 and summary.opened == 0
        assert s.scalar(select(func.count()).select_from(Alert)) == 0


def test_offline_unit_and_group_rule_override(runtime, clock, no_slo) -> None:
    with runtime.session_factory.begin() as s:
        ensure_builtin_rules(s, clock())
        add_rule(s, name="lab offline", metric="offline", comparison=">=", threshold=1,
                 scope_kind="tag", scope_value="lab", duration_s=8 * 3600, severity="info",
                 now=clock())
        add_unit(s, "SPK-1", clock(), status="offline")
        add_unit(s, "SPK-LAB", clock(), status="offline", tags=["lab"])
        add_unit(s, "SPK-2", clock())
        assert evaluate(s, clock()).opened == 1
        [off] = by_rule(s, "unit offline")
        assert off.scope_key == "unit=SPK-1"
        [lab] = by_rule(s, "lab offline")
        assert lab.state == "pending"
        clock.advance(8 * 3600)
        assert evaluate(s, clock()).opened == 1
        assert [a.scope_key for a in by_rule(s, "unit offline")] == ["unit=SPK-1"]
        assert by_rule(s, "lab offline")[0].state == "open"


def test_error_rate_over_15_minutes(runtime, clock, no_slo) -> None:
    with runtime.session_factory.begin() as s:
        ensure_builtin_rules(s, clock())
        unit = add_unit(s, "SPK-1", clock())
        quiet = add_unit(s, "SPK-2", clock())
        beat(s, unit, clock() - timedelta(minutes=20), requests=10, errors=10)  # outside window
        beat(s, unit, clock() - timedelta(minutes=5), requests=50, errors=2)
        beat(s, quiet, clock(), requests=0, errors=0)
        assert evaluate(s, clock()).opened == 0  # 2/50 = 4 %
        beat(s, unit, clock(), requests=50, errors=5)  # 7/100
        evaluate(s, clock())
        [high] = by_rule(s, "high error rate")
        assert high.scope_key == "unit=SPK-1" and high.value == pytest.approx(0.07)


def test_ack_and_resolve_with_history(runtime, clock, no_slo) -> None:
    with runtime.session_factory.begin() as s:
        ensure_builtin_rules(s, clock())
        add_unit(s, "SPK-1", clock(), status="offline")
        evaluate(s, clock())
        [alert_id] = [a["id"] for a in list_alerts(s, state="open")]
        clock.advance(5)
        acknowledge(s, alert_id, "kim", clock())
        with pytest.raises(AlertStateError, match="only open alerts"):
            acknowledge(s, alert_id, "kim", clock())
        clock.advance(5)
        evaluate(s, clock())  # still offline: stays acknowledged
        assert list_alerts(s, state="acknowledged")[0]["acknowledged_by"] == "kim"
        resolve(s, alert_id, "lee", clock())
        with pytest.raises(AlertStateError, match="already resolved"):
            resolve(s, alert_id, "lee", clock())
        with pytest.raises(AlertNotFound, match="no alert #9999"):
            acknowledge(s, 9999, "kim", clock())
        events = alert_events(s, alert_id)
        assert [(e["kind"], e["actor"]) for e in events] == [
            ("opened", "rule"), ("acknowledged", "kim"), ("resolved", "lee")]
        trail = audit.entries(s, target_kind="alert", target_id=alert_id)
        assert [(e.action, e.actor, e.after["state"]) for e in trail] == [
            ("alert.resolve", "lee", "resolved"), ("alert.ack", "kim", "acknowledged")]
        row = list_alerts(s, state="resolved")[0]
        json.dumps(row)
        assert (row["rule"], row["metric"], row["severity"]) == ("unit offline", "offline", "warning")
        clock.advance(5)
        assert evaluate(s, clock()).opened == 1  # condition still true: a new alert


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"metric": "temperature"}, "unknown metric 'temperature'"),
    ({"comparison": "=="}, "unknown comparison"),
    ({"severity": "urgent"}, "unknown severity"),
    ({"scope_kind": "room", "scope_value": "x"}, "unknown scope"),
    ({"scope_kind": "site"}, "needs a value"),
    ({"scope_value": "x"}, "takes no scope value"),
    ({"duration_s": -1}, "0 s or more"),
    ({"metric": "slo_burn_1h", "scope_kind": "site", "scope_value": "x"}, "scope fleet"),
    ({"name": "hot unit"}, "already exists"),
])
def test_bad_rule_input_gives_clear_errors(runtime, clock, kwargs, message) -> None:
    base = {"name": "r", "metric": "temp_c", "comparison": ">", "threshold": 70.0}
    with runtime.session_factory.begin() as s:
        ensure_builtin_rules(s, clock())
        with pytest.raises(AlertRuleError, match=message):
            add_rule(s, now=clock(), **{**base, **kwargs})


def test_slo_rules_skipped_cleanly_without_fleet_slo(runtime, clock, no_slo, caplog) -> None:
    with runtime.session_factory.begin() as s, caplog.at_level("DEBUG", logger="fleet.alerts"):
        ensure_builtin_rules(s, clock())
        summary = evaluate(s, clock())
        assert summary == alerts.AlertSummary(0, 0, 0, 0)
    assert "fleet.slo not available" in caplog.text


def test_slo_burn_rules_fire_on_the_burn_rate(runtime, clock, monkeypatch) -> None:
    burn = {timedelta(hours=1): 20.0, timedelta(hours=24): 2.0}

    def fake_slo_status(session, now, window, cohort=None):
        return types.SimpleNamespace(burn_rate=burn[window])

    try:  # prefer the real module, replacing only its figure
        import fleet.slo as slo_module
        monkeypatch.setattr(slo_module, "slo_status", fake_slo_status)
    except ImportError:
        monkeypatch.setitem(sys.modules, "fleet.slo", types.SimpleNamespace(slo_status=fake_slo_status))
    with runtime.session_factory.begin() as s:
        ensure_builtin_rules(s, clock())
        assert evaluate(s, clock()).opened == 1
        [fast] = by_rule(s, "slo fast burn")
        assert (fast.scope_key, fast.severity, fast.value) == ("fleet", "critical", 20.0)
        assert by_rule(s, "slo slow burn") == []
        burn[timedelta(hours=1)] = 3.0
        clock.advance(60)
        assert evaluate(s, clock()).resolved == 1


def test_cli_alerts_list_ack_and_rules(tmp_path, monkeypatch, no_slo) -> None:
    from speakerops.cli import app
    from speakerops.runtime import build_runtime

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    rt = build_runtime(url)
    now = rt.clock()
    with rt.session_factory.begin() as s:
        ensure_builtin_rules(s, now)
        add_unit(s, "SPK-1", now, status="offline")
        evaluate(s, now)
    rt.close()
    runner = CliRunner()
    out = runner.invoke(app, ["--db-url", url, "alerts", "list", "--json"])
    assert out.exit_code == 0, out.output
    [row] = json.loads(out.output)
    assert (row["rule"], row["state"], row["scope_key"]) == ("unit offline", "open", "unit=SPK-1")
    out = runner.invoke(app, ["--db-url", url, "alerts", "ack", str(row["id"]), "--by", "kim"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["--db-url", url, "alerts", "list", "--state", "acknowledged", "--json"])
    assert json.loads(out.output)[0]["acknowledged_by"] == "kim"
    out = runner.invoke(app, ["--db-url", url, "alerts", "ack", "999"])
    assert out.exit_code == 1 and "no alert #999" in out.output
    out = runner.invoke(app, ["--db-url", url, "alerts", "add-rule", "--name", "warm lab", "--metric",
                              "temp_c", "--scope", "site=lab", "--op", ">", "--threshold", "70",
                              "--for", "300", "--severity", "warning"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["--db-url", url, "alerts", "add-rule", "--name", "bad", "--metric",
                              "nope", "--op", ">", "--threshold", "1"])
    assert out.exit_code == 1 and "unknown metric" in out.output
    out = runner.invoke(app, ["--db-url", url, "alerts", "rules", "--json"])
    assert "warm lab" in [r["name"] for r in json.loads(out.output)]
    out = runner.invoke(app, ["--db-url", url, "alerts", "resolve", str(row["id"])])
    assert out.exit_code == 0, out.output
    with rt.session_factory() as s:  # engine disposed, but the factory reconnects
        assert s.scalar(select(func.count()).select_from(AlertEvent)) == 3
