"""Text to speech with Debian's espeak-ng (formant synthesis, offline).

FIELD_NOTES ("TTS"): ~14 ms per sentence on 2 cores; DNSMOS OVRL ≈ 2.9–3.0, below the MOS 4.0
requirement — the offline voice is intelligible but robotic. ``piper-tts`` ships no voice and
cannot speak offline. The binary's WAV (22,050 Hz, 16-bit mono) is resampled to the pipeline's
16 kHz with soxr.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import time
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_core.errors import AudioFormatError, ModelLoadError

logger = logging.getLogger(__name__)

#: Output rate of every inference-core stage (the recognizer's rate).
SAMPLE_RATE = 16_000
#: Length of the silence returned for empty text, seconds.
EMPTY_SILENCE_S = 0.2
#: espeak-ng's accepted ranges (``man espeak-ng``: -s 80..450 words per minute, -p 0..99).
SPEED_RANGE_WPM = (80, 450)
PITCH_RANGE = (0, 99)
_INSTALL_HINT = "install Debian's espeak-ng (apt-get install espeak-ng); make run does it"


@dataclass(frozen=True)
class Synthesis:
    """Synthesized speech.

    Attributes
    ----------
    samples
        float32 mono, shape (n,), in [-1, 1], at ``sample_rate``.
    sample_rate
        Hz (16,000).
    elapsed_ms
        Wall time of the synthesis, milliseconds.
    voice
        espeak-ng voice used.
    text
        The text spoken.
    """

    samples: np.ndarray
    sample_rate: int
    elapsed_ms: float
    voice: str
    text: str = ""

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return len(self.samples) / self.sample_rate


class Synthesizer:
    """Speak text with the espeak-ng binary.

    Parameters
    ----------
    voice
        espeak-ng voice (``espeak-ng --voices`` lists them), default ``en-us``: the templates' language.
    speed_wpm
        Words per minute, 80–450; 165 is a relaxed speaking rate (espeak-ng's own default is 175).
    pitch
        0–99, espeak-ng's default 50.
    binary
        Path of the espeak-ng executable (default: found on ``PATH``).
    timeout_s
        Longest a synthesis may take before it is abandoned (seconds).

    Raises
    ------
    ValueError
        If ``speed_wpm`` or ``pitch`` is out of range.
    ModelLoadError
        If espeak-ng is not installed.
    """

    def __init__(self, voice: str = "en-us", speed_wpm: int = 165, pitch: int = 50, *,
                 binary: str | None = None, timeout_s: float = 30.0) -> None:
        if not SPEED_RANGE_WPM[0] <= speed_wpm <= SPEED_RANGE_WPM[1]:
            raise ValueError(f"speed_wpm {speed_wpm} is outside espeak-ng's {SPEED_RANGE_WPM[0]}–{SPEED_RANGE_WPM[1]}")
        if not PITCH_RANGE[0] <= pitch <= PITCH_RANGE[1]:
            raise ValueError(f"pitch {pitch} is outside espeak-ng's {PITCH_RANGE[0]}–{PITCH_RANGE[1]}")
        self.voice, self.speed_wpm, self.pitch, self.timeout_s = voice, int(speed_wpm), int(pitch), timeout_s
        found = binary or shutil.which("espeak-ng")
        if not found or not shutil.which(found):
            raise ModelLoadError(f"espeak-ng was not found{' at ' + binary if binary else ' on PATH'}: {_INSTALL_HINT}")
        self.binary = found

    # -- settings (the tts model bundle) --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Settings as plain data: ``engine``, ``voice``, ``speed_wpm``, ``pitch``, ``sample_rate``."""
        return {"engine": "espeak-ng", "voice": self.voice, "speed_wpm": self.speed_wpm, "pitch": self.pitch,
                "sample_rate": SAMPLE_RATE}

    @classmethod
    def from_dict(cls, settings: dict[str, Any], **kwargs: Any) -> Synthesizer:
        """The synthesizer :meth:`to_dict` described (``kwargs`` go to the constructor).

        Raises
        ------
        ModelLoadError
            If the settings name another engine.
        """
        engine = settings.get("engine", "espeak-ng")
        if engine != "espeak-ng":
            raise ModelLoadError(f"TTS settings are for engine {engine!r}; this synthesizer runs espeak-ng")
        return cls(settings.get("voice", "en-us"), int(settings.get("speed_wpm", 165)), int(settings.get("pitch", 50)),
                   **kwargs)

    # -- synthesis ---------------------------------------------------------------------------------
    def synthesize(self, text: str) -> Synthesis:
        """Speech of ``text``; empty or blank text gives 0.2 s of silence.

        Raises
        ------
        ModelLoadError
            If espeak-ng disappeared, rejects the voice, fails or times out.
        AudioFormatError
            If its output is not a WAV stream.
        """
        t0 = time.perf_counter()
        text = " ".join(text.split())
        if not text:
            silence = np.zeros(int(EMPTY_SILENCE_S * SAMPLE_RATE), dtype=np.float32)
            return Synthesis(silence, SAMPLE_RATE, (time.perf_counter() - t0) * 1000.0, self.voice, "")
        cmd = [self.binary, "-v", self.voice, "-s", str(self.speed_wpm), "-p", str(self.pitch), "--stdout", "--stdin"]
        try:
            proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=self.timeout_s,
                                  check=False)
        except FileNotFoundError as exc:
            raise ModelLoadError(f"espeak-ng is no longer at {self.binary}: {_INSTALL_HINT}") from exc
        except subprocess.TimeoutExpired as exc:
            raise ModelLoadError(f"espeak-ng took over {self.timeout_s:g} s for {len(text)} characters") from exc
        err = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or not proc.stdout:
            hint = "; `espeak-ng --voices` lists the voices" if "voice" in err.lower() else ""
            raise ModelLoadError(f"espeak-ng failed (exit {proc.returncode}) for voice {self.voice!r}: "
                                 f"{err or 'no audio'}{hint}")
        samples, rate = _read_wav(proc.stdout)
        if rate != SAMPLE_RATE:
            import soxr  # noqa: PLC0415 - only needed when resampling

            samples = soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32)
        samples = np.clip(samples, -1.0, 1.0)
        elapsed = (time.perf_counter() - t0) * 1000.0
        logger.debug("espeak-ng: %d chars → %.2f s of audio in %.0f ms", len(text), len(samples) / SAMPLE_RATE,
                     elapsed)
        return Synthesis(samples, SAMPLE_RATE, elapsed, self.voice, text)


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV bytes → float32 mono in [-1, 1] and its rate.

    espeak-ng writing to a pipe cannot seek back to fill in the sizes, so the header claims
    ~2 GB; ``wave`` reads what is there.
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioFormatError(f"espeak-ng's output is not a WAV stream ({exc}); check its version") from exc
    if width != 2:
        raise AudioFormatError(f"espeak-ng wrote {8 * width}-bit audio; 16-bit PCM was expected")
    frames = frames[: len(frames) - len(frames) % (2 * channels)]
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1)
    return pcm, rate
