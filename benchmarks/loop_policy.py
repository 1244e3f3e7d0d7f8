"""The loop's two policy figures on the shipped test set (resources/testset/):

1. WER of the in-domain recognizer on clean and 10-dB commands (all noises, white and pink, babble),
   with and without RNNoise, searched as the loop searches them (the grammar pass only in rooms of
   ``pipeline.GRAMMAR_PASS_MIN_SNR_DB`` or more) — the source of ``pipeline.AUTO_DENOISE_SNR_DB``
   (denoise only noisy rooms);
2. command feature accuracy and out-of-domain rejection of ``VoiceLoop._understand`` (a
   template-exact transcript overrides the acoustic rejection, then a transcript the intent model
   is sure of, then the general-LM transcript is tried) for several values of
   ``pipeline.INTENT_RESCUE_PROBABILITY`` — the source of that figure, chosen on a held-out set.

Usage: ``.venv/bin/python benchmarks/loop_policy.py [--models-dir DIR] [--manifest M] [--stt-mode MODE]``
(builds the default bundles there if missing; ~5 min). The held-out calibration set:
``.venv/bin/python scripts/build_testset.py --out /tmp/heldout2 --seed 2 --phrasings
benchmarks/heldout_phrasings.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import jiwer

from inference_core.audio import load_audio
from inference_core.bundles import build_default_bundles
from inference_core.denoise import denoise
from inference_core import pipeline
from inference_core.pipeline import AUTO_DENOISE_SNR_DB, GRAMMAR_PASS_MIN_SNR_DB, LoopOptions, VoiceLoop, normalize_text
from inference_core.stt import Recognizer

MANIFEST = Path(__file__).resolve().parents[1] / "resources" / "testset" / "manifest.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", type=Path, default=Path("/tmp/speakerops-bench-models"))
    ap.add_argument("--manifest", type=Path, default=MANIFEST, help="test-set manifest (default: the shipped one)")
    ap.add_argument("--stt-mode", default=LoopOptions.stt_mode, choices=Recognizer.MODES)
    ap.add_argument("--rescue", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 1.01],
                    help="INTENT_RESCUE_PROBABILITY values to try (above 1: never rescue)")
    args = ap.parse_args()
    base = args.manifest.parent
    build_default_bundles(args.models_dir)
    stt_dir = args.models_dir / "stt" / "stt-1.0.0"
    rows = [json.loads(line) for line in args.manifest.read_text().splitlines()]
    rec = Recognizer(stt_dir, mode=args.stt_mode)

    print("1. RNNoise on clean vs noisy commands (in-domain recognizer, corpus WER)")
    for label, snr, noises in (("clean", None, ("none",)), ("10 dB", 10.0, ("white", "pink", "babble")),
                               ("  w+p", 10.0, ("white", "pink")), ("  bab", 10.0, ("babble",))):
        subset = [r for r in rows if r["kind"] == "command" and r.get("snr_db") == snr and r["noise"] in noises]
        refs = [normalize_text(r["text"]) for r in subset]
        audio = [load_audio(base / r["audio"]).samples for r in subset]
        quiet = snr is None or snr >= GRAMMAR_PASS_MIN_SNR_DB  # as the loop: no grammar pass in noisy rooms
        raw = [rec.transcribe(x, grammar_pass=quiet).text for x in audio]
        den = [rec.transcribe(denoise(x, 16000, "rnnoise").samples, grammar_pass=quiet).text for x in audio]
        print(f"   {label:6} n={len(subset):3}  raw WER {jiwer.wer(refs, raw):.3f}   rnnoise WER {jiwer.wer(refs, den):.3f}")

    print(f"2. intent policies (VoiceLoop._understand; auto denoise below {AUTO_DENOISE_SNR_DB} dB SNR, "
          f"STT mode {args.stt_mode})")
    loop = VoiceLoop.from_root(args.models_dir, options=LoopOptions(
        stt_mode=args.stt_mode, mos=False, speakers=False, synthesize=False), build_missing=False)
    runs = [(r, loop.run(base / r["audio"])) for r in rows if r["kind"] in ("command", "ood")]
    for rescue in args.rescue:
        pipeline.INTENT_RESCUE_PROBABILITY = rescue
        sources: dict[str, int] = {}
        cmd, ood = [], []
        for r, res in runs:
            res = copy.copy(res)
            intent = loop._understand(res)
            sources[res.intent_source] = sources.get(res.intent_source, 0) + 1
            (cmd if r["kind"] == "command" else ood).append(
                intent.feature == r["feature"] if r["kind"] == "command" else intent.intent == "none")
        print(f"   rescue p >= {rescue:4.2f}: command feature accuracy {sum(cmd) / len(cmd):.3f} ({len(cmd)})   "
              f"out-of-domain rejected {sum(ood) / len(ood):.3f} ({len(ood)})   intent from {sources}")


if __name__ == "__main__":
    main()
