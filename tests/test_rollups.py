"""Heartbeat rollups and retention (fleet/rollups.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import func, select, update

from fleet.models import (
    LATENCY_EDGES_MS, STAGES, CohortRollup1m, Heartbeat, RollupWatermark, Unit, UnitRollup1h, UnitRollup1m,
)
from fleet.rollups import (
    COHORT_KEY, N_BUCKETS, Cohort, RollupResult, bucket_index, compute_rollups, hist_percentile, histogram,
    merge_hist, prune, stage_series, unit_series,
)

T0 = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)


def _unit(session, serial: str, now: datetime, site: str = "seoul", tags: list[str] | None = None,
          hw: str = "hw-b", stt: str | None = None) -> Unit:
    u = Unit(serial=serial, agent_url=f"http://127.0.0.1/units/{serial}", site=site, hardware_rev=hw,
             tags=tags or [], stt_version=stt, created_at=now, updated_at=now)
    session.add(u)
    session.flush()
    return u


def _latencies(rng: np.random.Generator, n: int) -> dict[str, list[float]]:
    scale = {"wake": 200, "upload": 300, "stt": 450, "qa": 150, "tts": 200, "playback": 600}
    return {s: np.round(rng.lognormal(np.log(scale[s]), 0.6, n), 1).tolist() for s in STAGES}


def _hb(unit_id: int, at: datetime, *, uptime_s: float, cpu: float = 20.0, temp: float = 50.0,
        disk: float = 1800.0, requests: int = 0, errors: int = 0, latency: dict | None = None,
        stt: str | None = None) -> Heartbeat:
    return Heartbeat(unit_id=unit_id, received_at=at, unit_time=at, state="ok", uptime_s=uptime_s, cpu_pct=cpu,
                     temp_c=temp, mem_pct=40.0, disk_free_mb=disk, mic_noise_dbfs=-58.0, wifi_rssi_dbm=-60.0,
                     wake_false_accepts_per_h=0.5, requests=requests, errors=errors, latency_ms=latency or {},
                     stt_version=stt)


def _seed_span(session, unit: Unit, start: datetime, minutes: int, rng: np.random.Generator,
               every_s: int = 10, stt: str | None = None) -> list[Heartbeat]:
    """Heartbeats every ``every_s`` over ``minutes`` from ``start``, 0–3 requests each."""
    hbs = []
    for k in range(minutes * 60 // every_s):
        n = int(rng.integers(0, 4))
        hbs.append(_hb(unit.id, start + timedelta(seconds=k * every_s), uptime_s=1000.0 + k * every_s,
                       cpu=float(rng.uniform(5, 90)), temp=float(rng.uniform(40, 70)),
                       disk=float(rng.uniform(1000, 2000)), requests=n, errors=int(n > 2),
                       latency=_latencies(rng, n), stt=stt))
    session.add_all(hbs)
    session.flush()
    return hbs


def _count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def _cohort_rows(session) -> list[tuple]:
    """Every cohort row as a tuple of all its columns, in key order."""
    cols = [c.key for c in CohortRollup1m.__table__.columns]
    rows = session.scalars(select(CohortRollup1m).order_by(CohortRollup1m.bucket_start, *COHORT_KEY)).all()
    return [tuple(getattr(r, c) for c in cols) for r in rows]


# -- histograms -----------------------------------------------------------------------------------
def test_hist_percentile_edge_cases() -> None:
    assert hist_percentile([0] * N_BUCKETS, 50) is None
    assert hist_percentile([], 95) is None
    open_only = [0] * N_BUCKETS
    open_only[-1] = 7
    assert hist_percentile(open_only, 50) == LATENCY_EDGES_MS[-1]
    assert hist_percentile(open_only, 99) == LATENCY_EDGES_MS[-1]
    one = [0] * N_BUCKETS
    one[1] = 4  # (25, 50]
    assert hist_percentile(one, 50) == pytest.approx(37.5)
    assert hist_percentile(one, 100) == pytest.approx(50.0)
    assert hist_percentile(one, 0) == pytest.approx(25.0)
    assert merge_hist(one, None) == one
    assert merge_hist(one, one)[1] == 8
    assert histogram([25.0, 25.1, 1e6]) == [1, 1] + [0] * (N_BUCKETS - 3) + [1]


def test_hist_percentile_close_to_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.lognormal(np.log(1500), 0.5, 5000)
    h = histogram(x)
    for q in (50, 95, 99):
        est = hist_percentile(h, q)
        true = float(np.percentile(x, q))
        i = int(np.searchsorted(LATENCY_EDGES_MS, true))
        width = LATENCY_EDGES_MS[i] - (LATENCY_EDGES_MS[i - 1] if i else 0)
        assert abs(est - true) <= width


# -- 1-minute rollups -----------------------------------------------------------------------------
def test_minute_rollup_exact_figures(runtime, clock) -> None:
    rng = np.random.default_rng(0)
    lat = [_latencies(rng, n) for n in (2, 0, 3, 1, 0, 4)]
    lat[2]["qa"][0] = 2500.0  # one request over both budgets
    uptimes = [100, 110, 120, 5, 15, 25]  # rebooted between the 3rd and 4th heartbeat
    with runtime.session_factory.begin() as s:
        u = _unit(s, "SPK-1", clock())
        for k in range(6):
            n = len(lat[k]["wake"])
            s.add(_hb(u.id, T0 + timedelta(seconds=10 * k), uptime_s=uptimes[k], cpu=10.0 * (k + 1),
                      disk=2000.0 - k, requests=n, errors=1 if k == 2 else 0, latency=lat[k]))
        unit_id = u.id
    clock.now = T0 + timedelta(minutes=1, seconds=30)
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, clock()) == RollupResult(1, 0, 1)
    with runtime.session_factory() as s:
        r = s.get(UnitRollup1m, (unit_id, T0))
        assert r is not None and r.bucket_start == T0
        assert r.heartbeats == 6
        assert r.cpu_pct_avg == pytest.approx(35.0) and r.cpu_pct_max == pytest.approx(60.0)
        assert r.disk_free_mb_min == pytest.approx(1995.0)
        assert r.requests == 10 and r.errors == 1 and r.reboots == 1
        samples = {st: [v for d in lat for v in d[st]] for st in STAGES}
        e2e = [sum(d[st][i] for st in STAGES) for d in lat for i in range(len(d["wake"]))]
        server = [d["stt"][i] + d["qa"][i] + d["tts"][i] for d in lat for i in range(len(d["wake"]))]
        for st in STAGES:
            assert r.latency_hist[st] == histogram(samples[st])
            assert r.latency_sum_ms[st] == pytest.approx(sum(samples[st]), abs=0.01)
        assert r.latency_hist["e2e"] == histogram(e2e) and sum(r.latency_hist["e2e"]) == 10
        assert r.latency_hist["server"] == histogram(server)
        assert r.e2e_over_budget == sum(v > 3000 for v in e2e) >= 1
        assert r.server_over_budget == sum(v > 2000 for v in server) >= 1
        # with 10 samples the estimate lies in the bucket of the sample at the rank (inverted CDF)
        for q in (50, 95):
            est = hist_percentile(r.latency_hist["e2e"], q)
            true = float(np.percentile(e2e, q, method="inverted_cdf"))
            assert bucket_index([est])[0] == bucket_index([true])[0]


def test_rerun_adds_nothing_and_rewrite_does_not_double_count(runtime, clock) -> None:
    rng = np.random.default_rng(2)
    with runtime.session_factory.begin() as s:
        u = _unit(s, "SPK-1", clock())
        _seed_span(s, u, T0, 5, rng)
    clock.now = T0 + timedelta(minutes=6)
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, clock()) == RollupResult(5, 0, 5)
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, clock()) == RollupResult(0, 0, 0)
    with runtime.session_factory() as s:
        before = s.scalar(select(func.sum(UnitRollup1m.requests)))
        cohort_before = _cohort_rows(s)
    # rewind the watermark: the same window is rolled again, replacing (not adding to) its rows
    with runtime.session_factory.begin() as s:
        s.execute(update(RollupWatermark).where(RollupWatermark.level == "1m").values(computed_until=T0))
        assert compute_rollups(s, clock()) == RollupResult(5, 0, 5)
    with runtime.session_factory() as s:
        assert _count(s, UnitRollup1m) == 5
        assert s.scalar(select(func.sum(UnitRollup1m.requests))) == before
        assert before == s.scalar(select(func.sum(Heartbeat.requests)))
        assert _cohort_rows(s) == cohort_before


def test_incomplete_buckets_are_not_rolled(runtime, clock) -> None:
    with runtime.session_factory.begin() as s:
        u = _unit(s, "SPK-1", clock())
        s.add(_hb(u.id, T0 + timedelta(seconds=45), uptime_s=1, requests=1, latency={st: [100.0] for st in STAGES}))
    clock.now = T0 + timedelta(seconds=80)  # minute ended 20 s ago: inside the 30 s grace
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, clock()) == RollupResult(0, 0)
    clock.now = T0 + timedelta(seconds=90)
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, clock()) == RollupResult(1, 0, 1)  # the hour is not complete yet
        assert s.get(RollupWatermark, "1m").computed_until == T0 + timedelta(minutes=1)
    clock.now = T0 + timedelta(hours=1, seconds=29)
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, clock()).hours_written == 0
    clock.now = T0 + timedelta(hours=1, seconds=30)
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, clock()) == RollupResult(0, 1)


def test_hour_rollup_is_the_sum_of_its_minutes(runtime, clock) -> None:
    rng = np.random.default_rng(3)
    with runtime.session_factory.begin() as s:
        units = [_unit(s, f"SPK-{i}", clock()) for i in range(2)]
        for u in units:
            _seed_span(s, u, T0, 60, rng, every_s=20)
        # unit 0 misses every other heartbeat in its last 10 minutes: the hour's mean is weighted
        late = [h for h in s.scalars(select(Heartbeat).where(
            Heartbeat.unit_id == units[0].id, Heartbeat.received_at >= T0 + timedelta(minutes=50))).all()]
        for h in late[::2]:
            s.delete(h)
        s.flush()
        ids = [u.id for u in units]
    clock.now = T0 + timedelta(hours=1, minutes=1)
    with runtime.session_factory.begin() as s:
        res = compute_rollups(s, clock())
        assert res.hours_written == 2 and res.minutes_written == 120
    with runtime.session_factory() as s:
        for uid in ids:
            h = s.get(UnitRollup1h, (uid, T0))
            mins = s.scalars(select(UnitRollup1m).where(UnitRollup1m.unit_id == uid)).all()
            raw = s.scalars(select(Heartbeat).where(Heartbeat.unit_id == uid)).all()
            assert h.heartbeats == sum(m.heartbeats for m in mins) == len(raw)
            assert h.requests == sum(m.requests for m in mins) == sum(r.requests for r in raw)
            assert h.errors == sum(m.errors for m in mins)
            assert h.e2e_over_budget == sum(m.e2e_over_budget for m in mins)
            assert h.cpu_pct_avg == pytest.approx(np.mean([r.cpu_pct for r in raw]))
            assert h.cpu_pct_max == pytest.approx(max(r.cpu_pct for r in raw))
            assert h.disk_free_mb_min == pytest.approx(min(r.disk_free_mb for r in raw))
            for st in h.latency_hist:
                total = [0] * N_BUCKETS
                for m in mins:
                    total = merge_hist(total, m.latency_hist.get(st))
                assert h.latency_hist[st] == total
                assert h.latency_sum_ms[st] == pytest.approx(sum(m.latency_sum_ms.get(st, 0) for m in mins))


def test_reboot_across_runs(runtime, clock) -> None:
    with runtime.session_factory.begin() as s:
        u = _unit(s, "SPK-1", clock())
        s.add(_hb(u.id, T0 + timedelta(seconds=50), uptime_s=500))
        uid = u.id
    clock.now = T0 + timedelta(minutes=1, seconds=30)
    with runtime.session_factory.begin() as s:
        compute_rollups(s, clock())
    with runtime.session_factory.begin() as s:
        s.add(_hb(uid, T0 + timedelta(minutes=1, seconds=40), uptime_s=3))
    clock.now = T0 + timedelta(minutes=2, seconds=30)
    with runtime.session_factory.begin() as s:
        compute_rollups(s, clock())
    with runtime.session_factory() as s:
        assert s.get(UnitRollup1m, (uid, T0)).reboots == 0
        assert s.get(UnitRollup1m, (uid, T0 + timedelta(minutes=1))).reboots == 1


# -- retention ------------------------------------------------------------------------------------
def test_prune_respects_each_retention_and_the_watermark(runtime, clock) -> None:
    start = T0 - timedelta(days=2)
    with runtime.session_factory.begin() as s:
        u = _unit(s, "SPK-1", clock())
        # one heartbeat every 30 minutes for two days, then one not yet rolled (inside the grace)
        for k in range(96):
            s.add(_hb(u.id, start + timedelta(minutes=30 * k), uptime_s=k))
        uid = u.id
        # old cohort minutes beyond 30 days and unit hours beyond one year, written directly
        for age in (timedelta(days=29), timedelta(days=31)):
            s.add(CohortRollup1m(bucket_start=T0 - age, site="seoul", hardware_rev="hw-b", firmware_version="",
                                 stt_version="", qa_version="", tts_version="", units=1, heartbeats=1,
                                 requests=0, errors=0))
        for age in (timedelta(days=364), timedelta(days=366)):
            s.add(UnitRollup1h(unit_id=uid, bucket_start=T0 - age, heartbeats=1, requests=0, errors=0))
    with runtime.session_factory.begin() as s:
        compute_rollups(s, T0)  # the watermark at T0 - 1 min: every row so far rolled
        s.add(_hb(uid, T0 - timedelta(seconds=10), uptime_s=1e6))  # not rolled yet
        # per-unit minutes on either side of the 48 h retention, written after the rollup (as if
        # rolled before migration 0010: the older one is not in the cohort rows yet)
        for age in (timedelta(hours=47, minutes=5), timedelta(hours=49)):
            s.add(UnitRollup1m(unit_id=uid, bucket_start=T0 - age, heartbeats=6, requests=2, errors=0,
                               latency_hist={}, latency_sum_ms={}))
    with runtime.session_factory.begin() as s:
        # per-unit minutes wait while older ones are not copied into cohort rows
        assert prune(s, T0) == {"heartbeats": 48, "unit_rollups_1m": 0, "cohort_rollups_1m": 1,
                                "unit_rollups_1h": 1}
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, T0) == RollupResult(0, 0, 1)  # the copy of T0 - 49 h
        assert prune(s, T0) == {"heartbeats": 0, "unit_rollups_1m": 1, "cohort_rollups_1m": 0,
                                "unit_rollups_1h": 0}
    with runtime.session_factory() as s:
        assert s.scalar(select(func.min(Heartbeat.received_at))) == T0 - timedelta(hours=24)
        assert s.scalar(select(func.min(UnitRollup1m.bucket_start))) == T0 - timedelta(hours=48)
        assert s.scalar(select(func.min(CohortRollup1m.bucket_start))) == T0 - timedelta(days=29)
        assert s.get(CohortRollup1m, (T0 - timedelta(hours=49), "seoul", "hw-b", "", "", "", "")).requests == 2
        assert s.scalar(select(func.min(UnitRollup1h.bucket_start))) == T0 - timedelta(days=364)
    # keep nothing: still, raw rows after the 1-minute watermark stay (not yet rolled up), and
    # per-unit minutes not yet rolled into hours
    with runtime.session_factory.begin() as s:
        deleted = prune(s, T0, raw_keep=timedelta(0), unit_minute_keep=timedelta(0),
                        cohort_minute_keep=timedelta(0), hour_keep=timedelta(0))
        assert deleted["heartbeats"] == 48
    with runtime.session_factory() as s:
        left = s.scalars(select(Heartbeat.received_at)).all()
        assert left == [T0 - timedelta(seconds=10)]
        assert s.scalar(select(func.min(UnitRollup1m.bucket_start))) == T0 - timedelta(hours=1)
        assert _count(s, CohortRollup1m) == 0 and _count(s, UnitRollup1h) == 0


def test_prune_refuses_a_negative_retention(runtime) -> None:
    with runtime.session_factory.begin() as s, pytest.raises(ValueError, match="unit_minute_keep"):
        prune(s, T0, unit_minute_keep=timedelta(hours=-1))


def test_prune_without_rollups_keeps_raw(runtime, clock) -> None:
    with runtime.session_factory.begin() as s:
        u = _unit(s, "SPK-1", clock())
        s.add(_hb(u.id, T0 - timedelta(days=3), uptime_s=1))
    with runtime.session_factory.begin() as s:
        assert prune(s, T0)["heartbeats"] == 0


def test_deleting_a_unit_cascades_to_its_rollups(runtime, clock) -> None:
    rng = np.random.default_rng(4)
    with runtime.session_factory.begin() as s:
        a, b = _unit(s, "SPK-A", clock()), _unit(s, "SPK-B", clock())
        _seed_span(s, a, T0, 61, rng, every_s=30)
        _seed_span(s, b, T0, 61, rng, every_s=30)
        a_id = a.id
    clock.now = T0 + timedelta(hours=1, minutes=2)
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, clock()) == RollupResult(122, 2, 61)  # one cohort: same site and hardware
    with runtime.session_factory.begin() as s:
        s.delete(s.get(Unit, a_id))
    with runtime.session_factory() as s:
        assert _count(s, UnitRollup1m) == 61 and _count(s, UnitRollup1h) == 1
        assert _count(s, CohortRollup1m) == 61  # the fleet's history keeps the deleted unit's requests
        assert s.scalar(select(func.count()).where(UnitRollup1m.unit_id == a_id)) == 0


# -- cohort minutes -------------------------------------------------------------------------------
def _seed_cohorts(session, rng: np.random.Generator) -> dict[str, int]:
    """A and B in one cohort (seoul, hw-b, heartbeats naming stt-1.4.0), C alone (busan, hw-c,
    heartbeats naming no version: the unit's inventory stt-1.3.2 applies); 5 minutes from T0.
    A skips every other heartbeat of its last 2 minutes, so the weighted means matter."""
    a = _unit(session, "SPK-A", T0, site="seoul", stt="stt-1.4.0", tags=["pilot"])
    b = _unit(session, "SPK-B", T0, site="seoul", stt="stt-1.4.0")
    c = _unit(session, "SPK-C", T0, site="busan", hw="hw-c", stt="stt-1.3.2")
    hbs = _seed_span(session, a, T0, 5, rng, stt="stt-1.4.0")
    for h in hbs[-12::2]:
        session.delete(h)
    _seed_span(session, b, T0, 5, rng, stt="stt-1.4.0")
    _seed_span(session, c, T0, 5, rng)
    session.flush()
    return {"A": a.id, "B": b.id, "C": c.id}


def test_cohort_rows_are_the_sum_of_the_unit_rows(runtime, clock) -> None:
    rng = np.random.default_rng(7)
    with runtime.session_factory.begin() as s:
        ids = _seed_cohorts(s, rng)
    clock.now = T0 + timedelta(minutes=6)
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, clock()) == RollupResult(15, 0, 10)
    members = {("seoul", "hw-b", "stt-1.4.0"): [ids["A"], ids["B"]], ("busan", "hw-c", "stt-1.3.2"): [ids["C"]]}
    with runtime.session_factory() as s:
        for k in range(5):
            at = T0 + timedelta(minutes=k)
            for (site, hw, stt), uids in members.items():
                c = s.get(CohortRollup1m, (at, site, hw, "", stt, "", ""))
                us = [s.get(UnitRollup1m, (uid, at)) for uid in uids]
                assert c.units == len(us)
                for col in ("heartbeats", "requests", "errors", "reboots", "e2e_over_budget", "server_over_budget"):
                    assert getattr(c, col) == sum(getattr(u, col) for u in us), col
                for col in ("cpu_pct_avg", "temp_c_avg", "mem_pct_avg", "mic_noise_dbfs_avg"):
                    weighted = sum(getattr(u, col) * u.heartbeats for u in us) / sum(u.heartbeats for u in us)
                    assert getattr(c, col) == pytest.approx(weighted), col
                assert c.cpu_pct_max == pytest.approx(max(u.cpu_pct_max for u in us))
                assert c.disk_free_mb_min == pytest.approx(min(u.disk_free_mb_min for u in us))
                for st in set(c.latency_hist) | {st for u in us for st in u.latency_hist}:
                    total = [0] * N_BUCKETS
                    for u in us:
                        total = merge_hist(total, u.latency_hist.get(st))
                    assert c.latency_hist[st] == total, st
                    assert c.latency_sum_ms[st] == pytest.approx(sum(u.latency_sum_ms.get(st, 0) for u in us))
        # the weighting is visible: A sent fewer heartbeats than B in the last minutes
        last = s.get(CohortRollup1m, (T0 + timedelta(minutes=4), "seoul", "hw-b", "", "stt-1.4.0", "", ""))
        assert last.heartbeats == 9
        assert s.scalar(select(func.sum(CohortRollup1m.requests))) == s.scalar(select(func.sum(Heartbeat.requests)))


def test_a_version_change_inside_a_minute_splits_its_cohort_rows(runtime, clock) -> None:
    with runtime.session_factory.begin() as s:
        u = _unit(s, "SPK-1", T0, stt="stt-1.5.0")  # the inventory already shows the new version
        for k in range(6):
            s.add(_hb(u.id, T0 + timedelta(seconds=10 * k), uptime_s=100 + 10 * k, requests=1,
                      latency={st: [100.0 * (k + 1)] for st in STAGES}, stt="stt-1.4.0" if k < 3 else "stt-1.5.0"))
    clock.now = T0 + timedelta(minutes=2)
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, clock()) == RollupResult(1, 0, 2)
    with runtime.session_factory() as s:
        old = s.get(CohortRollup1m, (T0, "seoul", "hw-b", "", "stt-1.4.0", "", ""))
        new = s.get(CohortRollup1m, (T0, "seoul", "hw-b", "", "stt-1.5.0", "", ""))
        assert (old.units, old.heartbeats, old.requests) == (1, 3, 3)
        assert (new.units, new.heartbeats, new.requests) == (1, 3, 3)
        assert old.latency_hist["stt"] == histogram([100.0, 200.0, 300.0])
        assert new.latency_hist["stt"] == histogram([400.0, 500.0, 600.0])
        # the old version's minute is found under it, though no unit runs it any more
        old_only = stage_series(s, T0, clock.now, cohort=Cohort(stt_version="stt-1.4.0"))
        assert old_only[old_only["stage"] == "stt"]["samples"].tolist() == [3]


def test_stage_series_agrees_between_unit_and_cohort_minutes(runtime, clock) -> None:
    rng = np.random.default_rng(8)
    with runtime.session_factory.begin() as s:
        _seed_cohorts(s, rng)
    clock.now = T0 + timedelta(minutes=6)
    with runtime.session_factory.begin() as s:
        compute_rollups(s, clock())
    with runtime.session_factory() as s:
        for cohort in (None, Cohort(site="seoul"), Cohort(hardware_rev="hw-c"), Cohort(stt_version="stt-1.4.0"),
                       Cohort(site="seoul", stt_version="stt-1.3.2")):
            for bucket in (None, timedelta(minutes=5)):
                by_unit = stage_series(s, T0, clock(), cohort=cohort, bucket=bucket, source="unit")
                by_cohort = stage_series(s, T0, clock(), cohort=cohort, bucket=bucket, source="cohort")
                auto = stage_series(s, T0, clock(), cohort=cohort, bucket=bucket)
                assert len(by_unit) == len(by_cohort) == len(auto), cohort
                if by_unit.empty:
                    continue
                exact = ["bucket_start", "stage", "samples", "requests", "errors", "e2e_over_budget",
                         "server_over_budget", "p50_ms", "p95_ms", "p99_ms"]
                assert by_unit[exact].equals(by_cohort[exact]) and auto[exact].equals(by_cohort[exact]), cohort
                np.testing.assert_allclose(by_unit["mean_ms"], by_cohort["mean_ms"], rtol=1e-6)
        assert stage_series(s, T0, clock(), cohort=Cohort(site="seoul", stt_version="stt-1.3.2")).empty
        # a tag is not part of the cohort key: read from the per-unit minutes
        pilot = stage_series(s, T0, clock(), cohort=Cohort(tag="pilot"))
        only_a = stage_series(s, T0, clock(), cohort=Cohort(tag="pilot"), source="unit")
        assert pilot.equals(only_a) and len(pilot) == 5 * 8
        with pytest.raises(ValueError, match="tag cohort"):
            stage_series(s, T0, clock(), cohort=Cohort(tag="pilot"), source="cohort")
        with pytest.raises(ValueError, match="level"):
            stage_series(s, T0, clock(), level="1h", source="cohort")


def test_minutes_past_the_unit_retention_come_from_the_cohort_rows(runtime, clock) -> None:
    from fleet.slo import peak_request_rate

    rng = np.random.default_rng(9)
    with runtime.session_factory.begin() as s:
        ids = _seed_cohorts(s, rng)
    clock.now = T0 + timedelta(minutes=6)
    with runtime.session_factory.begin() as s:
        compute_rollups(s, clock())
    with runtime.session_factory() as s:
        fleet_before = stage_series(s, T0, clock())
        peak_before = peak_request_rate(s, clock())
    assert peak_before > 0
    clock.now = T0 + timedelta(days=3)  # raw rows and per-unit minutes now past their retention
    with runtime.session_factory.begin() as s:
        compute_rollups(s, clock())
        deleted = prune(s, clock())
    assert deleted["heartbeats"] > 0 and deleted["unit_rollups_1m"] == 15 and deleted["cohort_rollups_1m"] == 0
    with runtime.session_factory() as s:
        assert stage_series(s, T0, clock(), source="unit").empty
        assert stage_series(s, T0, clock()).equals(fleet_before)
        seoul = stage_series(s, T0, clock(), cohort=Cohort(site="seoul"))
        assert seoul[seoul["stage"] == "e2e"]["requests"].sum() == s.scalar(
            select(func.sum(UnitRollup1h.requests)).where(UnitRollup1h.unit_id.in_([ids["A"], ids["B"]])))
        assert stage_series(s, T0, clock(), cohort=Cohort(tag="pilot")).empty  # only 48 h for tags
        assert unit_series(s, "SPK-A", T0, clock()).empty  # per-unit minutes: 48 h
        assert unit_series(s, "SPK-A", T0, clock(), level="1h")["requests"].sum() > 0
        assert peak_request_rate(s, clock()) == pytest.approx(peak_before)


def test_minutes_rolled_before_the_cohort_tier_are_backfilled(runtime, clock) -> None:
    """A database upgraded past migration 0010 has per-unit minutes and no cohort rows: they are
    copied, newest first, one 6-hour chunk per call, before prune may delete them."""
    rng = np.random.default_rng(10)
    with runtime.session_factory.begin() as s:
        _seed_cohorts(s, rng)
        late = _unit(s, "SPK-D", T0, site="seoul", stt="stt-1.4.0")
        _seed_span(s, late, T0 + timedelta(hours=7), 2, rng, stt="stt-1.4.0")  # a second 6 h chunk
    clock.now = T0 + timedelta(hours=7, minutes=3)
    with runtime.session_factory.begin() as s:
        compute_rollups(s, clock())
    with runtime.session_factory.begin() as s:
        expected = _cohort_rows(s)
        s.execute(CohortRollup1m.__table__.delete())
        s.execute(RollupWatermark.__table__.delete().where(RollupWatermark.level == "c1m_from"))
    assert len(expected) == 12
    with runtime.session_factory.begin() as s:
        assert prune(s, clock.now + timedelta(days=5))["unit_rollups_1m"] == 0  # not copied yet: kept
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, clock()).cohort_minutes_written == 2  # T0 + 7 h: the newest chunk
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, clock()).cohort_minutes_written == 10  # the gap skipped, then T0
    with runtime.session_factory.begin() as s:
        assert compute_rollups(s, clock()).cohort_minutes_written == 0
    with runtime.session_factory() as s:
        got = _cohort_rows(s)
    assert len(got) == len(expected)
    n_key = 1 + len(COHORT_KEY)
    for g, e in zip(got, expected, strict=True):
        assert g[:n_key] == e[:n_key] and g[-2] == e[-2]  # keys; histograms exactly
        assert g[n_key:-2] == pytest.approx(e[n_key:-2])  # figures (means weighted by heartbeats)
        assert g[-1] == pytest.approx(e[-1])  # latency sums (rounded per row)


# -- reading --------------------------------------------------------------------------------------
def test_stage_series_cohort_and_rebucketing(runtime, clock) -> None:
    rng = np.random.default_rng(5)
    with runtime.session_factory.begin() as s:
        a = _unit(s, "SPK-A", clock(), site="seoul", tags=["pilot"])
        b = _unit(s, "SPK-B", clock(), site="busan")
        ha = _seed_span(s, a, T0, 10, rng)
        hb = _seed_span(s, b, T0, 10, rng)
        req_a = sum(h.requests for h in ha)
        req_b = sum(h.requests for h in hb)
        e2e_a = [sum(h.latency_ms[st][i] for st in STAGES) for h in ha for i in range(h.requests)]
    clock.now = T0 + timedelta(minutes=11)
    with runtime.session_factory.begin() as s:
        compute_rollups(s, clock())
    with runtime.session_factory() as s:
        fleet = stage_series(s, T0, clock())
        seoul = stage_series(s, T0, clock(), cohort=Cohort(site="seoul"))
        pilot = stage_series(s, T0, clock(), cohort=Cohort(tag="pilot"))
        nobody = stage_series(s, T0, clock(), cohort=Cohort(site="nowhere"))
        five = stage_series(s, T0, clock(), cohort=Cohort(site="seoul"), bucket=timedelta(minutes=5))
    assert len(fleet) == 10 * 8 and list(fleet["stage"][:8]) == [*STAGES, "e2e", "server"]
    per_bucket = lambda df: df[df["stage"] == "e2e"]  # noqa: E731
    assert per_bucket(fleet)["requests"].sum() == req_a + req_b
    assert per_bucket(seoul)["requests"].sum() == req_a
    assert per_bucket(pilot)["requests"].sum() == req_a
    assert per_bucket(seoul)["samples"].sum() == len(e2e_a)
    assert nobody.empty
    assert len(five) == 2 * 8 and per_bucket(five)["requests"].sum() == req_a
    assert list(per_bucket(five)["bucket_start"]) == [T0, T0 + timedelta(minutes=5)]
    # one bucket spanning everything: p95 close to numpy's on the raw e2e samples
    with runtime.session_factory() as s:
        whole = stage_series(s, T0, clock(), cohort=Cohort(site="seoul"), bucket=timedelta(hours=1))
    p95 = float(whole[whole["stage"] == "e2e"]["p95_ms"].iloc[0])
    true = float(np.percentile(e2e_a, 95))
    i = int(np.searchsorted(LATENCY_EDGES_MS, true))
    assert abs(p95 - true) <= LATENCY_EDGES_MS[i] - LATENCY_EDGES_MS[i - 1]
    mean = float(whole[whole["stage"] == "e2e"]["mean_ms"].iloc[0])
    assert mean == pytest.approx(np.mean(e2e_a), rel=1e-6)


def test_unit_series(runtime, clock) -> None:
    rng = np.random.default_rng(6)
    with runtime.session_factory.begin() as s:
        u = _unit(s, "SPK-A", clock())
        hbs = _seed_span(s, u, T0, 3, rng)
    clock.now = T0 + timedelta(minutes=4)
    with runtime.session_factory.begin() as s:
        compute_rollups(s, clock())
    with runtime.session_factory() as s:
        df = unit_series(s, "SPK-A", T0, clock())
        assert unit_series(s, "SPK-NONE", T0, clock()).empty
        assert unit_series(s, "SPK-A", T0, clock(), level="1h").empty
    assert list(df["bucket_start"]) == [T0 + timedelta(minutes=k) for k in range(3)]
    assert df["requests"].sum() == sum(h.requests for h in hbs)
    assert df["cpu_pct_avg"].iloc[0] == pytest.approx(np.mean([h.cpu_pct for h in hbs[:6]]))
    assert (df["e2e_p95_ms"].notna() == (df["requests"] > 0)).all()


def test_cli_db_prune_rolls_up_then_prunes(runtime) -> None:
    import json

    from typer.testing import CliRunner

    from speakerops.cli import app

    old = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=3)
    with runtime.session_factory.begin() as s:
        u = _unit(s, "SPK-1", old)
        for k in range(6):
            s.add(_hb(u.id, old + timedelta(seconds=10 * k), uptime_s=k, requests=1,
                      latency={st: [100.0] for st in STAGES}))
    result = CliRunner().invoke(app, ["db", "prune", "--json", "--db-url", runtime.db_url])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["rolled_up"] == {"unit_rollups_1m": 1, "cohort_rollups_1m": 1, "unit_rollups_1h": 1}
    assert data["deleted"] == {"heartbeats": 6, "unit_rollups_1m": 1, "cohort_rollups_1m": 0,
                               "unit_rollups_1h": 0}
    assert data["keep"] == {"raw_hours": 24.0, "unit_minute_hours": 48.0, "cohort_minute_days": 30.0,
                            "hour_days": 365.0}
    with runtime.session_factory() as s:
        assert _count(s, Heartbeat) == 0 and _count(s, UnitRollup1m) == 0
        assert _count(s, CohortRollup1m) == 1 and _count(s, UnitRollup1h) == 1
    result = CliRunner().invoke(app, ["db", "prune", "--json", "--db-url", runtime.db_url,
                                      "--cohort-minute-keep-days", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["deleted"]["cohort_rollups_1m"] == 1


def test_cli_db_prune_refuses_a_negative_retention(runtime) -> None:
    from typer.testing import CliRunner

    from speakerops.cli import app

    result = CliRunner().invoke(app, ["db", "prune", "--db-url", runtime.db_url, "--unit-minute-keep-hours", "-1"])
    assert result.exit_code == 1
    assert "--unit-minute-keep-hours -1" in result.output and "0 or more" in result.output
