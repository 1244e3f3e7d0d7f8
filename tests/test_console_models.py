"""The Models page over a real SQLite registry: versions imported through ``fleet.registry`` from
small synthetic bundles, aliases, evaluation verdicts per requirement, the rollout gate, a gate
override that needs a written reason (audited), setting an alias and importing a bundle."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from sqlalchemy import select

from console.pages.models import GateOverrideDialog, ModelsPage
from console.theme import DARK
from fleet import registry
from fleet.models import ModelAlias, ModelVersion
from fleet.signing import Signer
from inference_core.bundles import write_manifest
from speakerops import audit
from speakerops.runtime import build_runtime

pytestmark = pytest.mark.gui

T0 = datetime(2026, 11, 21, 9, tzinfo=UTC)
#: (key, label, target, higher is better) as in ``inference_core.pipeline.REQUIREMENTS``.
REQS = (("server_latency", "Server part ≤ 2 s", 2000.0, False),
        ("end_to_end_latency", "End to end ≤ 3 s", 3000.0, False),
        ("stt_accuracy", "STT accuracy ≥ 90 %", 0.90, True),
        ("answer_accuracy", "Answer accuracy ≥ 80 %", 0.80, True),
        ("mos", "Synthesized speech MOS ≥ 4.0", 4.0, True))


def make_bundle(root: Path, kind: str, version: str, payload: bytes) -> Path:
    d = root / kind / version
    d.mkdir(parents=True)
    (d / "model.bin").write_bytes(payload)
    write_manifest(d, kind, version, {"source": "test"}, clock=lambda: T0)
    return d


def report(kind: str, version: str, **values: float) -> dict:
    """An evaluation report shaped like ``inference_core.evaluate.evaluate``'s."""
    figures = {"server_latency": 900.0, "end_to_end_latency": 1600.0, "stt_accuracy": 0.95,
               "answer_accuracy": 0.9, "mos": 4.2, **values}
    reqs = [{"key": k, "label": label, "target": target, "value": figures[k],
             "passed": figures[k] >= target if higher else figures[k] <= target, "measure": "mean"}
            for k, label, target, higher in REQS]
    return {"models": {kind: version}, "summary": {"utterances": 20, "errors": 0, "requirements": reqs}}


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def rt(tmp_path: Path, signer: Signer):
    runtime = build_runtime(f"sqlite:///{tmp_path / 'speakerops.db'}", clock=lambda: T0)
    src, store = tmp_path / "bundles", tmp_path / "data" / "registry"
    with runtime.session_factory.begin() as s:
        for kind, version, payload in (("stt", "stt-1.0", b"a" * 3000), ("stt", "stt-2.0", b"b" * 5000),
                                       ("tts", "tts-1.1", b"c" * 2000)):
            registry.import_bundle(s, make_bundle(src, kind, version, payload), store, signer, runtime.clock)
        registry.attach_evaluation(s, "stt-1.0", report("stt", "stt-1.0"), kind="stt", clock=runtime.clock)
        registry.attach_evaluation(s, "stt-2.0", report("stt", "stt-2.0", stt_accuracy=0.84), kind="stt",
                                   clock=runtime.clock)
        registry.attach_evaluation(s, "tts-1.1", report("tts", "tts-1.1", mos=2.99), kind="tts", clock=runtime.clock)
        registry.set_alias(s, "stt", "production", "stt-1.0", clock=runtime.clock)
        registry.set_alias(s, "stt", "canary", "stt-2.0", clock=runtime.clock)
    yield runtime
    runtime.close()


@pytest.fixture
def page(qtbot, rt, executors, reporter, tmp_path: Path, signer: Signer):
    p = ModelsPage(rt.session_factory, rt.clock, executors, reporter, DARK, data_dir=tmp_path / "data",
                   signer_factory=lambda: signer)
    qtbot.addWidget(p)
    p.resize(1400, 900)
    p.show()
    yield p
    p.shutdown()


def _cell(page: ModelsPage, kind: str, version: str, header: str) -> str:
    col = next(i for i, c in enumerate(page.model.columns) if c.header == header)
    row = next(r for r in range(page.proxy.rowCount())
               if page.proxy.index(r, 0).data(Qt.ItemDataRole.UserRole)["version"] == version
               and page.proxy.index(r, 0).data(Qt.ItemDataRole.UserRole)["kind"] == kind)
    return page.proxy.index(row, col).data()


def _override(rt, kind: str, version: str) -> tuple[str | None, str | None]:
    with rt.session_factory() as s:
        mv = s.execute(select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version)).scalar_one()
        return mv.gate_override_reason, mv.gate_override_by


def test_registry_rows_aliases_verdicts_and_tiles(qtbot, page: ModelsPage, signer: Signer, tmp_path: Path) -> None:
    qtbot.waitUntil(lambda: page.model.rowCount() == 3, timeout=5000)
    assert _cell(page, "stt", "stt-1.0", "Aliases") == "production"
    assert _cell(page, "stt", "stt-2.0", "Aliases") == "canary"
    assert _cell(page, "stt", "stt-2.0", "Signature") == f"✔ signed {signer.key_id[:8]}…"
    assert _cell(page, "stt", "stt-2.0", "Evaluation") == "✖ failed"
    assert _cell(page, "stt", "stt-2.0", "STT ≥ 90 %") == "✖ 84.0 %"
    assert _cell(page, "stt", "stt-1.0", "STT ≥ 90 %") == "✔ 95.0 %"
    assert _cell(page, "stt", "stt-1.0", "E2E p95 ≤ 3 s") == "✔ 1,600 ms"
    assert _cell(page, "tts", "tts-1.1", "MOS ≥ 4.0") == "✖ 2.99"
    assert _cell(page, "stt", "stt-1.0", "Rollout gate") == "✔ allowed"
    assert _cell(page, "stt", "stt-2.0", "Rollout gate") == "✖ refused"
    assert page.tiles["versions"].value_text() == "3"
    assert page.tiles["production_stt"].value_text() == "stt-1.0"
    assert page.tiles["production_tts"].value_text() == "—"
    assert page.tiles["failing"].value_text() == "2"

    assert page.select_version("stt", "stt-2.0")
    detail = page.detail.toPlainText()
    assert "FAIL  STT accuracy ≥ 90 %: ✖ 84.0 %" in detail and "cannot be rolled out" in detail
    assert page.override_button.isEnabled()
    assert page.select_version("stt", "stt-1.0") and not page.override_button.isEnabled()

    out = tmp_path / "models.csv"
    assert page.export(out) == 3
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert {r["Version"]: r["Rollout gate"] for r in rows}["stt-2.0"] == "✖ refused"

    with qtbot.waitSignal(page.sig_loaded, timeout=5000):
        page.kind_combo.setCurrentIndex(page.kind_combo.findData("tts"))
    assert page.model.rowCount() == 1 and page.tiles["versions"].value_text() == "3"


def test_gate_override_requires_a_written_reason(qtbot, page: ModelsPage, rt) -> None:
    qtbot.waitUntil(lambda: page.model.rowCount() == 3, timeout=5000)
    assert page.select_version("stt", "stt-2.0")

    dialog = GateOverrideDialog(page.selected_row, page)
    assert "STT accuracy ≥ 90 %: ✖ 84.0 %" in dialog.findChild(type(page.updated_label)).text()
    assert not dialog.ok_button.isEnabled()
    dialog.reason_edit.setPlainText("   ")
    assert not dialog.ok_button.isEnabled()
    dialog.reason_edit.setPlainText("accuracy measured on synthetic voices; field pilot at 93 %")
    assert dialog.ok_button.isEnabled()
    dialog.close()

    assert page.override_gate_selected("  ") is False
    assert "needs a written reason" in page.message_bar.text()
    assert _override(rt, "stt", "stt-2.0") == (None, None)

    with qtbot.waitSignal(page.sig_changed, timeout=5000):
        assert page.override_gate_selected("field pilot at 93 % (ticket 42)")
    assert page.message_bar.text() == ""
    reason, by = _override(rt, "stt", "stt-2.0")
    assert reason == "field pilot at 93 % (ticket 42)" and by
    with rt.session_factory() as s:
        entries = audit.entries(s, action_prefix="model.gate_override")
        assert [e.reason for e in entries] == ["field pilot at 93 % (ticket 42)"]
    qtbot.waitUntil(lambda: _cell(page, "stt", "stt-2.0", "Rollout gate") == "⚑ overridden", timeout=5000)
    assert _cell(page, "stt", "stt-2.0", "Override (who: why)") == f"{by}: field pilot at 93 % (ticket 42)"
    assert page.tiles["failing"].value_text() == "1"
    assert page.select_version("stt", "stt-2.0") and "field pilot at 93 %" in page.detail.toPlainText()


def test_set_alias_and_import_bundle(qtbot, page: ModelsPage, rt, tmp_path: Path) -> None:
    qtbot.waitUntil(lambda: page.model.rowCount() == 3, timeout=5000)
    assert page.select_version("stt", "stt-2.0")
    with qtbot.waitSignal(page.sig_changed, timeout=5000):
        page.set_alias_selected("production")
    with rt.session_factory() as s:
        alias = s.execute(select(ModelAlias).where(ModelAlias.kind == "stt", ModelAlias.alias == "production")).scalar_one()
        assert alias.version.version == "stt-2.0"
    qtbot.waitUntil(lambda: page.tiles["production_stt"].value_text() == "stt-2.0", timeout=5000)
    assert _cell(page, "stt", "stt-2.0", "Aliases") == "canary, production"

    # a bad alias name is refused by the registry and shown in the page's message bar
    page.set_alias_selected("2.0")
    qtbot.waitUntil(lambda: "must be a word" in page.message_bar.text(), timeout=5000)

    bundle = make_bundle(tmp_path / "new", "qa", "qa-2.0-int8", b"q" * 4096)
    with qtbot.waitSignal(page.sig_changed, timeout=10000) as done:
        page.import_bundle(bundle, notes="imported from the console")
    assert done.args == ["qa qa-2.0-int8"]
    qtbot.waitUntil(lambda: page.model.rowCount() == 4, timeout=5000)
    assert _cell(page, "qa", "qa-2.0-int8", "Evaluation") == "○ not evaluated"
    assert _cell(page, "qa", "qa-2.0-int8", "Rollout gate") == "✖ refused"
    assert (tmp_path / "data" / "registry" / "qa" / "qa-2.0-int8" / "manifest.sig").is_file()

    # a directory that is not a bundle: a clear message, nothing added
    (tmp_path / "empty").mkdir()
    page.import_bundle(tmp_path / "empty")
    qtbot.waitUntil(lambda: page.message_bar.text() != "", timeout=5000)
    assert "Could not change the registry" in page.message_bar.text()
    page.refresh()
    qtbot.waitUntil(lambda: not page.busy, timeout=5000)
    assert page.model.rowCount() == 4
