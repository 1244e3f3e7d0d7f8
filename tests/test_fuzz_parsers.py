"""Fuzzing the parsers of what comes from outside (hypothesis): unit answers, inventory files,
feedback files and bundle manifests. Each must either parse or raise its typed error that says
what is wrong — never another exception. The number of inputs tried is printed per target
(``pytest -s``; scale with ``SPEAKEROPS_FUZZ_EXAMPLES``, default 200) and recorded in
docs/security.md from a run."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedback.errors import FeedbackFormatError
from feedback.ingest import import_file
from fleet.errors import HealthReportError, InventoryFormatError
from fleet.health import parse_health
from fleet.inventory import RowError, read_rows
from fleet.models import Unit
from inference_core.bundles import load_bundle
from inference_core.errors import ModelLoadError
from speakerops.runtime import build_runtime

EXAMPLES = int(os.environ.get("SPEAKEROPS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TRIED: Counter[str] = Counter()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30)
HEALTH_KEYS = ["serial", "time", "state", "uptime_s", "cpu_pct", "temp_c", "mem_pct", "disk_free_mb",
               "mic_noise_dbfs", "wifi_rssi_dbm", "wake_false_accepts_per_h", "requests", "errors",
               "models", "latency_ms"]


@pytest.fixture(scope="module", autouse=True)
def _report() -> None:
    yield
    print("\nfuzz inputs tried: " + ", ".join(f"{k} {v:,}" for k, v in sorted(TRIED.items())))


@FUZZ
@given(st.one_of(st.binary(max_size=400),
                 st.dictionaries(st.sampled_from(HEALTH_KEYS), json_values, max_size=15).map(
                     lambda d: json.dumps(d).encode()),
                 json_values.map(lambda v: json.dumps(v).encode())))
def test_unit_health_answers(body: bytes) -> None:
    TRIED["unit /v1/health answers"] += 1
    try:
        parse_health(body)
    except HealthReportError as exc:
        assert str(exc)


INVENTORY_HEAD = "serial,agent_url,site,hardware_rev,timezone,ssh_host,ssh_port,tags,consent_recordings\n"


@FUZZ
@given(st.sampled_from([".csv", ".jsonl", ".json"]),
       st.one_of(st.binary(max_size=300),
                 st.text(max_size=300).map(lambda t: (INVENTORY_HEAD + t).encode("utf-8", "replace"))))
def test_inventory_files(tmp_path_factory: pytest.TempPathFactory, suffix: str, data: bytes) -> None:
    TRIED["inventory files"] += 1
    path = tmp_path_factory.mktemp("inv") / f"units{suffix}"
    path.write_bytes(data)
    try:
        for row in read_rows(path):
            assert isinstance(row, RowError) or isinstance(row[1], dict)
    except InventoryFormatError as exc:
        assert str(exc)


@pytest.fixture(scope="module")
def feedback_db(tmp_path_factory: pytest.TempPathFactory):
    rt = build_runtime(f"sqlite:///{tmp_path_factory.mktemp('fb') / 'db.sqlite'}")
    now = datetime(2026, 11, 21, 9, tzinfo=UTC)
    with rt.session_factory.begin() as s:
        s.add(Unit(serial="SPK-1", agent_url="http://127.0.0.1:9/", consent_feedback_text=True,
                   created_at=now, updated_at=now))
    yield rt
    rt.close()


FEEDBACK_HEAD = "unit_serial,household_id,submitted_at,feature,intent,rating,text,corrected,submission_id\n"
feedback_rows = st.lists(st.tuples(
    st.sampled_from(["SPK-1", "SPK-2", "", "SPK-1\x00"]), st.text(max_size=12),
    st.sampled_from(["2026-11-20T10:00:00+09:00", "2026-11-20", "yesterday", ""]),
    st.sampled_from(["weather", "music", "none", "WEATHER", ""]), st.text(max_size=15),
    st.one_of(st.integers(-3, 9).map(str), st.text(max_size=3)), st.text(max_size=60),
    st.sampled_from(["true", "false", "yes", "2", ""]), st.text(max_size=8)), max_size=6)


@FUZZ
@given(st.one_of(
    st.binary(max_size=400),
    feedback_rows.map(lambda rows: (FEEDBACK_HEAD + "".join(
        ",".join('"' + c.replace('"', '""') + '"' for c in r) + "\n" for r in rows)).encode("utf-8", "replace")),
    st.lists(st.dictionaries(st.sampled_from(["unit_serial", "household_id", "submitted_at", "feature", "intent",
                                              "rating", "text", "corrected", "submission_id"]), json_values,
                             max_size=9), max_size=5).map(
        lambda items: "".join(json.dumps(i) + "\n" for i in items).encode())),
    st.sampled_from(["utf-8", "cp949", "latin-1"]))
def test_feedback_files(feedback_db, tmp_path_factory: pytest.TempPathFactory, data: bytes, encoding: str) -> None:
    TRIED["feedback files"] += 1
    try:
        data = data.decode("utf-8").encode(encoding)
    except (UnicodeDecodeError, UnicodeEncodeError):
        pass
    path = tmp_path_factory.mktemp("fbf") / "feedback.csv"
    path.write_bytes(data)
    try:
        with feedback_db.session_factory.begin() as s:
            report = import_file(s, path, lambda: datetime(2026, 11, 21, 9, tzinfo=UTC))
        assert report.imported + report.rejected + report.duplicates <= max(report.rows_total, 0) + 1
    except FeedbackFormatError as exc:
        assert str(exc)


@FUZZ
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"kind": st.sampled_from(["stt", "qa", "x"]), "version": st.text(max_size=8),
                                        "files": st.dictionaries(st.text(max_size=20), json_values, max_size=4)}
                                       ).map(lambda d: json.dumps(d).encode())))
def test_bundle_manifests(tmp_path_factory: pytest.TempPathFactory, manifest: bytes) -> None:
    TRIED["bundle manifests"] += 1
    bundle = tmp_path_factory.mktemp("bundle")
    (bundle / "manifest.json").write_bytes(manifest)
    (bundle / "lm.arpa").write_text("\\data\\\n")
    try:
        load_bundle(bundle)
    except ModelLoadError as exc:
        assert str(exc)
