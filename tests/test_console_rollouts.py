"""The Rollouts page over a real SQLite database: rollouts made with the core's own API
(``fleet.registry``, ``fleet.rollout_control``) are listed with their groups and units; Pause,
Resume, Cancel change the database and leave audit entries; a refused control shows in the
message bar; the wizard's preview is the core's preview; Start creates and starts; a refused gate
names the failed requirement; a runner given to the page runs the rollout on the io executor and
Retry failed brings the failed unit back. No SSH: the runner's per-unit step is a stand-in that
returns results (the real one is tested in tests/test_rollout_run.py)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from sqlalchemy import select

from console.pages.rollouts import RolloutsPage
from console.theme import DARK
from fleet import registry, rollout_control
from fleet.models import Unit
from fleet.rollout import RolloutRunner
from fleet.rollout_gates import GateSettings
from fleet.rollout_models import Rollout, RolloutUnit
from fleet.rollout_plan import RolloutPlan, TargetFilter, preview
from fleet.signing import Signer
from fleet.unit_update import Step, UnitUpdateResult
from inference_core.bundles import write_manifest
from speakerops import audit
from speakerops.runtime import build_runtime

pytestmark = pytest.mark.gui

T0 = datetime(2026, 11, 21, 6, tzinfo=UTC)


def report(kind: str, version: str, **values: float) -> dict:
    """An evaluation report shaped like ``inference_core.evaluate.evaluate``'s."""
    figures = {"server_latency": 900.0, "end_to_end_latency": 1600.0, "stt_accuracy": 0.95, **values}
    reqs = [{"key": "server_latency", "label": "Server part ≤ 2 s", "target": 2000.0,
             "value": figures["server_latency"], "passed": figures["server_latency"] <= 2000.0},
            {"key": "end_to_end_latency", "label": "End to end ≤ 3 s", "target": 3000.0,
             "value": figures["end_to_end_latency"], "passed": figures["end_to_end_latency"] <= 3000.0},
            {"key": "stt_accuracy", "label": "STT accuracy ≥ 90 %", "target": 0.9,
             "value": figures["stt_accuracy"], "passed": figures["stt_accuracy"] >= 0.9}]
    return {"models": {kind: version}, "summary": {"utterances": 20, "errors": 0, "requirements": reqs}}


@pytest.fixture
def rt(tmp_path: Path):
    runtime = build_runtime(f"sqlite:///{tmp_path / 'speakerops.db'}", clock=lambda: T0)
    signer = Signer.generate()
    with runtime.session_factory.begin() as s:
        for i in range(1, 13):
            s.add(Unit(serial=f"SPK-{i:06d}", site="site-a" if i % 2 else "site-b",
                       hardware_rev="hw-a" if i % 3 else "hw-b", timezone="Asia/Seoul",
                       agent_url=f"http://127.0.0.1:1/units/SPK-{i:06d}", ssh_host="127.0.0.1",
                       ssh_port=2200 + i, ssh_user="speaker", stt_version="stt-1.0", qa_version="qa-1.0",
                       tts_version="tts-1.0", tags=["beta"] if i % 4 == 0 else [], created_at=T0, updated_at=T0))
        for version, payload, figures in (("stt-2.0", b"new" * 1000, {}), ("stt-2.1", b"bad" * 1000,
                                                                        {"stt_accuracy": 0.84})):
            d = tmp_path / "bundles" / version
            d.mkdir(parents=True)
            (d / "model.bin").write_bytes(payload)
            write_manifest(d, "stt", version, {"source": "test"}, clock=runtime.clock)
            registry.import_bundle(s, d, tmp_path / "data" / "registry", signer, runtime.clock)
            registry.attach_evaluation(s, version, report("stt", version, **figures), kind="stt",
                                       clock=runtime.clock)
    yield runtime
    runtime.close()


def make_rollout(rt, **plan) -> int:
    with rt.session_factory.begin() as s:
        r = rollout_control.create_rollout(s, RolloutPlan(kind="stt", version="stt-2.0", **plan), clock=rt.clock)
        return r.id


@pytest.fixture
def make_page(qtbot, rt, executors, reporter):
    pages = []

    def make(**extras) -> RolloutsPage:
        p = RolloutsPage(rt.session_factory, rt.clock, executors, reporter, DARK, **extras)
        qtbot.addWidget(p)
        p.resize(1400, 900)
        p.show()
        pages.append(p)
        return p

    yield make
    for p in pages:
        p.shutdown()


def _state(rt, rollout_id: int) -> str:
    with rt.session_factory() as s:
        return s.get(Rollout, rollout_id).state


def _actions(rt, rollout_id: int) -> list[str]:
    with rt.session_factory() as s:
        return [e.action for e in reversed(audit.entries(s, target_kind="rollout", limit=100))
                if str(e.target_id) == str(rollout_id)]


def test_lists_groups_units_and_controls_change_the_database(qtbot, rt, make_page, tmp_path: Path) -> None:
    rid = make_rollout(rt, canary_units=2, waves_pct=[50, 100])
    with rt.session_factory.begin() as s:
        rollout_control.start(s, rid, clock=rt.clock)
        expected = rollout_control.status(s, rid)
    page = make_page()
    qtbot.waitUntil(lambda: page.list_model.rowCount() == 1, timeout=5000)
    row = page.list_model.rows[0]
    assert (row["id"], row["state"], row["kind"], row["version"], row["total"]) == (rid, "running", "stt", "stt-2.0", 12)
    assert page.list_proxy.index(0, 1).data() == "⟳ running"
    assert page.tiles["running"].value_text() == "1"

    assert page.select_rollout(rid)
    qtbot.waitUntil(lambda: page.units_model.rowCount() == 12, timeout=5000)
    assert [(g["name"], g["units"]) for g in page.groups_model.rows] == [("canary", 2), ("wave 1", 4), ("wave 2", 6)]
    assert [g["units"] for g in page.groups_model.rows] == [g["units"] for g in expected["groups"]]
    assert [u["serial"] for u in page.units_model.rows] == [
        u["serial"] for g in expected["groups"] for u in g["units_detail"]]
    assert {u["group"] for u in page.units_model.rows[:2]} == {"canary"}
    assert set(page.chart.bars) == {"pending"}
    assert page.buttons["pause"].isEnabled() and not page.buttons["resume"].isEnabled()
    assert not page.buttons["retry"].isEnabled() and "stt stt-2.0" in page.headline.text()

    with qtbot.waitSignal(page.sig_changed, timeout=5000):
        assert page.pause_selected("p95 e2e +40 % in the canary")
    assert _state(rt, rid) == "paused"
    with rt.session_factory() as s:
        assert s.get(Rollout, rid).pause_reason == "p95 e2e +40 % in the canary"
    assert _actions(rt, rid)[-1] == "rollout.pause"
    qtbot.waitUntil(lambda: page.buttons["resume"].isEnabled(), timeout=5000)
    assert "Paused: p95 e2e +40 % in the canary" in page.reason_label.text()
    assert not page.buttons["pause"].isEnabled()

    with qtbot.waitSignal(page.sig_changed, timeout=5000):
        page.resume_selected()
    assert _state(rt, rid) == "running" and _actions(rt, rid)[-1] == "rollout.resume"

    # a refused control: the core's message in the page's message bar, nothing changed
    with qtbot.waitSignal(page.sig_loaded, timeout=5000):
        page.control_selected("resume")
    qtbot.waitUntil(lambda: "needs it paused" in page.message_bar.text(), timeout=5000)
    assert _state(rt, rid) == "running"
    page.retry_selected()
    qtbot.waitUntil(lambda: "no failed unit to retry" in page.message_bar.text(), timeout=5000)

    with qtbot.waitSignal(page.sig_changed, timeout=5000):
        page.cancel_selected("wrong version chosen")
    assert _state(rt, rid) == "cancelled" and _actions(rt, rid)[-1] == "rollout.cancel"
    with rt.session_factory() as s:
        states = {u.state for u in s.execute(select(RolloutUnit).where(RolloutUnit.rollout_id == rid)).scalars()}
        assert states == {"cancelled"}
    qtbot.waitUntil(lambda: page.list_model.rows[0]["state"] == "cancelled", timeout=5000)
    qtbot.waitUntil(lambda: not any(b.isEnabled() for b in page.buttons.values()), timeout=5000)
    assert set(page.chart.bars) == {"other"}

    page.unit_search.setText("SPK-00000")
    shown = page.units_proxy.rowCount()
    out = tmp_path / "units.csv"
    assert page.export_units(out) == shown == 9
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert rows[0]["State"] == "⊘ cancelled" and rows[0]["Error"] == "cancelled before it started"
    assert set(rows[0]) >= {"Serial", "Group", "Step reached", "Sent (MiB)", "Attempts", "Started", "Finished"}


def test_wizard_preview_is_the_core_preview_and_start_creates(qtbot, rt, make_page) -> None:
    page = make_page()
    wizard = page.open_wizard()
    qtbot.waitUntil(lambda: wizard.version_combo.count() == 2, timeout=5000)
    assert wizard.set_version("stt", "stt-2.0")
    assert "✔ evaluation passed" in wizard.version_combo.currentText()
    wizard.sites_edit.setText("site-a")
    wizard.canary_spin.setValue(1)
    wizard.waves_edit.setText("50, 100")
    wizard.serials_edit.setPlainText("")
    with qtbot.waitSignal(wizard.sig_previewed, timeout=5000) as shown:
        wizard.preview_now()
    plan = wizard.plan()
    assert plan.targets == TargetFilter(sites=["site-a"]) and plan.waves_pct == [50.0, 100.0]
    with rt.session_factory() as s:
        core = preview(s, plan)
    assert shown.args[0].as_dict() == core.as_dict()
    assert [r["size"] for r in wizard.preview_model.rows] == [len(g.units) for g in core.groups] == [1, 2, 3]
    assert "6 units in 3 groups (1 → 2 → 3); 6 left out" in wizard.summary_label.text()
    assert {r["why"] for r in wizard.excluded_model.rows} == {"site 'site-b' not selected"}

    wizard.waves_edit.setText("50, 25, 100")
    assert wizard.preview_now() is False
    assert "must increase" in wizard.message_bar.text()
    wizard.waves_edit.setText("50, 100")
    wizard.window_check.setChecked(True)
    with qtbot.waitSignal(wizard.sig_previewed, timeout=5000):
        wizard.preview_now()
    assert wizard.plan().window is not None and wizard.plan().window.label() == "02:00–05:00 local"

    with qtbot.waitSignal(page.sig_changed, timeout=5000) as created:
        wizard.submit(start=True)
    rid = created.args[0]
    assert _state(rt, rid) == "running" and _actions(rt, rid) == ["rollout.create", "rollout.start"]
    with rt.session_factory() as s:
        stored = rollout_control.status(s, rid)
    assert [[u["serial"] for u in g["units_detail"]] for g in stored["groups"]] == [
        [u.serial for u in g.units] for g in core.groups]
    assert "rollout run" in page.updated_label.text()  # no runner in this console
    qtbot.waitUntil(lambda: page.selected_id == rid and page.units_model.rowCount() == 6, timeout=5000)


def test_wizard_shows_a_refused_gate_and_accepts_an_override(qtbot, rt, make_page) -> None:
    page = make_page()
    wizard = page.open_wizard()
    qtbot.waitUntil(lambda: wizard.version_combo.count() == 2, timeout=5000)
    assert wizard.set_version("stt", "stt-2.1")
    assert "✖ evaluation failed" in wizard.version_combo.currentText()
    with qtbot.waitSignal(wizard.sig_failed, timeout=5000) as refused:
        wizard.submit(start=True)
    assert "refuses" in refused.args[0] and "stt-2.1" in refused.args[0]
    assert "STT accuracy ≥ 90 %" in wizard.message_bar.text() and "84" in wizard.message_bar.text()
    assert "Gate override reason" in wizard.message_bar.text()
    with rt.session_factory() as s:
        assert s.execute(select(Rollout)).first() is None

    wizard.override_edit.setText("pilot on site-a only; accuracy re-measured at 91 %")
    with qtbot.waitSignal(wizard.sig_created, timeout=5000) as created:
        wizard.submit(start=False)
    rid, started = created.args
    assert not started and _state(rt, rid) == "planned"
    with rt.session_factory() as s:
        assert s.get(Rollout, rid).gate_override_reason == "pilot on site-a only; accuracy re-measured at 91 %"
    assert _actions(rt, rid) == ["rollout.create", "rollout.gate_override"]


def test_start_runs_with_the_consoles_runner_and_retry_failed(qtbot, rt, make_page, tmp_path: Path) -> None:
    failing = {"SPK-000003"}
    calls: list[str] = []

    def update_unit(connector, session_factory, target, kind, version, bundle_dir, *, on_step, clock, **_kw):
        calls.append(target)
        on_step(Step.UPLOAD, {})
        ok = target not in failing
        return UnitUpdateResult(target, ok, Step.DONE if ok else Step.HEALTH_GATE, 3000, None if ok else
                                "health gate: agent reports stt-1.0 after 60 s", not ok, "stt-1.0", version,
                                clock(), clock())

    def runner() -> RolloutRunner:
        return RolloutRunner(rt.session_factory, None, rt.clock, lambda *a: True, update_unit=update_unit,
                             target_for=lambda unit: unit.serial, bundle_dir_for=lambda s, k, v: tmp_path,
                             poll_s=0.01)

    rid = make_rollout(rt, canary_units=0, waves_pct=[100], gate=GateSettings(enabled=False))
    page = make_page(runner_factory=runner)
    qtbot.waitUntil(lambda: page.list_model.rowCount() == 1, timeout=5000)
    page.select_rollout(rid)
    qtbot.waitUntil(lambda: page.buttons["start"].isEnabled(), timeout=5000)
    with qtbot.waitSignal(page.sig_runner_finished, timeout=30000):
        page.control_selected("start")
    assert sorted(calls) == [f"SPK-{i:06d}" for i in range(1, 13)]
    with rt.session_factory() as s:
        r = s.get(Rollout, rid)
        assert (r.succeeded_units, r.rolled_back_units + r.failed_units) == (11, 1)
    qtbot.waitUntil(lambda: page.buttons["retry"].isEnabled(), timeout=5000)
    failed_row = next(u for u in page.units_model.rows if u["serial"] == "SPK-000003")
    assert failed_row["state"] in ("failed", "rolled_back") and "health gate" in failed_row["error"]

    failing.clear()
    with qtbot.waitSignal(page.sig_runner_finished, timeout=30000):
        page.retry_selected()
    assert calls.count("SPK-000003") == 2 and len(calls) == 13
    with rt.session_factory() as s:
        r = s.get(Rollout, rid)
        assert (r.state, r.succeeded_units) == ("completed", 12)
        assert s.execute(select(Unit.stt_version).where(Unit.serial == "SPK-000003")).scalar_one() == "stt-2.0"
    assert "rollout.retry" in _actions(rt, rid)
    qtbot.waitUntil(lambda: page.list_model.rows[0]["state"] == "completed", timeout=5000)
    assert page.list_proxy.index(0, 1).data(Qt.ItemDataRole.DisplayRole) == "✔ completed"
