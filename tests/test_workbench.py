"""Technician workbench against the simulator's real sshd units, real models on real audio.

The fleet of seed 330 gives, among its first six units (all with sshd): SPK-000001 and SPK-000003
in quiet homes (consent), SPK-000002 and SPK-000005 without consent, SPK-000004 with a failing
microphone (consent), SPK-000006 in the noisy ``busan-office`` (consent). SPK-000001 is moved to a
bad STT version (a language pack whose pronunciations are shuffled), registered in the registry.
Each scenario restores what it changed on its unit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from feedback import tickets
from feedback.models import Ticket, TicketAttachment
from fleet.inventory import import_units
from fleet.models import Unit
from fleet.settings import SshSettings
from fleet.signing import Signer
from fleet.simulator import Simulator
from fleet.ssh import SshConnector
from fleet.workbench import DiagnoseOptions, WorkbenchContext, diagnose_unit
from fleet.workbench_collect import CollectLimits
from inference_core.bundles import bundle_dir, write_manifest
from inference_core.pipeline import LoopOptions
from speakerops.audit import AuditEntry
from speakerops.db import make_engine, make_session_factory, upgrade
from speakerops.timeutil import utc_now

pytestmark = pytest.mark.ssh

HEALTHY, NOCONSENT, MIC, NOCONSENT2, NOISY = "SPK-000003", "SPK-000002", "SPK-000004", "SPK-000005", "SPK-000006"
BADMODEL = "SPK-000001"
BAD_STT = "stt-9.9.9-bad"
QUICK = DiagnoseOptions(loop_options=LoopOptions(mos=False, general_transcript=False), tts_round_trip=False)


def _bad_stt_bundle(models_root: Path, out: Path) -> Path:
    """The default language pack with every word's pronunciation moved to the next word."""
    src = bundle_dir(models_root, "stt", "stt-1.0.0")
    dst = out / "stt" / BAD_STT
    shutil.copytree(src, dst)
    lines = [ln.split(" ", 1) for ln in (dst / "words.dict").read_text().splitlines() if ln.strip()]
    phones = [p for _, p in lines]
    (dst / "words.dict").write_text("".join(f"{w} {phones[(i + 7) % len(phones)]}\n" for i, (w, _) in enumerate(lines)))
    write_manifest(dst, "stt", BAD_STT, {"note": "pronunciations shuffled (test)"})
    return dst


def _good_copy(models_root: Path, out: Path, version: str) -> Path:
    dst = out / "stt" / version
    shutil.copytree(bundle_dir(models_root, "stt", "stt-1.0.0"), dst)
    write_manifest(dst, "stt", version, {"copy_of": "stt-1.0.0"})
    return dst


class Lab:
    def __init__(self, tmp: Path, models_root: Path) -> None:
        self.tmp = tmp
        engine = make_engine(f"sqlite:///{tmp / 'db.sqlite'}")
        upgrade(engine)
        self.engine = engine
        self.sf = make_session_factory(engine)
        self.sim = Simulator(6, seed=330, ssh_units=6, data_dir=tmp / "sim").start()
        self.sim.write_inventory(tmp / "inventory.csv")
        with self.sf.begin() as s:
            import_units(s, tmp / "inventory.csv", utc_now)
        self.settings = SshSettings(client_key_path=str(tmp / "sim" / "client_key"), connect_timeout_s=5,
                                    command_timeout_s=20,
                                    install_root=str(tmp / "sim" / "units" / "{serial}" / "root"))
        self.connector = SshConnector(self.sf, self.settings, trust_on_first_use=True)
        self.ctx = WorkbenchContext(self.sf, self.connector, tmp / "data", models_root, ssh_settings=self.settings)
        # the registry: the healthy units' STT version (a copy of the default pack) and the bad one
        from fleet.registry import import_bundle, registry_root

        signer = Signer.generate()
        with self.sf.begin() as s:
            import_bundle(s, _good_copy(models_root, tmp / "bundles", "stt-1.4.0"), registry_root(tmp / "data"), signer)
            bad = import_bundle(s, _bad_stt_bundle(models_root, tmp / "bundles"), registry_root(tmp / "data"), signer)
            stored = Path(bad.source_path)
        # SPK-000001 runs the bad version, as after a rollout
        root = self.root(BADMODEL)
        shutil.copytree(stored, root / "models" / "stt" / BAD_STT)
        link = root / "models" / "stt" / "current"
        os.replace(self._tmp_link(link, BAD_STT), link)
        with self.sf.begin() as s:
            s.execute(select(Unit).where(Unit.serial == BADMODEL)).scalar_one().stt_version = BAD_STT

    @staticmethod
    def _tmp_link(link: Path, target: str) -> Path:
        tmp = link.with_name("current.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        return tmp

    def root(self, serial: str) -> Path:
        return self.sim.ssh_unit(serial).root

    def ticket(self, serial: str, state: str = "triaged") -> int:
        with self.sf.begin() as s:
            t = tickets.create_ticket(s, title="my speaker doesn't understand me", unit_serial=serial,
                                      category="misrecognition")
            if state != "new":
                tickets.move(s, t.id, "triaged")
            return t.id

    def close(self) -> None:
        self.sim.stop()
        self.engine.dispose()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, models_root):
    lab = Lab(tmp_path_factory.mktemp("workbench"), models_root)
    yield lab
    lab.close()


def _why(d) -> str:
    return " ".join(d.report["verdict"]["why"]).lower()


def test_healthy_unit_full_report_attached_to_ticket(lab):
    ticket_id = lab.ticket(HEALTHY)
    seen = []
    d = diagnose_unit(lab.ctx, None, ticket_id=ticket_id, progress=lambda f, m: seen.append(f))
    r = d.report
    assert d.serial == HEALTHY and d.verdict == "ok", r["verdict"]
    assert "recording(s) replayed" in _why(d) and "self-test passed" in _why(d)
    assert r["collection"]["status"] == "complete" and r["aggregate"]["examined"] == 3
    assert all(f["verified"] for f in r["collection"]["files"] if f["kind"] == "recording")
    # the unit's STT version came from the registry, the others fell back to the defaults (and say so)
    models = {m["kind"]: m for m in r["models"]}
    assert models["stt"]["source"] == "registry" and models["stt"]["used"] == "stt-1.4.0"
    assert models["qa"]["source"] == "default" and "not in the model registry" in models["qa"]["note"]
    rec = r["recordings"][0]
    assert rec["reference"] and rec["transcript"] and rec["timings_ms"]["stt"] > 0
    assert rec["qa_on_reference"]["correct"] is True and rec["stage"] == "ok"
    assert "snr_db" in rec["environment"] and rec["speakers"] == 1
    assert rec["tts_round_trip"]["heard"] is not None and rec["mos_answer"]["ovrl"] > 1
    reqs = {q["key"]: q for q in r["requirements"]}
    assert reqs["answer_accuracy"]["passed"] is True and reqs["mos"]["value"] is not None
    assert reqs["end_to_end_latency"]["value"] > 0  # from the unit's own voice.log
    assert r["selftest"]["verdict"] == "ok" and r["selftest"]["recognized"] is True
    assert seen == sorted(seen) and seen[-1] == 1.0
    # evidence on disk: manifest with SHA-256, JSON, HTML with playable audio
    manifest = json.loads((d.run_dir / "manifest.json").read_text())
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    html = d.html_path.read_text()
    assert html.count("data:audio/wav;base64,") >= 4 and "<svg" in html and "Verdict: ok" in html
    with lab.sf() as s:
        t = s.get(Ticket, ticket_id)
        assert t.state == "diagnosing"
        kinds = sorted(a.kind for a in s.scalars(select(TicketAttachment).where(TicketAttachment.ticket_id == ticket_id)))
        assert kinds == ["diagnostic_report", "diagnostic_report", "other"]
        assert s.scalar(select(AuditEntry).where(AuditEntry.action == "unit.diagnose",
                                                 AuditEntry.target_id == HEALTHY)) is not None


def test_noisy_room(lab):
    d = diagnose_unit(lab.ctx, NOISY, options=QUICK)
    assert d.verdict == "room", d.report["verdict"]
    assert "noise floor" in _why(d) and "microphone" in _why(d)
    assert d.report["selftest"]["verdict"] == "room"


def test_failing_microphone(lab):
    d = diagnose_unit(lab.ctx, MIC, options=QUICK)
    assert d.verdict == "hardware", d.report["verdict"]
    assert "lost sensitivity" in _why(d) and "clip" in _why(d)
    assert "microphone" in d.report["verdict"]["action"].lower()


def test_bad_model_version(lab):
    d = diagnose_unit(lab.ctx, BADMODEL, options=QUICK)
    assert d.verdict == "model" and d.report["verdict"]["stage"] == "stt", d.report["verdict"]
    assert "speech recognition" in _why(d) and "self-test passed" in _why(d)
    assert {m["kind"]: m["used"] for m in d.report["models"]}["stt"] == BAD_STT
    assert d.report["unit"]["versions"]["stt"] == BAD_STT


def test_bad_model_unit_pinned_to_its_previous_version(lab):
    from fleet.rollout_models import UnitPin
    from fleet.workbench_actions import pin_unit

    previous = os.readlink(lab.root(BADMODEL) / "models" / "stt" / "previous")
    res = pin_unit(lab.ctx, BADMODEL, "stt", reason="bad language pack (test)")
    try:
        assert res.ok, res.message
        assert os.readlink(lab.root(BADMODEL) / "models" / "stt" / "current") == previous
        with lab.sf() as s:
            assert s.scalar(select(UnitPin.version).where(UnitPin.serial == BADMODEL)) == previous
            actions = set(s.scalars(select(AuditEntry.action).where(AuditEntry.target_id == BADMODEL)))
        assert {"unit.pin", "unit.pin_apply"} <= actions
    finally:  # back on the bad version for the other tests
        link = lab.root(BADMODEL) / "models" / "stt" / "current"
        os.replace(Lab._tmp_link(link, BAD_STT), link)


def test_unreachable_unit(lab):
    ssh = lab.sim.ssh_unit(NOCONSENT)
    ticket_id = lab.ticket(NOCONSENT)
    ssh.inject("unreachable")
    lab.sim.set_fault(NOCONSENT, "offline")
    try:
        d = diagnose_unit(lab.ctx, NOCONSENT, ticket_id=ticket_id, options=QUICK)
    finally:
        lab.sim.set_fault(NOCONSENT, "none")
        ssh.clear("unreachable")
    assert d.verdict == "unreachable" and d.exit_code == 1
    assert "no ssh connection" in _why(d) and "self-test did not answer" in _why(d)
    with lab.sf() as s:  # the report is on the ticket anyway
        assert s.get(Ticket, ticket_id).state == "diagnosing"
        assert s.scalar(select(TicketAttachment).where(TicketAttachment.ticket_id == ticket_id)) is not None


def test_connection_dropped_mid_transfer_resumes(lab):
    ssh = lab.sim.ssh_unit(HEALTHY)
    dropped = []

    def progress(fraction: float, message: str) -> None:
        if "recording req-" in message and not dropped:
            dropped.append(message)
            ssh.inject("drop")  # kills the live session and restarts sshd on the same port

    limits = CollectLimits(block_bytes=8 << 10, reconnect_wait_s=0.2)
    d = diagnose_unit(lab.ctx, HEALTHY, options=DiagnoseOptions(limits=limits, loop_options=QUICK.loop_options,
                                                                tts_round_trip=False), progress=progress)
    assert dropped
    col = d.report["collection"]
    assert col["status"] == "complete" and d.verdict == "ok", d.report["verdict"]
    assert any("dropped" in e for e in col["events"]) and any("resumed from byte" in e for e in col["events"])
    recs = [f for f in col["files"] if f["kind"] == "recording"]
    assert len(recs) == 3 and all(f["complete"] and f["verified"] for f in recs)
    assert any(f["resumed_from"] > 0 for f in recs)


def test_unit_disappears_mid_diagnosis_keeps_what_was_gathered(lab):
    ssh = lab.sim.ssh_unit(NOISY)
    ticket_id = lab.ticket(NOISY)
    gone = []

    def progress(fraction: float, message: str) -> None:
        if "recording req-" in message and not gone:
            gone.append(message)
            ssh.inject("unreachable")
    limits = CollectLimits(block_bytes=16 << 10, reconnects=1, reconnect_wait_s=0.1)
    try:
        d = diagnose_unit(lab.ctx, NOISY, ticket_id=ticket_id, progress=progress,
                          options=DiagnoseOptions(limits=limits, loop_options=QUICK.loop_options, tts_round_trip=False))
    finally:
        ssh.clear("unreachable")
    col = d.report["collection"]
    assert col["status"] == "partial" and "did not come back" in col["error"]
    assert any(f["kind"] == "log" and f["complete"] for f in col["files"])  # gathered before it went
    assert any("transfer incomplete" in c for c in d.report["examined"]["could_not"])
    # the self-test (agent still up) still shows the loud room
    assert d.verdict == "room" and d.exit_code == 2
    with lab.sf() as s:
        n = len(s.scalars(select(TicketAttachment).where(TicketAttachment.ticket_id == ticket_id)).all())
    assert n == 3


def test_recordings_without_consent_are_never_collected(lab):
    # inventory says no (SPK-000002) although files are there
    rec = lab.root(NOCONSENT) / "recordings"
    shutil.copy(lab.root(HEALTHY) / "recordings" / "req-0001.wav", rec / "req-0001.wav")
    # inventory says yes but the unit says the household withdrew (SPK-000005)
    with lab.sf.begin() as s:
        s.execute(select(Unit).where(Unit.serial == NOCONSENT2)).scalar_one().consent_recordings = True
    shutil.copy(lab.root(HEALTHY) / "recordings" / "req-0001.wav", lab.root(NOCONSENT2) / "recordings" / "x.wav")
    try:
        for serial, reason in ((NOCONSENT, "did not consent"), (NOCONSENT2, "withdrew consent")):
            d = diagnose_unit(lab.ctx, serial, options=QUICK)
            col = d.report["collection"]
            assert not col["consent"]["collected"] and reason in col["consent"]["reason"]
            assert not (d.run_dir / "recordings").exists()
            assert not [f for f in col["files"] if f["kind"] == "recording"]
            assert any("not collected" in s["reason"] for s in col["skipped"])
            assert d.verdict == "inconclusive" and reason in _why(d)
    finally:
        (rec / "req-0001.wav").unlink()
        (lab.root(NOCONSENT2) / "recordings" / "x.wav").unlink()
        with lab.sf.begin() as s:
            s.execute(select(Unit).where(Unit.serial == NOCONSENT2)).scalar_one().consent_recordings = False


def test_no_recordings_and_huge_log(lab):
    root = lab.root(HEALTHY)
    keep = lab.tmp / "keep-recordings"
    shutil.move(root / "recordings", keep)
    (root / "recordings").mkdir()
    log = root / "logs" / "voice.log"
    original = log.read_bytes()
    with log.open("ab") as f:  # a 24 MB log
        f.write(b"2026-11-21T06:00:00+00:00 DEBUG voice: chatter\n" * 500_000)
    try:
        limits = CollectLimits(max_log_bytes=64 << 10)
        d = diagnose_unit(lab.ctx, HEALTHY, options=DiagnoseOptions(limits=limits, loop_options=QUICK.loop_options))
    finally:
        shutil.rmtree(root / "recordings")
        shutil.move(keep, root / "recordings")
        log.write_bytes(original)
    col = d.report["collection"]
    logs = [f for f in col["files"] if f["kind"] == "log"]
    assert logs[0]["bytes"] == 64 << 10 and logs[0]["remote_bytes"] > 20_000_000 and logs[0]["tail_from"] > 0
    assert any("only its last" in e for e in col["events"])
    assert d.verdict == "inconclusive" and "holds no recordings" in _why(d)
    assert d.report["selftest"]["verdict"] == "ok"


def test_corrupt_audio_among_good_files(lab):
    bad = lab.root(HEALTHY) / "recordings" / "req-0099.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(3000))
    index = lab.root(HEALTHY) / "recordings" / "index.jsonl"
    original = index.read_text()
    index.write_text(original + json.dumps({"file": "req-0099.wav", "text": "<script>alert(1)</script>",
                                            "intent": "qa.time"}) + "\n")
    try:
        d = diagnose_unit(lab.ctx, HEALTHY, options=QUICK)
    finally:
        bad.unlink()
        index.write_text(original)
    html = d.html_path.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    items = {i["file"]: i for i in d.report["recordings"]}
    assert items["req-0099.wav"]["error"] and items["req-0099.wav"]["stage"] == "unreadable"
    assert d.report["aggregate"]["examined"] == 3 and d.verdict == "ok"
    assert any("req-0099.wav" in c for c in d.report["examined"]["could_not"])


def test_cli_diagnose_restart_logs(lab, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import speakerops.cli

    monkeypatch.setenv("SPEAKEROPS_SSH_CLIENT_KEY_PATH", lab.settings.client_key_path)
    monkeypatch.setenv("SPEAKEROPS_SSH_INSTALL_ROOT", lab.settings.install_root)
    url = f"sqlite:///{lab.tmp / 'db.sqlite'}"
    runner = CliRunner()
    common = ["--db-url", url]
    res = runner.invoke(speakerops.cli.app, ["unit", "diagnose", HEALTHY, "--quick", "--json", str(tmp_path / "r.json"),
                                             "--html", str(tmp_path / "r.html"), "--models-dir",
                                             str(lab.ctx.models_root), *common])
    assert res.exit_code == 0, res.output
    assert f"{HEALTHY}: OK" in res.output and json.loads((tmp_path / "r.json").read_text())["verdict"]["verdict"] == "ok"
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    marker = lab.root(HEALTHY) / "run" / "restart"
    before = marker.stat().st_mtime_ns if marker.exists() else 0
    res = runner.invoke(speakerops.cli.app, ["unit", "restart", HEALTHY, "--reason", "test", "--json", *common])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["ok"] and marker.stat().st_mtime_ns != before
    res = runner.invoke(speakerops.cli.app, ["unit", "logs", HEALTHY, "--json", *common])
    assert res.exit_code == 0, res.output
    assert any(f["remote"] == "logs/voice.log" for f in json.loads(res.output)["files"])
    res = runner.invoke(speakerops.cli.app, ["unit", "selftest", HEALTHY, "--json", "--models-dir",
                                             str(lab.ctx.models_root), *common])
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    assert st["verdict"] == "ok" and st["trend"]["n"] >= 2 and not st["trend"]["degrading"]
    recording = next(iter(sorted(lab.ctx.data_dir.glob(f"workbench/{HEALTHY}/*/recordings/req-0001.wav"))), None)
    assert recording is not None
    res = runner.invoke(speakerops.cli.app, ["unit", "add-case", HEALTHY, str(recording), "--text", "corrected words",
                                             "--intent", "music.pause", "--set", "field", "--json", *common])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["cases"] == 1
    res = runner.invoke(speakerops.cli.app, ["unit", "diagnose", "SPK-999999", *common])
    assert res.exit_code == 1 and "no unit 'SPK-999999'" in res.output
    with lab.sf() as s:
        actions = set(s.scalars(select(AuditEntry.action).where(AuditEntry.target_id == HEALTHY)))
    assert {"unit.restart", "unit.collect_logs", "unit.diagnose", "unit.selftest"} <= actions
