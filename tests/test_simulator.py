"""The fleet simulator over real HTTP (and real sshd): protocol bodies, faults, metrics, SSH units.

No Qt. Talks to the simulator with httpx over loopback; the SSH tests start real OpenSSH servers.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import paramiko
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet.models import MODEL_KINDS, STAGES
from fleet.simulator import INVENTORY_COLUMNS, Simulator, UnitSpec, generate_fleet
from fleet.simulator import behaviour

REPO = Path(__file__).resolve().parents[1]
#: 20:00 in Seoul (the evening peak there).
SEOUL_EVENING = datetime(2026, 11, 21, 11, 0, tzinfo=UTC)

HEALTH_NUMBERS = ("uptime_s", "cpu_pct", "temp_c", "mem_pct", "disk_free_mb", "mic_noise_dbfs",
                  "wifi_rssi_dbm", "wake_false_accepts_per_h")


class FakeClock:
    """A settable clock returning aware UTC times."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def steady(spec: UnitSpec) -> bool:
    """A unit that is always reachable and not rebooting (no offline traits)."""
    return not (spec.offline_period_s or spec.flap_half_period_s or spec.is_rebooter)


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock(SEOUL_EVENING)


@pytest.fixture(scope="module")
def sim(clock: FakeClock, tmp_path_factory: pytest.TempPathFactory):
    with Simulator(400, seed=3, clock=clock, data_dir=tmp_path_factory.mktemp("sim")) as s:
        yield s


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=5.0) as client:
        yield client


@pytest.fixture
def unit(sim: Simulator) -> UnitSpec:
    """A steady unit in Seoul with a busy household, faults cleared after the test."""
    spec = next(u for u in sim.units if steady(u) and u.timezone == "Asia/Seoul"
                and u.household_load > 1.0 and not u.degraded_mic)
    yield spec
    sim.set_fault(spec.serial, "none")


def get(http: httpx.Client, sim: Simulator, serial: str, path: str) -> httpx.Response:
    return http.get(sim.agent_url(serial) + path)


def test_info_body_matches_protocol(sim, http, unit):
    r = get(http, sim, unit.serial, "/v1/info")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    for field in ("serial", "hardware_rev", "firmware_version", "agent_version", "site", "region",
                  "timezone", "boot_time"):
        assert isinstance(body[field], str) and body[field], field
    assert body["serial"] == unit.serial
    assert body["hardware_rev"] in ("hw-a", "hw-b", "hw-c")
    assert body["models"] == unit.models and set(body["models"]) == set(MODEL_KINDS)
    boot = datetime.fromisoformat(body["boot_time"])
    assert boot.utcoffset() is not None and boot <= sim._clock()


def test_health_body_matches_protocol(sim, http, unit):
    body = get(http, sim, unit.serial, "/v1/health").json()
    assert body["serial"] == unit.serial
    assert datetime.fromisoformat(body["time"]).utcoffset() is not None
    assert body["state"] in ("ok", "degraded", "updating")
    for field in HEALTH_NUMBERS:
        assert isinstance(body[field], float | int) and not isinstance(body[field], bool), field
    assert 0 <= body["cpu_pct"] <= 100 and 0 <= body["mem_pct"] <= 100
    assert 20 < body["temp_c"] < 110
    assert -95 <= body["wifi_rssi_dbm"] <= -30 and -90 < body["mic_noise_dbfs"] < 0
    assert body["disk_free_mb"] > 0 and body["uptime_s"] >= 0
    assert isinstance(body["requests"], int) and isinstance(body["errors"], int)
    assert 0 <= body["errors"] <= body["requests"]
    assert body["models"] == unit.models
    latency = body["latency_ms"]
    assert set(latency) == set(STAGES)
    lengths = {len(v) for v in latency.values()}
    assert lengths == {min(body["requests"], 50)}
    assert all(isinstance(x, float) and x > 0 for v in latency.values() for x in v)


def test_figures_change_between_polls(sim, http, unit, clock):
    first = get(http, sim, unit.serial, "/v1/health").json()
    clock.advance(5)
    second = get(http, sim, unit.serial, "/v1/health").json()
    changed = [f for f in HEALTH_NUMBERS if first[f] != second[f]]
    assert {"cpu_pct", "temp_c", "wifi_rssi_dbm", "uptime_s"} <= set(changed)
    assert datetime.fromisoformat(second["time"]) - datetime.fromisoformat(first["time"]) \
        == timedelta(seconds=5)


def test_requests_are_since_previous_poll(sim, http, unit, clock):
    get(http, sim, unit.serial, "/v1/health")
    again = get(http, sim, unit.serial, "/v1/health").json()  # no time has passed
    assert again["requests"] == 0 and again["errors"] == 0
    assert all(v == [] for v in again["latency_ms"].values())
    clock.advance(3600)  # an evening hour at about 90 requests/h × household load > 1
    hour = get(http, sim, unit.serial, "/v1/health").json()
    assert hour["requests"] > 30
    assert all(len(v) == 50 for v in hour["latency_ms"].values())  # capped at 50 per stage
    clock.advance(60)
    minute = get(http, sim, unit.serial, "/v1/health").json()
    assert minute["requests"] < hour["requests"] / 4


def test_requests_scale_with_elapsed_time_and_local_hour():
    fleet = [u for u in generate_fleet(300, 5) if u.timezone == "Asia/Seoul"]
    evening, night = SEOUL_EVENING, SEOUL_EVENING + timedelta(hours=7)  # 20:00 and 03:00

    def total(now: datetime, seconds: float) -> int:
        return sum(behaviour.health(u, now, now - timedelta(seconds=seconds))["requests"]
                   for u in fleet)

    ten_min, hour = total(evening, 600), total(evening, 3600)
    assert 3 < hour / ten_min < 9  # ∝ elapsed time (expected 6)
    assert total(night, 3600) < hour / 5  # diurnal: night is quiet


def test_same_seed_same_fleet():
    a, b = generate_fleet(300, 11), generate_fleet(300, 11)
    assert a == b
    assert generate_fleet(300, 12) != a
    assert generate_fleet(50, 11) == a[:50]
    assert [u.serial for u in a[:3]] == ["SPK-000001", "SPK-000002", "SPK-000003"]
    health_a = behaviour.health(a[7], SEOUL_EVENING, None)
    assert health_a == behaviour.health(b[7], SEOUL_EVENING, None)
    # fleet shares as described
    assert {u.hardware_rev for u in a} == {"hw-a", "hw-b", "hw-c"}
    assert len({u.site for u in a}) == 8
    assert 0.75 < np.mean([u.stt_version == "stt-1.4.0" for u in a]) < 0.95
    assert 0.5 < np.mean([u.consent_recordings for u in a]) < 0.7
    big = generate_fleet(2000, 11)
    for trait in (lambda u: u.degraded_mic, lambda u: u.flap_half_period_s > 0,
                  lambda u: u.offline_period_s > 0, lambda u: u.is_rebooter):
        assert 0.002 < np.mean([trait(u) for u in big]) < 0.06


def test_unknown_serial_is_404(sim, http):
    r = get(http, sim, "SPK-999999", "/v1/health")
    assert r.status_code == 404 and "error" in r.json()
    assert http.post(sim.base_url + "/sim/units/SPK-999999/fault",
                     json={"fault": "offline"}).status_code == 404


def test_sim_units_lists_agent_urls(sim, http):
    units = http.get(sim.base_url + "/sim/units").json()["units"]
    assert len(units) == 400
    assert units[0]["serial"] == "SPK-000001"
    assert units[0]["agent_url"] == sim.agent_url("SPK-000001")


def set_fault_http(http, sim, serial, fault, **extra) -> None:
    r = http.post(f"{sim.base_url}/sim/units/{serial}/fault", json={"fault": fault, **extra})
    assert r.status_code == 200, r.text


def test_fault_offline_drops_the_connection(sim, http, unit):
    set_fault_http(http, sim, unit.serial, "offline")
    with pytest.raises(httpx.TransportError):
        get(http, sim, unit.serial, "/v1/health")
    sim.set_fault(unit.serial, "none")
    assert get(http, sim, unit.serial, "/v1/health").status_code == 200


def test_behaviour_offline_unit_drops_the_connection(sim, http):
    gone = next(u for u in sim.units if u.offline_fraction == 1.0)
    with pytest.raises(httpx.TransportError):
        get(http, sim, gone.serial, "/v1/health")


def test_fault_slow_answers_after_delay(sim, http, unit):
    set_fault_http(http, sim, unit.serial, "slow", delay_s=0.4)
    start = time.monotonic()
    assert get(http, sim, unit.serial, "/v1/health").status_code == 200
    assert time.monotonic() - start >= 0.4
    with pytest.raises(httpx.ReadTimeout):
        http.get(sim.agent_url(unit.serial) + "/v1/health", timeout=0.1)


def test_fault_malformed_is_not_json(sim, http, unit):
    set_fault_http(http, sim, unit.serial, "malformed")
    r = get(http, sim, unit.serial, "/v1/health")
    assert r.status_code == 200 and r.content == b'{"serial": '
    with pytest.raises(json.JSONDecodeError):
        r.json()


def test_fault_truncated_cuts_valid_json_in_half(sim, http, unit):
    full = get(http, sim, unit.serial, "/v1/info").content
    sim.set_fault(unit.serial, "truncated")
    r = get(http, sim, unit.serial, "/v1/info")
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == len(r.content) == len(full) // 2
    assert full.startswith(r.content)
    with pytest.raises(json.JSONDecodeError):
        r.json()


def test_fault_http_error_is_503_with_error(sim, http, unit):
    set_fault_http(http, sim, unit.serial, "http_error")
    r = get(http, sim, unit.serial, "/v1/health")
    assert r.status_code == 503 and isinstance(r.json()["error"], str)


def test_fault_wrong_serial_reports_another_identity(sim, http, unit):
    set_fault_http(http, sim, unit.serial, "wrong_serial")
    for path in ("/v1/info", "/v1/health"):
        serial = get(http, sim, unit.serial, path).json()["serial"]
        assert serial != unit.serial and serial.startswith("SPK-")


def test_fault_missing_field_drops_cpu(sim, http, unit):
    set_fault_http(http, sim, unit.serial, "missing_field")
    body = get(http, sim, unit.serial, "/v1/health").json()
    assert "cpu_pct" not in body and "temp_c" in body


def test_bad_fault_requests_are_400(sim, http, unit):
    r = http.post(f"{sim.base_url}/sim/units/{unit.serial}/fault", json={"fault": "melted"})
    assert r.status_code == 400 and "melted" in r.json()["error"]
    r = http.post(f"{sim.base_url}/sim/units/{unit.serial}/fault", content=b"nope")
    assert r.status_code == 400
    with pytest.raises(ValueError):
        sim.set_fault(unit.serial, "melted")


def test_metrics_parse_as_prometheus_text(sim, http, unit):
    r = get(http, sim, unit.serial, "/v1/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for field in ("cpu_pct", "temp_c", "mem_pct", "wifi_rssi_dbm", "uptime_s"):
        family = families[f"speakerops_{field}"]
        assert family.type == "gauge"
        assert family.samples[0].labels == {"serial": unit.serial}
    hist = families["speakerops_stage_latency_ms"]
    assert hist.type == "histogram"
    stages = {s.labels["stage"] for s in hist.samples}
    assert stages == set(STAGES)
    inf = [s for s in hist.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
    counts = [s for s in hist.samples if s.name.endswith("_count")]
    assert [s.value for s in inf] == [s.value for s in counts]


def test_inventory_csv(sim, tmp_path):
    path = sim.write_inventory(tmp_path / "inventory.csv")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(INVENTORY_COLUMNS)
    assert rows[0] == ("serial,hardware_rev,site,region,timezone,agent_url,ssh_host,ssh_port,"
                       "ssh_user,firmware_version,stt_version,qa_version,tts_version,tags,"
                       "consent_recordings,consent_feedback_text").split(",")
    assert len(rows) == 1 + 400
    records = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert records[0]["agent_url"] == sim.agent_url("SPK-000001")
    assert all(r["ssh_host"] == r["ssh_port"] == r["ssh_user"] == "" for r in records)
    assert {r["consent_recordings"] for r in records} == {"true", "false"}
    office = [r for r in records if r["site"] == "busan-office"]
    assert office and all("office" in r["tags"].split(";") for r in office)


def test_noisy_site_and_hot_hw_rev_differ_statistically():
    fleet = [u for u in generate_fleet(800, 21) if not u.degraded_mic]
    bodies = [(u, behaviour.health(u, SEOUL_EVENING, None)) for u in fleet]

    def welch_t(a: list[float], b: list[float]) -> float:
        a_, b_ = np.asarray(a), np.asarray(b)
        return (a_.mean() - b_.mean()) / np.sqrt(a_.var(ddof=1) / a_.size
                                                 + b_.var(ddof=1) / b_.size)

    office = [h["mic_noise_dbfs"] for u, h in bodies if u.site == "busan-office"]
    homes = [h["mic_noise_dbfs"] for u, h in bodies if u.site != "busan-office"]
    assert len(office) >= 20
    assert np.mean(office) - np.mean(homes) > 15 and welch_t(office, homes) > 10
    fa_office = [h["wake_false_accepts_per_h"] for u, h in bodies if u.site == "busan-office"]
    fa_homes = [h["wake_false_accepts_per_h"] for u, h in bodies if u.site != "busan-office"]
    assert welch_t(fa_office, fa_homes) > 5
    hot = [h["temp_c"] for u, h in bodies if u.hardware_rev == "hw-c"]
    cool = [h["temp_c"] for u, h in bodies if u.hardware_rev == "hw-b"]
    assert np.mean(hot) - np.mean(cool) > 8 and welch_t(hot, cool) > 10


# --------------------------------------------------------------------------- SSH units
def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def process_tree(pid: int) -> list[int]:
    from fleet.simulator.sshd import _descendants

    return [pid, *_descendants(pid)]


def connect(ssh_unit, client_key: Path):
    client = paramiko.SSHClient()
    blob = base64.b64decode(ssh_unit.host_public_key.split()[1])
    host_key = paramiko.PKey.from_type_string("ssh-ed25519", blob)
    client.get_host_keys().add(f"[{ssh_unit.host}]:{ssh_unit.port}", "ssh-ed25519", host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(ssh_unit.host, port=ssh_unit.port, username=ssh_unit.user,
                   key_filename=str(client_key), look_for_keys=False, allow_agent=False,
                   timeout=10)
    return client


def run(client, command: str) -> str:
    _, stdout, stderr = client.exec_command(command, timeout=10)
    status = stdout.channel.recv_exit_status()
    assert status == 0, stderr.read().decode()
    return stdout.read().decode()


@pytest.mark.ssh
def test_ssh_unit_install_and_restart(tmp_path):
    with Simulator(20, seed=4, ssh_units=2, data_dir=tmp_path) as sim, \
            httpx.Client(timeout=5.0) as http:
        ssh_unit = sim.ssh_units[0]
        assert ssh_unit.host_key_fingerprint.startswith("SHA256:")
        assert ssh_unit.host_public_key.startswith("ssh-ed25519 AAAA")
        assert ssh_unit.port != sim.ssh_units[1].port
        url = sim.agent_url(ssh_unit.serial)
        before = http.get(url + "/v1/health").json()
        client = connect(ssh_unit, tmp_path / "client_key")
        try:
            remote_key = client.get_transport().get_remote_server_key()
            assert f"{remote_key.get_name()} {remote_key.get_base64()}" == ssh_unit.host_public_key
            root = ssh_unit.root.as_posix()
            with client.open_sftp() as sftp:
                current = sftp.readlink(f"{root}/models/stt/current")
                assert current == http.get(url + "/v1/info").json()["models"]["stt"]
                with sftp.open(f"{root}/models/stt/{current}/manifest.json") as f:
                    manifest = json.loads(f.read())
                assert manifest["kind"] == "stt" and manifest["version"] == current
                with sftp.open(f"{root}/models/stt/{current}/model.bin") as f:
                    payload = f.read()
                entry = manifest["files"]["model.bin"]
                assert entry == {"sha256": hashlib.sha256(payload).hexdigest(),
                                 "bytes": len(payload)}
                assert "voice:" in sftp.open(f"{root}/logs/voice.log").read().decode()
                recordings = sftp.listdir(f"{root}/recordings")
                assert bool(recordings) == ssh_unit.spec.consent_recordings
            run(client, f"set -e; cd {root}/models/stt; mkdir -p stt-9.9.9; "
                        "ln -sfn stt-9.9.9 current.tmp; mv -T current.tmp current")
            assert "restarted" in run(client, f"{root}/bin/restart-voice-service")
        finally:
            client.close()
        info = http.get(url + "/v1/info").json()
        assert info["models"]["stt"] == "stt-9.9.9"
        after = http.get(url + "/v1/health").json()
        assert after["models"]["stt"] == "stt-9.9.9"
        assert after["uptime_s"] < 30 < before["uptime_s"]
        assert after["state"] == "updating"
        assert datetime.fromisoformat(info["boot_time"]) > datetime.now(UTC) - timedelta(minutes=1)
        inventory = sim.write_inventory(tmp_path / "inv.csv").read_text().splitlines()
        row = dict(zip(inventory[0].split(","), inventory[1].split(","), strict=True))
        assert row["ssh_port"] == str(ssh_unit.port) and row["stt_version"] == "stt-9.9.9"


@pytest.mark.ssh
def test_sshd_processes_are_gone_after_stop(tmp_path):
    sim = Simulator(5, seed=1, ssh_units=2, data_dir=tmp_path).start()
    clients = [connect(u, tmp_path / "client_key") for u in sim.ssh_units]  # live sessions too
    pids = [pid for u in sim.ssh_units for pid in process_tree(u.pid)]
    assert len(pids) > 2 and all(alive(pid) for pid in pids)
    sim.stop()
    for client in clients:
        client.close()
    assert not [pid for pid in pids if alive(pid)]
    with pytest.raises(RuntimeError):
        _ = sim.base_url


@pytest.mark.ssh
def test_run_simulator_prints_ready_line_and_stops_cleanly(tmp_path):
    code = ("import logging, sys; from pathlib import Path; "
            "from fleet.simulator import run_simulator; "
            "run_simulator(30, 0, 1, 2, Path(sys.argv[1]), Path(sys.argv[2]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "inv.csv"),
                             str(tmp_path / "data")], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("SIMULATOR READY http://127.0.0.1:"), proc.stderr.read()
        assert line.endswith(" units=30 ssh_units=1")
        base_url = line.split()[2]
        assert httpx.get(base_url + "/units/SPK-000001/v1/info").json()["serial"] == "SPK-000001"
        assert len((tmp_path / "inv.csv").read_text().splitlines()) == 31
        sshd_pid = int((tmp_path / "data/units/SPK-000001/sshd.pid").read_text())
        assert alive(sshd_pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not alive(sshd_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_sshd_is_a_clear_error(tmp_path, monkeypatch):
    import fleet.simulator.sshd as sshd

    monkeypatch.setattr(sshd, "SSHD", str(tmp_path / "no-sshd"))
    with pytest.raises(RuntimeError, match="openssh-server"):
        Simulator(3, ssh_units=1, data_dir=tmp_path).start()
