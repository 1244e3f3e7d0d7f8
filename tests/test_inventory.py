"""Inventory import: good rows in, bad rows reported by line, nothing lost."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select

from fleet.errors import InventoryFormatError
from fleet.inventory import INVENTORY_COLUMNS, import_units, list_units
from fleet.models import Unit

HEADER = ",".join(INVENTORY_COLUMNS)


def _row(serial: str, url: str | None = None, **kw: str) -> str:
    values = {c: "" for c in INVENTORY_COLUMNS}
    values.update(serial=serial, agent_url=url or f"http://127.0.0.1:9000/units/{serial}", hardware_rev="hw-a",
                  site="seoul-gangnam", region="kr-central", timezone="Asia/Seoul", stt_version="stt-1.4.0",
                  tags="lab;canary", consent_recordings="true", consent_feedback_text="false")
    values.update(kw)
    return ",".join(values[c] for c in INVENTORY_COLUMNS)


def _write(tmp_path: Path, name: str, lines: list[str], encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding=encoding)
    return path


def test_csv_import_reports_bad_rows_by_line_and_imports_the_good(runtime, tmp_path) -> None:
    path = _write(tmp_path, "inv.csv", [
        HEADER,
        _row("SPK-1"),
        _row("SPK-2", url="ftp://nowhere"),              # line 3: bad URL
        _row("SPK-3", timezone="Mars/Olympus"),          # line 4: bad zone
        _row("SPK-1", site="elsewhere"),                 # line 5: duplicate serial
        _row("SPK-4", ssh_port="70000"),                 # line 6: port out of range
        _row("SPK-5", consent_recordings="maybe"),       # line 7: not a boolean
        "SPK-6,too,few",                                 # line 8: short row
        _row("SPK-7", ssh_host="127.0.0.1", ssh_port="2222", ssh_user="root"),
    ])
    with runtime.session_factory.begin() as s:
        report = import_units(s, path, runtime.clock)
    assert (report.created, report.updated) == (2, 0)
    by_line = {e.line: e for e in report.errors}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8]
    assert "http(s) URL" in by_line[3].message
    assert "Mars/Olympus" in by_line[4].message and "IANA" in by_line[4].message
    assert "duplicate serial SPK-1" in by_line[5].message and "line 2" in by_line[5].message
    assert by_line[6].serial == "SPK-4" and "ssh_port" in by_line[6].message
    assert "true or false" in by_line[7].message
    assert "fewer fields" in by_line[8].message
    with runtime.session_factory() as s:
        units = {u.serial: u for u in list_units(s)}
    assert set(units) == {"SPK-1", "SPK-7"}
    assert units["SPK-1"].site == "seoul-gangnam"  # the duplicate did not overwrite it
    assert units["SPK-1"].tags == ["lab", "canary"] and units["SPK-1"].consent_recordings is True
    assert (units["SPK-7"].ssh_port, units["SPK-7"].ssh_user) == (2222, "root")
    assert units["SPK-1"].ssh_port is None


def test_reimport_updates_inventory_and_keeps_collected_state(runtime, tmp_path, clock) -> None:
    path = _write(tmp_path, "inv.csv", [HEADER, _row("SPK-1")])
    with runtime.session_factory.begin() as s:
        import_units(s, path, runtime.clock)
        s.scalar(select(Unit)).status = "online"
    path = _write(tmp_path, "inv.csv", [HEADER, _row("SPK-1", site="busan-office", stt_version="stt-1.5.0")])
    clock.advance(60)
    with runtime.session_factory.begin() as s:
        report = import_units(s, path, runtime.clock)
    assert (report.created, report.updated, report.errors) == (0, 1, [])
    with runtime.session_factory() as s:
        unit = s.scalar(select(Unit))
    assert (unit.site, unit.stt_version, unit.status) == ("busan-office", "stt-1.5.0", "online")
    assert unit.updated_at == clock()


def test_json_and_jsonl_imports(runtime, tmp_path) -> None:
    good = {"serial": "SPK-J1", "agent_url": "http://127.0.0.1:1/u", "tags": ["a", "b"], "consent_recordings": True}
    (tmp_path / "inv.json").write_text(json.dumps([good, {"serial": "SPK-J2"}, "nonsense"]))
    (tmp_path / "inv.jsonl").write_text(
        json.dumps({**good, "serial": "SPK-L1"}) + "\n{broken\n\n" + json.dumps({**good, "serial": "SPK-L2"}) + "\n")
    with runtime.session_factory.begin() as s:
        rj = import_units(s, tmp_path / "inv.json", runtime.clock)
        rl = import_units(s, tmp_path / "inv.jsonl", runtime.clock)
    assert rj.created == 1 and [(e.line, "agent_url" in e.message or "object" in e.message) for e in rj.errors] == [
        (2, True), (3, True)]
    assert rl.created == 2 and [e.line for e in rl.errors] == [2]
    with runtime.session_factory() as s:
        assert [u.serial for u in list_units(s)] == ["SPK-J1", "SPK-L1", "SPK-L2"]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
def test_utf8_with_or_without_bom(runtime, tmp_path, encoding) -> None:
    path = _write(tmp_path, "inv.csv", [HEADER, _row("SPK-1", site="서울-강남")], encoding=encoding)
    with runtime.session_factory.begin() as s:
        report = import_units(s, path, runtime.clock)
    assert report.created == 1 and not report.errors
    with runtime.session_factory() as s:
        assert s.scalar(select(Unit.site)) == "서울-강남"


@pytest.mark.parametrize(("content", "match"), [
    (b"", "empty"),
    ("serial,agent_url,colour\n".encode(), "unknown column"),
    ("site,region\n".encode(), "lacks required"),
    ("serial,agent_url\nSPK-\xe9,http://x\n".encode("cp1252"), "not UTF-8"),
])
def test_unreadable_files_raise_a_clear_error(runtime, tmp_path, content, match) -> None:
    path = tmp_path / "inv.csv"
    path.write_bytes(content)
    with pytest.raises(InventoryFormatError, match=match):
        with runtime.session_factory.begin() as s:
            import_units(s, path, runtime.clock)


def test_missing_file_and_unknown_format(runtime, tmp_path) -> None:
    with pytest.raises(InventoryFormatError, match="does not exist"):
        with runtime.session_factory.begin() as s:
            import_units(s, tmp_path / "nope.csv", runtime.clock)
    (tmp_path / "inv.xlsx").write_bytes(b"PK")
    with pytest.raises(InventoryFormatError, match="unknown inventory format"):
        with runtime.session_factory.begin() as s:
            import_units(s, tmp_path / "inv.xlsx", runtime.clock)


def test_cli_import_exit_status_and_json_report(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from speakerops.cli import app

    db = f"sqlite:///{tmp_path / 'cli.db'}"
    path = _write(tmp_path, "inv.csv", [HEADER, _row("SPK-1"), _row("SPK-1")])
    result = CliRunner().invoke(app, ["units", "import", str(path), "--json", "--db-url", db])
    assert result.exit_code == 2, result.output
    data = json.loads(result.stdout)
    assert data["created"] == 1 and data["rejected"] == 1 and data["errors"][0]["line"] == 3
    listed = CliRunner().invoke(app, ["units", "list", "--json", "--db-url", db])
    assert listed.exit_code == 0 and [u["serial"] for u in json.loads(listed.stdout)] == ["SPK-1"]
    missing = CliRunner().invoke(app, ["units", "import", str(tmp_path / "none.csv"), "--db-url", db])
    assert missing.exit_code == 1 and "does not exist" in missing.stderr


def test_locked_sqlite_file_gives_a_clear_error_and_loses_nothing(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from speakerops import db as dbmod
    from speakerops.cli import app

    monkeypatch.setattr(dbmod, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    db_file = tmp_path / "locked.db"
    db = f"sqlite:///{db_file}"
    path = _write(tmp_path, "inv.csv", [HEADER, _row("SPK-1")])
    assert CliRunner().invoke(app, ["units", "list", "--db-url", db]).exit_code == 0  # creates the schema
    holder = sqlite3.connect(db_file, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = CliRunner().invoke(app, ["units", "import", str(path), "--db-url", db])
    finally:
        holder.rollback()
        holder.close()
    assert result.exit_code == 1
    assert "locked" in result.stderr and "nothing was imported" in result.stderr
    again = CliRunner().invoke(app, ["units", "import", str(path), "--json", "--db-url", db])
    assert again.exit_code == 0 and json.loads(again.stdout)["created"] == 1
