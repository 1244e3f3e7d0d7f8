"""Voice activity detection with silero-vad's ONNX model, run by onnxruntime alone.

Importing the ``silero_vad`` package pulls in torch (FIELD_NOTES, "Offline speech packages"), so
this module only *locates* the package with :func:`importlib.util.find_spec` (which does not
execute it) and loads ``silero_vad/data/silero_vad.onnx`` into an onnxruntime session. The model
takes 512-sample chunks at 16 kHz (32 ms) prefixed with the last 64 samples of the previous chunk,
and carries a recurrent state of shape (2, 1, 128) from chunk to chunk.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soxr

from inference_core.errors import ModelLoadError

logger = logging.getLogger(__name__)

#: Model rate (Hz), chunk and context sizes (samples) of silero-vad's 16 kHz ONNX model: the
#: values of silero_vad.utils_vad.OnnxWrapper for 16 kHz (FIELD_NOTES: 64-sample context +
#: 512-sample chunk).
VAD_RATE = 16000
CHUNK = 512
CONTEXT = 64


@dataclass(frozen=True)
class Segment:
    """One stretch of speech, in seconds from the start of the audio."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def silero_model_path() -> Path:
    """Path of ``silero_vad/data/silero_vad.onnx`` in the installed silero-vad package.

    Raises
    ------
    ModelLoadError
        If silero-vad is not installed or its package holds no ONNX model.
    """
    spec = importlib.util.find_spec("silero_vad")  # locates the package without importing it (no torch)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("silero-vad is not installed: run scripts/bootstrap.sh (it installs silero-vad>=6)")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "silero_vad.onnx"
        if path.is_file():
            return path
    raise ModelLoadError(f"silero-vad at {list(spec.submodule_search_locations)} has no data/silero_vad.onnx; "
                         "reinstall silero-vad>=6 (the ONNX model ships in its wheel)")


class SileroVad:
    """Speech/non-speech segmentation of 16 kHz audio.

    Parameters
    ----------
    model_path : Path, optional
        The ONNX model; default: the one shipped in the silero-vad package.
    threshold : float
        Speech probability at or above which a chunk starts speech (default 0.5, silero-vad's
        ``get_speech_timestamps`` default). Speech ends below ``threshold - 0.15`` (its
        ``neg_threshold`` default), floored at 0.01.
    min_speech_ms : int
        Speech shorter than this is dropped (default 250 ms, silero-vad's default).
    min_silence_ms : int
        Silence must last this long to end a segment (default 300 ms; silero-vad's default is
        100 ms, but the pauses *inside* a spoken command run 100–250 ms and a command should come
        out as one segment).
    pad_ms : int
        Each segment is widened by this much on both sides, then overlapping segments merge
        (default 80 ms; silero-vad pads 30 ms: 80 ms keeps weak word onsets and the release of
        final stops, which the recognizer needs).

    Raises
    ------
    ModelLoadError
        If the model file is missing or onnxruntime cannot load it.

    Notes
    -----
    One onnxruntime session per instance, one intra-op thread (silero-vad's own ``OnnxWrapper``
    setting: the model is tiny and a 2-core machine has other work). Calls are serialized by a lock,
    so an instance can be shared between threads.
    """

    def __init__(self, model_path: Path | None = None, threshold: float = 0.5, min_speech_ms: int = 250,
                 min_silence_ms: int = 300, pad_ms: int = 80) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.model_path = Path(model_path) if model_path is not None else silero_model_path()
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self.min_speech_ms = min_speech_ms
        self.min_silence_ms = min_silence_ms
        self.pad_ms = pad_ms
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.model_path), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several exception types
            raise ModelLoadError(f"cannot load the VAD model {self.model_path}: {exc}; "
                                 "reinstall silero-vad or pass a valid silero_vad.onnx") from None
        self._lock = threading.Lock()

    def speech_probabilities(self, samples: np.ndarray, sample_rate: int = VAD_RATE) -> np.ndarray:
        """Speech probability of each 32 ms chunk.

        Parameters
        ----------
        samples : np.ndarray
            Shape ``(n,)``, float in [-1, 1].
        sample_rate : int
            Hz; other rates than 16000 are resampled with soxr first.

        Returns
        -------
        np.ndarray
            Shape ``(ceil(n16 / 512),)``, float32 in [0, 1]: chunk ``i`` covers 16 kHz samples
            ``[512 i, 512 (i + 1))`` (the last chunk zero-padded), ``n16`` being the length at 16 kHz.
        """
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if sample_rate != VAD_RATE and len(x):
            x = soxr.resample(x, sample_rate, VAD_RATE).astype(np.float32)
        n_chunks = -(-len(x) // CHUNK)
        if n_chunks == 0:
            return np.zeros(0, np.float32)
        x = np.concatenate([np.zeros(CONTEXT, np.float32), x, np.zeros(n_chunks * CHUNK - len(x), np.float32)])
        probs = np.empty(n_chunks, np.float32)
        state = np.zeros((2, 1, 128), np.float32)
        sr = np.array(VAD_RATE, dtype=np.int64)
        with self._lock:
            for i in range(n_chunks):
                # the chunk and the 64 samples before it (zeros before the start): the model's context
                window = x[i * CHUNK: (i + 1) * CHUNK + CONTEXT][None, :]
                out, state = self._session.run(None, {"input": window, "state": state, "sr": sr})
                probs[i] = out[0, 0]
        return probs

    def segments(self, samples: np.ndarray, sample_rate: int = VAD_RATE) -> list[Segment]:
        """Stretches of speech in ``samples``.

        Parameters
        ----------
        samples : np.ndarray
            Shape ``(n,)``, float in [-1, 1].
        sample_rate : int
            Hz of ``samples`` (resampled to 16 kHz internally).

        Returns
        -------
        list of Segment
            In time order, non-overlapping, within ``[0, n / sample_rate]`` seconds; empty for
            silence, noise without speech, or empty input.
        """
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        duration = len(x) / sample_rate if sample_rate else 0.0
        probs = self.speech_probabilities(x, sample_rate)
        return self._segments_from_probs(probs, duration)

    def _segments_from_probs(self, probs: np.ndarray, duration_s: float) -> list[Segment]:
        chunk_s = CHUNK / VAD_RATE
        min_silence = self.min_silence_ms / 1000.0
        raw: list[tuple[float, float]] = []
        start: float | None = None
        silence_from: float | None = None
        for i, p in enumerate(probs):
            t = i * chunk_s
            if start is None:
                if p >= self.threshold:
                    start, silence_from = t, None
                continue
            if p >= self.threshold:
                silence_from = None
            elif p < self.neg_threshold:
                if silence_from is None:
                    silence_from = t
                if t + chunk_s - silence_from >= min_silence:
                    raw.append((start, silence_from))
                    start, silence_from = None, None
        if start is not None:
            raw.append((start, silence_from if silence_from is not None else len(probs) * chunk_s))
        pad = self.pad_ms / 1000.0
        out: list[Segment] = []
        for s, e in raw:
            if e - s < self.min_speech_ms / 1000.0:
                continue
            s, e = max(0.0, s - pad), min(duration_s, e + pad)
            if out and s <= out[-1].end_s:
                out[-1] = Segment(out[-1].start_s, max(out[-1].end_s, e))
            else:
                out.append(Segment(round(s, 3), round(e, 3)))
        return out
