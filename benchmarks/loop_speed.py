"""Speed of the voice loop against issue #3's targets, and throughput for server sizing.

Prints: model load time (target ≤ 3 s), end to end for a 4 s utterance (target ≤ 1.0 s), STT RTF
(target ≤ 0.2), QA p95 (target ≤ 10 ms), and requests per second with 1 worker process and with
as many workers as cores (the monitoring issue's capacity view uses these). The service stages
only: decode, VAD, auto-denoise, STT, QA, TTS — no MOS, speaker count or general transcript.

Usage: ``.venv/bin/python benchmarks/loop_speed.py [--models-dir DIR] [--requests 20]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from inference_core.audio import load_audio, save_wav
from inference_core.bundles import build_default_bundles
from inference_core.pipeline import LoopOptions, VoiceLoop

SERVICE_ONLY = LoopOptions(mos=False, speakers=False, general_transcript=False)
TEXT = "remind me to take my medicine tomorrow at seven thirty in the evening"


def four_second_utterance(folder: Path) -> Path:
    raw = folder / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), TEXT], check=True)
    x = load_audio(raw).samples
    pad = max(0, 4 * 16000 - len(x))
    y = np.concatenate([np.zeros(pad // 2, np.float32), x, np.zeros(pad - pad // 2, np.float32)])[: 4 * 16000]
    out = folder / "four_s.wav"
    save_wav(out, y)
    return out


def _worker(args: tuple[str, str, int]) -> int:
    root, path, n = args
    loop = VoiceLoop.from_root(Path(root), options=SERVICE_ONLY, build_missing=False)
    loop.run(path)  # warm up
    for _ in range(n):
        loop.run(path)
    return n


def throughput(root: Path, path: Path, workers: int, n: int) -> float:
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(_worker, [(str(root), str(path), 1)] * workers)  # load models in every worker
        t0 = time.perf_counter()
        done = sum(pool.map(_worker, [(str(root), str(path), n)] * workers))
        return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", type=Path, default=Path("/tmp/speakerops-bench-models"))
    ap.add_argument("--requests", type=int, default=20)
    args = ap.parse_args()
    build_default_bundles(args.models_dir)
    with tempfile.TemporaryDirectory() as tmp:
        path = four_second_utterance(Path(tmp))
        t0 = time.perf_counter()
        loop = VoiceLoop.from_root(args.models_dir, options=SERVICE_ONLY, build_missing=False)
        load_s = time.perf_counter() - t0
        loop.run(path)
        runs = [loop.run(path) for _ in range(args.requests)]
        e2e = np.array([r.timings_ms["end_to_end"] for r in runs])
        stt_rtf = np.array([r.rtf["stt"] for r in runs])
        qa = np.array([r.timings_ms["qa"] for r in runs])
        print(f"utterance: 4.0 s, {TEXT!r} -> {runs[0].transcript!r} ({runs[0].intent})")
        print(f"models loaded in {load_s:.2f} s (target <= 3 s)")
        print(f"end to end p50 {np.percentile(e2e, 50):.0f} ms, p95 {np.percentile(e2e, 95):.0f} ms (target <= 1000 ms)")
        print("  per stage p50 ms: " + ", ".join(
            f"{s} {np.percentile([r.timings_ms[s] for r in runs], 50):.0f}"
            for s in ("decode", "vad", "denoise", "stt", "qa", "tts")))
        print(f"STT RTF p50 {np.percentile(stt_rtf, 50):.3f} (target <= 0.2)")
        print(f"QA p95 {np.percentile(qa, 95):.1f} ms (target <= 10 ms)")
        one = throughput(args.models_dir, path, 1, args.requests)
        cores = os.cpu_count() or 1
        many = throughput(args.models_dir, path, cores, args.requests)
        print(f"throughput: {one:.2f} requests/s with 1 worker, {many:.2f} with {cores} workers "
              f"({many / cores:.2f} per worker)")


if __name__ == "__main__":
    main()
