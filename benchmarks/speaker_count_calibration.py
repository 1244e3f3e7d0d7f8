"""Calibrate the speaker counter's window and same-speaker threshold on clips NOT in the test set.

The source of ``inference_core.quality.SAME_SPEAKER_COSINE`` and of ``SpeakerCounter``'s default
window and hop. Two kinds of held-out clips, segmented by the silero VAD as the voice loop does
(``SileroVad().segments``: turns less than ~0.3 s apart come out as one segment):

1. **synthesized here** (``--n`` of each kind): template sentences drawn with seed 1, espeak-ng
   voices none of which speaks in the test set (en-us+m1, en+m2, en-us+m4, en+m5 male; en-us+f1,
   en+f5, en-us+f5 female), one speaking rate per clip, pauses 0.25–0.5 s. *One voice*: three clips
   in four say two commands (a user saying two things is the hard negative), one in four a single
   command. *Two voices*: a male and a female voice taking turns, each saying one command.
2. **held-out test sets** (``--heldout DIR``, repeatable): sets made by ``scripts/build_testset.py
   --seed S --phrasings benchmarks/heldout_phrasings.json`` with S ≠ 0 (generate them into /tmp);
   their two-speaker clips and every single-voice speech clip (clean and noisy commands, out of
   domain).

For each window/hop configuration, prints the centroid cosines of both kinds, the threshold with
the best balanced accuracy (midpoint of the best interval) and the counts right at it and at the
shipped threshold. Usage::

    .venv/bin/python scripts/build_testset.py --out /tmp/heldout1 --seed 1 \\
        --phrasings benchmarks/heldout_phrasings.json
    .venv/bin/python benchmarks/speaker_count_calibration.py --n 80 --heldout /tmp/heldout1

Takes a few minutes on 2 cores (resemblyzer embeddings of every window).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference_core.audio import load_audio  # noqa: E402
from inference_core.quality import SAME_SPEAKER_COSINE, SpeakerCounter  # noqa: E402
from inference_core.templates import TemplateSet  # noqa: E402
from inference_core.vad import SileroVad  # noqa: E402

MALES = ["en-us+m1", "en+m2", "en-us+m4", "en+m5"]
FEMALES = ["en-us+f1", "en+f5", "en-us+f5"]
#: (window_s, hop_s) tried; the first is the counter's default.
CONFIGS = [(1.0, 0.25), (1.6, 0.8), (1.2, 0.4), (1.5, 0.25), (0.8, 0.2)]


def _builder():
    spec = importlib.util.spec_from_file_location("build_testset", ROOT / "scripts" / "build_testset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def synthesized(n: int) -> list[tuple[str, int, np.ndarray]]:
    """``n`` one-voice and ``n`` two-voice clips: (label, speakers, samples at 16 kHz)."""
    b = _builder()
    ts = TemplateSet.load(ROOT / "resources" / "templates" / "en-us.ini")
    sentences = [e.text for e in ts.sentences(limit_per_intent=6, seed=1)]
    rng = np.random.default_rng(1)

    def clip(parts: list[tuple[str, str]]) -> np.ndarray:
        gap = np.zeros(int(rng.uniform(0.25, 0.5) * b.SR), np.float32)
        speed = int(rng.choice(b.SPEEDS_WPM))
        out: list[np.ndarray] = []
        for text, voice in parts:
            out += [b.set_level(b.synthesize(text, voice, speed)), gap]
        return b.pad(np.concatenate(out[:-1]), rng)

    clips = []
    for k in range(n):
        s1, s2 = (sentences[int(i)] for i in rng.choice(len(sentences), 2, replace=False))
        voice = (MALES + FEMALES)[k % 7]
        clips.append((f"one/{k}", 1, clip([(s1, voice), (s2, voice)] if k % 4 else [(s1, voice)])))
        m, f = MALES[k % 4], FEMALES[k % 3]
        clips.append((f"two/{k}", 2, clip([(s1, m), (s2, f)] if k % 2 else [(s1, f), (s2, m)])))
    return clips


def heldout(directory: Path) -> list[tuple[str, int, np.ndarray]]:
    rows = [json.loads(line) for line in (directory / "manifest.jsonl").read_text().splitlines()]
    return [(f"{directory.name}/{r['audio']}", int(r["speakers"]), load_audio(directory / r["audio"]).samples)
            for r in rows if r["speakers"] in (1, 2)]


def best_threshold(one: np.ndarray, two: np.ndarray) -> tuple[float, float]:
    """Midpoint of the interval of thresholds with the best balanced accuracy, and that accuracy.
    A clip is counted 2 when its cosine is below the threshold."""
    cands = np.unique(np.concatenate([one, two]))
    bal = np.array([((one >= t).mean() + (two < t).mean()) / 2 for t in cands])
    i = int(np.argmax(bal))
    j = i
    while j + 1 < len(cands) and bal[j + 1] == bal[i]:
        j += 1
    lower = cands[i - 1] if i > 0 else cands[i] - 0.01
    return float((lower + cands[j]) / 2), float(bal[i])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=80, help="synthesized clips of each kind")
    p.add_argument("--heldout", type=Path, action="append", default=[],
                   help="a held-out test set directory (another seed, into /tmp); repeatable")
    p.add_argument("--configs", default=",".join(f"{w}/{h}" for w, h in CONFIGS),
                   help="window/hop pairs in seconds, comma-separated")
    args = p.parse_args()
    configs = [tuple(float(v) for v in c.split("/")) for c in args.configs.split(",")]
    t0 = time.perf_counter()
    groups = {"synthesized": synthesized(args.n)}
    for d in args.heldout:
        groups[d.name] = heldout(d)
    vad = SileroVad()
    segments = {label: [(s.start_s, s.end_s) for s in vad.segments(x)]
                for clips in groups.values() for label, _, x in clips}
    print(f"{sum(len(c) for c in groups.values())} clips prepared in {time.perf_counter() - t0:.0f} s; "
          f"shipped threshold {SAME_SPEAKER_COSINE}")
    for window_s, hop_s in configs:
        counter = SpeakerCounter(window_s=window_s, hop_s=hop_s)
        cos: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, clips in groups.items():
            res = [(n, counter.count(x, 16000, segments[label])) for label, n, x in clips]
            # a clip with one window cannot be split: it counts as cosine 1 (always 1 speaker)
            one = np.array([c.centroid_cosine if c.centroid_cosine is not None else 1.0 for n, c in res if n == 1])
            two = np.array([c.centroid_cosine if c.centroid_cosine is not None else 1.0 for n, c in res if n == 2])
            cos[name] = (one, two)
        one = np.concatenate([v[0] for v in cos.values()])
        two = np.concatenate([v[1] for v in cos.values()])
        th, bal = best_threshold(one, two)
        print(f"window {window_s:.2f} s, hop {hop_s:.2f} s: best threshold {th:.3f} (balanced accuracy {bal:.3f})")
        for name, (o, t) in cos.items():
            print(f"  {name:12s} one voice {len(o):3d} clips cosine {o.min():.3f}-{o.max():.3f} (median "
                  f"{np.median(o):.3f}); two voices {len(t):3d} clips {t.min():.3f}-{t.max():.3f} "
                  f"(median {np.median(t):.3f})")
            for label, thr in (("best", th), ("shipped", SAME_SPEAKER_COSINE)):
                print(f"      at {label:7s} {thr:.3f}: one voice -> 1 {int((o >= thr).sum()):3d}/{len(o)}, "
                      f"two voices -> 2 {int((t < thr).sum()):3d}/{len(t)}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
