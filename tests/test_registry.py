"""The model registry on both databases: import, signatures (checked by the real unit-side script),
duplicates, aliases, evaluation verdicts, the rollout gate and its audited override; the CLI verbs.
"""

from __future__ import annotations

from importlib.resources import files

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from fleet.errors import RegistryError, SignatureError
from fleet.models import ModelVersion
from fleet.registry import (
    attach_evaluation,
    get_version,
    import_bundle,
    list_versions,
    override_gate,
    registry_root,
    resolve,
    rollout_gate,
    set_alias,
)
from fleet.signing import KeyStore, Signer, read_signature, verify_bundle_signature
from fleet.simulator.sshd import install_unit_scripts
from inference_core.bundles import write_manifest
from speakerops.audit import AuditEntry, verify


def make_bundle(root: Path, kind: str = "stt", version: str = "stt-2.0.0", payload: bytes = b"weights" * 100) -> Path:
    d = root / kind / version
    d.mkdir(parents=True)
    (d / "model.bin").write_bytes(payload)
    (d / "notes.txt").write_text("domain LM v2\n")
    write_manifest(d, kind, version, {"source": "test"})
    return d


def report_for(kind: str, version: str, **values: float | None) -> dict:
    """An evaluation report shaped like ``inference_core.evaluate.evaluate``'s (summary.requirements)."""
    targets = {"server_latency": (2000.0, False), "end_to_end_latency": (3000.0, False),
               "stt_accuracy": (0.90, True), "answer_accuracy": (0.80, True), "mos": (4.0, True)}
    defaults = {"server_latency": 900.0, "end_to_end_latency": 1500.0, "stt_accuracy": 0.97,
                "answer_accuracy": 0.91, "mos": 4.2}
    reqs = []
    for key, (target, higher) in targets.items():
        value = values.get(key, defaults[key])
        passed = None if value is None else (value >= target if higher else value <= target)
        reqs.append({"key": key, "label": key.replace("_", " "), "target": target, "value": value,
                     "passed": passed, "measure": "mean"})
    reqs.append({"key": "speakers", "label": "Up to 2 speakers", "target": 0.9, "value": 0.5, "passed": False})
    models = {"stt": "stt-1.0.0", "qa": "qa-1.0.0-int8", "tts": "tts-1.0.0", kind: version}
    return {"manifest": "m.jsonl", "models": models, "summary": {"utterances": 10, "errors": 0,
                                                                 "requirements": reqs, "wer": float("nan")},
            "utterances": [{"audio": "a.wav", "wer": float("nan")}]}


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


def test_import_signs_a_verified_copy_and_is_idempotent(runtime, tmp_path, signer):
    src = make_bundle(tmp_path / "build")
    store = registry_root(tmp_path / "data")
    with runtime.session_factory.begin() as s:
        mv = import_bundle(s, src, store, signer, runtime.clock, notes="first")
        assert (mv.kind, mv.version, mv.notes) == ("stt", "stt-2.0.0", "first")
        assert set(mv.files) == {"model.bin", "notes.txt"} and mv.artifact_bytes == 700 + 13
        assert mv.key_id == signer.key_id and len(mv.manifest_sha256) == 64
    stored = Path(mv.source_path)
    assert stored == store / "stt" / "stt-2.0.0" and (stored / "model.bin").is_file()
    assert verify_bundle_signature(stored, {signer.key_id: signer.public_key}) == signer.key_id
    assert read_signature(stored).signature_b64 == mv.signature
    assert not (src / "manifest.sig").exists()  # the source is left as it was
    with runtime.session_factory.begin() as s:  # same content again: no-op, same row
        again = import_bundle(s, src, store, signer, runtime.clock)
        assert again.id == mv.id
        assert len(list_versions(s)) == 1
        actions = [e.action for e in s.scalars(select(AuditEntry))]
        assert actions == ["model.import"]


def test_duplicate_version_with_other_content_is_refused(runtime, tmp_path, signer):
    store = registry_root(tmp_path / "data")
    with runtime.session_factory.begin() as s:
        import_bundle(s, make_bundle(tmp_path / "a"), store, signer, runtime.clock)
    other = make_bundle(tmp_path / "b", payload=b"other weights")
    with pytest.raises(RegistryError, match="already in the registry with other content"), \
            runtime.session_factory.begin() as s:
        import_bundle(s, other, store, signer, runtime.clock)
    with runtime.session_factory() as s:
        assert len(list_versions(s)) == 1


def test_import_refuses_an_altered_bundle(runtime, tmp_path, signer):
    src = make_bundle(tmp_path / "build")
    (src / "model.bin").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="does not match its SHA-256"), runtime.session_factory.begin() as s:
        import_bundle(s, src, registry_root(tmp_path / "data"), signer, runtime.clock)


def run_unit_check(root: Path, bundle: Path) -> subprocess.CompletedProcess:
    staged = root / "staging" / bundle.parent.name / bundle.name
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(bundle, staged)
    return subprocess.run([str(root / "bin" / "verify-bundle"), str(staged)], capture_output=True, text=True,
                          timeout=60)


def test_unit_side_check_accepts_signed_and_refuses_tampered_bundles(runtime, tmp_path, signer):
    root = tmp_path / "unit"
    install_unit_scripts(root)
    with runtime.session_factory.begin() as s:
        mv = import_bundle(s, make_bundle(tmp_path / "build"), registry_root(tmp_path / "data"), signer,
                           runtime.clock)
    stored = Path(mv.source_path)
    refused = run_unit_check(root, stored)
    assert refused.returncode == 1 and "does not trust" in refused.stderr  # key not provisioned yet
    signer.trust_on(root)
    ok = run_unit_check(root, stored)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"OK stt stt-2.0.0 files=2 bytes=713 key={signer.key_id}")

    tampered = tmp_path / "tampered" / "stt" / "stt-2.0.0"
    shutil.copytree(stored, tampered)
    (tampered / "notes.txt").write_text("domain LM v3\n")
    res = run_unit_check(root, tampered)
    assert res.returncode == 1 and "notes.txt does not match its SHA-256" in res.stderr
    # a consistent re-checksummed manifest is still refused: the signature covers the manifest
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["files"]["notes.txt"]["sha256"] = __import__("hashlib").sha256(b"domain LM v3\n").hexdigest()
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    res = run_unit_check(root, tampered)
    assert res.returncode == 1 and "signature does not match" in res.stderr
    (tampered / "manifest.sig").unlink()
    res = run_unit_check(root, tampered)
    assert res.returncode == 1 and "not signed" in res.stderr
    shutil.copy(stored / "manifest.json", tampered / "manifest.json")
    shutil.copy(stored / "manifest.sig", tampered / "manifest.sig")
    (tampered / "notes.txt").write_text("domain LM v2\n")
    (tampered / "extra.sh").write_text("#!/bin/sh\n")
    res = run_unit_check(root, tampered)
    assert res.returncode == 1 and "unexpected file extra.sh" in res.stderr


def test_aliases_and_resolve(runtime, tmp_path, signer):
    store = registry_root(tmp_path / "data")
    with runtime.session_factory.begin() as s:
        import_bundle(s, make_bundle(tmp_path / "a", version="stt-2.0.0"), store, signer, runtime.clock)
        import_bundle(s, make_bundle(tmp_path / "b", version="stt-2.1.0", payload=b"v21"), store, signer,
                      runtime.clock)
        set_alias(s, "stt", "production", "stt-2.0.0", actor="ops")
        set_alias(s, "stt", "canary", "stt-2.1.0", actor="ops")
    with runtime.session_factory.begin() as s:
        assert resolve(s, "stt", "production").version == "stt-2.0.0"
        assert resolve(s, "stt", "stt-2.1.0").version == "stt-2.1.0"
        set_alias(s, "stt", "production", "stt-2.1.0", actor="ops")
    with runtime.session_factory() as s:
        assert resolve(s, "stt", "production").version == "stt-2.1.0"
        with pytest.raises(RegistryError, match="no model version 'nope'"):
            resolve(s, "stt", "nope")
        with pytest.raises(RegistryError, match="no model version"):
            set_alias(s, "stt", "beta", "stt-9.9.9")
        with pytest.raises(RegistryError, match="must be a word"):
            set_alias(s, "stt", "a b", "stt-2.0.0")
        moves = s.scalars(select(AuditEntry).where(AuditEntry.action == "model.alias")).all()
        assert [(m.target_id, m.after["version"]) for m in moves] == [
            ("stt@production", "stt-2.0.0"), ("stt@canary", "stt-2.1.0"), ("stt@production", "stt-2.1.0")]
        assert moves[-1].before == {"version": "stt-2.0.0"}


def test_gate_refuses_until_evaluated_and_passes(runtime, tmp_path, signer):
    with runtime.session_factory.begin() as s:
        import_bundle(s, make_bundle(tmp_path / "a"), registry_root(tmp_path / "data"), signer, runtime.clock)
        gate = rollout_gate(s, "stt-2.0.0")
        assert not gate.allowed and "not evaluated" in gate.reason
        # MOS and the speaker count fail, but they do not concern an STT version
        mv = attach_evaluation(s, "stt-2.0.0", report_for("stt", "stt-2.0.0", mos=2.9))
        assert mv.evaluation_passed is True
        assert [r["key"] for r in mv.requirements] == ["server_latency", "end_to_end_latency", "stt_accuracy"]
        assert mv.evaluation["summary"]["wer"] is None  # NaN stored as null (PostgreSQL JSON)
        assert rollout_gate(s, "stt-2.0.0").allowed
        with pytest.raises(RegistryError, match="evaluated stt stt-1.0.0, not stt-2.0.0"):
            attach_evaluation(s, "stt-2.0.0", report_for("stt", "stt-1.0.0"))


def test_failed_gate_needs_a_written_reason_and_is_audited(runtime, tmp_path, signer):
    with runtime.session_factory.begin() as s:
        import_bundle(s, make_bundle(tmp_path / "a", "tts", "tts-2.0.0"), registry_root(tmp_path / "data"),
                      signer, runtime.clock)
        attach_evaluation(s, "tts-2.0.0", report_for("tts", "tts-2.0.0", mos=2.99))
    with runtime.session_factory.begin() as s:
        gate = rollout_gate(s, "tts-2.0.0")
        assert not gate.allowed and [r["key"] for r in gate.failed] == ["mos"]
        assert "mos (measured 2.99)" in gate.reason and "override" in gate.reason
        for reason in ("", "   "):
            with pytest.raises(RegistryError, match="written reason"):
                override_gate(s, "tts-2.0.0", reason, actor="kim")
    with runtime.session_factory.begin() as s:
        gate = override_gate(s, "tts-2.0.0", "espeak-ng is the only offline voice; MOS 3 accepted for the pilot",
                             actor="kim", clock=runtime.clock)
        assert gate.allowed and gate.overridden and "overridden by kim" in gate.reason
    with runtime.session_factory() as s:
        mv = get_version(s, "tts-2.0.0")
        assert mv.gate_override_by == "kim" and mv.gate_override_at == runtime.clock()
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "model.gate_override")).one()
        assert entry.actor == "kim" and entry.target_id == "tts/tts-2.0.0"
        assert entry.reason.startswith("espeak-ng is the only offline voice")
        assert entry.before["failed"] == ["mos"] and entry.after == {"allowed": True, "overridden": True}
        assert verify(s).ok
    with runtime.session_factory.begin() as s:  # a new evaluation clears the override
        attach_evaluation(s, "tts-2.0.0", report_for("tts", "tts-2.0.0", mos=2.5))
        assert not rollout_gate(s, "tts-2.0.0").allowed


def test_key_store_file_fallback(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("SPEAKEROPS_KEY_PASSPHRASE", raising=False)
    store = KeyStore(tmp_path, use_keyring=False)
    first = store.signer()
    assert "stored unencrypted" in caplog.text
    path = tmp_path / "keys" / "registry.pem"
    assert oct(path.stat().st_mode & 0o777) == "0o600" and b"ENCRYPTED" not in path.read_bytes()
    assert KeyStore(tmp_path, use_keyring=False).signer().key_id == first.key_id  # created once
    monkeypatch.setenv("SPEAKEROPS_KEY_PASSPHRASE", "correct horse")
    enc = KeyStore(tmp_path / "enc", use_keyring=False)
    key_id = enc.signer("registry").key_id
    assert b"ENCRYPTED" in (tmp_path / "enc" / "keys" / "registry.pem").read_bytes()
    assert KeyStore(tmp_path / "enc", use_keyring=False).signer().key_id == key_id
    monkeypatch.setenv("SPEAKEROPS_KEY_PASSPHRASE", "wrong")
    with pytest.raises(SignatureError, match="SPEAKEROPS_KEY_PASSPHRASE"):
        KeyStore(tmp_path / "enc", use_keyring=False).signer()


# -- CLI ------------------------------------------------------------------------------------------
def cli(db_url: str, *args: str):
    import speakerops.cli

    return CliRunner().invoke(speakerops.cli.app, [*args, "--db-url", db_url])


def test_cli_models_verbs(runtime, tmp_path, monkeypatch):
    monkeypatch.setenv("SPEAKEROPS_DATA_DIR", str(tmp_path / "data"))
    src = make_bundle(tmp_path / "build", "qa", "qa-2.0.0")
    res = cli(runtime.db_url, "models", "import", str(src), "--notes", "bigger intent model", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["version"] == "qa-2.0.0" and data["gate"]["allowed"] is False
    assert (tmp_path / "data" / "keys" / "registry.pem").is_file()  # created on first use
    assert cli(runtime.db_url, "models", "import", str(tmp_path / "nope")).exit_code == 1

    assert cli(runtime.db_url, "models", "alias", "qa", "production", "qa-2.0.0").exit_code == 0
    res = cli(runtime.db_url, "models", "list", "--json")
    rows = json.loads(res.output)
    assert [(r["version"], r["aliases"]) for r in rows] == [("qa-2.0.0", ["production"])]
    res = cli(runtime.db_url, "models", "show", "qa@production")
    assert res.exit_code == 0 and "qa qa-2.0.0" in res.output and "REFUSED" in res.output

    report = tmp_path / "report.json"
    report.write_text(json.dumps(report_for("qa", "qa-2.0.0", answer_accuracy=0.62)))
    res = cli(runtime.db_url, "models", "evaluate", "qa-2.0.0", "--report", str(report), "--json")
    assert res.exit_code == 1 and json.loads(res.output)["evaluation_passed"] is False
    res = cli(runtime.db_url, "models", "override", "qa-2.0.0", "--reason", "")
    assert res.exit_code == 1 and "written reason" in res.output
    res = cli(runtime.db_url, "models", "override", "qa-2.0.0", "--reason", "pilot site only", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["allowed"] is True
    res = cli(runtime.db_url, "models", "show", "qa-2.0.0", "--json")
    assert json.loads(res.output)["override"]["reason"] == "pilot site only"
    assert cli(runtime.db_url, "models", "show", "qa-9").exit_code == 1


def test_cli_models_evaluate_runs_the_offline_evaluation(tmp_path, models_root, monkeypatch):
    """A real default bundle through the real evaluation (first lines of the shipped test set)."""
    monkeypatch.setenv("SPEAKEROPS_DATA_DIR", str(tmp_path / "data"))
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert cli(db_url, "models", "import", str(models_root / "stt" / "stt-1.0.0")).exit_code == 0
    # a technician's field regression set (two cases of the shipped set, absolute audio paths)
    shipped = Path(str(files("resources") / "testset" / "manifest.jsonl"))
    field = tmp_path / "data" / "testsets" / "field" / "manifest.jsonl"
    field.parent.mkdir(parents=True)
    cases = [json.loads(line) for line in shipped.read_text().splitlines()[:2]]
    field.write_text("".join(json.dumps({**c, "audio": str(shipped.parent / c["audio"])}) + "\n" for c in cases))
    res = cli(db_url, "models", "evaluate", "stt-1.0.0", "--limit", "3", "--no-mos",
              "--models-dir", str(models_root), "--json")
    assert res.exit_code in (0, 1), res.output
    out = json.loads(res.output[res.output.index("{"):])
    keys = {r["key"]: r for r in out["requirements"]}
    assert set(keys) == {"stt_accuracy", "server_latency", "end_to_end_latency", "regression:field:stt_accuracy"}
    with _rt(db_url) as session:
        mv = session.scalars(select(ModelVersion)).one()
        assert mv.evaluation["models"]["stt"] == "stt-1.0.0" and mv.evaluated_at is not None
        assert mv.evaluation["regression"]["field"]["summary"]["utterances"] == 2


class _rt:
    def __init__(self, url: str) -> None:
        from speakerops.db import make_engine, make_session_factory

        self.engine = make_engine(url)
        self.sf = make_session_factory(self.engine)

    def __enter__(self):
        self.s = self.sf()
        return self.s

    def __exit__(self, *exc):
        self.s.close()
        self.engine.dispose()


def test_cli_help_lists_the_verbs():
    import speakerops.cli

    res = CliRunner().invoke(speakerops.cli.app, ["models", "--help"])
    for verb in ("import", "list", "show", "alias", "evaluate", "override", "build"):
        assert verb in res.output
    res = CliRunner().invoke(speakerops.cli.app, ["units", "--help"])
    assert "approve-host-key" in res.output and "host-keys" in res.output
    assert os.environ.get("SPEAKEROPS_DATA_DIR")


def test_field_regression_sets_gate_the_version(runtime, tmp_path, signer):
    """A version that passes the shipped test set but fails the technicians' field cases is refused."""
    with runtime.session_factory.begin() as s:
        import_bundle(s, make_bundle(tmp_path / "a"), registry_root(tmp_path / "data"), signer, runtime.clock)
        report = report_for("stt", "stt-2.0.0")
        report["regression"] = {"busan-office": report_for("stt", "stt-2.0.0", stt_accuracy=0.71),
                                "lab": report_for("stt", "stt-2.0.0")}
        mv = attach_evaluation(s, "stt-2.0.0", report)
        keys = [r["key"] for r in mv.requirements]
        assert keys[-2:] == ["regression:busan-office:stt_accuracy", "regression:lab:stt_accuracy"]
        assert mv.evaluation_passed is False
        gate = rollout_gate(s, "stt-2.0.0")
        assert not gate.allowed and [r["key"] for r in gate.failed] == ["regression:busan-office:stt_accuracy"]
        assert "busan-office" in gate.reason
