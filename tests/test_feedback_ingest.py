"""Feedback import: every good row in exactly once, every bad row reported by line, on both backends."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from feedback.errors import FeedbackFormatError
from feedback.ingest import MAX_TEXT_CHARS, detect_encoding, import_file, ingest_records
from feedback.models import Feedback, FeedbackImport
from speakerops import audit
from tests.feedback_helpers import add_heartbeat, add_unit, row, write_csv


@pytest.fixture
def units(runtime):
    with runtime.session_factory.begin() as s:
        add_unit(s, "SPK-1", runtime.clock(), consent=True)
        add_unit(s, "SPK-2", runtime.clock(), consent=False)
    return runtime


def _stored(runtime) -> list[Feedback]:
    with runtime.session_factory() as s:
        return list(s.execute(select(Feedback).order_by(Feedback.id)).scalars())


def _sids(runtime) -> Counter:
    return Counter(f.submission_id for f in _stored(runtime))


def test_bad_rows_are_reported_by_line_and_field_and_good_rows_imported_once(units, tmp_path) -> None:
    rows = [
        row(submission_id="a1"),                                           # line 2 ok
        row(rating=7, submission_id="a2"),                                 # line 3 rating out of range
        row(serial="SPK-404", submission_id="a3"),                         # line 4 unknown unit
        row(at="2026-11-20T09:00:00", submission_id="a4"),                 # line 5 naive time
        row(feature="sports", intent="", submission_id="a5"),              # line 6 unknown feature
        row(intent="music.play", submission_id="a6"),                      # line 7 intent of another feature
        row(corrected="maybe", submission_id="a7"),                        # line 8 not a boolean
        row(rating="four", submission_id="a8"),                            # line 9 not a number
        row(household="010-1234-5678", submission_id="a9"),                # line 10 a phone number as household id
        row(at="2030-01-01T00:00:00Z", submission_id="a10"),               # line 11 in the future
        row(serial="SPK-2", rating=1, submission_id="a11"),                # line 12 ok
    ]
    path = write_csv(tmp_path / "fb.csv", rows)
    with units.session_factory.begin() as s:
        report = import_file(s, path, units.clock)
    by_line = {e.line: e for e in report.errors}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert by_line[3].field == "rating" and "1 (worst) to 5 (best)" in by_line[3].message
    assert by_line[4].field == "unit_serial" and "SPK-404" in by_line[4].message and "units import" in by_line[4].message
    assert by_line[5].field == "submitted_at" and "offset" in by_line[5].message
    assert by_line[6].field == "feature" and "sports" in by_line[6].message
    assert by_line[7].field == "intent" and "weather.<action>" in by_line[7].message
    assert by_line[8].field == "corrected" and "true or false" in by_line[8].message
    assert by_line[9].field == "rating" and "whole number" in by_line[9].message
    assert by_line[10].field == "household_id" and "pseudonymous" in by_line[10].message
    assert by_line[11].field == "submitted_at" and "future" in by_line[11].message
    assert (report.imported, report.rejected, report.rows_total) == (2, 9, 11)
    assert _sids(units) == Counter({"a1": 1, "a11": 1})


def test_malformed_csv_rows_do_not_stop_the_file(units, tmp_path) -> None:
    rows = [row(submission_id=f"m{i}") for i in range(4)]
    path = write_csv(tmp_path / "bad.csv", rows, raw_lines={1: "SPK-1,hh-1,too,few", 3: 'SPK-1,"unterminated,quote'})
    with units.session_factory.begin() as s:
        report = import_file(s, path, units.clock)
    assert report.rejected >= 1
    assert any("fields, the header has 9" in e.message and e.line == 3 for e in report.errors)
    # the unterminated quote swallows what follows it: its row is reported, not silently lost
    assert report.imported + report.rejected == report.rows_total
    assert set(_sids(units)) >= {"m0", "m1", "m2"}
    assert all(n == 1 for n in _sids(units).values())


def test_missing_required_column_fails_the_whole_file_clearly(units, tmp_path) -> None:
    path = tmp_path / "nohdr.csv"
    path.write_text("serial,rating\nSPK-1,4\n", encoding="utf-8")
    with pytest.raises(FeedbackFormatError, match="unit_serial") as exc, units.session_factory.begin() as s:
        import_file(s, path, units.clock)
    assert "docs/feedback.md" in str(exc.value)


@pytest.mark.parametrize("encoding,expected", [("utf-8-sig", "utf-8-sig"), ("cp949", "cp949"),
                                               ("latin-1", "latin-1"), ("utf-8", "utf-8")])
def test_encodings_are_detected_and_text_survives(units, tmp_path, encoding, expected) -> None:
    text = {"cp949": "날씨를 잘못 알려줬어요", "latin-1": "très mauvaise réponse, ça ne marche pas"}.get(
        encoding, "너무 느려요 — très lent")
    path = write_csv(tmp_path / f"{encoding}.csv", [row(text=text, submission_id="e1"),
                                                     row(text="ok", submission_id="e2", rating=5)], encoding=encoding)
    assert detect_encoding(path)[0] == expected
    with units.session_factory.begin() as s:
        report = import_file(s, path, units.clock)
    assert (report.imported, report.rejected, report.encoding) == (2, 0, expected)
    stored = {f.submission_id: f for f in _stored(units)}
    assert stored["e1"].text == text
    if encoding == "utf-8-sig":  # the BOM is not glued to the first column name
        assert report.warnings == []


def test_duplicates_in_file_and_across_imports_kept_once_and_same_file_twice_adds_nothing(units, tmp_path) -> None:
    rows = [row(submission_id="d1"), row(submission_id="d1", rating=2),        # same id twice
            row(text="no id", at="2026-11-20T10:00:00+09:00"),                  # content hash
            row(text="no id", at="2026-11-20T01:00:00Z"),                       # same instant, other offset
            row(text="no id", at="2026-11-20T11:00:00+09:00")]
    path = write_csv(tmp_path / "dup.csv", rows)
    with units.session_factory.begin() as s:
        first = import_file(s, path, units.clock)
    assert (first.imported, first.duplicates_in_file, first.rejected) == (3, 2, 0)
    with units.session_factory.begin() as s:
        second = import_file(s, path, units.clock)
    assert (second.imported, second.duplicates_existing, second.rejected) == (0, 3, 0)
    jsonl = tmp_path / "again.jsonl"
    jsonl.write_text(json.dumps(row(submission_id="d1")) + "\n" + json.dumps(row(submission_id="d9")) + "\n")
    with units.session_factory.begin() as s:
        third = import_file(s, jsonl, units.clock)
    assert (third.imported, third.duplicates_existing) == (1, 1)
    counts = _sids(units)
    assert len(counts) == 4 and all(n == 1 for n in counts.values())
    with units.session_factory() as s:
        batches = s.execute(select(FeedbackImport).order_by(FeedbackImport.id)).scalars().all()
        assert [b.rows_imported for b in batches] == [3, 0, 1]
        assert len(audit.entries(s, action_prefix="feedback.import")) == 3


def test_oversized_text_truncated_with_a_warning(units, tmp_path) -> None:
    path = write_csv(tmp_path / "big.csv", [row(text="x" * (MAX_TEXT_CHARS + 500), submission_id="big")])
    with units.session_factory.begin() as s:
        report = import_file(s, path, units.clock)
    assert report.imported == 1
    assert report.warnings[0].line == 2 and "truncated" in report.warnings[0].message
    assert len(_stored(units)[0].text) == MAX_TEXT_CHARS


def test_household_flood_rejects_the_excess_with_a_reason(units, tmp_path) -> None:
    base = units.clock() - timedelta(hours=3)
    flood = [row(household="hh-flood", at=(base + timedelta(seconds=10 * i)).isoformat(), submission_id=f"f{i}")
             for i in range(40)]
    calm = [row(household="hh-calm", at=(base + timedelta(minutes=i)).isoformat(), submission_id=f"c{i}")
            for i in range(5)]
    path = write_csv(tmp_path / "flood.csv", flood + calm)
    with units.session_factory.begin() as s:
        report = import_file(s, path, units.clock, rate_limit_per_hour=30)
    assert (report.imported, report.rejected) == (35, 10)
    assert all("flood" in e.message and "hh-flood" in e.message for e in report.errors)
    assert [e.line for e in report.errors] == list(range(32, 42))
    ids = _sids(units)
    assert {f"f{i}" for i in range(30)} | {f"c{i}" for i in range(5)} == set(ids)


def test_jsonl_bad_lines_reported(units, tmp_path) -> None:
    path = tmp_path / "fb.jsonl"
    path.write_text("\n".join([json.dumps(row(submission_id="j1")), "{not json", "[1, 2]",
                               json.dumps(row(submission_id="j2", rating=0)), "",
                               json.dumps(row(submission_id="j3", corrected=True))]) + "\n", encoding="utf-8")
    with units.session_factory.begin() as s:
        report = import_file(s, path, units.clock)
    assert sorted(e.line for e in report.errors) == [2, 3, 4]
    assert set(_sids(units)) == {"j1", "j3"}
    assert [f.corrected for f in _stored(units)] == [False, True]


def test_consent_redaction_and_version_lookup(units) -> None:
    now = units.clock()
    with units.session_factory.begin() as s:
        from fleet.models import Unit

        spk1 = s.execute(select(Unit).where(Unit.serial == "SPK-1")).scalar_one()
        add_heartbeat(s, spk1, now - timedelta(hours=10), stt="stt-1.3.2", qa="qa-2.0.4", tts="tts-1.0.2")
        add_heartbeat(s, spk1, now - timedelta(hours=5), stt="stt-1.4.0", qa="qa-2.1.0", tts="tts-1.0.3")
    records = [
        row(at=(now - timedelta(hours=8)).isoformat(), text="mail kim@example.com or 010-1234-5678",
            submission_id="r1"),
        row(at=(now - timedelta(hours=1)).isoformat(), submission_id="r2"),
        row(at=(now - timedelta(hours=20)).isoformat(), submission_id="r3"),          # before any heartbeat
        row(serial="SPK-2", text="no consent here", submission_id="r4"),
        row(at=(now - timedelta(hours=8)).isoformat(), submission_id="r5") | {"qa_version": "qa-9"},
    ]
    with units.session_factory.begin() as s:
        report = ingest_records(s, records, units.clock, source="import", origin="test")
    assert (report.imported, report.text_withheld, report.redactions) == (5, 1, 2)
    got = {f.submission_id: f for f in _stored(units)}
    assert got["r1"].text == "mail [email] or [phone]" and got["r1"].redactions == 2
    assert (got["r1"].qa_version, got["r1"].versions_source) == ("qa-2.0.4", "heartbeat")
    assert (got["r2"].qa_version, got["r2"].versions_source) == ("qa-2.1.0", "heartbeat")
    assert got["r3"].versions_source == "unit"
    assert got["r4"].text is None and got["r4"].text_withheld
    assert (got["r5"].qa_version, got["r5"].stt_version, got["r5"].versions_source) == ("qa-9", "stt-1.3.2", "given")


def test_cli_import_exit_status_and_json_report(units, tmp_path) -> None:
    from speakerops.cli import app

    path = write_csv(tmp_path / "cli.csv", [row(submission_id="k1"), row(rating=9, submission_id="k2")])
    runner = CliRunner()
    res = runner.invoke(app, ["feedback", "import", str(path), "--json", "--db-url", units.db_url])
    assert res.exit_code == 2, res.output
    data = json.loads(res.stdout)
    assert data["imported"] == 1 and data["errors"][0]["line"] == 3 and data["errors"][0]["field"] == "rating"
    res = runner.invoke(app, ["feedback", "import", str(path), "--db-url", units.db_url])
    assert res.exit_code == 2 and "0 imported, 1 duplicates, 1 rejected" in res.stdout
    good = write_csv(tmp_path / "good.csv", [row(submission_id="k3")])
    res = runner.invoke(app, ["feedback", "import", str(good), "--db-url", units.db_url])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["feedback", "import", str(tmp_path / "missing.csv"), "--db-url", units.db_url])
    assert res.exit_code == 1 and "does not exist" in res.output
    with units.session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Feedback)) == 2


def test_many_chunks_merge_every_good_row_once(units, tmp_path, monkeypatch) -> None:
    """Chunks of 3 rows: on PostgreSQL each is merged while the next is validated (a pipeline in
    flight when heartbeat look-ups and the next chunk's COPY come); the outcome is the same."""
    import feedback.ingest as ingest
    from fleet.models import Unit

    monkeypatch.setattr(ingest, "CHUNK_ROWS", 3)
    monkeypatch.setattr(ingest, "PG_CHUNK_ROWS", 3)
    monkeypatch.setattr(ingest.VersionLookup, "BULK_AFTER", 10**9)  # a heartbeat query per row
    now = units.clock()
    with units.session_factory.begin() as s:
        spk1 = s.execute(select(Unit).where(Unit.serial == "SPK-1")).scalar_one()
        add_heartbeat(s, spk1, now - timedelta(hours=10), stt="stt-1.3.2", qa="qa-2.0.4", tts="tts-1.0.2")
    rows = [row(at=(now - timedelta(hours=5, minutes=i)).isoformat(), submission_id=f"p{i % 20}",
                text="call 010-1234-5678" if i % 4 == 0 else "", rating=9 if i % 7 == 6 else 4)
            for i in range(26)]
    path = write_csv(tmp_path / "chunks.csv", rows)
    with units.session_factory.begin() as s:
        first = import_file(s, path, units.clock)
    # 26 rows: ratings out of range at i = 6, 13, 20 (rejected before de-duplication); i = 21 .. 25
    # repeat p1 .. p5 of the first chunks
    assert (first.rejected, first.duplicates_in_file, first.imported) == (3, 5, 18)
    with units.session_factory.begin() as s:
        again = import_file(s, path, units.clock)
    assert (again.imported, again.duplicates_existing, again.rejected) == (0, 18, 3)
    stored = _stored(units)
    assert len(stored) == 18 and all(f.qa_version == "qa-2.0.4" and f.versions_source == "heartbeat"
                                     for f in stored)
    assert {f.text for f in stored} == {None, "call [phone]"}


def test_a_merge_failing_on_the_server_fails_the_import_and_the_database_stays_usable(units, monkeypatch) -> None:
    """A unit deleted after the import looked it up: the foreign key refuses the rows when they are
    merged; the import raises, nothing of it is kept, and the next import works."""
    import feedback.ingest as ingest
    from sqlalchemy.exc import IntegrityError
    from psycopg.errors import ForeignKeyViolation

    monkeypatch.setattr(ingest, "CHUNK_ROWS", 2)
    monkeypatch.setattr(ingest, "PG_CHUNK_ROWS", 2)
    with units.session_factory() as s:
        real = ingest.load_units(s)
    ghost = {"SPK-1": ingest.UnitInfo(10**6, True, (None, None, None)), "SPK-2": real["SPK-2"]}
    records = [row(serial="SPK-2", submission_id="ok1"), row(serial="SPK-2", submission_id="ok2"),
               row(serial="SPK-1", submission_id="ghost"), row(serial="SPK-2", submission_id="ok3"),
               row(serial="SPK-2", submission_id="ok4")]
    with pytest.raises((IntegrityError, ForeignKeyViolation)):
        with units.session_factory.begin() as s:
            ingest_records(s, records, units.clock, source="import", origin="t", units=ghost)
    assert _stored(units) == []
    with units.session_factory.begin() as s:
        report = ingest_records(s, records[:2], units.clock, source="import", origin="t")
    assert report.imported == 2 and len(_stored(units)) == 2
