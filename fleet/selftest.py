"""Acoustic self-test of a unit: it plays a reference phrase and records it; we measure the capture.

``POST <agent_url>/v1/selftest`` (docs/unit-api.md) answers the capture as a base64 WAV with the
level a healthy microphone records the reference at (``expected_capture_dbfs``) and the seconds of
room-only audio before the phrase (``pre_roll_s``). :func:`analyse_capture` measures:

* **noise floor** — dBFS of the room-only pre-roll (median of its 20 ms frames);
* **capture level** — active level of the phrase (frames within 30 dB of the loudest, noise power
  subtracted), dBFS, against the expected level: a microphone that lost sensitivity records its
  own speaker far too quietly, whatever the room;
* **SNR** — capture level over the noise floor, dB;
* **clipping** — share of samples at full scale (``inference_core.quality.clipping_ratio``);
* **dropouts** — share of the capture inside runs of digital zeros of ≥ 20 ms (a working
  converter always has some noise: exact zeros mean the microphone cut out);
* **recognition** — the in-domain recognizer's transcript of the capture and its WER against the
  phrase.

Clipped samples and dropouts are left out of the level figures (crackle at full scale would
otherwise read as a loud, healthy capture). Verdict per self-test (:func:`judge`): ``hardware``
(clipping ≥ 0.1 %, dropouts ≥ 0.5 %, or the capture ≥ 10 dB below the expected level), ``room``
(noise floor above −45 dBFS or SNR below 15 dB with a healthy capture level), ``ok``, or
``failed`` (no capture). Results are kept per unit (table ``unit_selftests``); :func:`trend`
fits the capture level and SNR over time so a degrading microphone shows.
"""

from __future__ import annotations

import base64
import logging
import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.errors import FleetError, UnitUnreachable
from fleet.workbench_models import UnitSelftest
from speakerops import audit
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

#: Thresholds of :func:`judge` (SpeakerOps' choices, see the module docstring).
CLIPPING_LIMIT = 1e-3
DROPOUT_LIMIT = 5e-3
SENSITIVITY_LOSS_DB = 10.0
ROOM_NOISE_LIMIT_DBFS = -45.0
SELFTEST_MIN_SNR_DB = 15.0
#: The phrase counts as recognized at a WER up to this.
RECOGNIZED_MAX_WER = 0.2
#: A trend is "degrading" when the capture level fell by this much (dB) from the first to the last
#: self-test, or the SNR by twice this.
DEGRADING_DB = 6.0
REQUEST_TIMEOUT_S = 30.0


@dataclass
class SelftestResult:
    """One analysed self-test capture (figures None where they could not be measured)."""

    serial: str
    at: datetime
    phrase: str
    verdict: str = "failed"
    noise_floor_dbfs: float | None = None
    snr_db: float | None = None
    clipping_ratio: float | None = None
    capture_level_dbfs: float | None = None
    expected_level_dbfs: float | None = None
    dropout_ratio: float | None = None
    transcript: str | None = None
    wer: float | None = None
    recognized: bool | None = None
    why: str = ""
    error: str | None = None
    #: The capture as a ``data:audio/wav;base64,…`` URI (for the HTML report), not stored in the DB.
    audio_uri: str | None = None

    def to_dict(self, *, with_audio: bool = False) -> dict[str, Any]:
        out = asdict(self)
        out["at"] = self.at.isoformat()
        if not with_audio:
            out.pop("audio_uri")
        return out


def _frames_db(x: np.ndarray, n: int = 320) -> np.ndarray:
    k = len(x) // n
    if k == 0:
        return np.array([10 * math.log10(max(float(np.mean(x.astype(np.float64) ** 2)), 1e-12))])
    p = np.mean(x[: k * n].astype(np.float64).reshape(k, n) ** 2, axis=1)
    return 10 * np.log10(np.maximum(p, 1e-12))


def dropout_ratio(x: np.ndarray, min_run: int = 320) -> float:
    """Share of samples inside runs of exact zeros of at least ``min_run`` samples (20 ms at 16 kHz)."""
    zero = np.concatenate([[False], x == 0.0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]
    runs = ends - starts
    return float(runs[runs >= min_run].sum()) / max(1, len(x))


def analyse_capture(serial: str, at: datetime, phrase: str, samples: np.ndarray, sample_rate: int, *,
                    pre_roll_s: float, expected_level_dbfs: float | None, recognizer: Any = None) -> SelftestResult:
    """Measure a self-test capture (see the module docstring).

    Parameters
    ----------
    samples
        float32 ``(n,)`` in [-1, 1] at ``sample_rate`` Hz (16 kHz expected).
    pre_roll_s
        Seconds of room-only audio before the phrase.
    expected_level_dbfs
        Active level a healthy microphone records the reference at, dBFS (from the agent).
    recognizer
        An object with ``transcribe(samples) -> Transcript`` (``inference_core.stt.Recognizer``), or
        None to skip recognition.
    """
    from inference_core.pipeline import normalize_text
    from inference_core.quality import clipping_ratio

    res = SelftestResult(serial, at, phrase, expected_level_dbfs=expected_level_dbfs)
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if len(x) < sample_rate * (pre_roll_s + 0.3):
        res.error = f"the capture is too short ({len(x) / sample_rate:.2f} s) to measure"
        res.why = res.error
        return res
    res.clipping_ratio = clipping_ratio(x)
    res.dropout_ratio = dropout_ratio(x, int(0.02 * sample_rate))
    usable = (np.abs(x) < 0.999) & (x != 0.0)  # crackle and dropouts out of the level figures
    cut = int(pre_roll_s * sample_rate)
    pre, phr = x[:cut][usable[:cut]], x[cut:][usable[cut:]]
    noise_db = float(np.median(_frames_db(pre))) if len(pre) else None
    res.noise_floor_dbfs = None if noise_db is None else round(noise_db, 2)
    if len(phr):
        db = _frames_db(phr)
        active = db[db >= db.max() - 30.0]
        p_active = float(np.mean(10 ** (active / 10)))
        p_noise = 10 ** (noise_db / 10) if noise_db is not None else 0.0
        p_signal = max(p_active - p_noise, 1e-12)
        res.capture_level_dbfs = round(10 * math.log10(p_signal), 2)
        if noise_db is not None:
            res.snr_db = round(10 * math.log10(p_signal / max(p_noise, 1e-12)), 2)
    if recognizer is not None:
        try:
            from inference_core.denoise import denoise

            clean = np.where(usable, x, 0.0).astype(np.float32)
            if res.snr_db is not None and res.snr_db < SELFTEST_MIN_SNR_DB:
                clean = denoise(clean, sample_rate, method="rnnoise").samples
            res.transcript = recognizer.transcribe(clean).text
            import jiwer

            ref, hyp = normalize_text(phrase), normalize_text(res.transcript)
            res.wer = round(float(jiwer.wer(ref, hyp)), 4) if ref else None
            res.recognized = res.wer is not None and res.wer <= RECOGNIZED_MAX_WER
        except Exception as exc:  # noqa: BLE001 - recognition is one figure among several
            logger.warning("%s: self-test recognition failed: %s", serial, exc)
            res.error = f"recognition failed: {exc}"
    res.verdict, res.why = judge(res)
    return res


def judge(r: SelftestResult) -> tuple[str, str]:
    """``(verdict, why)`` of one self-test: ``hardware``, ``room``, ``ok`` or ``failed``."""
    if r.capture_level_dbfs is None and r.noise_floor_dbfs is None:
        return "failed", r.error or "no capture to measure"
    reasons = []
    if r.clipping_ratio is not None and r.clipping_ratio >= CLIPPING_LIMIT:
        reasons.append(f"{100 * r.clipping_ratio:.2f} % of samples clip at full scale (crackle)")
    if r.dropout_ratio is not None and r.dropout_ratio >= DROPOUT_LIMIT:
        reasons.append(f"{100 * r.dropout_ratio:.1f} % of the capture is dropouts (digital silence)")
    if (r.capture_level_dbfs is not None and r.expected_level_dbfs is not None
            and r.capture_level_dbfs < r.expected_level_dbfs - SENSITIVITY_LOSS_DB):
        reasons.append(f"the microphone records the unit's own speaker at {r.capture_level_dbfs:.1f} dBFS, "
                       f"{r.expected_level_dbfs - r.capture_level_dbfs:.0f} dB below the {r.expected_level_dbfs:.0f} "
                       "dBFS of a healthy microphone (lost sensitivity)")
    if reasons:
        return "hardware", "; ".join(reasons)
    if r.noise_floor_dbfs is not None and r.noise_floor_dbfs > ROOM_NOISE_LIMIT_DBFS:
        return "room", (f"the room's noise floor is {r.noise_floor_dbfs:.1f} dBFS (a quiet home is about −60; "
                        f"above {ROOM_NOISE_LIMIT_DBFS:.0f} is loud), the microphone itself captures normally")
    if r.snr_db is not None and r.snr_db < SELFTEST_MIN_SNR_DB:
        return "room", f"SNR of the reference only {r.snr_db:.1f} dB with a normal capture level: a noisy room"
    heard = "" if r.recognized is None else (", the phrase was recognized" if r.recognized
                                             else f", but the phrase was misheard ({r.transcript!r})")
    return "ok", (f"capture level {r.capture_level_dbfs:.1f} dBFS (expected {r.expected_level_dbfs}), noise floor "
                  f"{r.noise_floor_dbfs:.1f} dBFS, SNR {r.snr_db:.1f} dB, no clipping or dropouts{heard}")


def request_selftest(agent_url: str, phrase: str | None = None, *, timeout_s: float = REQUEST_TIMEOUT_S,
                     client: Any = None) -> dict[str, Any]:
    """``POST <agent_url>/v1/selftest`` and return its JSON.

    Raises
    ------
    UnitUnreachable
        The agent did not answer, answered an error status, or a body without a capture.
    """
    import httpx

    url = agent_url.rstrip("/") + "/v1/selftest"
    body = {"phrase": phrase} if phrase else {}
    try:
        resp = (client.post(url, json=body, timeout=timeout_s) if client is not None
                else httpx.post(url, json=body, timeout=timeout_s))
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("error")
            except ValueError:
                detail = resp.text[:200]
            raise UnitUnreachable(f"the agent at {url} answered HTTP {resp.status_code}: {detail}")
        data = resp.json()
        if not isinstance(data, dict) or "capture_wav_base64" not in data:
            raise UnitUnreachable(f"the agent at {url} answered without a capture; is its agent ≥ 1.1?")
        return data
    except httpx.HTTPError as exc:
        raise UnitUnreachable(f"the self-test at {url} failed ({type(exc).__name__}: {exc}); check that the "
                              "unit is online") from exc
    except ValueError as exc:
        raise UnitUnreachable(f"the agent at {url} answered malformed JSON ({exc})") from exc


def run_selftest(serial: str, agent_url: str, *, recognizer: Any = None, phrase: str | None = None,
                 clock: Clock = utc_now, client: Any = None, timeout_s: float = REQUEST_TIMEOUT_S) -> SelftestResult:
    """Ask the unit for a self-test and analyse it. Never raises: ``verdict="failed"`` with ``error``."""
    from inference_core.audio import load_audio
    from inference_core.errors import AudioFormatError

    at = clock()
    try:
        data = request_selftest(agent_url, phrase, timeout_s=timeout_s, client=client)
        raw = base64.b64decode(data["capture_wav_base64"], validate=True)
        audio = load_audio(raw)
    except (FleetError, AudioFormatError, ValueError, KeyError, TypeError) as exc:
        logger.warning("%s: self-test failed: %s", serial, exc)
        return SelftestResult(serial, at, phrase or "", error=str(exc), why=f"no self-test: {exc}")
    res = analyse_capture(serial, at, str(data.get("phrase") or phrase or ""), audio.samples, audio.sample_rate,
                          pre_roll_s=float(data.get("pre_roll_s") or 0.0),
                          expected_level_dbfs=data.get("expected_capture_dbfs"), recognizer=recognizer)
    res.audio_uri = "data:audio/wav;base64," + data["capture_wav_base64"]
    return res


def record_selftest(session: Session, unit_id: int, result: SelftestResult, *, actor: str | None = None,
                    clock: Clock = utc_now) -> UnitSelftest:
    """Store one self-test (and an audit entry ``unit.selftest``); the caller commits."""
    who = actor or audit.current_actor(session)
    row = UnitSelftest(unit_id=unit_id, serial=result.serial, at=result.at, phrase=result.phrase[:200],
                       noise_floor_dbfs=result.noise_floor_dbfs, snr_db=result.snr_db,
                       clipping_ratio=result.clipping_ratio, capture_level_dbfs=result.capture_level_dbfs,
                       expected_level_dbfs=result.expected_level_dbfs, dropout_ratio=result.dropout_ratio,
                       transcript=result.transcript, wer=result.wer, recognized=result.recognized,
                       verdict=result.verdict, error=result.error, actor=who)
    session.add(row)
    session.flush()
    audit.record(session, "unit.selftest", "unit", result.serial, after={"selftest_id": row.id,
                 "verdict": result.verdict, "snr_db": result.snr_db, "capture_level_dbfs": result.capture_level_dbfs},
                 actor=who, clock=clock)
    return row


def selftest_history(session: Session, serial: str, limit: int = 100) -> list[dict[str, Any]]:
    """The unit's self-tests, oldest first (at most the newest ``limit``), as plain dicts."""
    rows = list(session.scalars(select(UnitSelftest).where(UnitSelftest.serial == serial)
                                .order_by(UnitSelftest.at.desc(), UnitSelftest.id.desc()).limit(limit)))
    cols = [c.name for c in UnitSelftest.__table__.columns]
    out = [{c: getattr(r, c) for c in cols} for r in reversed(rows)]
    for row in out:
        row["at"] = row["at"].isoformat()
    return out


def trend(history: list[dict[str, Any]]) -> dict[str, Any]:
    """How the self-tests moved over time: least-squares slopes (dB per day) of the capture level
    and SNR, their change first → last, and ``degrading`` (see :data:`DEGRADING_DB`)."""
    pts = [(datetime.fromisoformat(h["at"]).timestamp() / 86400.0, h.get("capture_level_dbfs"), h.get("snr_db"))
           for h in history]
    out: dict[str, Any] = {"n": len(pts), "degrading": False, "capture_level_change_db": None, "snr_change_db": None,
                           "capture_level_slope_db_per_day": None, "snr_slope_db_per_day": None}
    for i, key in ((1, "capture_level"), (2, "snr")):
        series = [(p[0], p[i]) for p in pts if p[i] is not None]
        if len(series) >= 2:
            t = np.array([s[0] for s in series])
            y = np.array([s[1] for s in series], dtype=float)
            out[f"{key}_change_db"] = round(float(y[-1] - y[0]), 2)
            if np.ptp(t) > 0:
                out[f"{key}_slope_db_per_day"] = round(float(np.polyfit(t - t[0], y, 1)[0]), 3)
    lvl, snr = out["capture_level_change_db"], out["snr_change_db"]
    out["degrading"] = bool((lvl is not None and lvl <= -DEGRADING_DB) or (snr is not None and snr <= -2 * DEGRADING_DB))
    return out
