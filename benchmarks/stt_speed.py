"""Load time, real-time factor (RTF) and WER of the recognizers on espeak-ng commands.

Builds a language pack from ``resources/templates/en-us.ini`` in a temporary folder (two of the
commands held out of the LM, as in ``tests/test_stt.py``), synthesizes the commands with espeak-ng
and prints, for ``Recognizer`` in ``lm`` and ``jsgf`` mode and for ``GeneralRecognizer``: load time,
audio seconds, decoding seconds, RTF (= decoding seconds / audio seconds; both decoding passes,
the in-domain search and the phone loop used for rejection), WER, and how many out-of-domain
sentences came back rejected. Usage::

    .venv/bin/python benchmarks/stt_speed.py [--voice en-us] [--repeat 1]
    .venv/bin/python benchmarks/stt_speed.py --calibrate   # re-derive stt.CALIBRATION

``--calibrate`` (about 8 min) decodes 3 template sentences per intent and 36 out-of-domain
sentences in three voices and prints, per mode, the score gap (logmath units per speech frame)
that best separates them and the balanced accuracy there: the figures behind
``inference_core.stt.CALIBRATION`` (for ``gated``, the centre judging the sentences its grammar
pass kept; the balanced accuracy printed for it counts only those, over all sentences decoded —
the centre in force was chosen with more data by ``benchmarks/gated_acceptance.py``).
"""

from __future__ import annotations

import argparse
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference_core import stt  # noqa: E402
from inference_core.audio import load_audio  # noqa: E402
from inference_core.templates import TemplateSet  # noqa: E402

HOLDOUT = ("how cold will it be in seoul tonight", "what is seven plus five")
COMMANDS = ("what is the weather like in paris tomorrow", "set an alarm for seven thirty in the morning",
            "remind me to call mom tonight", "play some jazz music", "what is the capital of japan",
            "who wrote pride and prejudice", "read me the latest sports news", "pause the music", *HOLDOUT)
OUT_OF_DOMAIN_EXTRA = (
    "tell me a joke about cats", "the quick brown fox jumps over the lazy dog", "please water the garden at noon",
    "how many miles to the moon", "play the radio station", "i need to buy a new car", "where is my phone",
    "what did you say", "switch off the television", "can you hear me", "good morning how are you",
    "remind me who you are", "the weather was terrible last year", "my calendar app crashed", "is the shop open",
    "start the washing machine", "who is the president of france", "show me pictures of dogs")


def speak(text: str, voice: str = "en-us") -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
    return load_audio(wav).samples


def bench(args: argparse.Namespace) -> None:
    templates = TemplateSet.load(ROOT / "resources" / "templates" / "en-us.ini")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pack = stt.build_language_pack(templates, Path(tmp), holdout=HOLDOUT)
        print(f"language pack built in {time.perf_counter() - t0:.2f} s")
        clips = [speak(c, args.voice) for c in COMMANDS]
        ood = [speak(c, args.voice) for c in OUT_OF_DOMAIN_EXTRA[:10]]
        audio_s = sum(len(c) for c in clips) / stt.SAMPLE_RATE * args.repeat
        print(f"{len(COMMANDS)} commands, voice {args.voice}, {audio_s:.1f} s of audio "
              f"(x{args.repeat}); {len(HOLDOUT)} held out of the LM\n")
        print(f"{'recognizer':<22}{'load ms':>9}{'decode s':>10}{'RTF':>7}{'WER':>7}{'conf':>7}{'OOD rejected':>14}")
        makers = {"Recognizer lm": lambda: stt.Recognizer(pack, mode="lm"),
                  "Recognizer jsgf": lambda: stt.Recognizer(pack, mode="jsgf"),
                  "Recognizer gated": lambda: stt.Recognizer(pack, mode="gated", templates=templates),
                  "GeneralRecognizer": lambda: stt.GeneralRecognizer().load()}
        for name, make in makers.items():
            t0 = time.perf_counter()
            rec = make()
            load_ms = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            for _ in range(args.repeat):
                out = [rec.transcribe(c) for c in clips]
            decode_s = time.perf_counter() - t0
            wer = jiwer.wer(list(COMMANDS), [t.text for t in out])
            rejected = sum(rec.transcribe(c).rejected for c in ood)
            conf = float(np.mean([t.confidence for t in out]))
            print(f"{name:<22}{load_ms:9.0f}{decode_s:10.2f}{decode_s / audio_s:7.3f}{wer:7.3f}{conf:7.2f}"
                  f"{rejected:>10}/{len(ood)}")
            if args.verbose:
                for c, t in zip(COMMANDS, out, strict=True):
                    print(f"    {'ok ' if c == t.text else 'ERR'} {t.confidence:4.2f} {t.text!r}")


def calibration_sentences(templates: TemplateSet) -> tuple[list[tuple[str, str]], list[str]]:
    """The calibration sentences: ``(intent, text)`` of 3 seeded template sentences per in-domain
    intent, and the out-of-domain texts (the templates' ``[none]`` examples + OUT_OF_DOMAIN_EXTRA)."""
    rnd = random.Random(1)
    in_domain = [(i, e.text) for i in templates.in_domain_intents for e in rnd.sample(templates.examples(i, 200, 7), 3)]
    ood = [e.text for e in templates.sentences(include_none=True) if e.intent == "none"] + list(OUT_OF_DOMAIN_EXTRA)
    return in_domain, ood


def calibrate(args: argparse.Namespace) -> None:
    templates = TemplateSet.load(ROOT / "resources" / "templates" / "en-us.ini")
    labelled, ood = calibration_sentences(templates)
    in_domain = [text for _, text in labelled]
    stt.CALIBRATION.update({k: (0.0, 1.0) for k in stt.CALIBRATION})  # confidence = logistic(gap): invert it
    with tempfile.TemporaryDirectory() as tmp:
        pack = stt.build_language_pack(templates, Path(tmp))
        makers = {"lm": lambda: stt.Recognizer(pack), "jsgf": lambda: stt.Recognizer(pack, mode="jsgf"),
                  "gated": lambda: stt.Recognizer(pack, mode="gated", templates=templates),
                  "general": stt.GeneralRecognizer}
        recs = {k: make() for k, make in makers.items() if k in args.modes}
        gaps: dict[str, dict[int, list[float]]] = {k: {1: [], 0: []} for k in recs}
        for voice in ("en-us", "en-us+f3", "en-us+m3"):
            for label, texts in ((1, in_domain), (0, ood)):
                for text in texts:
                    x = speak(text, voice)
                    for k, rec in recs.items():
                        t = rec.transcribe(x)
                        if k == "gated" and t.search != "gated":
                            continue  # the gated centre judges the grammar pass's sentences only
                        c = t.confidence
                        gaps[k][label].append(math.log(c / (1 - c)) if 0 < c < 1 else (-50.0 if c <= 0 else 50.0))
    n_pos, n_neg = 3 * len(in_domain), 3 * len(ood)
    print(f"{len(in_domain)} in-domain and {len(ood)} out-of-domain sentences x 3 voices")
    for k, g in gaps.items():
        pos, neg = np.array(g[1]), np.array(g[0])
        if not len(pos) or not len(neg):
            print(f"{k:8s} {len(pos)} in-domain, {len(neg)} out-of-domain: too few to calibrate")
            continue
        # balanced accuracy over every sentence decoded; for gated, those its grammar pass did not
        # keep are judged by the LM's calibration whatever this centre is, so they add a constant
        best = max(((np.sum(pos >= c) / n_pos + np.sum(neg < c) / n_neg) / 2, c) for c in np.arange(-40, 30, 0.5))
        print(f"{k:8s} centre {best[1]:6.1f}  balanced accuracy {best[0]:.3f}  in-domain median {np.median(pos):6.1f}"
              f"  out-of-domain median {np.median(neg):6.1f}  ({len(pos)} / {len(neg)} sentences)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voice", default="en-us", help="espeak-ng voice (default en-us)")
    ap.add_argument("--repeat", type=int, default=1, help="decode the commands this many times")
    ap.add_argument("--calibrate", action="store_true", help="derive the confidence calibration instead")
    ap.add_argument("--modes", nargs="+", default=["lm", "jsgf", "gated", "general"],
                    help="with --calibrate: the searches to calibrate")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each transcript")
    args = ap.parse_args()
    calibrate(args) if args.calibrate else bench(args)


if __name__ == "__main__":
    main()
