"""espeak-ng text to speech (the real binary; no Qt)."""

from __future__ import annotations

import numpy as np
import pytest

from inference_core.errors import ModelLoadError
from inference_core.tts import SAMPLE_RATE, Synthesizer


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    return Synthesizer()


def test_sentence_becomes_16k_speech(synth: Synthesizer) -> None:
    s = synth.synthesize("Tomorrow in Seoul: light rain, 4 to 9 degrees.")
    assert s.sample_rate == SAMPLE_RATE == 16_000 and s.voice == "en-us"
    assert s.samples.dtype == np.float32 and s.samples.ndim == 1
    assert 1.0 <= s.duration_s <= 5.0
    assert np.abs(s.samples).max() <= 1.0 and np.abs(s.samples).max() > 0.1   # audible, not clipped
    assert s.elapsed_ms > 0


@pytest.mark.parametrize("text", ["", "   \n "])
def test_empty_text_gives_silence(synth: Synthesizer, text: str) -> None:
    s = synth.synthesize(text)
    assert s.duration_s == pytest.approx(0.2) and not s.samples.any() and s.sample_rate == 16_000


def test_faster_speech_is_shorter() -> None:
    text = "The capital of France is Paris."
    slow = Synthesizer(speed_wpm=120).synthesize(text)
    fast = Synthesizer(speed_wpm=250).synthesize(text)
    assert fast.duration_s < slow.duration_s


def test_settings_round_trip() -> None:
    synth = Synthesizer(voice="en-us", speed_wpm=180, pitch=40)
    settings = synth.to_dict()
    assert settings == {"engine": "espeak-ng", "voice": "en-us", "speed_wpm": 180, "pitch": 40, "sample_rate": 16_000}
    assert Synthesizer.from_dict(settings).to_dict() == settings
    with pytest.raises(ModelLoadError, match="engine"):
        Synthesizer.from_dict({**settings, "engine": "piper"})


def test_missing_espeak_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="install Debian's espeak-ng"):
        Synthesizer(binary="/nonexistent/espeak-ng")


def test_unknown_voice_and_bad_settings() -> None:
    with pytest.raises(ModelLoadError, match="voice"):
        Synthesizer(voice="xx-nonexistent").synthesize("hello")
    with pytest.raises(ValueError, match="speed_wpm"):
        Synthesizer(speed_wpm=10)
    with pytest.raises(ValueError, match="pitch"):
        Synthesizer(pitch=150)
