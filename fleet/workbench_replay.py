"""Replay a unit's recordings locally with the unit's own model versions, and attribute errors.

* :func:`resolve_bundles` — the bundles of the versions the unit runs, from the model registry
  (``fleet.registry.get_version`` → the stored, verified copy); a version that is not registered,
  or whose stored copy does not verify, falls back to the default bundle of its kind
  (``inference_core.bundles.DEFAULT_VERSIONS``) and the choice says so.
* :class:`LoopCache` — one :class:`~inference_core.pipeline.VoiceLoop` per set of bundles and
  options, loaded once per process (loading takes seconds; the console diagnoses many units).
* :func:`replay` — every collected recording through the loop (stage timings, transcript in domain
  and from the general LM, intent, answer, environment, speakers), plus, per recording:
  QA re-run on the reference transcript (separates STT errors from QA errors) and a TTS round trip
  (the answer synthesized, then recognized by the general LM: its WER), and the stage the error is
  attributed to (:func:`attribute`).
* :func:`log_figures` — requests, errors and end-to-end times the unit's own voice log reports.
* :func:`fleet_figures` — error rate, microphone noise and p95 end to end of the fleet's units on
  the same model versions, beside the unit's own (heartbeats of the last 24 h).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.errors import RegistryError
from fleet.models import STAGES, Heartbeat, Unit
from fleet.workbench_collect import Collection

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
Cancelled = Callable[[], bool]

#: A recording counts as noisy (the room) below this SNR, dB, or above this noise floor, dBFS.
NOISY_SNR_DB = 10.0
NOISY_FLOOR_DBFS = -45.0
#: Window of heartbeats behind :func:`fleet_figures`.
FLEET_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class ModelChoice:
    """Which bundle the replay runs for one kind, and why."""

    kind: str
    wanted: str | None
    used: str
    source: str  # registry | default
    path: str
    note: str = ""


def resolve_bundles(session: Session, versions: dict[str, str | None], models_root: Path) -> tuple[dict, list[ModelChoice]]:
    """The bundles to replay with: the registry's stored copy of each version the unit runs.

    Parameters
    ----------
    versions
        ``{"stt": "stt-1.4.0", ...}`` as the unit reports them (None: unknown).
    models_root
        Where the default bundles are (built on first use, ~40 s).

    Returns
    -------
    (dict, list of ModelChoice)
        ``{kind: inference_core.bundles.Bundle}`` and, per kind, what was used and why.
    """
    from fleet.registry import get_version
    from inference_core.bundles import DEFAULT_VERSIONS, MODEL_KINDS, build_default_bundles, bundle_dir, load_bundle
    from inference_core.errors import ModelLoadError

    bundles, choices = {}, []
    for kind in MODEL_KINDS:
        wanted = versions.get(kind)
        note = ""
        if wanted:
            try:
                mv = get_version(session, wanted, kind)
                b = load_bundle(Path(mv.source_path))
                bundles[kind] = b
                choices.append(ModelChoice(kind, wanted, b.version, "registry", str(b.path)))
                continue
            except RegistryError:
                note = f"{kind} {wanted} is not in the model registry"
            except (ModelLoadError, OSError, TypeError) as exc:
                note = f"the registry's copy of {kind} {wanted} does not load ({exc})"
        else:
            note = f"the unit's {kind} version is unknown"
        default = DEFAULT_VERSIONS[kind]
        path = bundle_dir(models_root, kind, default)
        if not (path / "manifest.json").is_file():
            logger.warning("building the default model bundles in %s (first use)", models_root)
            build_default_bundles(models_root)
        bundles[kind] = load_bundle(path)
        choices.append(ModelChoice(kind, wanted, default, "default", str(path),
                                   f"{note}: replayed with the default bundle {default} instead, so figures of "
                                   f"this stage describe {default}, not the unit's version"))
    return bundles, choices


class LoopCache:
    """Voice loops by bundles and options, loaded once (thread-safe)."""

    def __init__(self) -> None:
        self._loops: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def get(self, bundles: dict, options: Any = None) -> Any:
        from inference_core.pipeline import VoiceLoop

        key = (tuple(sorted((k, str(b.path)) for k, b in bundles.items())), repr(options))
        with self._lock:
            if key not in self._loops:
                self._loops[key] = VoiceLoop(bundles, options)
            return self._loops[key]


def attribute(item: dict[str, Any]) -> str:
    """The stage an error on one recording is attributed to.

    ``unreadable`` (decode), ``no_speech`` (nothing heard: microphone or room), ``qa`` (the intent
    is wrong even from the reference transcript), ``stt`` (misheard: QA on the reference is
    right), ``ok``, or ``unknown`` (no reference to judge against).
    """
    if item.get("error"):
        return "unreadable"
    if not item.get("speech"):
        return "no_speech"
    expected = item.get("expected_intent")
    if not expected:
        return "unknown"
    if item.get("intent") == expected and (item.get("wer") is None or item["wer"] <= 0.5):
        return "ok"
    if item.get("qa_on_reference", {}).get("intent") not in (None, expected):
        return "qa"
    return "stt"


def _noisy(env: dict[str, Any]) -> bool:
    snr, floor = env.get("snr_db"), env.get("noise_floor_dbfs")
    return bool((snr is not None and snr < NOISY_SNR_DB) or (floor is not None and floor > NOISY_FLOOR_DBFS)
                or env.get("verdict") == "too_noisy")


def replay(loop: Any, collection: Collection, *, tts_round_trip: bool = True, progress: Progress | None = None,
           cancelled: Cancelled | None = None) -> list[dict[str, Any]]:
    """Run every collected recording through ``loop``; one dict per recording (never raises for
    bad audio: ``error`` says why it could not be examined). Stops early when ``cancelled()``."""
    from inference_core.pipeline import normalize_text

    progress = progress or (lambda f, m: None)
    recs = collection.recordings()
    out: list[dict[str, Any]] = []
    for i, f in enumerate(recs):
        if cancelled is not None and cancelled():
            break
        name = Path(f.local).name
        progress(i / max(1, len(recs)), f"replaying {name} ({i + 1}/{len(recs)})")
        entry = collection.index.get(name, {})
        reference, expected = entry.get("text"), entry.get("intent")
        try:
            r = loop.run(collection.path(f), reference, expected)
        except Exception as exc:  # noqa: BLE001 - one recording must not stop the others
            logger.exception("replay of %s failed", name)
            out.append({"file": name, "local": f.local, "error": f"internal error: {exc!r}", "speech": False,
                        "reference": reference, "expected_intent": expected, "stage": "unreadable"})
            continue
        item = r.to_dict()
        item.update(file=name, local=f.local, expected_intent=expected, recorded_at=entry.get("recorded_at"))
        if reference and not r.error:
            ref_intent = loop.classifier.classify(normalize_text(reference))
            item["qa_on_reference"] = {"intent": ref_intent.intent, "correct": None if not expected
                                       else ref_intent.intent == expected}
        if tts_round_trip and r.answer_audio is not None and r.answer:
            item["tts_round_trip"] = _round_trip(loop, r.answer, r.answer_audio)
        item["noisy"] = _noisy(r.environment) if not r.error else None
        item["stage"] = attribute(item)
        out.append(item)
    progress(1.0, "replayed")
    return out


def _round_trip(loop: Any, text: str, samples: np.ndarray) -> dict[str, Any]:
    """The synthesized answer recognized again by the general LM: its WER (TTS intelligibility)."""
    import jiwer

    from inference_core.pipeline import normalize_text
    from inference_core.stt import GeneralRecognizer

    recognizer = getattr(loop, "_general", None)
    if recognizer is None:
        recognizer = getattr(loop, "_workbench_general", None)
        if recognizer is None:
            recognizer = GeneralRecognizer()
            loop._workbench_general = recognizer
    try:
        heard = recognizer.transcribe(samples).text
    except Exception as exc:  # noqa: BLE001 - a figure, not a stage
        return {"error": str(exc)}
    ref = normalize_text(text)
    return {"text": text, "heard": heard, "wer": round(float(jiwer.wer(ref, normalize_text(heard))), 4) if ref else None,
            "recognizer": "pocketsphinx general LM (its own WER on clean espeak-ng commands ≈ 0.76, FIELD_NOTES)"}


_E2E = re.compile(r"e2e_ms=(\d+(?:\.\d+)?)")


def log_figures(collection: Collection) -> dict[str, Any]:
    """Requests, errors and end-to-end times (ms) from the collected ``voice.log`` tails."""
    lines = requests = errors = 0
    e2e: list[float] = []
    messages: list[str] = []
    for f in collection.files:
        if f.kind != "log" or not f.complete:
            continue
        try:
            text = collection.path(f).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            lines += 1
            if "request ok" in line or "request failed" in line:
                requests += 1
            if " ERROR " in line:
                errors += 1
                if len(messages) < 5:
                    messages.append(line.strip()[:200])
            m = _E2E.search(line)
            if m:
                e2e.append(float(m.group(1)))
    return {"lines": lines, "requests": requests, "errors": errors,
            "error_rate": round(errors / requests, 4) if requests else None,
            "e2e_p95_ms": round(float(np.percentile(e2e, 95)), 1) if e2e else None,
            "e2e_median_ms": round(float(np.median(e2e)), 1) if e2e else None, "error_lines": messages}


def _figures(rows: list[Any]) -> dict[str, Any]:
    req = sum(r.requests for r in rows)
    err = sum(r.errors for r in rows)
    e2e: list[float] = []
    for r in rows:
        series = [(r.latency_ms or {}).get(s) or [] for s in STAGES]
        n = min((len(s) for s in series), default=0)
        e2e += [float(sum(s[i] for s in series)) for i in range(n)]
    return {"heartbeats": len(rows), "requests": req, "errors": err,
            "error_rate": round(err / req, 4) if req else None,
            "mic_noise_dbfs": round(float(np.mean([r.mic_noise_dbfs for r in rows])), 1) if rows else None,
            "e2e_p95_ms": round(float(np.percentile(e2e, 95)), 1) if e2e else None}


def fleet_figures(session: Session, serial: str, versions: dict[str, str | None], now: datetime,
                  window: timedelta = FLEET_WINDOW) -> dict[str, Any]:
    """The unit's heartbeat figures beside those of the other units on the same model versions.

    Returns
    -------
    dict
        ``unit`` and ``fleet``: ``heartbeats``, ``requests``, ``errors``, ``error_rate`` (0–1),
        ``mic_noise_dbfs`` (mean), ``e2e_p95_ms``; ``fleet_units``; ``available`` False (with
        ``why``) when no heartbeat of the window covers them.
    """
    since = now - window
    cond = [Heartbeat.received_at > since, Heartbeat.received_at <= now]
    for kind in ("stt", "qa", "tts"):
        if versions.get(kind):
            cond.append(getattr(Heartbeat, f"{kind}_version") == versions[kind])
    rows = session.execute(select(Heartbeat, Unit.serial).join(Unit, Unit.id == Heartbeat.unit_id).where(*cond)
                           .order_by(Heartbeat.received_at.desc()).limit(50_000)).all()
    mine = [hb for hb, s in rows if s == serial]
    others = [hb for hb, s in rows if s != serial]
    if not rows:
        return {"available": False, "window_s": window.total_seconds(), "versions": versions,
                "why": "no heartbeats of units on these model versions in the last 24 h (is the collector running?)"}
    return {"available": True, "window_s": window.total_seconds(), "versions": versions,
            "unit": _figures(mine), "fleet": _figures(others),
            "fleet_units": len({s for _, s in rows if s != serial})}


def choices_as_dicts(choices: list[ModelChoice]) -> list[dict[str, Any]]:
    return [asdict(c) for c in choices]
