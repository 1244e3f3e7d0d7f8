"""Speaker turns on real two-voice speech (espeak-ng), segmented by the VAD as the voice loop does."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from inference_core.quality import SpeakerCount, SpeakerCounter
from inference_core.turns import Turn, first_speaker_span, speaker_turns, turns_summary
from inference_core.vad import SileroVad

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
FIRST = "what is the weather like in paris tomorrow"
SECOND = "play some rock music in the kitchen please"


@pytest.fixture(scope="module")
def builder():
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    spec = importlib.util.spec_from_file_location("build_testset", ROOT / "scripts" / "build_testset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def voices(builder) -> dict[str, np.ndarray]:
    return {"m": builder.set_level(builder.synthesize(FIRST, "en-us+m3", 160)),
            "f": builder.set_level(builder.synthesize(SECOND, "en-us+f2", 160)),
            "m2": builder.set_level(builder.synthesize(SECOND, "en-us+m3", 160))}


@pytest.fixture(scope="module")
def counter() -> SpeakerCounter:
    return SpeakerCounter()


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


def _clip(a: np.ndarray, b: np.ndarray, gap_s: float, seed: int = 0) -> tuple[np.ndarray, float, float]:
    """lead 0.4 s, a, gap, b, tail 0.4 s, at a -100 dBFS dither floor; returns (clip, gap start, gap end) in s."""
    lead, gap = np.zeros(int(0.4 * SR), np.float32), np.zeros(int(gap_s * SR), np.float32)
    x = np.concatenate([lead, a, gap, b, lead])
    x = x + np.random.default_rng(seed).normal(0, 1e-5, len(x)).astype(np.float32)
    start = (len(lead) + len(a)) / SR
    return x, start, start + gap_s


def _turns(x: np.ndarray, counter: SpeakerCounter, vad: SileroVad) -> list[Turn]:
    segments = [(s.start_s, s.end_s) for s in vad.segments(x)]
    return speaker_turns(counter.count(x, SR, segments), x, SR)


@pytest.mark.parametrize("gap_s", [0.45, 0.2])  # 0.2 s: silero's 300 ms minimum silence joins the turns
def test_the_first_turn_ends_in_the_pause_between_talkers(voices, counter, vad, gap_s) -> None:
    x, gap_start, gap_end = _clip(voices["m"], voices["f"], gap_s)
    turns = _turns(x, counter, vad)
    assert [t.speaker for t in turns] == [0, 1], turns
    assert turns[0].pause
    assert gap_start - 0.03 <= turns[0].end_s <= gap_end + 0.03, (turns, gap_start, gap_end)
    assert turns[1].start_s == turns[0].end_s and turns[1].end_s <= len(x) / SR
    assert first_speaker_span(turns) == (0.0, turns[0].end_s)


def test_one_voice_is_one_turn_and_the_whole_clip_is_transcribed(voices, counter, vad) -> None:
    x, _, _ = _clip(voices["m"], voices["m2"], 0.45)
    turns = _turns(x, counter, vad)
    assert len(turns) == 1 and turns[0].speaker == 0, turns
    assert first_speaker_span(turns) is None


def test_talkers_without_a_pause_are_not_cut(voices, counter, vad) -> None:
    """Overlapping talk: the change point is only an estimate, so the loop keeps the whole clip."""
    a, b = voices["m"], voices["f"]
    n = len(a) + len(b) - SR // 2
    x = np.zeros(n + SR, np.float32)
    x[SR // 2: SR // 2 + len(a)] += a
    x[SR // 2 + len(a) - SR // 2: SR // 2 + n] += b  # b starts 0.5 s before a ends
    turns = _turns(x, counter, vad)
    assert len(turns) == 2 and not turns[0].pause, turns
    assert first_speaker_span(turns) is None


def test_a_lone_window_of_another_voice_is_no_turn() -> None:
    windows = tuple((0.25 * i, 0.25 * i + 1.0) for i in range(6))
    x = np.random.default_rng(0).normal(0, 0.05, 3 * SR).astype(np.float32)
    lone_first = SpeakerCount(2, (0, 1, 1, 1, 1, 1), 0.76, windows)
    assert speaker_turns(lone_first, x) == [Turn(0, 0.0, 2.25, True)]
    lone_middle = SpeakerCount(2, (0, 0, 1, 0, 0, 0), 0.76, windows)
    assert len(speaker_turns(lone_middle, x)) == 1
    assert speaker_turns(SpeakerCount(0, (), None, ()), x) == []
    one = SpeakerCount(1, (0, 0, 0, 0, 0, 0), None, windows)
    assert speaker_turns(one, x) == [Turn(0, 0.0, 2.25, True)]


def test_noise_in_the_gap_means_no_cut(voices, counter, vad) -> None:
    """Noise as loud as speech fills the gap: no pause is found, so the clip is not cut."""
    x, _, _ = _clip(voices["m"], voices["f"], 0.3)
    noisy = np.clip(x + np.random.default_rng(1).normal(0, 0.05, len(x)).astype(np.float32), -1, 1)  # ~0 dB SNR
    turns = _turns(noisy, counter, vad)
    assert all(not t.pause for t in turns[:-1]), turns
    assert first_speaker_span(turns) is None


def test_turns_summary_names_each_speaker_and_a_missing_pause() -> None:
    turns = [Turn(0, 0.4, 2.24, False).to_dict(), Turn(1, 2.24, 4.46, True).to_dict()]
    assert turns_summary(turns) == "#1 0.40–2.24 s no pause, #2 2.24–4.46 s"
    assert turns_summary(turns[:1]) == "" and turns_summary([]) == ""
