"""The Service-flow page's cohort-minute cache (fleet/stage_cache.py) against uncached reads,
on SQLite and PostgreSQL, with rollups computed by the real ``compute_rollups``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from fleet.models import STAGES, Heartbeat, Unit
from fleet.rollups import Cohort, compute_rollups
from fleet.slo import slo_report, stage_breakdown, stage_p95_series
from fleet.stage_buckets import N_BUCKETS, StageBuckets, sum_rows
from fleet.stage_cache import CohortMinuteCache

T0 = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)


def _seed(session, start: datetime, minutes: int, rng: np.random.Generator) -> None:
    """Six units on two sites and two STT versions, a heartbeat every 20 s with 0–3 requests."""
    units = []
    for i in range(6):
        u = Unit(serial=f"SPK-{i}", agent_url=f"http://127.0.0.1/u/{i}", site=("seoul", "busan")[i % 2],
                 hardware_rev="hw-b", stt_version=("stt-1", "stt-2")[i % 3 == 0], tags=["lab"] if i < 2 else [],
                 created_at=start, updated_at=start)
        session.add(u)
        units.append(u)
    session.flush()
    _more(session, units, start, minutes, rng)


def _rolled_up(runtime, minutes: int, seed: int) -> tuple[datetime, np.random.Generator]:
    """``minutes`` of heartbeats from :data:`T0` rolled up by ``compute_rollups``; returns (now, rng)."""
    rng = np.random.default_rng(seed)
    now = T0 + timedelta(minutes=minutes)
    with runtime.session_factory.begin() as s:
        _seed(s, T0, minutes, rng)
        compute_rollups(s, now)
    return now, rng


def _more(session, units: list[Unit], start: datetime, minutes: int, rng: np.random.Generator) -> None:
    scale = {"wake": 200, "upload": 300, "stt": 450, "qa": 150, "tts": 200, "playback": 600}
    for u in units:
        for k in range(minutes * 3):
            n = int(rng.integers(0, 4))
            session.add(Heartbeat(
                unit_id=u.id, received_at=start + timedelta(seconds=20 * k + 1), state="ok", uptime_s=100.0 + k,
                cpu_pct=20.0, temp_c=45.0, mem_pct=30.0, disk_free_mb=1500.0, mic_noise_dbfs=-60.0,
                wifi_rssi_dbm=-55.0, wake_false_accepts_per_h=0.1, requests=n, errors=int(n == 3),
                latency_ms={s: np.round(rng.lognormal(np.log(scale[s]), 0.7, n), 1).tolist() for s in STAGES},
                stt_version=u.stt_version))
    session.flush()


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False,
                                  check_exact=False, rtol=1e-9)


@pytest.mark.parametrize("cohort", [None, Cohort(site="seoul"), Cohort(stt_version="stt-2")])
def test_cached_figures_equal_the_uncached_ones_and_later_reads_fetch_only_new_minutes(runtime, cohort) -> None:
    now, rng = _rolled_up(runtime, 40, 7)
    cache = CohortMinuteCache()
    with runtime.session_factory() as s:
        for span in (timedelta(hours=1), timedelta(days=1)):
            _same(stage_p95_series(s, now, span, cohort, cache=cache), stage_p95_series(s, now, span, cohort))
        _same(stage_breakdown(s, now, cohort=cohort, cache=cache), stage_breakdown(s, now, cohort=cohort))
        assert [x.as_dict() for x in slo_report(s, now, cohort, cache=cache)] == \
            [x.as_dict() for x in slo_report(s, now, cohort)]
    reads = cache.reads
    assert reads >= 1
    with runtime.session_factory() as s:  # the same refresh again: nothing new to read
        stage_breakdown(s, now, cohort=cohort, cache=cache)
    assert cache.reads == reads

    later = now + timedelta(minutes=5)
    with runtime.session_factory.begin() as s:
        _more(s, list(s.query(Unit).order_by(Unit.id)), now, 5, rng)
        compute_rollups(s, later)
    with runtime.session_factory() as s:
        _same(stage_breakdown(s, later, cohort=cohort, cache=cache), stage_breakdown(s, later, cohort=cohort))
        _same(stage_p95_series(s, later, timedelta(hours=1), cohort, cache=cache),
              stage_p95_series(s, later, timedelta(hours=1), cohort))
    assert cache.reads == reads + 1  # only the minutes rolled up since


def test_tag_cohorts_bypass_the_cache(runtime) -> None:
    now, _ = _rolled_up(runtime, 20, 3)
    cache = CohortMinuteCache()
    lab = Cohort(tag="lab")
    with runtime.session_factory() as s:
        with pytest.raises(ValueError, match="tag"):
            cache.minutes(s, lab, T0, now)
        _same(stage_breakdown(s, now, cohort=lab, cache=cache), stage_breakdown(s, now, cohort=lab))
        _same(stage_p95_series(s, now, timedelta(hours=1), lab, cache=cache),
              stage_p95_series(s, now, timedelta(hours=1), lab))
    assert cache.reads == 0


def test_cache_drops_minutes_past_keep_and_least_recent_cohorts(runtime) -> None:
    now, _ = _rolled_up(runtime, 30, 5)
    cache = CohortMinuteCache(keep=timedelta(minutes=10), max_cohorts=2)
    with runtime.session_factory() as s:
        got = cache.minutes(s, None, T0, now)
        assert len(got) and got.starts.min() >= int((now - timedelta(minutes=11)).timestamp())
        for site in ("seoul", "busan", None):
            cache.minutes(s, Cohort(site=site) if site else None, T0, now)
    assert len(cache._entries) == 2


def test_sum_rows_sums_per_bucket_and_skips_bad_histograms() -> None:
    one = [1] + [0] * (N_BUCKETS - 1)
    rows = [(120, 2, 0, 1, 0, {"stt": one, "e2e": one}, {"stt": 10.0, "e2e": 30.0}),
            (150, 1, 1, 0, 0, {"stt": one, "qa": [1, 2]}, {"stt": 5.0}),  # qa: wrong length, skipped
            (185, 4, 0, 0, 1, None, None)]
    b = sum_rows(rows, 60)
    assert b.starts.tolist() == [120, 180]
    assert b.counts.tolist() == [[3, 1, 1, 0], [4, 0, 0, 1]]
    assert b.hist[0, STAGES.index("stt"), 0] == 2 and b.hist[0, STAGES.index("qa")].sum() == 0
    assert b.sum_ms[0, STAGES.index("stt")] == 15.0
    merged = StageBuckets.concat([b.select(b.starts == 180), b.select(b.starts == 120)])
    assert merged.starts.tolist() == [120, 180] and merged.counts.tolist() == b.counts.tolist()
    assert b.rebucket(120).counts.tolist() == [[7, 1, 1, 1]]
