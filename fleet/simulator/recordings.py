"""Realistic recordings for simulated units: spoken service requests through the unit's room and mic.

A unit of a household that consented to diagnosis recordings keeps its recent requests in
``<root>/recordings/`` (docs/unit-api.md "On-unit layout"). :func:`write_unit_recordings` makes
them for a simulated unit:

* the speech is espeak-ng (``inference_core.tts.Synthesizer``) saying in-domain service requests
  taken from the shipped test set (``resources/testset/manifest.jsonl``, ``kind: command``,
  ``in_templates: true``), set to an active level of −26 dBFS (the test set's level, ITU-T P.56's
  customary −26 dBov), with 0.4 s of lead and tail and ±1 LSB dither;
* :func:`apply_unit_acoustics` puts it through the unit's room and microphone
  (:class:`~fleet.simulator.behaviour.UnitSpec`): room noise (pink, 1/f power) at the unit's noise
  floor (``noise_floor_dbfs``; ``busan-office`` during office hours +5 dB, as
  ``behaviour.health`` reports it), and for a failing microphone (``degraded_mic``) a sensitivity
  loss of :data:`DEGRADED_GAIN_DB`, electrical hiss, crackle that clips at full scale and
  dropouts (runs of digital zeros);
* ``recordings/index.jsonl`` says, per file, what the household said and meant (``text``,
  ``intent``) — the reference transcript of the workbench — and ``etc/consent.json`` what the unit
  itself holds about consent (``{"recordings": true|false}``).

The acoustic self-test of the unit agent (``POST /v1/selftest``, :func:`selftest_capture`) uses the
same chain on a reference phrase played by the unit's own speaker.

Everything is seeded from ``(spec.seed, spec.index)``: the same unit gets the same recordings.
Without espeak-ng, 1 s tones are written instead (and the index says ``text: null``).
"""

from __future__ import annotations

import json
import logging
import os
import wave
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from fleet.simulator.behaviour import UnitSpec

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
#: Active speech level of a household request at the microphone, dBFS (the test set's level).
SPEECH_ACTIVE_DBFS = -26.0
#: Level at which a healthy unit's microphone captures its own speaker playing the self-test
#: reference, dBFS (active level). A simulated design figure, documented in docs/unit-api.md.
SELFTEST_CAPTURE_DBFS = -20.0
#: Sensitivity lost by a failing microphone, dB (simulated: a cracked MEMS port / bad solder joint).
DEGRADED_GAIN_DB = -24.0
#: Electrical hiss of a failing microphone, dBFS RMS.
DEGRADED_HISS_DBFS = -48.0
#: Share of a failing microphone's samples hit by full-scale crackle (clipping).
DEGRADED_CRACKLE_SHARE = 0.004
#: Dropouts of a failing microphone: count per second and length, s.
DEGRADED_DROPOUTS_PER_S = 1.5
DEGRADED_DROPOUT_S = 0.06
#: Extra room noise of ``busan-office`` in office hours, dB (as ``behaviour.health``).
OFFICE_HOURS_EXTRA_DB = 5.0
#: The phrase the self-test plays (an in-domain request, so the in-domain recognizer can score it).
SELFTEST_PHRASE = "set an alarm for eight fifteen at night"
#: Recordings written per consenting unit.
DEFAULT_COUNT = 3
#: Voices of the simulated households (espeak-ng names, as in the test set).
VOICES: tuple[str, ...] = ("en-us+m3", "en-us+f2", "en+m1", "en-us+f4")

_FALLBACK_REQUESTS: tuple[tuple[str, str], ...] = (
    ("any technology news today", "news.read"),
    ("put on some jazz music", "music.play"),
    ("what is the capital of russia", "qa.capital"),
    ("cancel my dinner wednesday", "schedule.cancel"),
)


@lru_cache(maxsize=1)
def service_requests(max_words: int = 8) -> tuple[tuple[str, str], ...]:
    """``(text, intent)`` of the in-template commands of the shipped test set, at most ``max_words``
    words, in manifest order (a small built-in list if the manifest is missing)."""
    try:
        manifest = Path(str(files("resources") / "testset" / "manifest.jsonl"))
        out: dict[str, str] = {}
        for line in manifest.read_text(encoding="utf-8").splitlines():
            obj = json.loads(line) if line.strip() else {}
            if (obj.get("kind") == "command" and obj.get("in_templates") and obj.get("noise") == "none"
                    and obj.get("text") and len(obj["text"].split()) <= max_words):
                out.setdefault(obj["text"], obj["intent"])
        return tuple(out.items()) or _FALLBACK_REQUESTS
    except (OSError, ValueError) as exc:
        logger.warning("test-set manifest unreadable (%s); using the built-in requests", exc)
        return _FALLBACK_REQUESTS


def _active_level_dbfs(x: np.ndarray) -> float:
    """Mean power of the 20 ms frames within 40 dB of the loudest, dBFS (the test set's definition)."""
    n = SAMPLE_RATE // 50
    k = max(1, len(x) // n)
    p = np.mean(x[: k * n].astype(np.float64).reshape(k, -1) ** 2, axis=1) if len(x) >= n else np.array([np.mean(x ** 2)])
    db = 10 * np.log10(np.maximum(p, 1e-20))
    active = p[db >= db.max() - 40]
    return float(10 * np.log10(max(float(active.mean()), 1e-20)))


def speak(text: str, voice: str = "en-us+m3", speed_wpm: int = 155, *, level_dbfs: float = SPEECH_ACTIVE_DBFS,
          lead_s: float = 0.4) -> np.ndarray | None:
    """espeak-ng speech of ``text`` at ``level_dbfs`` active level with ``lead_s`` of silence around
    it; float32 ``(n,)`` at 16 kHz, or None when espeak-ng is not available."""
    from inference_core.errors import InferenceError
    from inference_core.tts import Synthesizer

    try:
        syn = Synthesizer(voice=voice, speed_wpm=speed_wpm).synthesize(text)
    except (InferenceError, OSError) as exc:
        logger.warning("cannot synthesize %r (%s)", text, exc)
        return None
    x = syn.samples.astype(np.float64)
    x *= 10 ** ((level_dbfs - _active_level_dbfs(x)) / 20)
    pad = np.zeros(int(lead_s * SAMPLE_RATE))
    return np.concatenate([pad, x, pad]).astype(np.float32)


def pink_noise(n: int, level_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f power) noise of ``n`` samples at ``level_dbfs`` RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spectrum / np.sqrt(f), n)
    x /= max(float(np.sqrt(np.mean(x ** 2))), 1e-12)
    return x * 10 ** (level_dbfs / 20)


def room_noise_dbfs(spec: UnitSpec, office_hours: bool = True) -> float:
    """The room's noise level at the unit's microphone, dBFS: the unit's noise floor (+5 dB for
    ``busan-office`` in office hours)."""
    return spec.noise_floor_dbfs + (OFFICE_HOURS_EXTRA_DB if office_hours and spec.site == "busan-office" else 0.0)


def apply_unit_acoustics(clean: np.ndarray, spec: UnitSpec, rng: np.random.Generator, *,
                         office_hours: bool = True) -> np.ndarray:
    """What the unit's microphone records of ``clean`` (float32 ``(n,)``, 16 kHz) in its room.

    Room noise at :func:`room_noise_dbfs`; a ``degraded_mic`` unit then loses
    :data:`DEGRADED_GAIN_DB` of sensitivity, adds hiss, full-scale crackle and dropouts. Output in
    [-1, 1] with ±1 LSB dither (a working converter never outputs exact zeros; a dropout does).
    """
    x = clean.astype(np.float64) + pink_noise(len(clean), room_noise_dbfs(spec, office_hours), rng)
    dither = (rng.random(len(x)) - rng.random(len(x))) / 32768.0
    if spec.degraded_mic:
        x = x * 10 ** (DEGRADED_GAIN_DB / 20) + rng.standard_normal(len(x)) * 10 ** (DEGRADED_HISS_DBFS / 20)
        hits = rng.random(len(x)) < DEGRADED_CRACKLE_SHARE
        x[hits] = np.sign(rng.standard_normal(int(hits.sum()))) * 1.0
        x = np.clip(x + dither, -1.0, 1.0)
        span = int(DEGRADED_DROPOUT_S * SAMPLE_RATE)
        for _ in range(max(1, int(len(x) / SAMPLE_RATE * DEGRADED_DROPOUTS_PER_S))):
            start = int(rng.integers(0, max(1, len(x) - span)))
            x[start:start + span] = 0.0
        return x.astype(np.float32)
    return np.clip(x + dither, -1.0, 1.0).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM mono WAV."""
    pcm = np.round(np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())


def _tone(freq_hz: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.2 * np.sin(2 * np.pi * freq_hz * t) * np.minimum(1.0, 20 * t)).astype(np.float32)


def write_consent(spec: UnitSpec, root: Path, recordings: bool | None = None) -> Path:
    """``<root>/etc/consent.json``: what the unit holds about its household's consent."""
    path = Path(root) / "etc" / "consent.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    value = spec.consent_recordings if recordings is None else recordings
    path.write_text(json.dumps({"recordings": bool(value), "feedback_text": bool(spec.consent_feedback_text)}) + "\n")
    return path


def write_unit_recordings(spec: UnitSpec, root: Path, count: int = DEFAULT_COUNT,
                          now: datetime | None = None) -> list[Path]:
    """Write ``count`` recent request recordings, ``index.jsonl`` and ``etc/consent.json``.

    Nothing is recorded for a household without ``consent_recordings`` (the directory stays
    empty). Files are ``recordings/req-NNNN.wav`` (16 kHz mono PCM16), newest last, their mtimes
    spread over the last hour. Returns the paths written.
    """
    root = Path(root)
    rec_dir = root / "recordings"
    rec_dir.mkdir(parents=True, exist_ok=True)
    write_consent(spec, root)
    if not spec.consent_recordings:
        return []
    rng = np.random.default_rng([spec.seed, spec.index, 0x2EC])
    pool = service_requests()
    picks = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    now = now or datetime.now(UTC)
    written, index = [], []
    for i, k in enumerate(picks):
        text, intent = pool[int(k)]
        voice = VOICES[int(rng.integers(len(VOICES)))]
        clean = speak(text, voice, int(rng.choice([140, 155, 170])))
        if clean is None:
            clean, text, intent = _tone(440.0 + 220.0 * i), None, None
        audio = apply_unit_acoustics(clean, spec, rng)
        path = rec_dir / f"req-{i + 1:04d}.wav"
        write_wav(path, audio)
        when = now - timedelta(minutes=10 * (count - i))
        ts = when.timestamp()
        os.utime(path, (ts, ts))
        index.append({"file": path.name, "recorded_at": when.isoformat(timespec="seconds"), "text": text,
                      "intent": intent, "voice": voice, "household_consent": True})
        written.append(path)
    (rec_dir / "index.jsonl").write_text("".join(json.dumps(e) + "\n" for e in index), encoding="utf-8")
    return written


@dataclass(frozen=True)
class SelftestCapture:
    """What the unit recorded while playing the reference phrase (``POST /v1/selftest``)."""

    phrase: str
    samples: np.ndarray
    sample_rate: int
    #: Seconds of room-only audio before the phrase starts.
    pre_roll_s: float

    def as_json(self) -> dict[str, Any]:
        import base64
        import io

        buf = io.BytesIO()
        with wave.open(buf, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.sample_rate)
            out.writeframes(np.round(np.clip(self.samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes())
        return {"phrase": self.phrase, "sample_rate": self.sample_rate, "pre_roll_s": self.pre_roll_s,
                "expected_capture_dbfs": SELFTEST_CAPTURE_DBFS,
                "capture_wav_base64": base64.b64encode(buf.getvalue()).decode("ascii")}


def selftest_capture(spec: UnitSpec, phrase: str = SELFTEST_PHRASE, *, run: int = 0,
                     office_hours: bool = True) -> SelftestCapture | None:
    """The unit plays ``phrase`` (espeak-ng) on its speaker and records it: 1 s of room noise, the
    phrase at :data:`SELFTEST_CAPTURE_DBFS` through the room and microphone chain, 0.4 s after.
    ``run`` varies the noise between self-tests. None when espeak-ng is missing."""
    clean = speak(phrase, "en-us", 155, level_dbfs=SELFTEST_CAPTURE_DBFS, lead_s=0.4)  # the unit's TTS voice
    if clean is None:
        return None
    pre = np.zeros(int(0.6 * SAMPLE_RATE), dtype=np.float32)  # + the 0.4 s lead = 1 s of room only
    rng = np.random.default_rng([spec.seed, spec.index, 0x5E1F, run])
    audio = apply_unit_acoustics(np.concatenate([pre, clean]), spec, rng, office_hours=office_hours)
    return SelftestCapture(phrase, audio, SAMPLE_RATE, 1.0)
