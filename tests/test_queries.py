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
