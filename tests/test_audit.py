"""The hash-chained audit trail on both backends: entries chain, edits and deletions are found."""

from __future__ import annotations

import json
import subprocess
import sys

from sqlalchemy import text

from speakerops import audit


def _three(runtime) -> list[int]:
    with runtime.session_factory.begin() as session:
        ids = [audit.record(session, "rollout.start", "rollout", 1, after={"state": "running"},
                            clock=runtime.clock).id,
               audit.record(session, "rollout.pause", "rollout", 1, before={"state": "running"},
                            after={"state": "paused"}, reason="p95 grew", clock=runtime.clock).id,
               audit.record(session, "ticket.move", "ticket", 7, before={"state": "new"},
                            after={"state": "triaged"}, actor="tech-kim", clock=runtime.clock).id]
    return ids


def test_entries_chain_and_verify(runtime) -> None:
    ids = _three(runtime)
    with runtime.session_factory() as session:
        rows = audit.entries(session)
        assert [r.id for r in rows] == ids[::-1]
        assert rows[-1].prev_hash == audit.GENESIS_HASH
        assert rows[0].prev_hash == rows[1].entry_hash
        assert rows[0].actor == "tech-kim"
        assert rows[1].reason == "p95 grew" and rows[1].after == {"state": "paused"}
        assert audit.verify(session) == audit.VerifyResult(True, 3)
        assert [r.id for r in audit.entries(session, target_kind="rollout", target_id=1)] == ids[1::-1]
        assert [r.id for r in audit.entries(session, action_prefix="ticket.")] == [ids[2]]
        # a filter value is a bound parameter, never SQL
        assert audit.entries(session, action_prefix="%' OR 1=1 --") == []


def test_edited_entry_is_detected(runtime) -> None:
    ids = _three(runtime)
    with runtime.session_factory.begin() as session:
        session.execute(text("UPDATE audit_log SET reason = 'nothing to see' WHERE id = :i"), {"i": ids[1]})
    with runtime.session_factory() as session:
        result = audit.verify(session)
    assert not result.ok and result.first_bad_id == ids[1] and "altered" in result.problem


def test_deleted_entry_is_detected(runtime) -> None:
    ids = _three(runtime)
    with runtime.session_factory.begin() as session:
        session.execute(text("DELETE FROM audit_log WHERE id = :i"), {"i": ids[1]})
    with runtime.session_factory() as session:
        result = audit.verify(session)
    assert not result.ok and result.first_bad_id == ids[2] and "missing" in result.problem


def test_rolled_back_action_leaves_no_entry(runtime) -> None:
    try:
        with runtime.session_factory.begin() as session:
            audit.record(session, "unit.restart", "unit", "SPK-1", clock=runtime.clock)
            raise RuntimeError("the restart failed")
    except RuntimeError:
        pass
    with runtime.session_factory() as session:
        assert audit.count(session) == 0


def test_cli_verify_reports_tampering(runtime) -> None:
    _three(runtime)
    cmd = [sys.executable, "-m", "speakerops.cli", "--db-url", runtime.db_url, "audit", "verify", "--json"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["entries"] == 3
    with runtime.session_factory.begin() as session:
        session.execute(text("UPDATE audit_log SET actor = 'someone-else' WHERE id = (SELECT min(id) FROM audit_log)"))
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "altered" in bad.stderr
    listed = subprocess.run([sys.executable, "-m", "speakerops.cli", "--db-url", runtime.db_url, "audit", "list",
                             "--target", "ticket:7", "--json"], capture_output=True, text=True, timeout=120)
    assert [e["action"] for e in json.loads(listed.stdout)] == ["ticket.move"]
