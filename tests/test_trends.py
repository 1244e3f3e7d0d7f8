"""Trends on a small hand-made dataset whose figures are computed by hand in the comments."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from feedback.ingest import ingest_records
from feedback.models import Feedback
from feedback.privacy import erase_household
from feedback.tickets import create_ticket, move
from feedback.trends import (TrendCache, backlog_by_age, bootstrap_rate_ci, compute_trends, drill_down_ids,
                             feedback_table, load_trend_data, volume)
from tests.feedback_helpers import add_heartbeat, add_unit, row

H = 3600.0


def _fb(serial, at, rating, corrected, qa, feature="weather", household=None, sid=None, text=""):
    intent = {"weather": "weather.forecast", "music": "music.play"}[feature]
    return row(serial=serial, household=household or f"hh-{serial}", at=at.isoformat(), feature=feature,
               intent=intent, rating=rating, corrected="true" if corrected else "false", submission_id=sid,
               text=text) | {"stt_version": "stt-1.4.0", "qa_version": qa, "tts_version": "tts-1.0.3"}


@pytest.fixture
def dataset(runtime):
    """Units U1 (hw-a, seoul) and U2 (hw-c, busan-office), created 20 days before N (the final clock).

    Feedback (all in the last 10 days):
      qa-2.1.0: U1 x3 after N-2d, U2 x2 — ratings 5,4,2,1,4; corrected 2 → rate 2/5, CSAT 3/5, 2 complaints
      qa-2.0.4: U1 x3 between N-8d and N-2d — ratings 3,5,1; corrected 1 → rate 1/3, CSAT 1/3, 1 complaint
    U1 heartbeats: qa-2.0.4 at N-4d, qa-2.1.0 at N-2d; U2 none (current qa-2.1.0).
    Unit-days from N-10d: U1 8 d on qa-2.0.4 (assumed before its first heartbeat) + 2 d on qa-2.1.0;
    U2 10 d on qa-2.1.0 → qa-2.1.0: 12, qa-2.0.4: 8 → complaints per 1,000 unit-days 166.7 and 125.
    Tickets (normal: 8 h first response, 120 h resolution): C created N-200h never answered;
    B created N-30h, triaged N-29h; A created N-10h, triaged N-8h, resolved N-4h.
    """
    clock = runtime.clock
    n = clock() + timedelta(hours=200)  # the final "now"
    with runtime.session_factory.begin() as s:
        u1 = add_unit(s, "U1", n - timedelta(days=20), hw="hw-a", site="seoul-gangnam", qa="qa-2.1.0")
        add_unit(s, "U2", n - timedelta(days=20), hw="hw-c", site="busan-office", qa="qa-2.1.0")
        add_heartbeat(s, u1, n - timedelta(days=4), stt="stt-1.4.0", qa="qa-2.0.4", tts="tts-1.0.3")
        add_heartbeat(s, u1, n - timedelta(days=2), stt="stt-1.4.0", qa="qa-2.1.0", tts="tts-1.0.3")
    d = lambda days, hours=0: n - timedelta(days=days, hours=hours)  # noqa: E731
    records = [
        _fb("U1", d(1), 5, False, "qa-2.1.0", sid="a"), _fb("U1", d(1, 2), 4, True, "qa-2.1.0", sid="b"),
        _fb("U1", d(0, 5), 2, False, "qa-2.1.0", "music", sid="c"),
        _fb("U2", d(3), 1, True, "qa-2.1.0", sid="d", text="it misheard me"),
        _fb("U2", d(5), 4, False, "qa-2.1.0", "music", sid="e", household="hh-erase"),
        _fb("U1", d(7), 3, False, "qa-2.0.4", sid="f"), _fb("U1", d(6), 5, False, "qa-2.0.4", sid="g"),
        _fb("U1", d(3), 1, True, "qa-2.0.4", sid="h"),
    ]
    clock.now = n
    with runtime.session_factory.begin() as s:
        assert ingest_records(s, records, clock, source="import", origin="t").imported == 8
    clock.now = n - timedelta(hours=200)
    with runtime.session_factory.begin() as s:
        c = create_ticket(s, clock, title="C", actor="t").id
    clock.advance(170 * H)
    with runtime.session_factory.begin() as s:
        b = create_ticket(s, clock, title="B", actor="t", category="connectivity").id
    clock.advance(1 * H)
    with runtime.session_factory.begin() as s:
        move(s, b, "triaged", clock)
    clock.advance(19 * H)
    with runtime.session_factory.begin() as s:
        a = create_ticket(s, clock, title="A", actor="t", category="connectivity").id
    clock.advance(2 * H)
    with runtime.session_factory.begin() as s:
        move(s, a, "triaged", clock)
        move(s, a, "diagnosing", clock)
    clock.advance(4 * H)
    with runtime.session_factory.begin() as s:
        move(s, a, "resolved", clock)
    clock.advance(4 * H)
    assert clock() == n
    runtime.ids = {"A": a, "B": b, "C": c}
    return runtime


def test_trend_figures_match_the_hand_computed_ones(dataset) -> None:
    now = dataset.clock()
    since = now - timedelta(days=10)
    with dataset.session_factory() as s:
        data = load_trend_data(s, now)
    t = compute_trends(data, now, since=since, n_boot=2000)
    assert t.feedback_rows == 8
    assert t.csat == pytest.approx(4 / 8)
    qa = t.versions["qa"]
    assert qa.loc["qa-2.1.0", "n"] == 5 and qa.loc["qa-2.1.0", "correction_rate"] == pytest.approx(2 / 5)
    assert qa.loc["qa-2.0.4", "correction_rate"] == pytest.approx(1 / 3)
    assert qa.loc["qa-2.1.0", "csat"] == pytest.approx(3 / 5) and qa.loc["qa-2.0.4", "csat"] == pytest.approx(1 / 3)
    for v in ("qa-2.1.0", "qa-2.0.4"):
        assert qa.loc[v, "ci_low"] <= qa.loc[v, "correction_rate"] <= qa.loc[v, "ci_high"]
        assert 0 <= qa.loc[v, "ci_low"] and qa.loc[v, "ci_high"] <= 1
    assert qa.loc["qa-2.1.0", "unit_days"] == pytest.approx(12.0)
    assert qa.loc["qa-2.0.4", "unit_days"] == pytest.approx(8.0)
    assert qa.loc["qa-2.1.0", "per_1000_unit_days"] == pytest.approx(2 / 12 * 1000)
    assert qa.loc["qa-2.0.4", "per_1000_unit_days"] == pytest.approx(1 / 8 * 1000)
    assert "offline_intent_accuracy" not in qa.columns or qa["offline_intent_accuracy"].isna().all()
    # volume: by hardware revision and feature, in total
    hw = t.volume["hardware_rev"].sum()
    assert (hw["hw-a"], hw["hw-c"]) == (6, 2)
    assert t.volume["feature"].sum().to_dict() == {"music": 2, "weather": 6}
    assert t.volume["qa_version"].sum().to_dict() == {"qa-2.0.4": 3, "qa-2.1.0": 5}
    weekly = volume(data.feedback, "site", "W")
    assert weekly.sum().sum() == 8 and all(ix.day_of_week == 0 for ix in weekly.index)
    # tickets: first response 2 h (A), 1 h (B) → median 1.5, p90 1.9; resolution A 6 h
    assert t.ticket_times["first_response_h"] == {"n": 2, "median": pytest.approx(1.5), "p90": pytest.approx(1.9)}
    assert t.ticket_times["resolution_h"]["median"] == pytest.approx(6.0)
    assert t.backlog.to_dict() == {"0-24h": 0, "24-48h": 1, "2-7d": 0, ">7d": 1}
    sla = t.sla.loc["normal"]
    assert (sla["tickets"], sla["response_breached"], sla["resolution_breached"], sla["open_breaching"]) == (3, 1, 1, 1)
    d = t.as_dict()
    json.dumps(d)  # JSON-able
    assert d["tickets"]["backlog_by_age"][">7d"] == 1


def test_bootstrap_ci_is_vectorized_and_sane() -> None:
    k = np.array([0, 1, 0, 2, 1])
    n = np.array([3, 3, 4, 4, 6])
    low, high = bootstrap_rate_ci(k, n, n_boot=4000, seed=1)
    assert low < 4 / 20 < high and 0 <= low and high < 0.6
    assert bootstrap_rate_ci(np.array([0]), np.array([0])) != bootstrap_rate_ci(np.array([0]), np.array([0]))  # NaN


def test_cache_refreshes_incrementally_and_reloads_after_erasure(dataset) -> None:
    now = dataset.clock()
    cache = TrendCache()
    with dataset.session_factory() as s:
        assert len(cache.refresh(s, now).feedback) == 8
    with dataset.session_factory.begin() as s:
        ingest_records(s, [_fb("U2", now - timedelta(hours=1), 2, True, "qa-2.1.0", sid="new")], dataset.clock,
                       source="app", origin="t")
    with dataset.session_factory() as s:
        data = cache.refresh(s, now)
    assert len(data.feedback) == 9 and data.feedback["site"].notna().all()
    erased = int(data.feedback.loc[data.feedback["feature"] == "music", "id"].max())  # "e" of hh-erase
    with dataset.session_factory.begin() as s:
        assert s.get(Feedback, erased).household_id == "hh-erase"
        erase_household(s, "hh-erase", dataset.clock)
    with dataset.session_factory() as s:
        data = cache.refresh(s, now)
    assert len(data.feedback) == 8 and erased not in set(data.feedback["id"])


def test_feedback_table_and_drill_down(dataset) -> None:
    now = dataset.clock()
    with dataset.session_factory() as s:
        data = load_trend_data(s, now)
        day = (now - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
        ids = drill_down_ids(data.feedback, day, qa_version="qa-2.0.4")
        table = feedback_table(s, ids=ids)
        assert list(table["rating"]) == [1] and table.loc[0, "serial"] == "U1"
        low = feedback_table(s, max_rating=2, version=("qa", "qa-2.1.0"))
        assert sorted(low["rating"]) == [1, 2] and set(low["serial"]) == {"U1", "U2"}
        texts = feedback_table(s, with_text=True)
        assert list(texts["text"]) == ["it misheard me"]
        assert isinstance(table.loc[0, "submitted_at"], pd.Timestamp)


def test_backlog_of_no_tickets_is_zero(runtime) -> None:
    with runtime.session_factory() as s:
        data = load_trend_data(s, runtime.clock())
    assert backlog_by_age(data.tickets, runtime.clock()).sum() == 0
    t = compute_trends(data, runtime.clock())
    assert t.feedback_rows == 0 and t.csat is None


def test_cli_trends_json(dataset) -> None:
    from speakerops.cli import app

    res = CliRunner().invoke(app, ["trends", "--json", "--db-url", dataset.db_url])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["feedback_rows"] == 8 and data["csat"] == pytest.approx(0.5)
    # the CLI runs on the real clock; the data sits at the frozen clock's N, so the window is given as a date
    since = (dataset.clock() - timedelta(days=2)).isoformat()
    res = CliRunner().invoke(app, ["trends", "--since", since, "--db-url", dataset.db_url])
    assert res.exit_code == 0 and "corrections" in res.stdout, res.output
    # a window holding no feedback (and versions with no unit-days in it) is a report of zeros, not a crash
    res = CliRunner().invoke(app, ["trends", "--since", "2d", "--db-url", dataset.db_url])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["trends", "--since", "yesterday", "--db-url", dataset.db_url])
    assert res.exit_code == 1 and "--since" in res.output


def test_coded_load_keeps_every_value_and_a_refresh_adds_new_versions(dataset) -> None:
    """The cold load reads text columns as codes: missing values, quotes and non-ASCII survive,
    times keep their microseconds, and a version first seen in a refresh joins the categories."""
    from feedback.trend_data import load_feedback_frame

    now = dataset.clock()
    odd = [_fb("U2", now - timedelta(hours=2, microseconds=7), 3, False, "qa-it's-β", sid="odd1"),
           row(serial="U2", at=(now - timedelta(hours=3)).isoformat(), intent="", submission_id="odd2")]
    with dataset.session_factory.begin() as s:
        ingest_records(s, odd, dataset.clock, source="app", origin="t")
    cache = TrendCache()
    with dataset.session_factory() as s:
        frame = load_feedback_frame(s)
        data = cache.refresh(s, now)
    by_sid = frame.set_index("id")
    with dataset.session_factory() as s:
        stored = {f.id: f for f in s.query(Feedback)}
    assert len(frame) == len(stored) == 10
    for fid, f in stored.items():
        r = by_sid.loc[fid]
        assert r["submitted_at"].to_pydatetime() == f.submitted_at
        assert (r["qa_version"] if isinstance(r["qa_version"], str) else None) == f.qa_version
        assert (r["intent"] if isinstance(r["intent"], str) else None) == f.intent
        assert (r["rating"], bool(r["corrected"]), r["unit_id"]) == (f.rating, f.corrected, f.unit_id)
    assert "qa-it's-β" in set(data.feedback["qa_version"].cat.categories)
    with dataset.session_factory.begin() as s:
        ingest_records(s, [_fb("U1", now - timedelta(minutes=5), 1, True, "qa-3.0.0", sid="new3")], dataset.clock,
                       source="app", origin="t")
    with dataset.session_factory() as s:
        data = cache.refresh(s, now)
    qa = data.feedback["qa_version"]
    assert len(data.feedback) == 11 and (qa == "qa-3.0.0").sum() == 1 and (qa == "qa-2.1.0").sum() == 6  # odd2: U2's current
    assert compute_trends(data, now).versions["qa"].loc["qa-3.0.0", "n"] == 1
