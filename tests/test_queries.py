"""Read models behind the Fleet page, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from fleet.models import Heartbeat, Unit
from fleet.queries import fleet_snapshot, status_counts, unit_detail


def _seed(runtime, clock):
    now = clock()
    with runtime.session_factory.begin() as s:
        a = Unit(serial="SPK-A", agent_url="http://127.0.0.1:1/a", status="online", poll_failures=0,
                 created_at=now, updated_at=now, last_heartbeat_at=now)
        b = Unit(serial="SPK-B", agent_url="http://127.0.0.1:1/b", status="offline", poll_failures=3,
                 created_at=now, updated_at=now)
        s.add_all([a, b])
        s.flush()
        figures = dict(state="ok", uptime_s=1, cpu_pct=10, temp_c=40, mem_pct=20, disk_free_mb=500,
                       mic_noise_dbfs=-60, wifi_rssi_dbm=-50, wake_false_accepts_per_h=0)
        one_request = {"wake": [100.0], "upload": [200.0], "stt": [300.0], "qa": [100.0], "tts": [100.0],
                       "playback": [200.0]}                                       # 1,000 ms end to end
        slow = {k: [v[0] * 4] for k, v in one_request.items()}                   # 4,000 ms
        # outside the 15-minute window: must not count
        s.add(Heartbeat(unit_id=a.id, received_at=now - timedelta(minutes=20), requests=9, errors=9,
                        latency_ms=slow, **figures))
        for minutes in (10, 5):
            s.add(Heartbeat(unit_id=a.id, received_at=now - timedelta(minutes=minutes), requests=1, errors=0,
                            latency_ms=one_request, **figures))
        s.add(Heartbeat(unit_id=a.id, received_at=now, requests=1, errors=1, latency_ms=slow,
                        **{**figures, "cpu_pct": 55.0}))
    return now


def test_snapshot_sums_the_window_and_takes_health_from_the_latest(runtime, clock) -> None:
    now = _seed(runtime, clock)
    with runtime.session_factory() as s:
        df = fleet_snapshot(s, now).set_index("serial")
    a, b = df.loc["SPK-A"], df.loc["SPK-B"]
    assert (a["requests"], a["errors"]) == (3.0, 1.0)
    assert a["e2e_p95_ms"] == np.percentile([1000.0, 1000.0, 4000.0], 95)
    assert a["cpu_pct"] == 55.0 and a["status"] == "online"
    assert np.isnan(b["cpu_pct"]) and np.isnan(b["requests"]) and np.isnan(b["e2e_p95_ms"])
    assert status_counts(df.reset_index()) == {"online": 1, "degraded": 0, "updating": 0, "offline": 1, "unknown": 0}


def test_unit_detail_has_inventory_latest_figures_and_stage_p95(runtime, clock) -> None:
    now = _seed(runtime, clock)
    with runtime.session_factory() as s:
        detail = unit_detail(s, "SPK-A", now)
        assert unit_detail(s, "SPK-NONE", now) is None
    assert detail.status == "online" and detail.latest["cpu_pct"] == 55.0
    assert len(detail.recent) == 4  # the last hour
    assert detail.stage_p95_ms["stt"] == np.percentile([1200.0, 300.0, 300.0, 1200.0], 95)


def _request(e2e_ms: float) -> dict[str, list[float]]:
    """One request whose six stages add up to ``e2e_ms`` (all of it in ``stt``)."""
    return {"wake": [0.0], "upload": [0.0], "stt": [e2e_ms], "qa": [0.0], "tts": [0.0], "playback": [0.0]}


def test_snapshot_p95_reads_rolled_up_minutes_and_the_raw_tail(runtime, clock) -> None:
    """The p95 comes from the rollup histograms for the minutes the collector rolled up and from
    raw heartbeats after the watermark; the request counts from the raw heartbeats."""
    from fleet.rollups import compute_rollups, rollup_watermark

    now = clock()
    figures = dict(state="ok", uptime_s=1, cpu_pct=10, temp_c=40, mem_pct=20, disk_free_mb=500,
                   mic_noise_dbfs=-60, wifi_rssi_dbm=-50, wake_false_accepts_per_h=0)
    with runtime.session_factory.begin() as s:
        unit = Unit(serial="SPK-R", agent_url="http://127.0.0.1:1/r", status="online", poll_failures=0,
                    created_at=now, updated_at=now, last_heartbeat_at=now - timedelta(minutes=3))
        s.add(unit)
        s.flush()
        for minutes in range(12, 2, -1):  # ten heartbeats of ten 1,000 ms requests
            s.add(Heartbeat(unit_id=unit.id, received_at=now - timedelta(minutes=minutes), requests=10,
                            errors=0, latency_ms={k: v * 10 for k, v in _request(1000.0).items()}, **figures))
        unit_id = unit.id
    with runtime.session_factory.begin() as s:
        compute_rollups(s, now)
        watermark = rollup_watermark(s, "1m")
        # what the rollups hold must win over the raw rows of those minutes: make the raw ones slow
        for hb in s.query(Heartbeat).filter(Heartbeat.unit_id == unit_id):
            hb.latency_ms = {k: v * 10 for k, v in _request(4000.0).items()}
    assert watermark is not None and now - timedelta(minutes=3) < watermark <= now
    with runtime.session_factory() as s:
        rolled = fleet_snapshot(s, now).set_index("serial").loc["SPK-R"]
    assert rolled["requests"] == 100.0
    assert 900.0 <= rolled["e2e_p95_ms"] <= 1100.0  # the histogram's bucket of 1,000 ms

    with runtime.session_factory.begin() as s:  # after the watermark: 20 slow requests, raw only
        s.add(Heartbeat(unit_id=unit_id, received_at=now, requests=20, errors=2,
                        latency_ms={k: v * 20 for k, v in _request(4000.0).items()}, **figures))
        s.get(Unit, unit_id).last_heartbeat_at = now
    with runtime.session_factory() as s:
        tail = fleet_snapshot(s, now).set_index("serial").loc["SPK-R"]
    assert (tail["requests"], tail["errors"]) == (120.0, 2.0)
    assert tail["e2e_p95_ms"] >= 3000.0  # 20 of 120 requests at 4,000 ms: p95 among them


def test_latest_health_without_last_heartbeat_at_falls_back_to_the_newest_row(runtime, clock) -> None:
    """Heartbeats written by another tool (no ``last_heartbeat_at`` on the unit) still show."""
    now = clock()
    figures = dict(state="ok", uptime_s=1, temp_c=40, mem_pct=20, disk_free_mb=500, mic_noise_dbfs=-60,
                   wifi_rssi_dbm=-50, wake_false_accepts_per_h=0, requests=0, errors=0, latency_ms={})
    with runtime.session_factory.begin() as s:
        heard = Unit(serial="SPK-H", agent_url="http://127.0.0.1:1/h", status="online", poll_failures=0,
                     created_at=now, updated_at=now, last_heartbeat_at=now - timedelta(minutes=1))
        imported = Unit(serial="SPK-I", agent_url="http://127.0.0.1:1/i", status="unknown", poll_failures=0,
                        created_at=now, updated_at=now)
        s.add_all([heard, imported])
        s.flush()
        s.add(Heartbeat(unit_id=heard.id, received_at=now - timedelta(minutes=2), cpu_pct=11.0, **figures))
        s.add(Heartbeat(unit_id=heard.id, received_at=now - timedelta(minutes=1), cpu_pct=12.0, **figures))
        s.add(Heartbeat(unit_id=imported.id, received_at=now - timedelta(minutes=9), cpu_pct=21.0, **figures))
        s.add(Heartbeat(unit_id=imported.id, received_at=now - timedelta(minutes=8), cpu_pct=22.0, **figures))
    with runtime.session_factory() as s:
        df = fleet_snapshot(s, now).set_index("serial")
    assert df.loc["SPK-H", "cpu_pct"] == 12.0
    assert df.loc["SPK-I", "cpu_pct"] == 22.0


def test_p95_per_unit_matches_numpy_and_the_histogram_percentile() -> None:
    from fleet.queries import _p95_per_unit
    from fleet.rollups import N_BUCKETS, bucket_index, hist_percentile

    rng = np.random.default_rng(11)
    units = np.arange(1, 41, dtype=np.int64)
    s_units = rng.choice(units[:30], 600)  # units 31–40 have no samples
    samples = rng.lognormal(7.0, 0.5, 600)
    hist = {u: np.bincount(rng.integers(0, N_BUCKETS, 5), minlength=N_BUCKETS) for u in (5, 6, 35)}
    got = _p95_per_unit(units, hist, s_units, samples)
    for i, u in enumerate(units):
        mine = samples[s_units == u]
        if u in hist:
            counts = hist[u] + np.bincount(bucket_index(mine), minlength=N_BUCKETS)
            assert got[i] == hist_percentile(counts.tolist(), 95)
        elif len(mine):
            assert got[i] == np.percentile(mine, 95)
        else:
            assert np.isnan(got[i])
