"""Where the in-domain recognizer's errors come from: the search, not only the acoustic model.

Decodes the shipped test set's commands (clean, in and outside the templates; 20/10/0 dB SNR,
denoised below ``pipeline.AUTO_DENOISE_SNR_DB`` as the loop does) and the two-speaker clips with
the default language pack, and prints corpus WER per subset and the real-time factor of each
search:

* ``lm`` — the n-gram LM (what :class:`inference_core.stt.Recognizer` runs by default);
* ``jsgf wbeam=W`` — the template grammar with pocketsphinx's word-exit beam ``wbeam`` (default
  7e-29). The grammar's fan-out (slot lists) makes the default beam prune the right sentence:
  widening it is what brings the grammar's in-template WER down;
* ``hybrid wbeam=W`` — both searches, the grammar's sentence kept unless its path score per
  speech frame is below the LM's (the LM's sentence then: a phrasing the templates do not make);
* ``gated (as likely) W`` — the hybrid, but the grammar searched only when the LM's sentence is not
  one the templates make (``TemplateSet.match``); its RTF counts the grammar search on the share of
  all clips that needed it, and each subset's WER is followed by (clips searched / clips);
* ``gated (loop) W`` — what the loop's gated mode keeps (``stt.grammar_wins``: a near miss of the
  LM's words or far more likely; chosen on a held-out set by ``benchmarks/gated_rule.py``).

Measured on this 2-core machine (2026-11-21, session 14; pocketsphinx 5; 156 clips, 485 s):
clean in-template WER lm 0.118; jsgf 0.153 (default beam) / 0.088 (1e-35) / 0.071 (1e-40); hybrid
0.106 / 0.062 / 0.056. Two-speaker clips lm 1.09, grammar 0.21-0.23. Clean outside the templates
0.49-0.61 and 10 dB 0.40-0.42 for every search (the acoustic model on espeak-ng voices, and on
denoised babble, is the limit there). RTF (the searches only; the recognizer's confidence pass
over the phone loop comes on top) lm 0.054, jsgf 0.063 / 0.144 / 0.251, hybrid 0.117 / 0.197 /
0.304. Gated, wbeam 1e-40: RTF 0.211 over all clips; clean in-template 0.050 with the grammar
searched on 16 of 54 of them, outside the templates 0.512 (25 of 26), 10 dB 0.420.
Wider beams still (wbeam 1e-60, beam/pbeam 1e-80) reach in-template WER 0.035 at RTF ≈ 2.
Vocal-tract-length warping (``warp_params`` 0.8-1.2) and the LM's discount mass (0.1-0.5) or size
(2,000-10,000 sentences per intent) moved WER by at most ±0.02; the LM lattice's 50-best holds the
right sentence too rarely for template re-ranking to help (0.118 → 0.112).

Usage: ``.venv/bin/python benchmarks/stt_search.py [--models-dir DIR] [--wbeam 1e-35 1e-40]``
(builds the default bundles in DIR if missing; ~8 min). Prints one line per search: RTF and WER
per subset.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import jiwer
import numpy as np
import pocketsphinx

from inference_core.audio import load_audio
from inference_core.bundles import build_default_bundles
from inference_core.denoise import denoise
from inference_core.pipeline import AUTO_DENOISE_SNR_DB, normalize_text
from inference_core.quality import snr_db
from inference_core.stt import DITHER_SEED, DITHER_STD, _DecoderBase, grammar_wins
from inference_core.templates import TemplateSet
from inference_core.vad import SileroVad

MANIFEST = Path(__file__).resolve().parents[1] / "resources" / "testset" / "manifest.jsonl"
SUBSETS: dict[str, Callable[[dict], bool]] = {
    "clean in": lambda r: r["kind"] == "command" and r["snr_db"] is None and r["in_templates"],
    "clean out": lambda r: r["kind"] == "command" and r["snr_db"] is None and not r["in_templates"],
    "20 dB": lambda r: r["kind"] == "command" and r["snr_db"] == 20,
    "10 dB": lambda r: r["kind"] == "command" and r["snr_db"] == 10,
    "0 dB": lambda r: r["kind"] == "command" and r["snr_db"] == 0,
    "2 speakers": lambda r: r["kind"] == "two_speaker",
}


def _pcm(path: Path, vad: SileroVad) -> bytes:
    """16 kHz int16 bytes as the loop feeds the recognizer (denoised below the loop's SNR, dithered)."""
    x = load_audio(path).samples
    snr = snr_db(x, 16000, [(s.start_s, s.end_s) for s in vad.segments(x)])
    if snr is not None and snr < AUTO_DENOISE_SNR_DB:
        x = denoise(x, 16000, "rnnoise").samples
    rng = np.random.default_rng(DITHER_SEED)
    x = np.clip(x + rng.normal(0.0, DITHER_STD, len(x)).astype(np.float32), -1.0, 1.0)
    return (x * 32767.0).astype(np.int16).tobytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=Path("/tmp/speakerops-bench-models"))
    ap.add_argument("--wbeam", nargs="+", default=["7e-29", "1e-35", "1e-40"],
                    help="word-exit beams of the grammar search to try (7e-29 is pocketsphinx's default)")
    args = ap.parse_args()
    build_default_bundles(args.models_dir)
    pack = args.models_dir / "stt" / "stt-1.0.0"
    rows = [json.loads(line) for line in MANIFEST.read_text().splitlines()]
    rows = [r for r in rows if any(f(r) for f in SUBSETS.values())]
    vad = SileroVad()
    raws = [_pcm(MANIFEST.parent / r["audio"], vad) for r in rows]
    audio_s = sum(len(raw) for raw in raws) / 2 / 16000
    refs = [normalize_text(r["text"]) for r in rows]
    hmm, words = pocketsphinx.get_model_path("en-us/en-us"), str(pack / "words.dict")
    print(f"{len(rows)} clips, {audio_s:.0f} s of audio")

    def run(**config: object) -> tuple[list[tuple[str, float | None, int]], float]:
        decoder = pocketsphinx.Decoder(hmm=hmm, dict=words, loglevel="FATAL", **config)
        t0 = time.perf_counter()
        search = decoder.current_search()  # (words, path score, speech frames): the recognizer's own pass
        out = [_DecoderBase._run(decoder, search, raw) for raw in raws]
        return out, (time.perf_counter() - t0) / audio_s

    def report(label: str, hyps: list[str], rtf: float, gated: list[bool] | None = None) -> None:
        cells = []
        for name, keep in SUBSETS.items():
            idx = [i for i, r in enumerate(rows) if keep(r)]
            cell = f"{name} {jiwer.wer([refs[i] for i in idx], [hyps[i] for i in idx]):.3f}"
            if gated is not None:
                cell += f" ({sum(gated[i] for i in idx)}/{len(idx)})"
            cells.append(cell)
        print(f"{label:22s} RTF {rtf:.3f} | WER " + "  ".join(cells), flush=True)

    templates = TemplateSet.load(args.models_dir / "qa" / "qa-1.0.0-int8" / "templates.ini")
    lm, lm_rtf = run(lm=str(pack / "lm.arpa"))
    report("lm", [h[0] for h in lm], lm_rtf)
    for wbeam in args.wbeam:
        js, js_rtf = run(jsgf=str(pack / "grammar.jsgf"), wbeam=float(wbeam))
        report(f"jsgf wbeam={wbeam}", [h[0] for h in js], js_rtf)
        hybrid = []
        for (lt, ls, lf), (jt, jscore, jf) in zip(lm, js, strict=True):
            frames = max(lf, jf, 10)
            as_likely = jscore is not None and (ls is None or (jscore - ls) / frames >= 0.0)
            hybrid.append(jt if as_likely else lt)
        report(f"hybrid wbeam={wbeam}", hybrid, lm_rtf + js_rtf)
        need = [templates.match(text) is None for text, _, _ in lm]
        gated = [h if n else lt for h, n, (lt, _, _) in zip(hybrid, need, lm, strict=True)]
        report(f"gated (as likely) {wbeam}", gated, lm_rtf + js_rtf * sum(need) / len(need), need)
        rule = [jt if n and jt and js_score is not None and grammar_wins(lt, ls, lf, jt, js_score, jf) else lt
                for n, (lt, ls, lf), (jt, js_score, jf) in zip(need, lm, js, strict=True)]
        report(f"gated (loop) {wbeam}", rule, lm_rtf + js_rtf * sum(need) / len(need), need)


if __name__ == "__main__":
    main()
