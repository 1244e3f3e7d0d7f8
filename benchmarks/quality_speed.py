"""Speed of the audio-quality measures on the shipped test set, and the speaker-count calibration.

Times, per clip of ``resources/testset`` (one pass after a warm-up clip, models already loaded):

* DNSMOS (``MosEstimator.estimate``: P.835 SIG/BAK/OVRL + P.808);
* speaker counting (``SpeakerCounter.count``: resemblyzer windows + 2-means);
* the level measures (``environment``).

Prints ms per clip (median and mean) and the model load times. Usage::

    .venv/bin/python benchmarks/quality_speed.py --n 40
    .venv/bin/python benchmarks/quality_speed.py --calibrate
    .venv/bin/python benchmarks/quality_speed.py --accuracy

``--calibrate`` instead synthesizes espeak-ng clips that are NOT in the test set (template sentences
drawn with seed 1; voices en-us+m1, en+m2, en-us+m4, en+m5, en-us+f1, en+f5, en-us+f5; none of them
used in the test set; one voice saying one or two
commands, one speaking rate per clip, 0.25-0.5 s apart, vs. a male and a female voice taking turns
the same way) and prints the centroid cosines of both kinds,
the counts right per threshold (0.60-0.80), the equal-error threshold and the accuracy at the\nshipped one, with
energy-gate segments (the shipped ``inference_core.quality.SAME_SPEAKER_COSINE`` and window come from
``benchmarks/speaker_count_calibration.py``, with the VAD's segments as the voice loop uses them).
``--accuracy`` prints how often the speaker count is right on the test set, per kind and SNR, with
the energy gate's segments and with the silero VAD's (``inference_core.vad``, when importable).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference_core.quality import (  # noqa: E402
    SAME_SPEAKER_COSINE,
    MosEstimator,
    SpeakerCounter,
    energy_segments,
    environment,
)
from inference_core.templates import TemplateSet  # noqa: E402


def _builder():
    spec = importlib.util.spec_from_file_location("build_testset", ROOT / "scripts" / "build_testset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def timings(testset: Path, n: int) -> None:
    rows = [json.loads(line) for line in (testset / "manifest.jsonl").read_text().splitlines()]
    speech = [r for r in rows if r["kind"] != "nonspeech"]
    rows = speech[:: max(1, len(speech) // n)][:n]
    clips = [sf.read(testset / r["audio"], dtype="float32")[0] for r in rows]
    seconds = sum(len(c) for c in clips) / 16000
    mos, counter = MosEstimator(), SpeakerCounter()
    t0 = time.perf_counter()
    mos.estimate(clips[0])
    t_mos_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    counter.count(clips[0])
    t_spk_load = time.perf_counter() - t0
    segs = [energy_segments(c) for c in clips]
    results = {}
    for name, fn in (("dnsmos", lambda c, s: mos.estimate(c)),
                     ("speaker_count", lambda c, s: counter.count(c, 16000, s)),
                     ("environment", lambda c, s: environment(c, 16000, s))):
        ms = []
        for c, s in zip(clips, segs):
            t0 = time.perf_counter()
            fn(c, s)
            ms.append((time.perf_counter() - t0) * 1000)
        results[name] = ms
    print(f"{len(clips)} clips, {seconds:.1f} s of audio (mean {seconds / len(clips):.2f} s per clip)")
    print(f"first call incl. model load: dnsmos {t_mos_load * 1000:.0f} ms, speaker_count {t_spk_load * 1000:.0f} ms")
    for name, ms in results.items():
        rtf = sum(ms) / 1000 / seconds
        print(f"{name:14s} median {statistics.median(ms):7.1f} ms/clip  "
              f"mean {statistics.mean(ms):7.1f} ms/clip  RTF {rtf:.3f}")


def accuracy(testset: Path) -> None:
    """Speaker counts right per kind and SNR, with energy_segments and (if importable) the silero VAD."""
    rows = [json.loads(line) for line in (testset / "manifest.jsonl").read_text().splitlines()]
    counter = SpeakerCounter()
    segmenters = {"energy_segments": lambda x: None}
    try:
        from inference_core.vad import SileroVad

        vad = SileroVad()
        segmenters["silero_vad"] = lambda x: [(s.start_s, s.end_s) for s in vad.segments(x)]
    except Exception as exc:  # the VAD is optional here
        print(f"(no VAD: {exc})")
    for name, segment in segmenters.items():
        tally: dict[tuple, list[int]] = {}
        for r in rows:
            x = sf.read(testset / r["audio"], dtype="float32")[0]
            ok = counter.count(x, 16000, segment(x)).n == r["speakers"]
            key = (r["kind"], "clean" if r["snr_db"] is None else f"{r['snr_db']} dB")
            tally.setdefault(key, [0, 0])
            tally[key][0] += ok
            tally[key][1] += 1
        print(f"speaker count right, segments from {name}:")
        for (kind, snr), (ok, n) in sorted(tally.items()):
            print(f"  {kind:12s} {snr:6s} {ok:3d}/{n}")


def calibrate(n: int) -> None:
    b = _builder()
    ts = TemplateSet.load(ROOT / "resources" / "templates" / "en-us.ini")
    sentences = [e.text for e in ts.sentences(limit_per_intent=6, seed=1)]
    rng = np.random.default_rng(1)
    males = ["en-us+m1", "en+m2", "en-us+m4", "en+m5"]
    females = ["en-us+f1", "en+f5", "en-us+f5"]
    counter = SpeakerCounter()

    def clip(parts: list[tuple[str, str]]) -> np.ndarray:
        gap = np.zeros(int(rng.uniform(0.25, 0.5) * b.SR), np.float32)
        speed = int(rng.choice(b.SPEEDS_WPM))  # one speaking rate per clip, as in the test set
        out = []
        for text, voice in parts:
            out += [b.set_level(b.synthesize(text, voice, speed)), gap]
        return b.pad(np.concatenate(out[:-1]), rng)

    single, two = [], []
    for k in range(n):
        s1, s2 = (sentences[int(i)] for i in rng.choice(len(sentences), 2, replace=False))
        voice = (males + females)[k % 7]
        x = clip([(s1, voice), (s2, voice)] if k % 4 else [(s1, voice)])
        single.append(counter.count(x))
        m, f = males[k % 4], females[k % 3]
        two.append(counter.count(clip([(s1, m), (s2, f)] if k % 2 else [(s1, f), (s2, m)])))
    cs = [c.centroid_cosine for c in single if c.centroid_cosine is not None]
    ct = [c.centroid_cosine for c in two if c.centroid_cosine is not None]
    print(f"single voice: {len(single)} clips, {len(cs)} with >= 2 windows, centroid cosine "
          f"{min(cs):.3f}-{max(cs):.3f} (median {statistics.median(cs):.3f})")
    print(f"male/female turns: {len(two)} clips, {len(ct)} with >= 2 windows, centroid cosine "
          f"{min(ct):.3f}-{max(ct):.3f} (median {statistics.median(ct):.3f})")
    # a clip with one window is always counted 1
    cs1 = [c.centroid_cosine if c.centroid_cosine is not None else 1.0 for c in single]
    ct1 = [c.centroid_cosine if c.centroid_cosine is not None else 1.0 for c in two]
    print("threshold  single->1  two->2")
    best = None
    for th in np.arange(0.60, 0.801, 0.02):
        ok1, ok2 = sum(v >= th for v in cs1), sum(v < th for v in ct1)
        print(f"  {th:.2f}     {ok1:3d}/{len(cs1)}   {ok2:3d}/{len(ct1)}")
        gap = abs(ok1 / len(cs1) - ok2 / len(ct1))
        if best is None or gap < best[0] or (gap == best[0] and ok1 + ok2 > best[2]):
            best = (gap, th, ok1 + ok2)
    print(f"equal-error threshold ~{best[1]:.2f}; shipped {SAME_SPEAKER_COSINE}: "
          f"single -> 1 for {sum(c.n == 1 for c in single)}/{len(single)}, "
          f"two -> 2 for {sum(c.n == 2 for c in two)}/{len(two)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--testset", type=Path, default=ROOT / "resources" / "testset")
    p.add_argument("--n", type=int, default=40, help="clips to time (speech clips spread over the set), "
                   "or clips of each kind to calibrate on")
    p.add_argument("--calibrate", action="store_true", help="print the speaker-count calibration instead")
    p.add_argument("--accuracy", action="store_true", help="print the speaker-count accuracy on the test set instead")
    args = p.parse_args()
    if args.calibrate:
        calibrate(args.n)
    elif args.accuracy:
        accuracy(args.testset)
    else:
        timings(args.testset, args.n)


if __name__ == "__main__":
    main()
