"""Unit states (issue #4): per-group offline thresholds and flapping detection, on SQLite and
PostgreSQL, with the real simulator over real HTTP and the collector's injectable clock."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from sqlalchemy import select, update

from fleet import alerts
from fleet.collector import Collector
from fleet.inventory import import_units
from fleet.models import Alert, AlertRule, Unit
from fleet.queries import fleet_snapshot
from fleet.settings import CollectorSettings
from fleet.simulator import Simulator
from fleet.unit_states import (
    FLAP_HIGH_PCT,
    FLAP_LOW_PCT,
    MAX_OFFLINE_AFTER_S,
    OfflinePolicyError,
    OfflineThresholds,
    PolicyIndex,
    clear_offline_policy,
    format_duration,
    list_offline_policies,
    observe,
    parse_duration,
    percent_state_change,
    set_offline_policy,
)
from speakerops import audit

#: No retries, so one poll is one sample. The timeouts are generous on purpose: an offline or
#: flapping simulator unit drops the connection at once (no wait), and a tight read timeout made an
#: answer that a loaded CI machine delivered late count as "offline" (a flaky flap sequence).
FAST = CollectorSettings(interval_s=10, connect_timeout_s=5.0, read_timeout_s=5.0, retries=0, backoff_s=0.01)
#: Unit SPK-000001 of the seed-0 fleet flaps on its own (fleet.simulator.behaviour: ~29 s half period).
FLAPPER = "SPK-000001"


@pytest.fixture
def sim(clock, tmp_path):
    """The seed-0 fleet of 6 units on the test's clock, so moving the clock moves the units."""
    simulator = Simulator(6, seed=0, data_dir=tmp_path / "sim", clock=clock)
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def fleet(runtime, sim, tmp_path) -> list[str]:
    """The simulator's units in the database; returns the serials of units that always answer."""
    path = tmp_path / "inventory.csv"
    sim.write_inventory(path)
    with runtime.session_factory.begin() as s:
        import_units(s, path, runtime.clock)
    steady = [u.serial for u in sim.units if not (u.flap_half_period_s or u.offline_period_s or u.is_rebooter)]
    assert sim.units[0].serial == FLAPPER and sim.units[0].flap_half_period_s > 0
    assert len(steady) >= 3, steady
    return steady


def _run(collector: Collector, cycles: int = 1, step_s: float = 0.0, clock=None, after=None) -> list:
    """Run ``cycles`` cycles, moving ``clock`` by ``step_s`` before each but the first."""
    async def go():
        results = []
        try:
            for i in range(cycles):
                if i and step_s:
                    clock.advance(step_s)
                results.append(await collector.run_cycle())
                if after is not None:
                    after(i)
        finally:
            await collector.aclose()
        return results
    return asyncio.run(go())


def _unit(runtime, serial: str) -> Unit:
    with runtime.session_factory() as s:
        return s.scalar(select(Unit).where(Unit.serial == serial))


# -- the Nagios computation -----------------------------------------------------------------------
def test_percent_state_change_follows_nagios_weights() -> None:
    assert percent_state_change("1" * 21) == 0.0
    assert percent_state_change("10" * 10 + "1") == pytest.approx(100.0)    # 20 changes, mean weight 1
    # one change weighs 0.75 (oldest) .. 1.25 (newest); × 100 / 20
    assert percent_state_change("0" + "1" * 20) == pytest.approx(0.75 * 5)
    assert percent_state_change("1" * 20 + "0") == pytest.approx(1.25 * 5)
    # a short history is padded with its oldest observation (Nagios fills it with the first state)
    assert percent_state_change("10") == percent_state_change("1" * 20 + "0")
    assert percent_state_change("1100" * 5 + "1") >= FLAP_HIGH_PCT              # down every other pair


def test_flapping_has_hysteresis_between_25_and_50_percent(clock) -> None:
    state = observe("", False, None, True, clock())
    seen = []
    for i in range(40):   # alternate for 20 polls, then stay up
        clock.advance(10)
        state = observe(state.state_history, state.flapping, state.flapping_since, i >= 20 or i % 2 == 0, clock())
        seen.append((state.state_change_pct, state.flapping))
    start = next(i for i, (_, f) in enumerate(seen) if f)
    assert seen[start][0] >= FLAP_HIGH_PCT and all(p < FLAP_HIGH_PCT for p, _ in seen[:start])
    stop = next(i for i, (_, f) in enumerate(seen) if i > start and not f)
    assert seen[stop][0] <= FLAP_LOW_PCT
    between = [p for p, f in seen[start:stop]]
    assert any(FLAP_LOW_PCT < p < FLAP_HIGH_PCT for p in between)  # kept flapping in the band
    assert all(f for _, f in seen[start:stop])
    assert len(state.state_history) == 21


# -- durations and scopes -------------------------------------------------------------------------
def test_durations_parse_and_bad_ones_say_how_to_write_them() -> None:
    assert [parse_duration(t) for t in ("90s", "15m", "12h", "1d", "1h30m", " 2H ")] == \
        [90, 900, 43200, 86400, 5400, 7200]
    assert format_duration(43200) == "12h" and format_duration(5400) == "1h30m" and format_duration(15) == "15s"
    for bad, said in (("12", "needs a unit"), ("12x", "not a duration"), ("", "no duration"),
                      ("0s", "zero"), ("-5m", "not a duration"), ("h", "not a duration")):
        with pytest.raises(OfflinePolicyError, match=said):
            parse_duration(bad)


def test_most_specific_policy_wins_and_ties_take_the_longest() -> None:
    index = PolicyIndex.from_rows([("site", "lab-1", 3600), ("hardware_rev", "hw-b", 7200),
                                   ("tag", "night", 600), ("tag", "lab", 1800), ("unit", "SPK-9", 30)])
    default = 15.0
    assert index.resolve("SPK-1", "lab-1", "hw-a", [], default) == 3600     # site
    assert index.resolve("SPK-1", "lab-1", "hw-b", [], default) == 7200     # site = hw rev: longest
    assert index.resolve("SPK-1", "lab-1", "hw-b", ["night"], default) == 600   # tag beats site/hw
    assert index.resolve("SPK-1", "x", "y", ["night", "lab"], default) == 1800  # two tags: longest
    assert index.resolve("SPK-9", "lab-1", "hw-b", ["lab"], default) == 30     # unit beats all
    assert index.resolve("SPK-2", "x", "y", ["other"], default) == default


def _add_units(runtime, clock, rows) -> None:
    with runtime.session_factory.begin() as s:
        for serial, site, hw, tags in rows:
            s.add(Unit(serial=serial, site=site, hardware_rev=hw, tags=tags, status="online", poll_failures=0,
                       agent_url=f"http://127.0.0.1:1/units/{serial}", created_at=clock(), updated_at=clock()))


def test_policies_resolve_in_the_database_the_collector_cache_and_the_snapshot(runtime, clock) -> None:
    _add_units(runtime, clock, [("SPK-1", "lab-1", "hw-a", []), ("SPK-2", "lab-1", "hw-b", []),
                                ("SPK-3", "lab-1", "hw-b", ["night"]), ("SPK-4", "lab-1", "hw-b", ["night"]),
                                ("SPK-5", "home", "hw-a", [])])
    with runtime.session_factory.begin() as s:
        set_offline_policy(s, "site", "lab-1", "1h", clock())
        set_offline_policy(s, "hardware_rev", "hw-b", "2h", clock())
        set_offline_policy(s, "tag", "night", "10m", clock(), note="switched off at night")
        set_offline_policy(s, "unit", "SPK-4", "30s", clock())
    want = {"SPK-1": 3600, "SPK-2": 7200, "SPK-3": 600, "SPK-4": 30, "SPK-5": 15}
    with runtime.session_factory() as s:
        snap = fleet_snapshot(s, clock(), default_offline_after_s=15.0).set_index("serial")
        ids = dict(s.execute(select(Unit.serial, Unit.id)).all())
        cache = OfflineThresholds(15.0)
        cache.refresh(s, ids.values(), clock())
        listed = {(p["scope_kind"], p["scope_value"]): p for p in list_offline_policies(s, 15.0)}
    assert snap["offline_after_s"].to_dict() == want
    assert {serial: cache.offline_after_s(ids[serial]) for serial in want} == want
    # how many units each policy decides: site→SPK-1, hw→SPK-2, tag→SPK-3, unit→SPK-4
    assert {k: p["units"] for k, p in listed.items()} == {
        ("site", "lab-1"): 1, ("hardware_rev", "hw-b"): 1, ("tag", "night"): 1, ("unit", "SPK-4"): 1}
    assert listed[("tag", "night")]["note"] == "switched off at night"


def test_the_collector_cache_rereads_groups_when_units_appear_or_after_a_minute(runtime, clock) -> None:
    odd = ['lab_%1', 'kü"che', "lab"]            # LIKE wildcards, a quote, non-ASCII
    _add_units(runtime, clock, [("SPK-1", "home", "hw-a", [odd[0]]), ("SPK-2", "home", "hw-a", [odd[1]]),
                                ("SPK-3", "home", "hw-a", ["labX1"]), ("SPK-4", "home", "hw-a", [])])
    with runtime.session_factory.begin() as s:
        for tag, after in zip(odd, ("1h", "2h", "3h"), strict=True):
            if tag != "lab":
                set_offline_policy(s, "tag", tag, after, clock())
        ids = dict(s.execute(select(Unit.serial, Unit.id)).all())
    cache = OfflineThresholds(15.0)

    def thresholds(unit_ids=None) -> dict[str, float]:
        with runtime.session_factory() as s:
            cache.refresh(s, unit_ids or ids.values(), clock())
        return {serial: cache.offline_after_s(i) for serial, i in ids.items()}

    assert thresholds() == {"SPK-1": 3600, "SPK-2": 7200, "SPK-3": 15, "SPK-4": 15}
    with runtime.session_factory.begin() as s:     # an inventory edit: SPK-4 joins the lab
        s.execute(update(Unit).where(Unit.serial == "SPK-4").values(tags=[odd[0]]))
    clock.advance(30)
    assert thresholds()["SPK-4"] == 15             # groups trusted for a minute
    clock.advance(30)
    assert thresholds()["SPK-4"] == 3600
    _add_units(runtime, clock, [("SPK-5", "home", "hw-a", [odd[1]])])   # a new unit: at once
    with runtime.session_factory() as s:
        ids = dict(s.execute(select(Unit.serial, Unit.id)).all())
    assert thresholds()["SPK-5"] == 7200


def test_scopes_naming_no_unit_and_bad_thresholds_are_refused(runtime, clock) -> None:
    _add_units(runtime, clock, [("SPK-1", "lab-1", "hw-a", ["lab"])])
    with runtime.session_factory.begin() as s:
        for kind, value, said in (("tag", "lba", "no unit has tag 'lba'; known: lab"),
                                  ("site", "lab-2", "no unit is at site 'lab-2'; known: lab-1"),
                                  ("hardware_rev", "hw-z", "no unit has hardware revision"),
                                  ("unit", "SPK-404", "no unit has serial 'SPK-404'"),
                                  ("region", "x", "unknown scope 'region'"),
                                  ("tag", "", "needs a value")):
            with pytest.raises(OfflinePolicyError, match=said):
                set_offline_policy(s, kind, value, "1h", clock())
        with pytest.raises(OfflinePolicyError, match="at least 1 s"):
            set_offline_policy(s, "tag", "lab", 0.5, clock())
        with pytest.raises(OfflinePolicyError, match="longer than the 30d limit"):
            set_offline_policy(s, "tag", "lab", MAX_OFFLINE_AFTER_S + 1, clock())
        with pytest.raises(OfflinePolicyError, match="no offline policy #99"):
            clear_offline_policy(s, 99, clock())


# -- the collector with policies ------------------------------------------------------------------
def test_tag_policy_keeps_a_silent_lab_unit_online_while_the_default_applies_to_others(
        runtime, sim, fleet, clock) -> None:
    lab, other = fleet[0], fleet[1]
    with runtime.session_factory.begin() as s:
        s.execute(update(Unit).where(Unit.serial == lab).values(tags=["lab"]))
    collector = Collector(runtime.session_factory, clock, FAST, maintenance=False)

    def step(i: int) -> None:
        if i == 0:   # the policy is set while the collector runs: its next cycle uses it
            with runtime.session_factory.begin() as s:
                set_offline_policy(s, "tag", "lab", "1h", clock(), note="switched off at night")
            sim.set_fault(lab, "offline")
            sim.set_fault(other, "offline")

    _run(collector, cycles=3, step_s=10, clock=clock, after=step)   # silent for 20 s
    assert (_unit(runtime, lab).status, _unit(runtime, other).status) == ("online", "offline")
    clock.advance(3600 - 20)
    _run(collector)                                                  # silent for 1 h
    assert _unit(runtime, lab).status == "offline"
    with runtime.session_factory() as s:
        snap = fleet_snapshot(s, clock()).set_index("serial")
    assert snap.loc[lab, "offline_after_s"] == 3600 and snap.loc[other, "offline_after_s"] == 15


# -- flapping with the real simulator -------------------------------------------------------------
def _align_to_half_periods(sim, clock, serial: str, online: bool) -> float:
    """Move the clock to the middle of one of ``serial``'s online (or offline) half periods;
    returns the half period, s (fleet.simulator.behaviour.is_online)."""
    spec = next(u for u in sim.units if u.serial == serial)
    h = spec.flap_half_period_s
    pos = (clock().timestamp() + spec.phase * 10) / h
    target = math.floor(pos) + 0.5
    if (math.floor(target) % 2 == 1) == online:   # odd half periods are the offline ones
        target += 1
    clock.advance((target - pos) * h)
    return h


def test_a_flapping_simulator_unit_is_detected_survives_a_restart_and_stops_when_it_settles(
        runtime, sim, fleet, clock) -> None:
    h = _align_to_half_periods(sim, clock, FLAPPER, online=True)
    seen = []

    def record(_i: int) -> None:
        u = _unit(runtime, FLAPPER)
        seen.append((u.status, u.state_change_pct, u.flapping))

    # sampled every half period, the unit answers every other poll
    _run(Collector(runtime.session_factory, clock, FAST, maintenance=False), 6, h, clock, record)
    assert [s for s, _, _ in seen] == ["online", "offline"] * 3 and not any(f for _, _, f in seen)
    # a new collector (a restart) continues from the persisted history
    _run(Collector(runtime.session_factory, clock, FAST, maintenance=False), 6, h, clock, record)
    u = _unit(runtime, FLAPPER)
    assert u.flapping and u.flapping_since is not None and len(u.state_history) == 12
    first = next(i for i, (_, _, f) in enumerate(seen) if f)
    assert seen[first][1] >= FLAP_HIGH_PCT > seen[first - 1][1]
    since = u.flapping_since
    # it settles: sampled once per full period it answers every poll; flapping stops at <= 25 %
    seen.clear()
    _run(Collector(runtime.session_factory, clock, FAST, maintenance=False), 20, 2 * h, clock, record)
    assert all(s == "online" for s, _, _ in seen)
    stop = next(i for i, (_, _, f) in enumerate(seen) if not f)
    assert seen[stop][1] <= FLAP_LOW_PCT < seen[stop - 1][1]
    assert _unit(runtime, FLAPPER).flapping_since is None and since is not None
    # steady units never flapped
    assert not any(_unit(runtime, s).flapping for s in fleet)


def test_flapping_alert_opens_and_the_offline_alert_is_held_back(runtime, sim, fleet, clock) -> None:
    h = _align_to_half_periods(sim, clock, FLAPPER, online=True)
    with runtime.session_factory.begin() as s:
        alerts.ensure_builtin_rules(s, clock())
        rules = dict(s.execute(select(AlertRule.name, AlertRule.id)).all())
    key = f"unit={FLAPPER}"

    def evaluate(_i: int) -> None:
        with runtime.session_factory.begin() as s:
            alerts.evaluate(s, clock())

    def alerts_of(rule: str) -> list[Alert]:
        with runtime.session_factory() as s:
            return list(s.scalars(select(Alert).where(Alert.rule_id == rules[rule], Alert.scope_key == key)
                                  .order_by(Alert.id)))

    collector = Collector(runtime.session_factory, clock, FAST, maintenance=False)
    _run(collector, 10, h, clock, evaluate)            # flapping from the 10th poll
    assert _unit(runtime, FLAPPER).flapping
    offline_before = len(alerts_of("unit offline"))
    assert offline_before >= 3                          # the storm flap detection exists to stop
    assert all(a.state == "resolved" for a in alerts_of("unit offline"))
    _run(collector, 8, h, clock, evaluate)             # still flapping: 4 more offline polls
    assert len(alerts_of("unit offline")) == offline_before     # none opened or re-opened
    flapping = alerts_of("unit flapping")
    assert [a.state for a in flapping] == ["open"] and flapping[0].severity == "warning"
    with runtime.session_factory() as s:
        snap = fleet_snapshot(s, clock()).set_index("serial")
    assert bool(snap.loc[FLAPPER, "flapping"]) and snap.loc[FLAPPER, "state_change_pct"] >= FLAP_LOW_PCT
    assert not snap.drop(index=FLAPPER)["flapping"].any()
    # it settles offline (unplugged): flapping stops, its alert resolves, the offline alert opens
    sim.set_fault(FLAPPER, "offline")
    _run(collector, 20, h, clock, evaluate)
    assert not _unit(runtime, FLAPPER).flapping and _unit(runtime, FLAPPER).status == "offline"
    assert [a.state for a in alerts_of("unit flapping")] == ["resolved"]
    assert alerts_of("unit offline")[-1].state == "open"


# -- CLI ------------------------------------------------------------------------------------------
def _cli(runtime, *args: str):
    from typer.testing import CliRunner

    from speakerops.cli import app

    return CliRunner().invoke(app, ["units", "offline-policy", *args, "--db-url", runtime.db_url])


def test_cli_offline_policy_verbs_json_and_audit(runtime, clock) -> None:
    _add_units(runtime, clock, [("SPK-1", "lab-1", "hw-a", ["lab"]), ("SPK-2", "home", "hw-a", [])])
    r = _cli(runtime, "set", "12h", "--tag", "lab", "--note", "off at night", "--json")
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout)
    assert (made["scope_kind"], made["scope_value"], made["offline_after_s"], made["created"]) == \
        ("tag", "lab", 43200.0, True)
    r = _cli(runtime, "set", "1h30m", "--tag", "lab", "--by", "alice", "--json")
    changed = json.loads(r.stdout)
    assert (changed["id"], changed["offline_after"], changed["created"], changed["updated_by"]) == \
        (made["id"], "1h30m", False, "alice")
    rows = json.loads(_cli(runtime, "list", "--json").stdout)
    assert [(p["id"], p["units"], p["note"]) for p in rows] == [(made["id"], 1, "off at night")]
    assert "1h30m" in _cli(runtime, "list").stdout
    r = _cli(runtime, "clear", str(made["id"]), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["cleared"] is True
    assert json.loads(_cli(runtime, "list", "--json").stdout) == []
    with runtime.session_factory() as s:
        trail = audit.entries(s, action_prefix="offline_policy")
    assert sorted(e.action for e in trail) == ["offline_policy.clear", "offline_policy.set", "offline_policy.set"]
    assert any(e.actor == "alice" and e.before["offline_after_s"] == 43200.0 for e in trail)


def test_cli_refuses_bad_durations_scopes_and_ids_with_a_clear_message(runtime, clock) -> None:
    _add_units(runtime, clock, [("SPK-1", "lab-1", "hw-a", ["lab"])])
    for args, said in ((("set", "12", "--tag", "lab"), "a number needs a unit"),
                       (("set", "12q", "--tag", "lab"), "not a duration"),
                       (("set", "12h", "--tag", "nope"), "no unit has tag 'nope'"),
                       (("set", "12h"), "name exactly one scope"),
                       (("set", "12h", "--tag", "lab", "--site", "lab-1"), "--site, --tag given"),
                       (("clear", "42"), "no offline policy #42")):
        r = _cli(runtime, *args)
        assert r.exit_code == 1 and said in r.stderr, (args, r.output)


# -- console --------------------------------------------------------------------------------------
def test_fleet_table_marks_a_flapping_unit_in_its_status_cell(request) -> None:
    pytest.importorskip("PySide6")
    request.getfixturevalue("qapp")
    import pandas as pd
    from PySide6.QtCore import Qt

    from console.models.fleet_table import FleetTableModel
    from console.theme import DARK
    from fleet.queries import SNAPSHOT_COLUMNS

    rows = [{c: None for c in SNAPSHOT_COLUMNS} | {"serial": s, "status": "online", "id": i, "flapping": f,
                                                  "state_change_pct": p, "offline_after_s": t}
            for i, (s, f, p, t) in enumerate([("SPK-1", True, 62.0, 43200.0), ("SPK-2", False, 0.0, 15.0)])]
    model = FleetTableModel(DARK)
    model.set_snapshot(pd.DataFrame(rows))
    col = model.column_index("status")
    cell = {model.serial_at(r): model.index(r, col) for r in range(2)}
    assert model.data(cell["SPK-1"]) == "● online ⇅ flapping" and model.data(cell["SPK-2"]) == "● online"
    tip = model.data(cell["SPK-1"], Qt.ItemDataRole.ToolTipRole)
    assert "Flapping" in tip and "62 %" in tip and "Offline after 12h" in tip
    assert "Flapping" not in model.data(cell["SPK-2"], Qt.ItemDataRole.ToolTipRole)
    from console.models.fleet_table import FLAPPING, FleetFilter

    model.set_filter(FleetFilter(status=FLAPPING))
    assert [model.serial_at(r) for r in range(model.rowCount())] == ["SPK-1"]
    model.set_filter(FleetFilter(status="online"))
    assert model.rowCount() == 2
