"""The loop's two policy figures on the shipped test set (resources/testset/):

1. WER of the in-domain recognizer on clean and 10-dB commands, with and without RNNoise — the
   source of ``pipeline.AUTO_DENOISE_SNR_DB`` (denoise only noisy rooms);
2. command intent accuracy and out-of-domain rejection under rejection policies — the source of
   ``VoiceLoop._understand`` (a template-exact transcript overrides the acoustic rejection; then
   the general-LM transcript is tried).

Usage: ``.venv/bin/python benchmarks/loop_policy.py [--models-dir DIR]`` (builds the default
bundles there if missing; ~3 min).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jiwer

from inference_core.audio import load_audio
from inference_core.bundles import build_default_bundles
from inference_core.denoise import denoise
from inference_core.pipeline import AUTO_DENOISE_SNR_DB, normalize_text
from inference_core.qa import IntentClassifier
from inference_core.quality import snr_db
from inference_core.stt import GeneralRecognizer, Recognizer
from inference_core.templates import TemplateSet
from inference_core.vad import SileroVad

MANIFEST = Path(__file__).resolve().parents[1] / "resources" / "testset" / "manifest.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", type=Path, default=Path("/tmp/speakerops-bench-models"))
    args = ap.parse_args()
    build_default_bundles(args.models_dir)
    stt_dir, qa_dir = args.models_dir / "stt" / "stt-1.0.0", args.models_dir / "qa" / "qa-1.0.0-int8"
    rows = [json.loads(line) for line in MANIFEST.read_text().splitlines()]
    rec, gen, vad = Recognizer(stt_dir), GeneralRecognizer(), SileroVad()
    templates = TemplateSet.load(qa_dir / "templates.ini")
    clf = IntentClassifier(qa_dir, templates)

    print("1. RNNoise on clean vs noisy commands (in-domain LM, corpus WER)")
    for label, snr in (("clean", None), ("10 dB", 10.0)):
        subset = [r for r in rows if r["kind"] == "command" and r.get("snr_db") == snr]
        refs = [normalize_text(r["text"]) for r in subset]
        audio = [load_audio(MANIFEST.parent / r["audio"]).samples for r in subset]
        raw = [rec.transcribe(x).text for x in audio]
        den = [rec.transcribe(denoise(x, 16000, "rnnoise").samples).text for x in audio]
        print(f"   {label:6} n={len(subset):3}  raw WER {jiwer.wer(refs, raw):.3f}   rnnoise WER {jiwer.wer(refs, den):.3f}")

    print(f"2. rejection policies (auto denoise below {AUTO_DENOISE_SNR_DB} dB SNR)")
    data = []
    for r in (r for r in rows if r["kind"] in ("command", "ood")):
        x = load_audio(MANIFEST.parent / r["audio"]).samples
        snr = snr_db(x, 16000, [(s.start_s, s.end_s) for s in vad.segments(x)])
        y = denoise(x, 16000, "rnnoise").samples if snr is not None and snr < AUTO_DENOISE_SNR_DB else x
        t, g = rec.transcribe(y), gen.transcribe(y)
        data.append((r, t, clf.classify(t.text), clf.classify(g.text), templates.match(t.text) is not None))

    def policy_rejects(t, ci, gi, exact):  # the current one
        if not t.rejected or exact:
            return ci.intent
        return gi.intent if gi.in_domain else "none"

    policies = {
        "reject when the acoustic confidence is low": lambda t, ci, gi, ex: "none" if t.rejected else ci.intent,
        "+ a template-exact transcript overrides": lambda t, ci, gi, ex: ci.intent if not t.rejected or ex else "none",
        "+ general-LM fallback (VoiceLoop)": policy_rejects,
        "no acoustic rejection": lambda t, ci, gi, ex: ci.intent,
    }
    for name, policy in policies.items():
        cmd = [policy(t, ci, gi, ex) == r["intent"] for r, t, ci, gi, ex in data if r["kind"] == "command"]
        ood = [policy(t, ci, gi, ex) == "none" for r, t, ci, gi, ex in data if r["kind"] == "ood"]
        print(f"   {name:45} commands {sum(cmd) / len(cmd):.3f}   out-of-domain rejected {sum(ood) / len(ood):.3f}")


if __name__ == "__main__":
    main()
