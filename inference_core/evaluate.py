"""Batch evaluation of the voice loop on a test-set manifest (docs/testset.md).

``evaluate(manifest, loop)`` runs every utterance and returns the report as plain data:

* ``utterances`` — one entry per manifest line, in order: ``audio``, ``transcript``, ``intent``,
  ``feature``, ``slots``, ``speakers``, ``timings_ms``, ``mos``, ``error`` (and the reference,
  WER, general transcript, baseline intent, answer; ``confidence`` is the intent's,
  ``stt_confidence`` the transcript's, ``intent_source`` where the intent came from and
  ``transcribed_span_s`` the first speaker's span when only that turn was transcribed);
* ``summary`` — WER/CER, intent and feature accuracy, per-intent precision/recall/F1 and the
  confusion matrix (scikit-learn), slot accuracy, non-speech and out-of-domain rejection,
  speaker-count accuracy, latency p50/p95 per stage, mean MOS, and pass/fail per service
  requirement (``inference_core.pipeline.REQUIREMENTS``);
* ``baseline`` — the same figures for the floor: the bundled general pocketsphinx LM with a
  keyword-rule intent matcher;
* ``breakdowns`` — WER and accuracies per value of every other manifest field (voice, gender,
  accent, snr_db, speakers, kind …), so coverage gaps show.

``compare(a, b)`` diffs two reports of the same manifest per utterance, with bootstrap 95 %
confidence intervals of the differences.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from inference_core.pipeline import (
    REQUIREMENTS,
    STAGES,
    Cancelled,
    LoopResult,
    Report,
    Utterance,
    VoiceLoop,
    end_to_end_estimate_ms,
    normalize_text,
)

logger = logging.getLogger(__name__)

#: Fields of a manifest line with a meaning of their own; every other field is a breakdown key.
CORE_FIELDS = ("audio", "text", "intent", "feature", "slots", "speakers")
#: Breakdown keys skipped because they identify single utterances.
_NOT_BREAKDOWNS = {"id", "utterance_id"}
#: Target for the speaker-count accuracy on two-speaker clips (issue #3's target).
SPEAKER_COUNT_TARGET = 0.90


@dataclass
class ManifestEntry:
    """One manifest line: the utterance and its ground truth, or why the line is unusable."""

    line: int
    audio: Path | None
    text: str | None = None
    intent: str | None = None
    feature: str | None = None
    slots: dict[str, str] = field(default_factory=dict)
    speakers: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def read_manifest(path: Path) -> list[ManifestEntry]:
    """Parse a JSONL manifest; a bad line becomes an entry with ``error`` (the rest still run).

    Raises
    ------
    FileNotFoundError
        If the manifest itself does not exist.
    """
    path = Path(path)
    entries = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict) or not isinstance(obj.get("audio"), str):
                raise ValueError('each line must be an object with an "audio" path')
            intent = obj.get("intent")
            feature = obj.get("feature") or (intent.split(".")[0] if isinstance(intent, str) else None)
            speakers = obj.get("speakers")
            entries.append(ManifestEntry(
                line=lineno, audio=(path.parent / obj["audio"]), text=obj.get("text"), intent=intent,
                feature=feature, slots={str(k): str(v) for k, v in (obj.get("slots") or {}).items()},
                speakers=int(speakers) if speakers is not None else None,
                extra={k: v for k, v in obj.items() if k not in CORE_FIELDS}))
        except (ValueError, TypeError) as exc:
            entries.append(ManifestEntry(line=lineno, audio=None, error=f"manifest line {lineno}: {exc}"))
    return entries


def _utterance_row(entry: ManifestEntry, r: LoopResult | None, baseline_intent: str | None) -> dict[str, Any]:
    """One ``utterances`` entry; every entry has the same keys (None where unknown)."""
    row: dict[str, Any] = {
        "audio": str(entry.audio) if entry.audio else None, "line": entry.line, "transcript": None,
        "intent": None, "feature": None, "slots": {}, "speakers": None, "timings_ms": {}, "mos": None,
        "error": entry.error, "reference": entry.text, "expected_intent": entry.intent,
        "expected_feature": entry.feature, "expected_slots": entry.slots, "expected_speakers": entry.speakers,
        "wer": None, "general_transcript": None, "baseline_intent": baseline_intent, "confidence": None,
        "rejected": None, "stt_confidence": None, "intent_source": None, "transcribed_span_s": None,
        "answer": None, "speech": None, "environment": {},
        **{f"x_{k}": v for k, v in entry.extra.items()},
    }
    if r is None:
        return row
    timings = dict(r.timings_ms)
    if (estimate := end_to_end_estimate_ms(timings)) is not None:
        timings["end_to_end_estimate"] = estimate
    row.update(error=r.error, slots=r.slots, speakers=r.speakers, timings_ms=timings,
               mos={"input": r.mos_input, "answer": r.mos_answer}, wer=r.wer,
               general_transcript=r.general_transcript, confidence=r.intent_confidence, rejected=r.rejected,
               stt_confidence=r.transcript_confidence, intent_source=r.intent_source,
               transcribed_span_s=r.transcribed_span_s, answer=r.answer, speech=r.speech, environment=r.environment)
    if not r.error:
        row.update(transcript=r.transcript, intent=r.intent, feature=r.feature)
    return row


def evaluate(manifest: Path, loop: VoiceLoop, *, report: Report | None = None, cancelled: Cancelled | None = None,
             limit: int | None = None) -> dict[str, Any]:
    """Run the loop on every utterance of ``manifest`` and summarize (see the module docstring).

    Parameters
    ----------
    limit
        Evaluate only the first ``limit`` lines (for quick checks).
    """
    from inference_core.qa import KeywordIntentMatcher

    entries = read_manifest(manifest)[:limit]
    baseline = KeywordIntentMatcher(loop.templates)
    runnable = [e for e in entries if e.error is None]
    results: dict[int, LoopResult] = {}
    utterances = [Utterance(e.audio, e.text, e.intent, e.speakers) for e in runnable]
    for entry, r in zip(runnable, loop.run_batch(utterances, report, cancelled), strict=False):
        results[entry.line] = r
    rows = []
    for e in entries:
        r = results.get(e.line)
        if e.error is None and r is None:
            continue  # cancelled before this one
        base = baseline.classify(r.general_transcript or "").intent if r is not None and not r.error and \
            r.general_transcript is not None else None
        rows.append(_utterance_row(e, r, base))
    df = pd.DataFrame(rows)
    return {
        "manifest": str(manifest),
        "models": loop.versions,
        "options": loop.options.__dict__,
        "load_ms": loop.load_ms,
        "cancelled": len(rows) < len(entries),
        "utterances": rows,
        "summary": summarize(df),
        "baseline": summarize(df, transcript_col="general_transcript", intent_col="baseline_intent",
                              with_latency=False),
        "breakdowns": breakdowns(df),
    }


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["error"].isna()] if "error" in df and len(df) else df


def _wer(df: pd.DataFrame, transcript_col: str, in_domain_only: bool = True) -> tuple[float | None, float | None, int]:
    """Corpus WER and CER; by default over in-domain utterances only (an out-of-domain request's
    words are outside the service's vocabulary by design: rejecting it is what counts there)."""
    d = _ok(df)
    if not len(d) or "reference" not in d:
        return None, None, 0
    d = d[d["reference"].notna() & d[transcript_col].notna()]
    if in_domain_only and "expected_intent" in d:
        d = d[d["expected_intent"].fillna("") != "none"]
    refs = [normalize_text(x) for x in d["reference"]]
    hyps = [normalize_text(x) for x in d[transcript_col]]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    if not pairs:
        return None, None, 0
    refs, hyps = zip(*pairs, strict=True)
    return float(jiwer.wer(list(refs), list(hyps))), float(jiwer.cer(list(refs), list(hyps))), len(pairs)


def _pct(values: pd.Series, q: float) -> float | None:
    v = values.dropna()
    return float(np.percentile(v, q)) if len(v) else None


def summarize(df: pd.DataFrame, transcript_col: str = "transcript", intent_col: str = "intent",
              with_latency: bool = True) -> dict[str, Any]:
    """Figures over a frame of utterance rows (see :func:`evaluate`)."""
    d = _ok(df)
    out: dict[str, Any] = {"utterances": int(len(df)), "errors": int(len(df) - len(d))}
    wer, cer, n_ref = _wer(df, transcript_col)
    out.update(wer=wer, cer=cer, stt_accuracy=None if wer is None else max(0.0, 1 - wer), scored_transcripts=n_ref,
               wer_all=_wer(df, transcript_col, in_domain_only=False)[0])
    has_intent = d[d["expected_intent"].notna()] if "expected_intent" in d else d.iloc[0:0]
    if len(has_intent):
        y_true = has_intent["expected_intent"].astype(str)
        y_pred = has_intent[intent_col].astype(object).fillna("none").astype(str)
        out["intent_accuracy"] = float((y_true == y_pred).mean())
        out["feature_accuracy"] = float((has_intent["expected_feature"].astype(str)
                                         == y_pred.str.split(".").str[0]).mean())
        labels = sorted(set(y_true) | set(y_pred))
        with warnings.catch_warnings():  # one-label groups (breakdowns) are fine here
            warnings.simplefilter("ignore", UserWarning)
            p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
            matrix = confusion_matrix(y_true, y_pred, labels=labels).tolist()
        out["per_intent"] = {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                   "support": int(s[i])} for i, lab in enumerate(labels)}
        out["confusion"] = {"labels": labels, "matrix": matrix}
        answered = []
        for _, row in has_intent.iterrows():
            right = row[intent_col] == row["expected_intent"]
            if right and intent_col == "intent" and row["expected_slots"]:
                right = {k: str(v).lower() for k, v in (row["slots"] or {}).items()} == \
                        {k: str(v).lower() for k, v in row["expected_slots"].items()}
            answered.append(bool(right))
        out["answer_accuracy"] = float(np.mean(answered))
        with_slots = has_intent[has_intent["expected_slots"].map(bool)]
        if len(with_slots) and intent_col == "intent":
            out["slot_accuracy"] = float(np.mean([
                {k: str(v).lower() for k, v in (row["slots"] or {}).items()} ==
                {k: str(v).lower() for k, v in row["expected_slots"].items()} for _, row in with_slots.iterrows()]))
        ood = has_intent[(has_intent["expected_intent"] == "none") & has_intent["reference"].notna()]
        nonspeech = has_intent[(has_intent["expected_intent"] == "none") & has_intent["reference"].isna()]
        if len(ood):
            out["ood_rejection"] = float((ood[intent_col].astype(object).fillna("none") == "none").mean())
        if len(nonspeech):
            out["nonspeech_rejection"] = float((nonspeech[intent_col].astype(object).fillna("none") == "none").mean())
    if with_latency and "expected_speakers" in d:
        spk = d[d["expected_speakers"].notna() & d["speakers"].notna()]
        if len(spk):
            out["speaker_count_accuracy"] = float((spk["speakers"] == spk["expected_speakers"]).mean())
            two = spk[spk["expected_speakers"] == 2]
            if len(two):
                out["two_speaker_accuracy"] = float((two["speakers"] == 2).mean())
    if with_latency and len(d):
        timings = pd.DataFrame(list(d["timings_ms"]))
        out["latency_ms"] = {stage: {"p50": _pct(timings[stage], 50), "p95": _pct(timings[stage], 95)}
                             for stage in (*STAGES, "server", "end_to_end", "end_to_end_estimate") if stage in timings}
        mos_ans = [m["answer"]["ovrl"] for m in d["mos"] if m and m.get("answer")]
        mos_in = [m["input"]["ovrl"] for m in d["mos"] if m and m.get("input")]
        out["mos_answer_mean"] = float(np.mean(mos_ans)) if mos_ans else None
        out["mos_input_mean"] = float(np.mean(mos_in)) if mos_in else None
        out["requirements"] = _requirements(out)
    return out


def _requirements(s: dict[str, Any]) -> list[dict[str, Any]]:
    lat = s.get("latency_ms", {})
    values = {
        "server_latency": (lat.get("server") or {}).get("p95"),
        "end_to_end_latency": (lat.get("end_to_end_estimate") or {}).get("p95"),
        "stt_accuracy": s.get("stt_accuracy"),
        "answer_accuracy": s.get("answer_accuracy"),
        "mos": s.get("mos_answer_mean"),
    }
    out = []
    for key, value in values.items():
        req = REQUIREMENTS[key]
        out.append({"key": key, "label": req.label, "target": req.target, "value": value,
                    "passed": None if value is None else req.passes(value),
                    "measure": "p95" if "latency" in key else "mean"})
    two = s.get("two_speaker_accuracy")
    out.append({"key": "speakers", "label": REQUIREMENTS["speakers"].label, "target": SPEAKER_COUNT_TARGET,
                "value": two, "passed": None if two is None else two >= SPEAKER_COUNT_TARGET,
                "measure": "speaker count right on two-speaker clips"})
    return out


def breakdowns(df: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """Per extra manifest field (``x_*`` columns), per value: n, WER, intent/feature accuracy."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for col in [c for c in df.columns if c.startswith("x_")]:
        name = col[2:]
        if name in _NOT_BREAKDOWNS or df[col].map(lambda v: isinstance(v, (dict, list))).any():
            continue
        groups = {}
        for value, group in df.groupby(df[col].astype(str), dropna=False):
            s = summarize(group, with_latency=False)
            groups[str(value)] = {"n": int(len(group)), "wer": s.get("wer"),
                                  "intent_accuracy": s.get("intent_accuracy"),
                                  "feature_accuracy": s.get("feature_accuracy")}
        if 1 < len(groups) <= 50:
            out[name] = groups
    return out


def _bootstrap(diff_fn, n: int, rng: np.random.Generator, n_boot: int) -> tuple[float, float]:
    stats = [diff_fn(rng.integers(0, n, n)) for _ in range(n_boot)]
    stats = [s for s in stats if s is not None and np.isfinite(s)]
    return (float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))) if stats else (np.nan, np.nan)


def compare(a: dict[str, Any], b: dict[str, Any], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Differences B − A of two reports on the same manifest, per utterance and with bootstrap 95 %
    confidence intervals (resampling utterances; ``n_boot`` resamples, seeded).

    Raises
    ------
    ValueError
        If the reports are not of the same utterances.
    """
    ua, ub = a["utterances"], b["utterances"]
    if [u["audio"] for u in ua] != [u["audio"] for u in ub]:
        raise ValueError("the two reports are not of the same manifest (utterances differ); evaluate both on one")
    rng = np.random.default_rng(seed)
    ref = [normalize_text(u.get("reference")) for u in ua]
    errs_a = np.array([jiwer.process_words(r, normalize_text(u["transcript"])).wer * len(r.split())
                       if r and u["transcript"] is not None else np.nan for r, u in zip(ref, ua, strict=True)])
    errs_b = np.array([jiwer.process_words(r, normalize_text(u["transcript"])).wer * len(r.split())
                       if r and u["transcript"] is not None else np.nan for r, u in zip(ref, ub, strict=True)])
    words = np.array([len(r.split()) if r else 0 for r in ref], dtype=float)
    right_a = np.array([float(u["intent"] == u.get("expected_intent")) if u.get("expected_intent") else np.nan for u in ua])
    right_b = np.array([float(u["intent"] == u.get("expected_intent")) if u.get("expected_intent") else np.nan for u in ub])
    lat_a = np.array([u["timings_ms"].get("server", np.nan) for u in ua], dtype=float)
    lat_b = np.array([u["timings_ms"].get("server", np.nan) for u in ub], dtype=float)
    n = len(ua)
    valid = ~np.isnan(errs_a) & ~np.isnan(errs_b)

    def wer_diff(idx: np.ndarray) -> float | None:
        m = valid[idx]
        w = words[idx][m].sum()
        return None if w == 0 else (errs_b[idx][m].sum() - errs_a[idx][m].sum()) / w

    def acc_diff(idx: np.ndarray) -> float | None:
        d = right_b[idx] - right_a[idx]
        return None if np.all(np.isnan(d)) else float(np.nanmean(d))

    def lat_diff(idx: np.ndarray) -> float | None:
        d = lat_b[idx] - lat_a[idx]
        return None if np.all(np.isnan(d)) else float(np.nanmean(d))

    all_idx = np.arange(n)
    out = {"a": a["models"], "b": b["models"], "n": n, "differences": {}}
    for name, fn in (("wer", wer_diff), ("intent_accuracy", acc_diff), ("server_latency_ms", lat_diff)):
        point = fn(all_idx)
        lo, hi = _bootstrap(fn, n, rng, n_boot)
        out["differences"][name] = {"b_minus_a": point, "ci95": [lo, hi]}
    out["changed"] = [
        {"audio": x["audio"], "reference": x.get("reference"), "a_transcript": x["transcript"],
         "b_transcript": y["transcript"], "a_intent": x["intent"], "b_intent": y["intent"],
         "expected_intent": x.get("expected_intent")}
        for x, y in zip(ua, ub, strict=True) if x["transcript"] != y["transcript"] or x["intent"] != y["intent"]]
    return out
