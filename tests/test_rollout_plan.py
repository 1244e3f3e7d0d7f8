"""Rollout plans without SSH: groups, thresholds, maintenance windows, rate limit, filters, pins,
gate figures, and the controls' state machine — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from fleet.models import Heartbeat, Unit
from fleet.rollout_gates import GateSettings, voice_quality_gate
from fleet.rollout_models import Rollout, RolloutUnit
from fleet.rollout_plan import (
    MaintenanceWindow,
    RateLimiter,
    RolloutPlan,
    TargetFilter,
    group_verdict,
    preview,
    split_groups,
)

T0 = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)


def add_units(session, n: int, *, now: datetime = T0, **overrides) -> list[Unit]:
    """``n`` units SPK-000001… with SSH addresses, sites a/b, hardware hw-a/hw-b, stt-1.0."""
    units = []
    for i in range(1, n + 1):
        fields = dict(serial=f"SPK-{i:06d}", site="site-a" if i % 2 else "site-b",
                      hardware_rev="hw-a" if i % 3 else "hw-b", timezone="UTC",
                      agent_url=f"http://127.0.0.1:1/units/SPK-{i:06d}", ssh_host="127.0.0.1",
                      ssh_port=2200 + i, ssh_user="speaker", stt_version="stt-1.0", qa_version="qa-1.0",
                      tts_version="tts-1.0", tags=["beta"] if i % 4 == 0 else [], created_at=now,
                      updated_at=now)
        fields.update(overrides)
        units.append(Unit(**fields))
    session.add_all(units)
    session.flush()
    return units


# -- groups ---------------------------------------------------------------------------------------
def plan(**kw) -> RolloutPlan:
    return RolloutPlan(**{"kind": "stt", "version": "stt-2.0", **kw})


def sizes(n: int, **kw) -> list[int]:
    return [g.size for g in split_groups(n, plan(**kw))]


def test_default_groups_are_canary_then_memfault_waves():
    groups = split_groups(100, plan())
    assert [(g.name, g.size) for g in groups] == [("canary", 5), ("wave 1", 20), ("wave 2", 25),
                                                  ("wave 3", 50)]
    assert [g.cumulative_pct for g in groups] == [5.0, 25.0, 50.0, 100.0]
    assert [g.index for g in groups] == [0, 1, 2, 3]
    assert sizes(1000) == [5, 45, 200, 250, 500]
    assert sum(sizes(7)) == 7 and sizes(7) == [5, 2]


def test_canary_by_percentage_and_no_canary():
    assert sizes(200, canary_units=None, canary_pct=2.0, waves_pct=[50, 100]) == [4, 96, 100]
    assert sizes(10, canary_units=None, canary_pct=1.0, waves_pct=[100]) == [1, 9]  # at least 1
    assert sizes(10, canary_units=0, waves_pct=[30, 100]) == [3, 7]
    assert sizes(6, canary_units=2, waves_pct=[50, 100]) == [2, 1, 3]
    assert sizes(3, canary_units=10) == [3]  # the canary takes all
    assert sizes(0) == []


def test_plan_validation_errors_say_what_is_wrong():
    with pytest.raises(ValidationError, match="must increase"):
        plan(waves_pct=[50, 25, 100])
    with pytest.raises(ValidationError, match="last wave must reach 100"):
        plan(waves_pct=[5, 50])
    with pytest.raises(ValidationError, match="unknown model kind"):
        RolloutPlan(kind="asr", version="x")
    with pytest.raises(ValidationError, match="either canary_units or canary_pct"):
        plan(canary_units=3, canary_pct=5)
    with pytest.raises(ValidationError, match="empty"):
        MaintenanceWindow(start=time(2), end=time(2))
    assert RolloutPlan.model_validate_json(plan(window={"start": "02:00", "end": "05:00"})
                                           .model_dump_json()).window.start == time(2)


# -- thresholds -----------------------------------------------------------------------------------
def verdict(size, succeeded, failed, finished, **kw):
    kw = {"success_threshold_pct": 50, "error_threshold_pct": 50, "min_finished": 1, **kw}
    return group_verdict(size, succeeded, failed, finished, **kw)


def test_error_threshold_applies_after_min_finished():
    # 2 of 3 finished failed: 67 % ≥ 50 % but only after 3 finished
    assert not verdict(10, 1, 2, 3, min_finished=4).error_tripped
    assert verdict(10, 1, 3, 4, min_finished=4).error_tripped
    assert verdict(10, 1, 1, 2).error_tripped            # exactly 50 % reaches the threshold
    assert not verdict(10, 2, 1, 3).error_tripped        # 33 %
    assert not verdict(10, 0, 0, 0).error_tripped
    # a group smaller than min_finished is judged once it is complete
    assert verdict(2, 0, 2, 2, min_finished=5).error_tripped


def test_success_threshold_over_group_size():
    v = verdict(4, 2, 0, 4)
    assert v.complete and v.success_met and v.success_rate == 0.5
    v = verdict(4, 1, 0, 4, success_threshold_pct=50)  # 3 skipped
    assert v.complete and not v.success_met and not v.error_tripped
    assert not verdict(4, 2, 0, 2).complete
    assert verdict(5, 5, 0, 5, success_threshold_pct=100).success_met


# -- maintenance windows --------------------------------------------------------------------------
def test_window_in_each_units_local_time():
    w = MaintenanceWindow(start=time(2), end=time(5))
    now = datetime(2026, 11, 21, 18, 30, tzinfo=UTC)  # 03:30 in Seoul, 19:30 in Berlin
    assert w.is_open(now, "Asia/Seoul")
    assert not w.is_open(now, "Europe/Berlin")
    assert not w.is_open(now, "UTC")
    assert w.next_open(now, "Asia/Seoul") == now
    assert w.next_open(now, "Europe/Berlin") == datetime(2026, 11, 22, 1, 0, tzinfo=UTC)  # 02:00 CET
    assert w.next_open(now, "UTC") == datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
    # half open: 05:00 sharp is closed, 02:00 sharp is open
    assert w.is_open(datetime(2026, 11, 21, 2, 0, tzinfo=UTC), "UTC")
    assert not w.is_open(datetime(2026, 11, 21, 5, 0, tzinfo=UTC), "UTC")


def test_window_crossing_midnight():
    w = MaintenanceWindow(start=time(22), end=time(4))
    assert w.is_open(datetime(2026, 11, 21, 23, 0, tzinfo=UTC), "UTC")
    assert w.is_open(datetime(2026, 11, 22, 3, 59, tzinfo=UTC), "UTC")
    assert not w.is_open(datetime(2026, 11, 22, 4, 0, tzinfo=UTC), "UTC")
    assert not w.is_open(datetime(2026, 11, 21, 21, 59, tzinfo=UTC), "UTC")
    # 12:00 UTC is 21:00 in Seoul (closed, opens at 13:00 UTC) and 07:00 in New York (closed)
    noon = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    assert w.next_open(noon, "Asia/Seoul") == datetime(2026, 11, 21, 13, 0, tzinfo=UTC)
    assert w.next_open(noon, "America/New_York") == datetime(2026, 11, 22, 3, 0, tzinfo=UTC)  # 22:00 EST
    assert w.is_open(datetime(2026, 11, 21, 16, 0, tzinfo=UTC), "Asia/Seoul")  # 01:00 next day
    assert w.is_open(noon, "Pacific/Kiritimati")  # UTC+14: 02:00


def test_window_over_a_dst_change():
    w = MaintenanceWindow(start=time(2, 30), end=time(4))
    # 2026-03-29 Berlin skips 02:00→03:00: the window opens at 03:00 CEST (01:00 UTC)
    before = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    opens = w.next_open(before, "Europe/Berlin")
    assert w.is_open(opens, "Europe/Berlin")
    assert opens.tzinfo == UTC and opens > before


def test_unknown_zone_falls_back_to_utc():
    w = MaintenanceWindow(start=time(2), end=time(5))
    assert w.is_open(datetime(2026, 11, 21, 3, 0, tzinfo=UTC), "Mars/Olympus")


# -- rate limit -----------------------------------------------------------------------------------
def test_rate_limit_sliding_minute():
    rl = RateLimiter(3)
    for s in (0, 10, 20):
        assert rl.allow(T0 + timedelta(seconds=s))
        rl.started(T0 + timedelta(seconds=s))
    assert not rl.allow(T0 + timedelta(seconds=30))
    assert rl.next_slot(T0 + timedelta(seconds=30)) == T0 + timedelta(seconds=60)
    assert rl.allow(T0 + timedelta(seconds=60))
    rl.started(T0 + timedelta(seconds=60))
    assert rl.next_slot(T0 + timedelta(seconds=61)) == T0 + timedelta(seconds=70)
    assert RateLimiter(None).allow(T0)
    # seeded from the database on resume
    resumed = RateLimiter(2, recent=[T0, T0 + timedelta(seconds=5)])
    assert resumed.next_slot(T0 + timedelta(seconds=6)) == T0 + timedelta(seconds=60)


# -- filter, pins, preview (both databases) -------------------------------------------------------
def test_filter_by_site_hardware_tags_version_serials(runtime):
    with runtime.session_factory.begin() as s:
        add_units(s, 24)
        s.get(Unit, 5).stt_version = "stt-0.9"
        s.add(Unit(serial="SPK-NOSSH", agent_url="http://x/units/SPK-NOSSH", stt_version="stt-1.0",
                   created_at=T0, updated_at=T0))
    with runtime.session_factory() as s:
        pv = preview(s, plan(targets=TargetFilter(sites=["site-a"]), canary_units=2))
        serials = [u.serial for g in pv.groups for u in g.units]
        assert len(serials) == 12 and all(int(x[-2:]) % 2 == 1 for x in serials)
        assert pv.excluded["SPK-000002"] == "site 'site-b' not selected"
        pv = preview(s, plan(targets=TargetFilter(hardware_revs=["hw-b"], tags=["beta"])))
        assert sorted(u.serial for g in pv.groups for u in g.units) == ["SPK-000012", "SPK-000024"]
        pv = preview(s, plan(targets=TargetFilter(current_versions=["stt-0.9"])))
        assert [u.serial for g in pv.groups for u in g.units] == ["SPK-000005"]
        assert pv.groups[0].units[0].current_version == "stt-0.9"
        pv = preview(s, plan(targets=TargetFilter(serials=["SPK-000003", "SPK-999999", "SPK-NOSSH"],
                                                  exclude_serials=["SPK-000004"])))
        assert [u.serial for g in pv.groups for u in g.units] == ["SPK-000003"]
        assert "not in the inventory" in pv.excluded["SPK-999999"]       # bad row reported,
        assert "no SSH address" in pv.excluded["SPK-NOSSH"]               # the rest go on
        assert set(pv.excluded) == {"SPK-999999", "SPK-NOSSH"}


def test_preview_is_deterministic_and_spreads_units(runtime):
    with runtime.session_factory.begin() as s:
        add_units(s, 40)
    with runtime.session_factory() as s:
        p = plan(canary_units=4, waves_pct=[25, 100])
        first = preview(s, p).as_dict()
        again = preview(s, RolloutPlan.model_validate(p.model_dump(mode="json"))).as_dict()
        assert first == again
        assert [len(g["units"]) for g in first["groups"]] == [4, 6, 30]
        canary = first["groups"][0]["units"]
        assert canary != ["SPK-000001", "SPK-000002", "SPK-000003", "SPK-000004"]  # hash order
        other = preview(s, plan(version="stt-3.0", canary_units=4, waves_pct=[25, 100])).as_dict()
        assert other["groups"][0]["units"] != canary  # another version, other canaries
        salted = preview(s, plan(version="stt-3.0", canary_units=4, waves_pct=[25, 100],
                                 order_salt="stt:stt-2.0")).as_dict()
        assert salted["groups"][0]["units"] == canary


def test_pins_and_current_version_exclude_units(runtime):
    from fleet.rollout_control import RolloutError, pin, unpin
    from speakerops import audit

    with runtime.session_factory.begin() as s:
        add_units(s, 6)
        s.get(Unit, 6).stt_version = "stt-2.0"
        pin(s, "SPK-000002", "stt", "stt-1.0", reason="customer on a trial", clock=runtime.clock)
        pin(s, "SPK-000003", "stt", "stt-2.0", clock=runtime.clock)  # pinned to the target: stays in
        with pytest.raises(RolloutError, match="no unit 'SPK-404'"):
            pin(s, "SPK-404", "stt", "stt-1.0", clock=runtime.clock)
    with runtime.session_factory() as s:
        pv = preview(s, plan(canary_units=0, waves_pct=[100]))
        assert sorted(u.serial for u in pv.groups[0].units) == ["SPK-000001", "SPK-000003", "SPK-000004",
                                                                "SPK-000005"]
        assert pv.excluded == {"SPK-000002": "pinned to stt stt-1.0", "SPK-000006": "already runs stt-2.0"}
        entries = audit.entries(s, action_prefix="unit.pin")
        assert [e.target_id for e in entries] == ["SPK-000003", "SPK-000002"]
        assert entries[1].reason == "customer on a trial"
    with runtime.session_factory.begin() as s:
        assert unpin(s, "SPK-000002", "stt", clock=runtime.clock)
        assert not unpin(s, "SPK-000002", "stt", clock=runtime.clock)
    with runtime.session_factory() as s:
        assert "SPK-000002" not in preview(s, plan()).excluded


# -- the voice-quality gate's figures ------------------------------------------------------------
def heartbeats(session, unit: Unit, since: datetime, n: int, *, requests: int, errors: int,
               e2e_ms: float, wake_fa: float) -> None:
    per_stage = e2e_ms / 6
    for i in range(n):
        session.add(Heartbeat(
            unit_id=unit.id, received_at=since + timedelta(seconds=10 * (i + 1)), state="ok",
            uptime_s=100.0, cpu_pct=10.0, temp_c=50.0, mem_pct=30.0, disk_free_mb=900.0,
            mic_noise_dbfs=-60.0, wifi_rssi_dbm=-50.0, wake_false_accepts_per_h=wake_fa,
            requests=requests, errors=errors, stt_version=unit.stt_version,
            latency_ms={st: [per_stage] * requests for st in ("wake", "upload", "stt", "qa", "tts", "playback")}))


def test_gate_pauses_when_updated_units_are_worse(runtime):
    settings = GateSettings(min_requests=30)
    with runtime.session_factory.begin() as s:
        units = add_units(s, 6)
        for u in units[:2]:
            heartbeats(s, u, T0, 12, requests=5, errors=1, e2e_ms=2400, wake_fa=2.0)
        for u in units[2:]:
            heartbeats(s, u, T0, 12, requests=5, errors=0, e2e_ms=1800, wake_fa=0.5)
    updated = [u.serial for u in units[:2]]
    control = [u.serial for u in units[2:]]
    with runtime.session_factory() as s:
        result = voice_quality_gate(s, updated, control, T0, T0 + timedelta(minutes=3), settings)
        assert result.judged and not result.passed
        assert result.group.requests == 120 and result.control.requests == 240
        assert result.group.error_rate == pytest.approx(0.2) and result.control.error_rate == 0
        assert result.group.p95_e2e_ms == pytest.approx(2400, rel=0.01)
        assert [w.split(" ")[0] for w in result.worse] == ["error", "p95", "wake"]
        assert "error rate 20.00% vs 0.00%" in result.reason()
        assert "4 units not yet updated" in result.reason()
        # the control group judged against itself passes
        same = voice_quality_gate(s, control[:2], control[2:], T0, T0 + timedelta(minutes=3), settings)
        assert same.passed and same.judged and same.worse == []
        # too little data: not judged, passes unless data is required
        thin = voice_quality_gate(s, updated, control, T0, T0 + timedelta(seconds=15), settings)
        assert not thin.judged and thin.passed and "too few requests" in thin.reason()
        strict = voice_quality_gate(s, updated, control, T0, T0 + timedelta(seconds=15),
                                    GateSettings(require_data=True))
        assert not strict.passed


def test_gate_without_control_units_uses_the_groups_own_baseline(runtime):
    with runtime.session_factory.begin() as s:
        units = add_units(s, 2)
        for u in units:
            heartbeats(s, u, T0 - timedelta(minutes=60), 30, requests=5, errors=0, e2e_ms=1500, wake_fa=0.2)
            heartbeats(s, u, T0, 30, requests=5, errors=0, e2e_ms=2500, wake_fa=0.2)
    with runtime.session_factory() as s:
        r = voice_quality_gate(s, [u.serial for u in units], [], T0, T0 + timedelta(minutes=5),
                               GateSettings(baseline_s=3600))
        assert "before the update" in r.compared_with
        assert not r.passed and r.worse[0].startswith("p95 end-to-end latency 2,500 ms vs 1,500 ms")


def test_rollout_tables_exist_after_migration(runtime):
    with runtime.session_factory() as s:
        assert s.execute(select(Rollout)).first() is None
        assert s.execute(select(RolloutUnit)).first() is None


# -- CLI (no SSH) ---------------------------------------------------------------------------------
def cli(runtime, *args: str):
    from typer.testing import CliRunner

    import speakerops.cli

    return CliRunner().invoke(speakerops.cli.app, [*args, "--db-url", runtime.db_url])


def test_cli_plan_pin_status_and_clear_errors(runtime):
    import json

    with runtime.session_factory.begin() as s:
        add_units(s, 12)
    r = cli(runtime, "rollout", "plan", "stt", "stt-2.0", "--canary", "2", "--waves", "50,100", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [len(g["units"]) for g in data["groups"]] == [2, 4, 6] and data["total_units"] == 12
    r = cli(runtime, "rollout", "plan", "stt", "stt-2.0", "--site", "site-b", "--window", "02:00-05:00")
    assert r.exit_code == 0 and "6 units in 2 groups, window 02:00–05:00 local" in r.output
    assert "excluded 6: 6 × site 'site-a' not selected" in r.output

    r = cli(runtime, "rollout", "pin", "SPK-000003", "stt", "stt-1.0", "--reason", "trial", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["version"] == "stt-1.0"
    r = cli(runtime, "rollout", "plan", "stt", "stt-2.0", "--json")
    assert json.loads(r.output)["excluded"] == {"SPK-000003": "pinned to stt stt-1.0"}
    r = cli(runtime, "rollout", "pin", "SPK-404", "stt", "stt-1.0")
    assert r.exit_code == 1 and "no unit 'SPK-404'" in r.output

    r = cli(runtime, "rollout", "plan", "stt", "stt-2.0", "--waves", "50,25")
    assert r.exit_code == 1 and "invalid rollout plan" in r.output and "must increase" in r.output
    r = cli(runtime, "rollout", "plan", "stt", "stt-2.0", "--window", "2am")
    assert r.exit_code == 1 and "START-END" in r.output
    r = cli(runtime, "rollout", "start", "stt", "stt-2.0")
    assert r.exit_code == 1 and "not in the model registry" in r.output
    r = cli(runtime, "rollout", "status", "7")
    assert r.exit_code == 1 and "no rollout #7" in r.output
    r = cli(runtime, "rollout", "status")
    assert r.exit_code == 0 and "no rollouts" in r.output
    r = cli(runtime, "rollout", "pause", "7")
    assert r.exit_code == 1 and "no rollout #7" in r.output


def test_controls_state_machine_and_counts(runtime):
    """create → start → pause → resume → cancel, retry refusals, with audit entries (no SSH:
    no unit is ever in flight here)."""
    from fleet.models import ModelVersion
    from fleet.rollout_control import RolloutError, cancel, create_rollout, pause, resume, retry, start, status

    with runtime.session_factory.begin() as s:
        add_units(s, 8)
        s.add(ModelVersion(kind="stt", version="stt-2.0", files={}, artifact_bytes=1, manifest_sha256="0" * 64,
                           signature="", key_id="0" * 16, created_at=T0, source_path="/nonexistent",
                           evaluation_passed=True))
    clock = runtime.clock
    with runtime.session_factory.begin() as s:
        rid = create_rollout(s, plan(canary_units=2, waves_pct=[50, 100]), clock=clock).id
    with runtime.session_factory.begin() as s:
        with pytest.raises(RolloutError, match="is planned; pause needs it running"):
            pause(s, rid, clock=clock)
    with runtime.session_factory.begin() as s:
        start(s, rid, clock=clock)
        pause(s, rid, "looking at the canary", clock=clock)
    with runtime.session_factory.begin() as s:
        with pytest.raises(RolloutError, match="no failed unit to retry"):
            retry(s, rid, clock=clock)
        resume(s, rid, clock=clock)
        cancel(s, rid, "wrong build", clock=clock)
    with runtime.session_factory() as s:
        st = status(s, rid)
        assert st["state"] == "cancelled" and st["counts"]["cancelled"] == 8 and st["counts"]["total"] == 8
        assert [g["state"] for g in st["groups"]] == ["cancelled"] * 3
        assert [len(g["units_detail"]) for g in st["groups"]] == [2, 2, 4]
        from speakerops import audit

        actions = [e.action for e in audit.entries(s, target_kind="rollout", target_id=rid)][::-1]
        assert actions == ["rollout.create", "rollout.start", "rollout.pause", "rollout.resume", "rollout.cancel"]
        assert audit.entries(s, action_prefix="rollout.pause")[0].reason == "looking at the canary"
    with runtime.session_factory.begin() as s, pytest.raises(RolloutError, match="is cancelled"):
        retry(s, rid, clock=clock)


def test_runner_holds_units_outside_their_window(runtime):
    """Outside the maintenance window no unit starts (no SSH needed): they wait, status says so."""
    from fleet.models import ModelVersion
    from fleet.rollout import RolloutRunner
    from fleet.rollout_control import create_rollout, status

    with runtime.session_factory.begin() as s:
        add_units(s, 3, timezone="Asia/Seoul")  # 06:00 UTC is 15:00 in Seoul
        s.add(ModelVersion(kind="stt", version="stt-2.0", files={}, artifact_bytes=1, manifest_sha256="0" * 64,
                           signature="", key_id="0" * 16, created_at=T0, source_path="/nonexistent",
                           evaluation_passed=True))
        rid = create_rollout(s, plan(canary_units=1, window={"start": "02:00", "end": "05:00"}),
                             clock=runtime.clock).id
    messages: list[str] = []
    runner = RolloutRunner(runtime.session_factory, None, runtime.clock, health_check=lambda *a: True, poll_s=0.01)
    summary = runner.run(rid, cancelled=lambda: any("waiting for window" in m for m in messages),
                         progress=lambda f, m: messages.append(m))
    assert summary.state == "running" and summary.stopped_because.startswith("stopped by the caller")
    assert "1 unit waiting for window 02:00–05:00 local" in messages
    with runtime.session_factory() as s:
        st = status(s, rid)
        assert st["groups"][0]["status"] == "1 waiting for window" and st["runner"] is None
        unit = st["groups"][0]["units_detail"][0]
        assert unit["state"] == "waiting_window" and unit["attempts"] == 0
        assert "Asia/Seoul" in unit["error"]
