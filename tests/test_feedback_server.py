"""The app's feedback endpoint over a real socket: validation (400), flood (429 + Retry-After), 413."""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select

from feedback.models import Feedback
from feedback.server import FeedbackServer
from tests.feedback_helpers import add_unit, row


@pytest.fixture
def server(runtime):
    with runtime.session_factory.begin() as s:
        add_unit(s, "SPK-1", runtime.clock(), consent=True)
    srv = FeedbackServer(runtime.session_factory, runtime.clock, port=0, rate_limit=5, rate_window_s=3600,
                         max_body_bytes=4096).start()
    yield srv, runtime
    srv.stop()


def _count(runtime) -> int:
    with runtime.session_factory() as s:
        return s.scalar(select(func.count()).select_from(Feedback))


def test_post_one_and_many_with_partial_rejection(server) -> None:
    srv, rt = server
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get("/v1/health").json() == {"status": "ok"}
        r = c.post("/v1/feedback", json=row(submission_id="app-1", text="call 010-1111-2222"))
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 1 and r.json()["ids"] == ["app-1"]
        r = c.post("/v1/feedback", json=[row(submission_id="app-1"), row(household="hh-2", submission_id="app-2"),
                                         row(household="hh-2", rating=6, submission_id="app-3")])
        body = r.json()
        assert r.status_code == 200 and (body["accepted"], body["duplicates"]) == (1, 1)
        assert body["rejected"] == [{"index": 2, "field": "rating",
                                     "message": "6 is out of range: give 1 (worst) to 5 (best)"}]
    with rt.session_factory() as s:
        stored = {f.submission_id: f for f in s.execute(select(Feedback)).scalars()}
    assert set(stored) == {"app-1", "app-2"} and stored["app-1"].text == "call [phone]"
    assert stored["app-1"].source == "app"


def test_invalid_bodies_get_400_with_field_errors(server) -> None:
    srv, rt = server
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        r = c.post("/v1/feedback", content=b"{nope", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "not UTF-8 JSON" in r.json()["error"]
        r = c.post("/v1/feedback", json={"unit_serial": "SPK-404", "household_id": "hh", "rating": 3})
        assert r.status_code == 400
        fields = {e["field"] for e in r.json()["rejected"]}
        assert {"unit_serial", "submitted_at", "feature"} <= fields
        r = c.post("/v1/feedback", json=[])
        assert r.status_code == 400
    assert _count(rt) == 0


def test_household_flood_gets_429_with_retry_after(server) -> None:
    srv, rt = server
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for i in range(5):
            at = (rt.clock() - timedelta(minutes=10 - i)).isoformat()
            assert c.post("/v1/feedback", json=row(household="hh-f", at=at, submission_id=f"f{i}")).status_code == 200
        r = c.post("/v1/feedback", json=row(household="hh-f", submission_id="f5"))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) == 3600
        assert "too many submissions" in r.json()["error"]
        assert c.post("/v1/feedback", json=row(household="hh-other", submission_id="o1")).status_code == 200
        rt.clock.advance(3601)
        assert c.post("/v1/feedback", json=row(household="hh-f", submission_id="f6")).status_code == 200
    assert _count(rt) == 7


def test_oversized_body_gets_413(server) -> None:
    srv, rt = server
    big = [row(submission_id=f"b{i}", text="x" * 500) for i in range(20)]
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        r = c.post("/v1/feedback", json=big)
        assert r.status_code == 413 and "exceeds 4,096" in r.json()["error"]
    # a chunked body without Content-Length is cut off too
    payload = json.dumps(big).encode()
    with socket.create_connection((srv.host, srv.port), timeout=10) as sock:
        head = ("POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
        sock.sendall(head + f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    assert _count(rt) == 0
