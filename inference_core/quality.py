"""Audio-quality measures: noise floor, SNR, clipping, DNSMOS and a 0/1/2 speaker count.

Conventions of every function here: ``samples`` is a float32 mono array of shape ``(n,)`` in
[-1, 1]; ``sample_rate`` is in Hz (16 kHz expected; the models resample other rates with soxr);
``speech`` is the VAD's speech segments, a list of ``(start_s, end_s)`` tuples in seconds from the
start of the clip (clipped to the clip; empty or reversed ones ignored). Empty, integer,
multi-channel, non-finite or out-of-range samples raise :class:`~inference_core.errors.AudioFormatError`
with what to do; a missing model package raises :class:`~inference_core.errors.ModelLoadError`.

Levels are in dBFS as ``20·log10(RMS)``: a full-scale square wave reads 0 dBFS and a full-scale
sine −3.01 dBFS (AES17 would call the sine 0 dBFS). dBFS is **not** dB SPL: relating the two needs
the microphone's sensitivity (see :func:`environment`).

The models load lazily, once per instance, under a lock, from files shipped inside the installed
packages (``speechmos/dnsmos_models/*.onnx``, ``resemblyzer/pretrained.pt``); nothing here opens a
network connection. Importing this module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference_core.errors import AudioFormatError, ModelLoadError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FLOOR_DBFS = -120.0
FRAME_S = 0.020
Segments = Sequence[tuple[float, float]]

#: ANSI S3.5-1997 (Speech Intelligibility Index), table 3: overall speech level at 1 m for
#: "normal" vocal effort.
NORMAL_SPEECH_DB_SPL = 62.35
#: The service's requirement: cope with non-speech noise up to 60 dB.
NOISE_LIMIT_DB_SPL = 60.0


# -- input checks and helpers ---------------------------------------------------------------------
def _mono(samples: np.ndarray) -> np.ndarray:
    """``samples`` as a 1-D float32 array, checked (finite, within [-1, 1])."""
    x = np.asarray(samples)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise AudioFormatError(f"expected mono samples of shape (n,), got shape {x.shape}: mix the channels down first")
    if x.dtype.kind != "f":
        raise AudioFormatError(f"expected float samples in [-1, 1], got dtype {x.dtype}: "
                               "divide int16 audio by 32768")
    x = x.astype(np.float32, copy=False)
    if not x.size:
        raise AudioFormatError("the clip is empty (0 samples): nothing to measure")
    if not np.isfinite(x).all():
        raise AudioFormatError("the samples contain NaN or infinity: the decoder or a filter upstream is broken")
    if float(np.max(np.abs(x))) > 1.0 + 1e-6:
        raise AudioFormatError(f"samples exceed [-1, 1] (peak {float(np.max(np.abs(x))):.3g}): "
                               "scale them to full scale 1.0")
    return x


def _dbfs(power: float) -> float:
    """Mean power (full scale 1.0) → dBFS, floored at :data:`FLOOR_DBFS`."""
    return FLOOR_DBFS if power <= 0.0 else max(FLOOR_DBFS, 10.0 * math.log10(power))


def _spans(speech: Segments | None) -> list[tuple[float, float]]:
    """Segments as float pairs; objects with ``start_s``/``end_s`` (``vad.Segment``) are accepted too."""
    return [(float(s.start_s), float(s.end_s)) if hasattr(s, "start_s") else (float(s[0]), float(s[1]))
            for s in speech or ()]


def speech_mask(n_samples: int, sample_rate: int, speech: Segments | None) -> np.ndarray:
    """Boolean mask of shape ``(n_samples,)``: True inside the speech segments."""
    mask = np.zeros(n_samples, dtype=bool)
    for start_s, end_s in _spans(speech):
        a = max(0, int(round(float(start_s) * sample_rate)))
        b = min(n_samples, int(round(float(end_s) * sample_rate)))
        if b > a:
            mask[a:b] = True
    return mask


def frame_rms_dbfs(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, frame_s: float = FRAME_S) -> np.ndarray:
    """dBFS of consecutive 20 ms frames, shape ``(n_frames,)`` (partial last frame dropped)."""
    x = _mono(samples)
    n = max(1, int(round(frame_s * sample_rate)))
    k = max(1, len(x) // n)
    frames = x[: k * n].reshape(k, -1) if len(x) >= n else x.reshape(1, -1)
    power = np.mean(frames.astype(np.float64) ** 2, axis=1)
    return np.maximum(FLOOR_DBFS, 10.0 * np.log10(np.maximum(power, 1e-30)))


def energy_segments(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, *, margin_db: float = 12.0,
                    min_dbfs: float = -60.0, hangover_s: float = 0.2,
                    min_len_s: float = 0.1) -> list[tuple[float, float]]:
    """A crude energy gate standing in for the VAD when no segments are given. Not a VAD.

    A 20 ms frame is active when it is ``margin_db`` above the noise floor (10th percentile of
    frame levels) and above ``min_dbfs``; active runs closer than ``hangover_s`` merge, runs shorter
    than ``min_len_s`` are dropped. Stationary noise, tones and silence give no segment; music with
    attacks does (pass the VAD's segments where it matters).

    Returns a list of ``(start_s, end_s)`` in seconds.
    """
    db = frame_rms_dbfs(samples, sample_rate)
    floor = float(np.percentile(db, 10))
    active = db > max(floor + margin_db, min_dbfs)
    segs: list[list[float]] = []
    for i in np.flatnonzero(active):
        t0, t1 = i * FRAME_S, (i + 1) * FRAME_S
        if segs and t0 - segs[-1][1] <= hangover_s:
            segs[-1][1] = t1
        else:
            segs.append([t0, t1])
    return [(round(a, 3), round(b, 3)) for a, b in segs if b - a >= min_len_s]


# -- levels -----------------------------------------------------------------------------------------
def noise_floor_dbfs(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, speech: Segments | None = None) -> float:
    """Noise floor in dBFS.

    With ``speech`` segments: the RMS of everything outside them (if at least one 20 ms frame of it
    is left). Otherwise the 10th percentile of 20 ms frame RMS levels, a common minimum-statistics
    style estimate that works when the clip pauses at least 10 % of the time.

    Returns
    -------
    float
        dBFS, at least −120 (digital silence).

    Raises
    ------
    AudioFormatError
        Bad samples (module docstring).
    """
    x = _mono(samples)
    if speech is not None:
        rest = x[~speech_mask(len(x), sample_rate, speech)]
        if len(rest) >= FRAME_S * sample_rate:
            return _dbfs(float(np.mean(rest.astype(np.float64) ** 2)))
    return max(FLOOR_DBFS, float(np.percentile(frame_rms_dbfs(x, sample_rate), 10)))


def snr_db(samples: np.ndarray, sample_rate: int, speech: Segments | None,
           subtract_noise: bool = True) -> float | None:
    """Signal-to-noise ratio in dB: power inside the speech segments over power outside them.

    With ``subtract_noise`` (default) the noise power is first taken out of the speech part's power
    (which holds speech plus noise), ``(P_speech_part − P_noise) / P_noise``; the plain ratio
    overstates a 0 dB SNR as ≈ 3 dB. When the speech part is not louder than the rest the result is
    floored at −30 dB. Pauses inside segments lower the figure a little: the test set's mixing SNR is
    computed on active speech frames only.

    Returns
    -------
    float or None
        dB; None when there is no speech or no non-speech (at least one 20 ms frame of each needed).
        Digital silence outside speech counts as −120 dBFS.

    Raises
    ------
    AudioFormatError
        Bad samples (module docstring).
    """
    x = _mono(samples).astype(np.float64)
    mask = speech_mask(len(x), sample_rate, speech)
    need = FRAME_S * sample_rate
    if mask.sum() < need or (~mask).sum() < need:
        return None
    p_speech = float(np.mean(x[mask] ** 2))
    p_noise = max(float(np.mean(x[~mask] ** 2)), 10 ** (FLOOR_DBFS / 10))
    if subtract_noise:
        p_speech = max(p_speech - p_noise, p_noise * 1e-3)
    return 10.0 * math.log10(max(p_speech, 1e-30) / p_noise)


def clipping_ratio(samples: np.ndarray, threshold: float = 0.999) -> float:
    """Fraction in [0, 1] of samples whose magnitude reaches ``threshold`` (full scale 1.0).

    0.999 catches int16 full scale (32767/32768) with margin; clipping at a lower level (an analogue
    stage, an AGC limiting at 0.8) is not seen. Raises AudioFormatError on bad samples.
    """
    x = _mono(samples)
    return float(np.count_nonzero(np.abs(x) >= threshold)) / len(x)


def environment(samples: np.ndarray, sample_rate: int, speech: Segments | None, *,
                mic_dbfs_at_94_db_spl: float | None = None,
                limit_db_spl: float = NOISE_LIMIT_DB_SPL) -> dict[str, Any]:
    """The acoustic environment of a clip, judged against the service's 60 dB noise requirement.

    dBFS is relative to the converter's full scale and says nothing about the room until the
    microphone is calibrated: ``dB SPL = dBFS − S + 94`` where ``S`` is the microphone's output in
    dBFS for a 94 dB SPL tone (its datasheet sensitivity; typical digital MEMS microphones, e.g.
    TDK ICS-43434 or Knowles SPH0645, state −26 dBFS, so 60 dB SPL ≈ −60 dBFS). Hence two bases:

    * ``mic_dbfs_at_94_db_spl`` given (``level_basis="calibrated"``): the noise floor is converted
      to dB SPL as above.
    * otherwise (``level_basis="assumed_speech_level"``): the talker is assumed to speak at normal
      effort, 62.35 dB SPL at 1 m (ANSI S3.5-1997), so ``noise ≈ 62.35 − SNR`` dB SPL; 60 dB SPL
      noise then means SNR ≈ 2.4 dB. A near or loud talker makes this optimistic, a far one
      pessimistic: it is an estimate, not a measurement.

    Parameters
    ----------
    samples, sample_rate, speech
        See the module docstring.
    mic_dbfs_at_94_db_spl : float, optional
        Microphone sensitivity in dBFS at 94 dB SPL (1 kHz).
    limit_db_spl : float
        The noise the service must cope with; 60 dB (service requirement).

    Returns
    -------
    dict
        ``noise_floor_dbfs`` (float), ``snr_db`` (float or None), ``clipping_ratio`` (float),
        ``clipped`` (bool, ratio ≥ 0.1 %), ``speech_ratio`` (fraction of the clip inside segments),
        ``noise_db_spl_est`` (float or None), ``level_basis`` (str), and ``verdict``: ``"ok"``
        (noise estimated within ``limit_db_spl``), ``"too_noisy"`` (above it) or ``"unknown"``
        (uncalibrated and no SNR: no speech or no pause).

    Raises
    ------
    AudioFormatError
        Bad samples (module docstring).
    """
    x = _mono(samples)
    mask = speech_mask(len(x), sample_rate, speech)
    floor = noise_floor_dbfs(x, sample_rate, speech)
    snr = snr_db(x, sample_rate, speech)
    clip = clipping_ratio(x)
    if mic_dbfs_at_94_db_spl is not None:
        basis, noise_spl = "calibrated", floor - mic_dbfs_at_94_db_spl + 94.0
    elif snr is not None:
        basis, noise_spl = "assumed_speech_level", NORMAL_SPEECH_DB_SPL - snr
    else:
        basis, noise_spl = "assumed_speech_level", None
    verdict = "unknown" if noise_spl is None else ("ok" if noise_spl <= limit_db_spl else "too_noisy")
    return {
        "noise_floor_dbfs": round(floor, 2),
        "snr_db": None if snr is None else round(snr, 2),
        "clipping_ratio": clip,
        "clipped": clip >= 1e-3,
        "speech_ratio": float(mask.mean()),
        "noise_db_spl_est": None if noise_spl is None else round(noise_spl, 1),
        "level_basis": basis,
        "verdict": verdict,
    }


def _resample(x: np.ndarray, sample_rate: int) -> np.ndarray:
    if sample_rate == SAMPLE_RATE:
        return x
    import soxr

    y = soxr.resample(x, sample_rate, SAMPLE_RATE).astype(np.float32)
    return np.clip(y, -1.0, 1.0)


# -- DNSMOS -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mos:
    """DNSMOS estimates on the 1–5 MOS scale.

    ``sig``, ``bak``, ``ovrl``: ITU-T P.835 speech signal, background and overall quality;
    ``p808``: ITU-T P.808 overall (absolute category rating) quality.
    """

    sig: float
    bak: float
    ovrl: float
    p808: float


DNSMOS_INPUT_S = 9.01  # the models' input length (speechmos.dnsmos.INPUT_LENGTH, as in Microsoft's dnsmos_local.py)


class MosEstimator:
    """Microsoft's DNSMOS (P.835 SIG/BAK/OVRL and P.808) through the ``speechmos`` package's ONNX models.

    ``speechmos`` declares no dependencies; it needs onnxruntime, librosa and requests (imported,
    never called) in the environment. The models are read from ``speechmos/dnsmos_models/``
    (``sig_bak_ovr.onnx``, ``model_v8.onnx``) on the first :meth:`estimate`, once, under a lock;
    the estimator is then safe to share between threads (onnxruntime sessions are). No network.

    Parameters
    ----------
    personalized : bool
        Use the personalized DNSMOS (``pdnsmos_models``), which penalises interfering talkers.
    intra_op_threads : int or None
        onnxruntime threads per session (None: its default, all cores). 1 by default: on 2 cores
        shared with other work, 1 thread measured 760 ms/clip and the default 900–1300 ms.
    """

    def __init__(self, personalized: bool = False, intra_op_threads: int | None = 1) -> None:
        self.personalized = personalized
        self.intra_op_threads = intra_op_threads
        self._lock = threading.Lock()
        self._model: Any = None

    def _load(self) -> Any:
        with self._lock:
            if self._model is not None:
                return self._model
            try:
                import onnxruntime as ort
                from speechmos import dnsmos as sm
            except ImportError as exc:
                raise ModelLoadError(f"DNSMOS needs speechmos, onnxruntime and librosa ({exc}); "
                                     "run scripts/bootstrap.sh") from exc
            root = Path(sm.__file__).resolve().parent
            primary = root / ("pdnsmos_models" if self.personalized else "dnsmos_models") / "sig_bak_ovr.onnx"
            p808 = root / "dnsmos_models" / "model_v8.onnx"
            for path in (primary, p808):
                if not path.is_file():
                    raise ModelLoadError(f"DNSMOS model {path} is missing: reinstall speechmos")
            opts = ort.SessionOptions()
            if self.intra_op_threads:
                opts.intra_op_num_threads = self.intra_op_threads
            # speechmos' own DNSMOS scoring (features, polynomial mapping) with sessions we configure.
            model = sm.DNSMOS.__new__(sm.DNSMOS)
            model.primary_model_path = str(primary)
            try:
                model.onnx_sess = ort.InferenceSession(str(primary), opts, providers=["CPUExecutionProvider"])
                model.p808_onnx_sess = ort.InferenceSession(str(p808), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
                raise ModelLoadError(f"cannot load DNSMOS model: {exc}; reinstall speechmos") from exc
            logger.info("DNSMOS loaded from %s", root)
            self._model = model
            return model

    def estimate(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Mos:
        """Estimate the MOS of one clip.

        Other rates are resampled to 16 kHz (soxr). Clips shorter than the models' 9.01 s input
        are padded by repeating the clip end to end (tiling), as Microsoft's reference script
        ``dnsmos_local.py`` and speechmos do; longer clips are scored on 9.01 s windows hopped by
        1 s and averaged. Silence-padded short clips therefore repeat their pauses too.

        Returns
        -------
        Mos
            1–5 scale. Cost is per 9.01 s model input, so about constant below 9 s: FIELD_NOTES
            ~255 ms per clip on 2 cores; 540–840 ms median here on 2 cores shared with other work
            (benchmarks/quality_speed.py).

        Raises
        ------
        AudioFormatError
            Bad samples (module docstring).
        ModelLoadError
            speechmos or its models are missing.
        """
        x = _resample(_mono(samples), sample_rate)
        need = int(DNSMOS_INPUT_S * SAMPLE_RATE)
        if len(x) < need:
            x = np.tile(x, int(math.ceil(need / len(x))))
        model = self._load()
        out = model(x, SAMPLE_RATE, self.personalized)
        return Mos(sig=float(out["sig_mos"]), bak=float(out["bak_mos"]), ovrl=float(out["ovrl_mos"]),
                   p808=float(out["p808_mos"]))


# -- speaker counting ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeakerCount:
    """How many speakers a clip holds (0, 1 or 2).

    Attributes
    ----------
    n : int
        0 (no speech), 1 or 2.
    labels : tuple of int
        Cluster of each window (0 = the first window's speaker); all 0 unless ``n == 2``.
    centroid_cosine : float or None
        Cosine between the two 2-means centroids; None with fewer than 2 windows.
    windows : tuple of (start_s, end_s)
        Each window's span in the clip, seconds (a window lies inside one speech segment).
    """

    n: int
    labels: tuple[int, ...]
    centroid_cosine: float | None
    windows: tuple[tuple[float, float], ...]


#: Best balanced accuracy of ``benchmarks/speaker_count_calibration.py --n 80 --heldout H1 --heldout
#: H2`` (0.798, rounded): clips segmented by the silero VAD as the voice loop does, none of them in
#: the test set — 80 one-voice (3 in 4 saying two commands) and 80 male/female turn-taking clips of
#: voices the test set does not use, and two held-out sets built by ``scripts/build_testset.py
#: --seed 1`` / ``--seed 2 --phrasings benchmarks/heldout_phrasings.json`` (440 one-voice clips,
#: clean and noisy, and 32 two-speaker clips). With the default 1.0 s windows hopped by 0.25 s, at
#: 0.80: one voice counted 1 for 73/80 and 427/440, two voices counted 2 for 77/80 and 32/32
#: (balanced accuracy 0.968). The former 0.70 was the equal-error point of windows over energy-gate
#: segments, which keep turns apart; the VAD joins turns under ~0.3 s apart, which raises the
#: two-voice cosines (median 0.59 → 0.63–0.71): with the former 1.6 s / 0.8 s windows at 0.70 only
#: 49/80 and 29/32 two-voice clips were counted 2. Cf. FIELD_NOTES: same voice 0.76–0.81, male
#: vs female 0.59–0.63 (whole utterances; windows are noisier).
SAME_SPEAKER_COSINE = 0.80


class SpeakerCounter:
    """Count 0, 1 or 2 speakers with resemblyzer embeddings of windows over the speech.

    Speech segments closer than ``merge_gap_s`` are joined; segments shorter than ``min_segment_s``
    are dropped (unless nothing else is left). Each segment is normalised to −30 dBFS (resemblyzer's
    ``audio_norm_target_dBFS``) and cut into ``window_s`` windows every ``hop_s`` (the last one
    aligned to the segment's end); a segment shorter than a window is repeated to fill one. Windows
    never cross a pause between segments, where talkers usually change (in calibration, windows
    over the joined segments scored 90–94 %, these 95–96 %). Each window gets a 256-d resemblyzer
    embedding; :func:`two_means` splits them; the clip has 2 speakers only when the centroids'
    cosine is below ``same_speaker_cosine`` and each cluster holds ``min_cluster_windows`` windows.
    Two similar male voices are at chance (FIELD_NOTES): expect 1 for them. A VAD that joins turns
    (silero with 300 ms minimum silence joins gaps under ~0.3 s) leaves the second turn inside the
    first one's segment: short windows with a short hop (1.0 s every 0.25 s) give a short second
    turn windows of its own and the centroids enough windows to average. In calibration
    (:data:`SAME_SPEAKER_COSINE`, at 0.80) 1.0 s / 0.25 s windows and 1.6 s / 0.8 s ones did about
    equally on the held-out sets' voices (459/472 and 460/472 clips right), the short ones better
    on the other voices (150/160 against 144/160); 1.5 s / 0.25 s windows did worse on those
    (141/160 at their own best threshold).

    Parameters
    ----------
    window_s, hop_s : float
        Window length and hop in seconds (default 1.0 s every 0.25 s, chosen by
        ``benchmarks/speaker_count_calibration.py``; resemblyzer's own partial utterances are 1.6 s).
    same_speaker_cosine : float
        See :data:`SAME_SPEAKER_COSINE` for its calibration.
    min_cluster_windows : int
        Windows each cluster needs for a count of 2 (1: a short second turn gives one window).
    min_speech_s : float
        Less speech than this in all counts as none.
    min_segment_s, merge_gap_s : float
        See above. 0.2 s keeps the test set's turn gaps (0.25–0.5 s) apart.
    torch_threads : int or None
        ``torch.set_num_threads`` applied once at load (process-wide: torch has no per-model
        setting). 1 by default: on 2 shared cores the small LSTM ran 0.1 s per batch with 1 thread
        and 0.3–3 s with 2 (OpenMP spinning against other work). None leaves torch's setting alone.
    """

    def __init__(self, window_s: float = 1.0, hop_s: float = 0.25, same_speaker_cosine: float = SAME_SPEAKER_COSINE,
                 min_cluster_windows: int = 1, min_speech_s: float = 0.25, min_segment_s: float = 0.3,
                 merge_gap_s: float = 0.2, torch_threads: int | None = 1) -> None:
        if not 0 < hop_s <= window_s:
            raise ValueError(f"need 0 < hop_s <= window_s, got hop_s={hop_s}, window_s={window_s}")
        self.window_s, self.hop_s, self.same_speaker_cosine = window_s, hop_s, same_speaker_cosine
        self.min_cluster_windows, self.min_speech_s = min_cluster_windows, min_speech_s
        self.min_segment_s, self.merge_gap_s, self.torch_threads = min_segment_s, merge_gap_s, torch_threads
        self._lock = threading.Lock()
        self._encoder: Any = None

    def _load(self) -> Any:
        with self._lock:
            if self._encoder is None:
                try:
                    import torch
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # pkg_resources / scipy.ndimage deprecations
                        from resemblyzer import VoiceEncoder
                    if self.torch_threads:
                        torch.set_num_threads(self.torch_threads)
                    self._encoder = VoiceEncoder("cpu", verbose=False)
                except ImportError as exc:
                    raise ModelLoadError(f"speaker counting needs resemblyzer and torch ({exc}); "
                                         "run scripts/bootstrap.sh") from exc
                except Exception as exc:  # resemblyzer raises a bare Exception for a missing file
                    raise ModelLoadError(f"cannot load resemblyzer's voice encoder: {exc}") from exc
                logger.info("resemblyzer voice encoder loaded")
            return self._encoder

    def _segments(self, x: np.ndarray, speech: Segments | None) -> list[tuple[int, int]]:
        """Merged, clipped, long-enough speech segments as sample ranges."""
        if speech is None:
            speech = energy_segments(x, SAMPLE_RATE, hangover_s=self.merge_gap_s)
        merged: list[list[int]] = []
        for start_s, end_s in sorted(_spans(speech)):
            a, b = max(0, int(round(start_s * SAMPLE_RATE))), min(len(x), int(round(end_s * SAMPLE_RATE)))
            if b <= a:
                continue
            if merged and a - merged[-1][1] <= self.merge_gap_s * SAMPLE_RATE:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        if sum(b - a for a, b in merged) < self.min_speech_s * SAMPLE_RATE:
            return []
        long = [(a, b) for a, b in merged if b - a >= self.min_segment_s * SAMPLE_RATE]
        return long or [max(((a, b) for a, b in merged), key=lambda ab: ab[1] - ab[0])]

    def embed_windows(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE,
                      speech: Segments | None = None) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """L2-normalised embeddings of shape ``(n_windows, 256)`` and the windows' spans in seconds.

        ``speech`` None: :func:`energy_segments` stands in for the VAD. No speech: shape ``(0, 256)``.
        """
        x = _resample(_mono(samples), sample_rate)
        segments = self._segments(x, speech)
        if not segments:
            return np.zeros((0, 256), np.float32), []
        encoder = self._load()
        import torch
        from resemblyzer import wav_to_mel_spectrogram

        win, hop = int(self.window_s * SAMPLE_RATE), int(self.hop_s * SAMPLE_RATE)
        step = SAMPLE_RATE // 100  # resemblyzer's 10 ms mel hop
        n_frames = win // step
        mels, spans = [], []
        for a, b in segments:
            seg = x[a:b].astype(np.float64)
            rms = math.sqrt(float(np.mean(seg ** 2)))
            if rms > 0:
                seg *= 10 ** (-30 / 20) / rms
            if len(seg) < win:
                seg = np.tile(seg, int(math.ceil(win / len(seg))))[:win]
                starts, ends = [0], [b - a]
            else:
                starts = list(range(0, len(seg) - win + 1, hop))
                if len(seg) - (starts[-1] + win) > hop // 2:
                    starts.append(len(seg) - win)
                ends = [s + win for s in starts]
            mel = wav_to_mel_spectrogram(seg.astype(np.float32))
            for s, e in zip(starts, ends):
                mels.append(mel[s // step: s // step + n_frames])
                spans.append((round((a + s) / SAMPLE_RATE, 3), round((a + e) / SAMPLE_RATE, 3)))
        with self._lock, torch.no_grad():
            emb = encoder(torch.from_numpy(np.stack(mels))).numpy()
        return emb.astype(np.float32), spans

    def count(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE,
              speech: Segments | None = None) -> SpeakerCount:
        """Count the speakers of a clip.

        ``speech`` None: :func:`energy_segments` stands in for the VAD (a crude gate: pass the VAD's
        segments; at 0 dB SNR the gate finds no speech at all).

        Returns
        -------
        SpeakerCount
            ``n`` 0 when the segments hold less than ``min_speech_s`` of audio.

        Raises
        ------
        AudioFormatError
            Bad samples (module docstring).
        ModelLoadError
            resemblyzer or torch is missing.
        """
        emb, spans = self.embed_windows(samples, sample_rate, speech)
        if len(emb) == 0:
            return SpeakerCount(0, (), None, ())
        if len(emb) == 1:
            return SpeakerCount(1, (0,), None, tuple(spans))
        labels, cosine = two_means(emb)
        sizes = np.bincount(labels, minlength=2)
        n = 2 if cosine < self.same_speaker_cosine and sizes.min() >= self.min_cluster_windows else 1
        out = tuple(int(v) for v in labels) if n == 2 else (0,) * len(labels)
        return SpeakerCount(n, out, round(cosine, 4), tuple(spans))


def two_means(emb: np.ndarray, iters: int = 20) -> tuple[np.ndarray, float]:
    """2-means on L2-normalised embeddings ``(n, d)``, n ≥ 2: labels ``(n,)`` and centroid cosine.

    Started from the least similar pair of rows, so deterministic (no seed to set); labels are
    renumbered so that the first row is in cluster 0.
    """
    sim = emb @ emb.T
    np.fill_diagonal(sim, np.inf)
    i, j = np.unravel_index(int(np.argmin(sim)), sim.shape)
    centroids = emb[[i, j]].astype(np.float64)
    labels = np.zeros(len(emb), dtype=int)
    for _ in range(iters):
        new = np.argmax(emb @ centroids.T, axis=1)
        for k in (0, 1):
            if not np.any(new == k):  # keep both clusters alive
                new[[i, j][k]] = k
        centroids = np.stack([emb[new == k].mean(axis=0) for k in (0, 1)])
        if np.array_equal(new, labels):
            break
        labels = new
    if labels[0] == 1:
        labels = 1 - labels
        centroids = centroids[::-1]
    a, b = (c / (np.linalg.norm(c) or 1.0) for c in centroids)
    return labels, float(a @ b)
