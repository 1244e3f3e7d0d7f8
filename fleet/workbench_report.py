"""The workbench's findings: requirement verdicts, the overall verdict with why, JSON and HTML.

:func:`requirement_verdicts` judges the service requirements on what was examined (targets from
``inference_core.pipeline.REQUIREMENTS`` and the 60 dB noise requirement of
``inference_core.quality.NOISE_LIMIT_DB_SPL``). :func:`overall_verdict` picks one of
:data:`VERDICTS` in this order, each with the reasons and the suggested action:

1. ``unreachable`` — nothing could be collected (no SSH connection) and no self-test answered;
2. ``hardware`` — the self-test says the microphone lost sensitivity, clips or drops out, or the
   recordings clip / drop out / hold no speech at all while the self-test could not run;
3. ``room`` — the self-test or most recordings show a loud room (noise floor above −45 dBFS, SNR
   below 10 dB, or noise estimated above 60 dB SPL) with a healthy microphone;
4. ``model`` — on clean recordings with known reference transcripts, answer accuracy < 80 % or
   STT accuracy < 60 % (:data:`MODEL_STT_ACCURACY`); the stage is named (``stt`` when QA on the reference transcript is
   right, ``qa`` when it is wrong too), beside the fleet's figures for the same versions;
5. ``ok`` — the examined recordings meet the requirements and the self-test passed;
6. ``inconclusive`` — too little to judge (no recordings examined, or the collection was cut short
   before anything decisive was seen).

:func:`render_html` writes a self-contained HTML file (jinja2 with autoescape: text from units and
transcripts can never inject markup) with the recordings as playable ``data:`` URIs, transcript
alignments and small SVG charts.
"""

from __future__ import annotations

import base64
import json
import logging
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: On clean recordings, STT accuracy below this (or answer accuracy below 80 %) makes the verdict
#: ``model``; between it and the 90 % requirement with the answers right, the requirement fails but
#: the unit is not called faulty (a few recordings are a small sample).
MODEL_STT_ACCURACY = 0.60
VERDICTS: tuple[str, ...] = ("ok", "room", "hardware", "model", "unreachable", "inconclusive")

ACTIONS: dict[str, str] = {
    "ok": "No fault found on what was examined: tell the household, and ask for a recording of the next "
          "failure (or run the self-test again then) before closing the ticket.",
    "room": "No repair needed: the unit works but its room is louder than the service is specified for "
            "(60 dB). Advise the household to move the unit away from the noise source (TV, kitchen, open-plan "
            "office) or to speak closer; re-run the self-test afterwards.",
    "hardware": "Replace the microphone assembly: move the ticket on to waiting_for_parts / in_repair. The "
                "self-test history shows when it started to fail.",
    "model": "The unit's model version misbehaves on clean audio: pin the unit to its previous version "
             "(`speakerops unit pin SERIAL --kind KIND`), report the version to the model owners, and add the "
             "recordings to a regression test set (`speakerops unit add-case`).",
    "unreachable": "The unit could not be reached: check that it is powered and online, that its sshd runs and "
                   "its host key is approved (`speakerops units host-keys`), then diagnose again.",
    "inconclusive": "Not enough evidence to decide: diagnose again when the unit is reachable and has recent "
                    "recordings (with the household's consent), or run the self-test on site.",
}


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def aggregate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures over the examined recordings (those without ``error``)."""
    import jiwer

    from inference_core.pipeline import normalize_text

    ok = [i for i in items if not i.get("error")]
    refs = [(normalize_text(i.get("reference")), normalize_text(i.get("transcript"))) for i in ok if i.get("reference")]
    refs = [(r, h) for r, h in refs if r]
    stt_acc = None
    if refs:
        out = jiwer.process_words([r for r, _ in refs], [h for _, h in refs])
        stt_acc = max(0.0, 1.0 - float(out.wer))
    judged = [i for i in ok if i.get("expected_intent")]
    ans_acc = sum(i.get("intent") == i["expected_intent"] for i in judged) / len(judged) if judged else None
    qa_ref = [i["qa_on_reference"]["correct"] for i in judged if i.get("qa_on_reference", {}).get("correct") is not None]
    clean = [i for i in ok if i.get("speech") and not i.get("noisy") and not i.get("environment", {}).get("clipped")]
    clean_judged = [i for i in clean if i.get("expected_intent")]
    clean_refs = [(normalize_text(i["reference"]), normalize_text(i.get("transcript"))) for i in clean if i.get("reference")]
    clean_stt = None
    if clean_refs:
        clean_stt = max(0.0, 1.0 - float(jiwer.process_words([r for r, _ in clean_refs],
                                                             [h for _, h in clean_refs]).wer))
    env = [i.get("environment") or {} for i in ok]
    med = lambda key: (round(float(np.median(v)), 2) if (v := [e[key] for e in env if e.get(key) is not None]) else None)  # noqa: E731
    timings = [i.get("timings_ms") or {} for i in ok if i.get("speech")]
    server = [t["server"] for t in timings if "server" in t]
    mos = [i["mos_answer"]["ovrl"] for i in ok if i.get("mos_answer")]
    rt = [i["tts_round_trip"]["wer"] for i in ok if (i.get("tts_round_trip") or {}).get("wer") is not None]
    stages: dict[str, int] = {}
    for i in items:
        stages[i.get("stage", "unknown")] = stages.get(i.get("stage", "unknown"), 0) + 1
    return {"recordings": len(items), "examined": len(ok), "unreadable": len(items) - len(ok),
            "with_speech": sum(bool(i.get("speech")) for i in ok), "noisy": sum(bool(i.get("noisy")) for i in ok),
            "clipped": sum(bool((i.get("environment") or {}).get("clipped")) for i in ok),
            "stt_accuracy": None if stt_acc is None else round(stt_acc, 4),
            "answer_accuracy": None if ans_acc is None else round(ans_acc, 4),
            "qa_on_reference_accuracy": round(sum(qa_ref) / len(qa_ref), 4) if qa_ref else None,
            "clean_recordings": len(clean), "clean_judged": len(clean_judged),
            "clean_stt_accuracy": None if clean_stt is None else round(clean_stt, 4),
            "clean_answer_accuracy": (round(sum(i.get("intent") == i["expected_intent"] for i in clean_judged)
                                            / len(clean_judged), 4) if clean_judged else None),
            "noise_floor_dbfs_median": med("noise_floor_dbfs"), "snr_db_median": med("snr_db"),
            "noise_db_spl_est_median": med("noise_db_spl_est"),
            "server_ms_p95": round(float(np.percentile(server, 95)), 1) if server else None,
            "mos_answer_mean": round(float(np.mean(mos)), 3) if mos else None,
            "tts_round_trip_wer_mean": round(float(np.mean(rt)), 4) if rt else None,
            "stages": stages}


def requirement_verdicts(agg: dict[str, Any], logs: dict[str, Any]) -> list[dict[str, Any]]:
    """Pass/fail (None: not measurable here) per service requirement, with the value and its source."""
    from inference_core.pipeline import CLIENT_OVERHEAD_MS, REQUIREMENTS
    from inference_core.quality import NOISE_LIMIT_DB_SPL

    def row(key: str, value: float | None, note: str, passed: bool | None = None) -> dict[str, Any]:
        req = REQUIREMENTS[key]
        if passed is None and value is not None:
            passed = req.passes(value)
        return {"key": key, "label": req.label, "target": req.target, "value": value, "passed": passed, "note": note}

    out = [
        row("stt_accuracy", agg["stt_accuracy"], f"word accuracy over {agg['examined']} replayed recording(s) with a "
            "reference transcript (1 − WER)"),
        row("answer_accuracy", agg["answer_accuracy"], "intent right vs what the household meant (recordings index)"),
        row("mos", agg["mos_answer_mean"], "DNSMOS P.835 OVRL of the synthesized answers (an estimate)"
            if agg["mos_answer_mean"] is not None else "not measured (MOS off for this run)"),
    ]
    e2e = logs.get("e2e_p95_ms")
    out.append(row("end_to_end_latency", e2e, "p95 of the unit's own voice.log (e2e_ms)" if e2e is not None else
                   "the collected logs report no end-to-end times"))
    server = agg["server_ms_p95"]
    out.append(row("server_latency", server, f"p95 of the local replay's stt+qa+tts on this machine (the server "
                   f"part; end to end adds ≈ {CLIENT_OVERHEAD_MS:.0f} ms)" if server is not None else "nothing replayed"))
    noise = agg["noise_db_spl_est_median"]
    if noise is None:
        passed, note = None, "no noise estimate (no speech with pauses)"
    elif noise > NOISE_LIMIT_DB_SPL:
        passed, note = None, (f"median noise ≈ {noise:.0f} dB SPL, beyond the {NOISE_LIMIT_DB_SPL:.0f} dB the service "
                              "is specified for (estimated from SNR at normal vocal effort)")
    else:
        acc = agg["answer_accuracy"]
        passed = None if acc is None else acc >= REQUIREMENTS["answer_accuracy"].target
        note = f"median noise ≈ {noise:.0f} dB SPL (within 60 dB); handled = answers right at that noise"
    out.append({"key": "noise", "label": f"Noise ≤ {NOISE_LIMIT_DB_SPL:.0f} dB handled", "target": NOISE_LIMIT_DB_SPL,
                "value": noise, "passed": passed, "note": note})
    return out


def overall_verdict(collection: dict[str, Any], agg: dict[str, Any], selftest: dict[str, Any] | None,
                    fleet: dict[str, Any], trend: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"verdict", "why": [str], "action", "stage"}`` (see the module docstring for the rules)."""
    why: list[str] = []
    status = collection.get("status")
    st = selftest or {}
    st_verdict = st.get("verdict")
    examined = agg["examined"]
    if status == "unreachable" and not collection.get("files") and st_verdict in (None, "failed"):
        why.append(f"no SSH connection: {collection.get('error')}")
        if st.get("error"):
            why.append(f"the self-test did not answer either: {st['error']}")
        return _v("unreachable", why)
    if status == "unreachable":
        why.append(f"SSH failed ({collection.get('error')}); judged on the self-test alone")
    if st_verdict == "hardware":
        why.append(f"self-test: {st.get('why')}")
        if trend and trend.get("degrading"):
            why.append(f"the self-test history shows it degrading: capture level {trend.get('capture_level_change_db')} dB, "
                       f"SNR {trend.get('snr_change_db')} dB since the first self-test")
        if agg["clipped"]:
            why.append(f"{agg['clipped']} of {examined} recording(s) clip")
        if examined and not agg["with_speech"]:
            why.append(f"no speech could be found in any of the {examined} recording(s)")
        return _v("hardware", why)
    if st_verdict in (None, "failed") and examined and (agg["clipped"] * 2 > examined or not agg["with_speech"]):
        why.append(f"{agg['clipped']} of {examined} recording(s) clip and {examined - agg['with_speech']} hold no "
                   "speech at all; the self-test could not confirm the microphone")
        return _v("hardware", why)
    room_recs = examined and agg["noisy"] * 2 > examined
    if st_verdict == "room" or room_recs:
        if st_verdict == "room":
            why.append(f"self-test: {st.get('why')}")
        if room_recs:
            why.append(f"{agg['noisy']} of {examined} recording(s) are noisy: median noise floor "
                       f"{agg['noise_floor_dbfs_median']} dBFS, SNR {agg['snr_db_median']} dB, ≈ "
                       f"{agg['noise_db_spl_est_median']} dB SPL")
        if agg["answer_accuracy"] is not None:
            why.append(f"answers right on {_pct(agg['answer_accuracy'])} of them; the microphone captures normally")
        return _v("room", why)
    stt_bad = agg["clean_stt_accuracy"] is not None and agg["clean_stt_accuracy"] < MODEL_STT_ACCURACY
    ans_bad = agg["clean_answer_accuracy"] is not None and agg["clean_answer_accuracy"] < 0.80
    if stt_bad or ans_bad:
        qa_ref = agg["qa_on_reference_accuracy"]
        stage = "qa" if qa_ref is not None and qa_ref < 0.80 else "stt"
        why.append(f"on {agg['clean_recordings']} clean recording(s) (quiet room, no clipping): STT accuracy "
                   f"{_pct(agg['clean_stt_accuracy'])} (requirement ≥ 90 %), answer accuracy "
                   f"{_pct(agg['clean_answer_accuracy'])} (≥ 80 %)")
        why.append("QA on the reference transcripts is right on " + _pct(qa_ref) + ": the error is in "
                   + ("the QA model (it is wrong even on the right words)" if stage == "qa" else
                      "speech recognition (the words were misheard; QA gets them right from the reference)"))
        if st_verdict == "ok":
            why.append("the self-test passed: microphone and room are fine")
        if fleet.get("available"):
            u, f = fleet.get("unit", {}), fleet.get("fleet", {})
            why.append(f"fleet on the same versions: error rate {_pct(f.get('error_rate'))} over "
                       f"{fleet.get('fleet_units')} unit(s) vs this unit's {_pct(u.get('error_rate'))}")
        return _v("model", why, stage)
    if not examined:
        why.append("no recording could be examined: " + _no_recordings_reason(collection, agg))
        if st_verdict == "ok":
            why.append(f"the self-test passed ({st.get('why')})")
        return _v("inconclusive", why)
    if status in ("partial", "cancelled"):
        why.append(f"the collection was cut short ({collection.get('error')}); {examined} recording(s) examined "
                   "looked fine, but the rest could not be checked")
        return _v("inconclusive", why)
    why.append(f"{examined} recording(s) replayed: STT accuracy {_pct(agg['stt_accuracy'])}, answer accuracy "
               f"{_pct(agg['answer_accuracy'])}, median SNR {agg['snr_db_median']} dB")
    if agg["stt_accuracy"] is not None and agg["stt_accuracy"] < 0.90:
        why.append("STT accuracy is below the 90 % requirement on these few recordings, but the answers were right: "
                   "not a fault of this unit (see the requirement table; compare with the fleet's figures)")
    if st_verdict == "ok":
        why.append(f"self-test passed: {st.get('why')}")
    elif st_verdict in (None, "failed"):
        why.append("no self-test result (" + (st.get("error") or "not run") + ")")
    return _v("ok", why)


def _no_recordings_reason(collection: dict[str, Any], agg: dict[str, Any]) -> str:
    consent = collection.get("consent") or {}
    if consent and not consent.get("collected"):
        return consent.get("reason", "no consent")
    if agg["recordings"]:
        return f"all {agg['recordings']} collected recording(s) were unreadable"
    if collection.get("status") in ("partial", "cancelled", "unreachable"):
        return f"the collection stopped early ({collection.get('error')})"
    return "the unit holds no recordings"


def _v(verdict: str, why: list[str], stage: str | None = None) -> dict[str, Any]:
    action = ACTIONS[verdict]
    if verdict == "model" and stage:
        action = action.replace("KIND", stage)
    return {"verdict": verdict, "why": why, "action": action, "stage": stage}


def examined_summary(collection: dict[str, Any], items: list[dict[str, Any]], selftest: dict[str, Any] | None) -> dict:
    """What could and could not be examined, as sentences."""
    could, could_not = [], []
    for f in collection.get("files", []):
        if f["complete"]:
            could.append(f"{f['kind']} {f['remote']} ({f['bytes']:,} bytes"
                         + (f", last {f['bytes']:,} of {f['remote_bytes']:,}" if f.get("tail_from") else "")
                         + (f", resumed at byte {f['resumed_from']:,}" if f.get("resumed_from") else "") + ")")
        else:
            could_not.append(f"{f['kind']} {f['remote']}: transfer incomplete ({f['bytes']:,} of "
                             f"{f['remote_bytes'] - f.get('tail_from', 0):,} bytes)")
    could_not += [f"{s['remote']}: {s['reason']}" for s in collection.get("skipped", [])]
    could_not += [f"recording {i['file']}: {i['error']}" for i in items if i.get("error")]
    if selftest is not None:
        (could if selftest.get("verdict") != "failed" else could_not).append(
            "self-test: " + (selftest.get("why") or selftest.get("error") or ""))
    return {"could": could, "could_not": could_not}


def write_json(report: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)
    return path


# -- HTML -----------------------------------------------------------------------------------------
def _bar_svg(rows: list[tuple[str, float]], unit: str, width: int = 420) -> str:
    """A small horizontal bar chart as inline SVG (labels escaped by the caller's template)."""
    from markupsafe import escape

    if not rows:
        return ""
    top = max(v for _, v in rows) or 1.0
    h = 18 * len(rows) + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img">']
    for i, (label, v) in enumerate(rows):
        w = int((width - 170) * v / top)
        y = 18 * i + 4
        parts.append(f'<text x="0" y="{y + 12}" font-size="11">{escape(label)}</text>'
                     f'<rect x="110" y="{y}" width="{max(w, 1)}" height="13" fill="#0072B2"/>'
                     f'<text x="{114 + w}" y="{y + 12}" font-size="11">{v:,.0f} {escape(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _trend_svg(history: list[dict[str, Any]], width: int = 420, height: int = 120) -> str:
    pts = [(h["at"], h.get("capture_level_dbfs"), h.get("snr_db")) for h in history]
    pts = [p for p in pts if p[1] is not None]
    if len(pts) < 2:
        return ""
    lo = min(min(p[1] for p in pts), min((p[2] or 0) for p in pts), -60.0)
    hi = max(max(p[1] for p in pts), max((p[2] or 0) for p in pts), 0.0)
    def xy(i: int, v: float) -> str:
        return f"{30 + i * (width - 40) / (len(pts) - 1):.1f},{10 + (hi - v) * (height - 30) / (hi - lo or 1):.1f}"
    level = " ".join(xy(i, p[1]) for i, p in enumerate(pts))
    snr = " ".join(xy(i, p[2]) for i, p in enumerate(pts) if p[2] is not None)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
            f'<polyline points="{level}" fill="none" stroke="#0072B2" stroke-width="2"/>'
            f'<polyline points="{snr}" fill="none" stroke="#E69F00" stroke-width="2" stroke-dasharray="4 2"/>'
            f'<text x="0" y="{height - 4}" font-size="10">blue: capture level dBFS · orange dashed: SNR dB · '
            f'{len(pts)} self-tests, oldest left</text></svg>')


def _audio_uri(path: Path, max_bytes: int = 2 << 20) -> str | None:
    try:
        if path.stat().st_size > max_bytes:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    kind = {".flac": "audio/flac", ".ogg": "audio/ogg"}.get(path.suffix.lower(), "audio/wav")
    return f"data:{kind};base64," + base64.b64encode(data).decode("ascii")


def render_html(report: dict[str, Any], path: Path, *, run_dir: Path, selftest_audio: str | None = None) -> Path:
    """Write the report as one self-contained HTML file (recordings embedded as ``data:`` URIs)."""
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(files("resources") / "reports")), autoescape=True,
                             undefined=jinja2.ChainableUndefined)
    env.filters["pct"] = _pct
    env.filters["num"] = lambda v, d=1: "—" if v is None else f"{v:,.{d}f}"
    recs = []
    for item in report.get("recordings", []):
        timings = item.get("timings_ms") or {}
        bars = [(k, float(timings[k])) for k in ("decode", "vad", "denoise", "stt", "qa", "tts") if k in timings]
        recs.append({**item, "audio_uri": _audio_uri(run_dir / item["local"]) if item.get("local") else None,
                     "chart": Markup(_bar_svg(bars, "ms"))})
    trend_svg = Markup(_trend_svg((report.get("selftest") or {}).get("history") or []))
    html = env.get_template("workbench.html.j2").render(r=report, recs=recs, trend_svg=trend_svg,
                                                        selftest_audio=selftest_audio)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
