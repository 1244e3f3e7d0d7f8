"""When a sentence of the gated recognizer's grammar pass should be acted on: a grid, off the shipped set.

The gated mode (``inference_core.stt.Recognizer(mode="gated")``) keeps the grammar pass's sentence
by :func:`inference_core.stt.grammar_wins`; whether the loop then acts on it depends on its
confidence, a logistic function of its score gap to a free phone loop, centred at
``stt.CALIBRATION["gated"][0]``. Every kept sentence is a template sentence, so the intent model is
sure of each: that centre, and ``stt.GRAMMAR_MAX_MISS_WER`` (the most a sentence kept by the margin
rule may differ from the LM's words), decide whether a wrong template sentence becomes an action.

This collects every kept sentence — its gap (logmath units per speech frame), its near-miss WER
against the LM's words, and whether its intent is the expected one — from two sources that are not
the shipped test set:

* the calibration sentences of ``benchmarks/stt_speed.py --calibrate`` (3 template sentences per
  intent and 36 out-of-domain ones, voices en-us, en-us+f3, en-us+m3, clean);
* a held-out manifest's single-talker commands and out-of-domain requests, through the voice loop
  (auto denoise, the grammar pass only in rooms of ``pipeline.GRAMMAR_PASS_MIN_SNR_DB`` or more);

and prints, for each cap × centre on the grid, the kept sentences that would be acted on, right and
wrong, per source and pooled, best first (most right minus wrong, pooled), and the pair in force.
Sentences above the cap are counted as not acted on (the LM's words then stand, and may still
be acted on: ``benchmarks/loop_policy.py`` measures the loop as a whole).

Measured 2026-12-07 (session 16; 61 + 32 kept sentences, 44 + 22 of them right): no cap, centre 5
(as it was): 56 right, 17 wrong acted on; cap 0.75, centre -2: 61 right, 9 wrong (the best pooled
pair, in force); cap 1.0, centre -2: 64 / 15; cap 0.5, centre -2: 58 / 7. (Measured before every
recognizer pass got a fresh front end, ``stt._DecoderBase._run``.) Re-run 2026-12-08 after it (63 +
30 kept, 45 + 20 right): as it was 58 / 19; in force 60 / 11, still the best pooled pair (tied with
centres -6 to -3 at cap 0.75); cap 0.5, centre -2: 57 / 9.
Usage::

    .venv/bin/python scripts/build_testset.py --out /tmp/heldout2 --seed 2 \\
        --phrasings benchmarks/heldout_phrasings.json
    .venv/bin/python benchmarks/gated_acceptance.py --manifest /tmp/heldout2/manifest.jsonl

(~15 min on 2 cores; builds the default bundles in ``--models-dir`` if missing.)
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import jiwer

from inference_core import stt
from inference_core.bundles import build_default_bundles
from inference_core.pipeline import LoopOptions, VoiceLoop
from inference_core.templates import TemplateSet
import stt_speed
from stt_speed import ROOT, speak

CAPS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, math.inf)
CENTRES = (-8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 5.0, 8.0)
#: What one kept sentence is: (gap per frame, near-miss WER against the LM's words, right intent)
Kept = tuple[float, float, bool]


class _Spy:
    """Records the near-miss WER of the last sentence ``grammar_wins`` kept."""

    def __init__(self) -> None:
        self.miss: float | None = None
        self._wins = stt.grammar_wins

    def __call__(self, lm_text, lm_score, lm_frames, g_text, g_score, g_frames) -> bool:
        won = self._wins(lm_text, lm_score, lm_frames, g_text, g_score, g_frames)
        self.miss = jiwer.wer(g_text, lm_text) if won else None
        return won


def _gap(confidence: float) -> float:
    """The score gap behind a confidence computed with the calibration (0, 1)."""
    c = min(max(confidence, 1e-12), 1 - 1e-12)
    return math.log(c / (1 - c))


def _intent(templates: TemplateSet, text: str) -> str:
    match = templates.match(text)
    return match.intent if match is not None else "none"


def calibration_sentences(templates: TemplateSet, spy: _Spy) -> list[Kept]:
    in_domain, ood = stt_speed.calibration_sentences(templates)
    said = in_domain + [("none", text) for text in ood]
    kept = []
    with tempfile.TemporaryDirectory() as tmp:
        rec = stt.Recognizer(stt.build_language_pack(templates, Path(tmp)), mode="gated", templates=templates)
        for voice in ("en-us", "en-us+f3", "en-us+m3"):
            for intent, text in said:
                t = rec.transcribe(speak(text, voice))
                if t.search == "gated":
                    right = intent != "none" and _intent(templates, t.text) == intent
                    kept.append((_gap(t.confidence), spy.miss, right))
    return kept


def manifest_clips(manifest: Path, models_dir: Path, spy: _Spy) -> list[Kept]:
    loop = VoiceLoop.from_root(models_dir, options=LoopOptions(general_transcript=False, mos=False, speakers=False,
                                                               synthesize=False), build_missing=False)
    kept = []
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        if row["kind"] not in ("command", "ood"):
            continue
        r = loop.run(manifest.parent / row["audio"])
        if r.transcript_search == "gated":
            right = row["kind"] == "command" and _intent(loop.templates, r.transcript) == row["intent"]
            kept.append((_gap(r.transcript_confidence), spy.miss, right))
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=Path("/tmp/speakerops-bench-models"))
    ap.add_argument("--manifest", type=Path, required=True, help="held-out manifest (not the shipped test set)")
    args = ap.parse_args()
    build_default_bundles(args.models_dir)
    in_force = (stt.GRAMMAR_MAX_MISS_WER, stt.CALIBRATION["gated"][0])
    spy = _Spy()
    stt.grammar_wins = spy                          # record every kept sentence, whatever its miss
    stt.GRAMMAR_MAX_MISS_WER = math.inf
    stt.CALIBRATION["gated"] = (0.0, 1.0)           # confidence = logistic(gap): invertible
    sources = {"calibration": calibration_sentences(TemplateSet.load(ROOT / "resources" / "templates" / "en-us.ini"),
                                                    spy),
               "held-out": manifest_clips(args.manifest, args.models_dir, spy)}
    for name, kept in sources.items():
        print(f"{name}: {len(kept)} kept sentences, {sum(k[2] for k in kept)} of them the right intent")

    def acted(cap: float, centre: float) -> dict[str, tuple[int, int]]:
        out = {}
        for name, kept in sources.items():
            on = [k for k in kept if k[1] <= cap and k[0] >= centre]
            out[name] = (sum(k[2] for k in on), sum(not k[2] for k in on))
        return out

    def line(cap: float, centre: float) -> str:
        cells = acted(cap, centre)
        right, wrong = (sum(c[i] for c in cells.values()) for i in (0, 1))
        per = "  ".join(f"{n} +{r} -{w}" for n, (r, w) in cells.items())
        return f"cap {cap:5.2f} centre {centre:5.1f}: pooled +{right} -{wrong}   ({per})"

    print("as it was (no cap, centre 5): " + line(math.inf, 5.0))
    print("in force:                     " + line(*in_force))
    print("grid, best first (acted on right minus wrong, pooled):")
    grid = sorted(((-(sum(r - w for r, w in acted(cap, c).values())), cap, c) for cap in CAPS for c in CENTRES))
    for _, cap, c in grid[:12]:
        print("   " + line(cap, c))


if __name__ == "__main__":
    main()
