"""SLO, stage breakdown, health aggregates and capacity (fleet/slo.py) on SQLite and PostgreSQL.

Heartbeats with known latencies are written through the ORM; the clock is frozen.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from fleet.models import STAGES, CohortRollup1m, Heartbeat, RollupWatermark, Unit, UnitRollup1m
from fleet.slo import (
    SLO_WINDOWS,
    Cohort,
    capacity_plan,
    gpu_cards,
    gpu_copies_per_card,
    health_aggregates,
    peak_request_rate,
    slo_report,
    slo_status,
    stage_breakdown,
)

OK = {s: 300.0 for s in STAGES}  # e2e 1,800 ms, server 900 ms
SLOW_E2E = {**OK, "playback": 2000.0}  # e2e 3,500 ms, server 900 ms
SLOW_SERVER = {**OK, "qa": 1500.0}  # e2e 3,000 ms (within), server 2,100 ms


def make_unit(session, serial: str, now: datetime, *, site: str = "seoul", hw: str = "hw-b",
              status: str = "online", stt: str = "stt-1.4.0") -> Unit:
    unit = Unit(serial=serial, hardware_rev=hw, site=site, region="kr", agent_url=f"http://x/{serial}",
                firmware_version="2.4.1", stt_version=stt, qa_version="qa-2.1.0", tts_version="tts-1.0.3",
                tags=[], status=status, created_at=now, updated_at=now)
    session.add(unit)
    session.flush()
    return unit


def add_hb(session, unit: Unit, at: datetime, requests: list[dict[str, float]], *, errors: int = 0,
           cpu: float = 20.0, disk: float = 1800.0) -> None:
    session.add(Heartbeat(
        unit_id=unit.id, received_at=at, unit_time=at, state="ok", uptime_s=100.0, cpu_pct=cpu,
        temp_c=50.0, mem_pct=40.0, disk_free_mb=disk, mic_noise_dbfs=-60.0, wifi_rssi_dbm=-60.0,
        wake_false_accepts_per_h=0.5, requests=len(requests), errors=errors,
        latency_ms={s: [r[s] for r in requests] for s in STAGES}))


def seed_mix(session, unit: Unit, now: datetime, good: int, slow: int, at_ago: timedelta,
             slow_kind: dict[str, float] = SLOW_E2E) -> None:
    """``good + slow`` requests in heartbeats of 10 requests, received ``at_ago`` before now."""
    reqs = [OK] * good + [slow_kind] * slow
    for i in range(0, len(reqs), 10):
        add_hb(session, unit, now - at_ago + timedelta(seconds=i), reqs[i:i + 10])


def test_compliance_and_burn_rate_exact(runtime, clock) -> None:
    now = clock()
    with runtime.session_factory.begin() as s:
        u = make_unit(s, "SPK-1", now)
        seed_mix(s, u, now, good=90, slow=10, at_ago=timedelta(minutes=30))
    with runtime.session_factory() as s:
        st = slo_status(s, now, timedelta(hours=1))
    assert (st.requests, st.good) == (100, 90)
    assert st.compliance == pytest.approx(0.90)
    assert st.e2e_compliance == pytest.approx(0.90)
    assert st.server_compliance == pytest.approx(1.0)
    assert st.error_budget_burn_rate == pytest.approx(2.0)
    assert st.burn_rate == st.error_budget_burn_rate
    assert st.met is False


def test_server_budget_and_errors_count_as_not_good(runtime, clock) -> None:
    now = clock()
    with runtime.session_factory.begin() as s:
        u = make_unit(s, "SPK-1", now)
        seed_mix(s, u, now, good=95, slow=5, at_ago=timedelta(minutes=20), slow_kind=SLOW_SERVER)
        add_hb(s, u, now - timedelta(minutes=1), [OK] * 10, errors=2)
    with runtime.session_factory() as s:
        st = slo_status(s, now, timedelta(hours=1))
    assert (st.requests, st.good) == (110, 103)
    assert st.e2e_compliance == pytest.approx(1.0)
    assert st.server_compliance == pytest.approx(105 / 110)


def test_no_requests_gives_none(runtime, clock) -> None:
    with runtime.session_factory() as s:
        st = slo_status(s, clock(), timedelta(hours=1))
    assert st.requests == 0 and st.compliance is None and st.burn_rate is None


def test_windows_select_the_right_heartbeats(runtime, clock) -> None:
    now = clock()
    with runtime.session_factory.begin() as s:
        u = make_unit(s, "SPK-1", now)
        seed_mix(s, u, now, good=100, slow=0, at_ago=timedelta(minutes=10))  # in 1 h
        seed_mix(s, u, now, good=0, slow=100, at_ago=timedelta(hours=3))  # in 24 h
        seed_mix(s, u, now, good=200, slow=0, at_ago=timedelta(days=3))  # in 30 d
        seed_mix(s, u, now, good=0, slow=50, at_ago=timedelta(days=40))  # in none
        add_hb(s, u, now + timedelta(minutes=1), [SLOW_E2E] * 10)  # after now: in none
    with runtime.session_factory() as s:
        report = slo_report(s, now)
    assert [r.window for r in report] == list(SLO_WINDOWS)
    assert [(r.requests, r.good) for r in report] == [(100, 100), (200, 100), (400, 300)]
    assert report[0].burn_rate == pytest.approx(0.0)
    assert report[1].burn_rate == pytest.approx(10.0)


def test_cohort_restricts_to_matching_units(runtime, clock) -> None:
    now = clock()
    with runtime.session_factory.begin() as s:
        a = make_unit(s, "SPK-A", now, site="seoul", hw="hw-b")
        b = make_unit(s, "SPK-B", now, site="busan", hw="hw-c")
        seed_mix(s, a, now, good=100, slow=0, at_ago=timedelta(minutes=5))
        seed_mix(s, b, now, good=50, slow=50, at_ago=timedelta(minutes=5))
    with runtime.session_factory() as s:
        fleet = slo_status(s, now, timedelta(hours=1))
        seoul = slo_status(s, now, timedelta(hours=1), Cohort(site="seoul"))
        busan = slo_status(s, now, timedelta(hours=1), Cohort(hardware_rev="hw-c"))
        nobody = slo_status(s, now, timedelta(hours=1), Cohort(site="tokyo"))
    assert fleet.compliance == pytest.approx(0.75)
    assert seoul.compliance == pytest.approx(1.0)
    assert busan.compliance == pytest.approx(0.5)
    assert nobody.requests == 0


def test_rollups_before_the_watermark_and_raw_after(runtime, clock) -> None:
    now = clock()  # 06:00
    wm = now - timedelta(minutes=10)
    with runtime.session_factory.begin() as s:
        u = make_unit(s, "SPK-1", now)
        u.tags = ["lab"]
        figures = dict(bucket_start=now - timedelta(minutes=30), heartbeats=6, requests=100, errors=0,
                       e2e_over_budget=10, server_over_budget=0, latency_hist={}, latency_sum_ms={})
        # as compute_rollups writes them: the unit's minute and its cohort's minute
        s.add(UnitRollup1m(unit_id=u.id, **figures))
        s.add(CohortRollup1m(site="seoul", hardware_rev="hw-b", firmware_version="2.4.1",
                             stt_version="stt-1.4.0", qa_version="qa-2.1.0", tts_version="tts-1.0.3", units=1,
                             **figures))
        s.add(RollupWatermark(level="1m", computed_until=wm))
        # raw rows before the watermark are already in the rollup: must not count twice
        seed_mix(s, u, now, good=0, slow=100, at_ago=timedelta(minutes=30))
        seed_mix(s, u, now, good=100, slow=0, at_ago=timedelta(minutes=5))
    with runtime.session_factory() as s:
        fleet = slo_status(s, now, timedelta(hours=1))  # cohort minutes
        site = slo_status(s, now, timedelta(hours=1), Cohort(site="seoul"))  # cohort minutes of that site
        tagged = slo_status(s, now, timedelta(hours=1), Cohort(tag="lab"))  # the unit's own minutes
        other = slo_status(s, now, timedelta(hours=1), Cohort(site="busan"))
    assert (fleet.requests, fleet.good) == (200, 190)
    assert (site.requests, site.good) == (200, 190)
    assert (tagged.requests, tagged.good) == (200, 190)
    assert other.requests == 0


def test_stage_breakdown_names_the_stage_that_grew(runtime, clock) -> None:
    now = clock()
    slow_stt = {**OK, "stt": 900.0}
    with runtime.session_factory.begin() as s:
        u = make_unit(s, "SPK-1", now)
        for i in range(5):
            add_hb(s, u, now - timedelta(hours=5, minutes=i), [OK] * 10)  # baseline
            add_hb(s, u, now - timedelta(minutes=10 + i), [slow_stt] * 10, errors=1)  # window
    with runtime.session_factory() as s:
        df = stage_breakdown(s, now)
    assert list(df["stage"]) == [*STAGES, "server", "e2e"]
    row = df.set_index("stage")
    assert row.loc["stt", "p95_ms"] == pytest.approx(900.0)
    assert row.loc["stt", "baseline_p95_ms"] == pytest.approx(300.0)
    assert row.loc["stt", "change_p95_ms"] == pytest.approx(600.0)
    assert row.loc["stt", "change_p95_pct"] == pytest.approx(200.0)
    assert list(df.loc[df["grew_most"], "stage"]) == ["stt"]
    assert row.loc["e2e", "p50_ms"] == pytest.approx(2400.0)
    assert row.loc["qa", "change_p95_ms"] == pytest.approx(0.0)
    assert row.loc["stt", "requests"] == 50
    assert row.loc["stt", "requests_per_s"] == pytest.approx(50 / 3600)
    assert row.loc["stt", "error_rate"] == pytest.approx(0.1)


def test_health_aggregates_counts_and_percentiles(runtime, clock) -> None:
    now = clock()
    with runtime.session_factory.begin() as s:
        units = [make_unit(s, f"SPK-{i}", now, site="seoul" if i < 3 else "busan",
                           status=("online", "degraded", "offline", "updating")[i]) for i in range(4)]
        for i, u in enumerate(units):
            add_hb(s, u, now - timedelta(minutes=5), [], cpu=99.0, disk=10.0)  # older: ignored
            add_hb(s, u, now - timedelta(minutes=1), [], cpu=10.0 * (i + 1), disk=1000.0 * (i + 1))
        make_unit(s, "SPK-silent", now, site="busan", status="unknown")
    with runtime.session_factory() as s:
        df = health_aggregates(s, now, "site").set_index("site")
        with pytest.raises(ValueError, match="cannot group by"):
            health_aggregates(s, now, "serial")  # type: ignore[arg-type]
    assert list(df.index) == ["busan", "seoul"]
    assert df.loc["seoul", ["units", "online", "degraded", "offline", "updating"]].tolist() == [3, 1, 1, 1, 0]
    assert df.loc["busan", ["units", "online", "updating"]].tolist() == [2, 0, 1]
    assert df.loc["seoul", "cpu_pct_p50"] == pytest.approx(20.0)
    assert df.loc["seoul", "cpu_pct_p95"] == pytest.approx(29.0)
    assert df.loc["seoul", "cpu_pct_max"] == pytest.approx(30.0)
    assert df.loc["seoul", "disk_free_mb_min"] == pytest.approx(1000.0)
    assert df.loc["busan", "cpu_pct_max"] == pytest.approx(40.0)  # the silent unit adds no figure
    assert "disk_free_mb_max" not in df.columns


def test_peak_request_rate_is_the_busiest_minute(runtime, clock) -> None:
    now = clock()
    with runtime.session_factory.begin() as s:
        a, b = make_unit(s, "SPK-A", now), make_unit(s, "SPK-B", now)
        t = now - timedelta(hours=2, seconds=-5)
        add_hb(s, a, t, [OK] * 30)
        add_hb(s, b, t + timedelta(seconds=20), [OK] * 30)  # same minute: 60 requests
        add_hb(s, a, now - timedelta(minutes=5), [OK] * 40)
        add_hb(s, a, now - timedelta(days=8), [OK] * 50)  # outside 7 days
    with runtime.session_factory() as s:
        assert peak_request_rate(s, now) == pytest.approx(1.0)
        assert peak_request_rate(s, now, timedelta(hours=1)) == pytest.approx(40 / 60)


def test_capacity_plan() -> None:
    plan = capacity_plan(10.0, 1.64)
    assert plan.workers == 8  # ceil(13 / 1.64) = ceil(7.93)
    assert plan.machines == 4
    assert capacity_plan(3.28, 1.64, headroom=0.0).workers == 2  # exact: no extra worker
    assert capacity_plan(0.0, 1.64).workers == 0
    assert capacity_plan(10.0, 2.0, workers_per_machine=4, headroom=0.5).machines == 2
    with pytest.raises(ValueError):
        capacity_plan(1.0, 0.0)


def test_gpu_copies_per_card() -> None:
    assert gpu_copies_per_card(10, 8) == 1
    assert gpu_copies_per_card(10, 5) == 2
    assert gpu_copies_per_card(10, 4.9) == 2
    assert gpu_copies_per_card(10, 3.3) == 3
    assert gpu_copies_per_card(10, 12) == 0
    assert gpu_cards(5, 10, 5) == 3
    with pytest.raises(ValueError, match="does not fit"):
        gpu_cards(1, 10, 12)


def test_cli_slo_json(runtime) -> None:
    from typer.testing import CliRunner

    from speakerops.cli import app

    now = datetime.now(UTC)  # the CLI reads the real clock
    with runtime.session_factory.begin() as s:
        u = make_unit(s, "SPK-1", now, site="seoul")
        v = make_unit(s, "SPK-2", now, site="busan")
        seed_mix(s, u, now, good=90, slow=10, at_ago=timedelta(minutes=30))
        seed_mix(s, v, now, good=10, slow=10, at_ago=timedelta(minutes=30))
    result = CliRunner().invoke(app, ["slo", "--json", "--site", "seoul", "--db-url", runtime.db_url])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [d["window"] for d in data] == ["1h", "24h", "30d"]
    assert data[0]["requests"] == 100
    assert data[0]["compliance"] == pytest.approx(0.90)
    assert data[0]["burn_rate"] == pytest.approx(2.0)
    text = CliRunner().invoke(app, ["slo", "--db-url", runtime.db_url])
    assert text.exit_code == 0 and "burn rate" in text.output
    cap = CliRunner().invoke(app, ["capacity", "--json", "--card-gb", "10", "--model-gb", "5",
                                   "--db-url", runtime.db_url])
    assert cap.exit_code == 0, cap.output
    plan = json.loads(cap.output)
    assert plan["copies_per_card"] == 2 and plan["workers"] >= 1
