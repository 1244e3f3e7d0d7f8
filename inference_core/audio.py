"""Audio input for the offline voice loop: decode any WAV/FLAC/OGG into 16 kHz mono float32.

Everything downstream (VAD, noise suppression, recognition) takes the :class:`Audio` this module
returns, so the rules for bad input live in one place: a file that cannot be decoded raises
:class:`~inference_core.errors.AudioFormatError` whose message says what was wrong and what to do;
a file that can be partly decoded (a WAV header that lies about its size, a file longer than the
cap) is decoded as far as it goes, with a logged warning, and never crashes the caller.

soundfile (libsndfile) reads, soxr resamples, channels are averaged to mono.
"""

from __future__ import annotations

import io
import logging
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from inference_core.errors import AudioFormatError

logger = logging.getLogger(__name__)

#: Sample rate of the whole voice loop (Hz): pocketsphinx's en-us acoustic model and silero-vad's
#: ONNX model are both 16 kHz models (FIELD_NOTES, "Offline speech packages").
TARGET_RATE = 16000
#: Level reported for digital silence (dBFS): the floor of :func:`dbfs`; 16-bit PCM's own floor is
#: about -96 dBFS, so -120 is below anything a real recording measures.
DBFS_FLOOR = -120.0

_BLOCK_FRAMES = 1 << 14  # frames per read (0.34 s at 48 kHz): a corrupt tail loses at most one block
_STREAMING_SIZE = 0x7FFF0000  # data sizes from here up are streaming writers' "unknown length"
_MAGIC = {b"RIFF": "WAV", b"RIFX": "WAV", b"RF64": "WAV", b"fLaC": "FLAC", b"OggS": "OGG", b"FORM": "AIFF"}


@dataclass(frozen=True)
class Audio:
    """Decoded audio, ready for the voice loop.

    Attributes
    ----------
    samples : np.ndarray
        Shape ``(n,)``, float32, mono, in [-1, 1], at :attr:`sample_rate`.
    sample_rate : int
        Hz (16000 unless asked otherwise).
    source : str
        The path it came from, or ``"<bytes>"``.
    source_rate, source_channels : int
        Sample rate (Hz) and channel count of the source before conversion.
    source_format : str
        Container and encoding of the source as libsndfile names them, e.g. ``"WAV PCM_16"``.
    truncated : bool
        True when the source was longer than ``max_seconds`` and only its start was read.
    """

    samples: np.ndarray
    sample_rate: int
    source: str
    source_rate: int
    source_channels: int
    source_format: str
    truncated: bool = False

    @property
    def duration_s(self) -> float:
        """Length of :attr:`samples` in seconds."""
        return len(self.samples) / self.sample_rate if self.sample_rate else 0.0


def load_audio(source: Path | str | bytes, *, target_rate: int = TARGET_RATE,
               max_seconds: float = 600.0) -> Audio:
    """Decode a WAV, FLAC or OGG file (any rate, bit depth and channel count) to mono float32.

    Parameters
    ----------
    source : Path, str or bytes
        A file path, or the file's bytes (e.g. an upload).
    target_rate : int
        Output sample rate in Hz (default 16000: the rate of the recognizer and the VAD).
    max_seconds : float
        Read at most this many seconds of the source (default 600 s = 10 min, far above a voice
        command, low enough to bound memory: 600 s of 48 kHz stereo float32 is 230 MB at worst,
        16 kHz mono output 38 MB). Longer sources are cut and ``truncated`` is set; only the
        part kept is read from disk.

    Returns
    -------
    Audio
        ``samples`` of shape ``(n,)``, float32 in [-1, 1], at ``target_rate``.

    Raises
    ------
    AudioFormatError
        The file is missing or empty, is not audio, is truncated or corrupt beyond decoding, or
        holds no samples at all. The message says which, and what to do.

    Notes
    -----
    A WAV whose header lies about its size (a recorder that crashed before rewriting it, a
    streaming writer's 0 or 0xFFFFFFFF sizes) is decoded as far as the data goes: libsndfile
    first, and where it refuses, a plain RIFF chunk walk that reads the PCM after the header.
    Either way a warning is logged.
    """
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    if target_rate <= 0:
        raise ValueError(f"target_rate must be > 0, got {target_rate}")
    name, fileobj = _open_source(source)
    with fileobj:
        head = fileobj.read(12)
        fileobj.seek(0)
        try:
            data, rate, channels, fmt, truncated = _read_soundfile(fileobj, name, max_seconds)
            if fmt.startswith("WAV") and not truncated:
                declared, available, pcm_beyond = _wav_data_sizes(fileobj)
                if pcm_beyond:
                    raise _SoundfileRefused(f"the header declares {data.shape[0]} frames but more PCM follows")
                if declared is not None and available is not None and declared > available:
                    # streaming writers (espeak-ng --stdout, sox -) put a placeholder near 2**31 or 2**32
                    level = logging.INFO if declared >= _STREAMING_SIZE else logging.WARNING
                    logger.log(level, "%s: WAV header declares %d data bytes but only %d are present (%s); "
                               "decoded the %.2f s that are there", name, declared, available,
                               "a streaming writer's placeholder" if level == logging.INFO
                               else "recording cut short?", data.shape[0] / rate)
        except _SoundfileRefused as exc:
            if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
                fileobj.seek(0)
                data, rate, channels, fmt, truncated = _read_wav_fallback(fileobj, name, max_seconds, exc.reason)
            elif head[:4] in _MAGIC:
                raise AudioFormatError(
                    f"{name}: looks like {_MAGIC[head[:4]]} but cannot be decoded ({exc.reason}); the file "
                    "is truncated or corrupt: copy or export it again from the unit") from None
            else:
                raise AudioFormatError(
                    f"{name}: not an audio file libsndfile can read ({exc.reason}); "
                    "send WAV, FLAC or OGG (Vorbis/Opus) audio") from None
    if data.shape[0] == 0:
        raise AudioFormatError(f"{name}: the file is valid {fmt} but holds no audio samples (zero length); "
                               "record again: the capture stopped before any sound was written")
    mono = data.mean(axis=1, dtype=np.float64) if data.shape[1] > 1 else data[:, 0].astype(np.float64)
    if not np.all(np.isfinite(mono)):
        logger.warning("%s: %d NaN/inf samples replaced by 0", name, int(np.sum(~np.isfinite(mono))))
        mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate)
    peak = float(np.max(np.abs(mono))) if len(mono) else 0.0
    if peak > 1.0:
        logger.warning("%s: peak %.2f beyond full scale (float source or resampling overshoot); clipped to [-1, 1]",
                       name, peak)
    samples = np.clip(mono, -1.0, 1.0).astype(np.float32)
    return Audio(samples, target_rate, name, rate, channels, fmt, truncated)


def save_wav(path: Path | str, samples: np.ndarray, sample_rate: int = TARGET_RATE) -> Path:
    """Write ``samples`` as a 16-bit PCM WAV.

    Parameters
    ----------
    path : Path or str
        Output file; its folder must exist.
    samples : np.ndarray
        Shape ``(n,)`` (mono) or ``(n, channels)``, float in [-1, 1] (clipped beyond).
    sample_rate : int
        Hz, default 16000.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    x = np.clip(np.nan_to_num(np.asarray(samples, dtype=np.float32)), -1.0, 1.0)
    sf.write(str(path), x, int(sample_rate), subtype="PCM_16", format="WAV")
    return path


def dbfs(samples: np.ndarray) -> float:
    """RMS level of ``samples`` in dBFS (0 dBFS = a full-scale square wave).

    Parameters
    ----------
    samples : np.ndarray
        Any shape, float in [-1, 1].

    Returns
    -------
    float
        ``20 log10(rms)``, never below :data:`DBFS_FLOOR` (-120 dBFS) — also for silence and
        empty input, so the result is always a finite number.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return DBFS_FLOOR
    rms = math.sqrt(float(np.mean(np.square(x))))
    if not math.isfinite(rms) or rms <= 0.0:
        return DBFS_FLOOR
    return max(DBFS_FLOOR, 20.0 * math.log10(rms))


# -- decoding -------------------------------------------------------------------------------------
class _SoundfileRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _open_source(source: Path | str | bytes) -> tuple[str, BinaryIO]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioFormatError("<bytes>: no data (0 bytes); the upload or recording is empty: send it again")
        return "<bytes>", io.BytesIO(bytes(source))
    path = Path(source)
    if not path.exists():
        raise AudioFormatError(f"{path}: no such file; check the path (was the recording moved or deleted?)")
    if path.is_dir():
        raise AudioFormatError(f"{path}: is a folder, not an audio file; pick a .wav, .flac or .ogg file in it")
    if path.stat().st_size == 0:
        raise AudioFormatError(f"{path}: the file is empty (0 bytes); the recording was not written: "
                               "record or copy it again")
    try:
        return str(path), path.open("rb")
    except OSError as exc:
        raise AudioFormatError(f"{path}: cannot be opened ({exc.strerror}); check its permissions") from None


def _read_soundfile(fileobj: BinaryIO, name: str, max_seconds: float
                    ) -> tuple[np.ndarray, int, int, str, bool]:
    """Read with libsndfile, at most ``max_seconds``; ``(frames, channels)`` float32."""
    try:
        f = sf.SoundFile(fileobj)
    except Exception as exc:  # noqa: BLE001 - libsndfile raises LibsndfileError/RuntimeError/TypeError
        raise _SoundfileRefused(_reason(exc)) from None
    with f:
        rate, channels = int(f.samplerate), int(f.channels)
        container, fmt = f.format, f"{f.format} {f.subtype}"
        if rate <= 0 or channels <= 0:
            raise _SoundfileRefused(f"header gives {rate} Hz, {channels} channels")
        cap = int(math.ceil(max_seconds * rate))
        declared = int(f.frames) if f.frames is not None else -1
        blocks: list[np.ndarray] = []
        got = 0
        while got <= cap:
            try:
                block = f.read(frames=min(_BLOCK_FRAMES, cap + 1 - got), dtype="float32", always_2d=True)
            except Exception as exc:  # noqa: BLE001 - corrupt data after a valid header
                if not got:
                    raise AudioFormatError(f"{name}: {fmt} header is valid but the audio data is corrupt "
                                           f"({_reason(exc)}); copy or export the file again") from None
                logger.warning("%s: %s data corrupt after %.2f s (%s); decoded the part before it",
                               name, fmt, got / rate, _reason(exc))
                break
            if not len(block):
                break
            blocks.append(block)
            got += len(block)
        data = np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)
    truncated = data.shape[0] > cap
    if truncated:
        data = data[:cap]
        logger.info("%s: longer than %.0f s; only the first %.0f s read", name, max_seconds, max_seconds)
    elif declared > data.shape[0]:
        logger.warning("%s: header declares %d frames but only %d are present (file cut short?); "
                       "decoded what is there", name, declared, data.shape[0])
    if data.shape[0] == 0 and container in ("WAV", "WAVEX") and declared == 0:
        # a header that says "no data" over data that is there: let the chunk walk look
        raise _SoundfileRefused("the header declares 0 frames")
    return data, rate, channels, fmt, truncated


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^Error opening .*?>: ", "", text).strip() or type(exc).__name__


_WAV_SUBTYPES = {(1, 8): "PCM_U8", (1, 16): "PCM_16", (1, 24): "PCM_24", (1, 32): "PCM_32",
                 (3, 32): "FLOAT", (3, 64): "DOUBLE"}


def _walk_riff(fileobj: BinaryIO) -> tuple[str, bytes | None, int | None, int | None]:
    """``(endian, fmt chunk bytes, data start offset, declared data size)`` of a RIFF/RIFX file."""
    fileobj.seek(0)
    riff = fileobj.read(12)
    endian = ">" if riff[:4] == b"RIFX" else "<"
    fmt_chunk: bytes | None = None
    data_start = data_size = None
    while True:
        header = fileobj.read(8)
        if len(header) < 8:
            break
        cid, size = header[:4], struct.unpack(endian + "I", header[4:])[0]
        if cid == b"fmt ":
            fmt_chunk = fileobj.read(min(size, 64))
            fileobj.seek(max(0, size - 64) + (size & 1), io.SEEK_CUR)
        elif cid == b"data":
            data_start, data_size = fileobj.tell(), size
            break
        else:
            fileobj.seek(size + (size & 1), io.SEEK_CUR)
    return endian, fmt_chunk, data_start, data_size


def _wav_data_sizes(fileobj: BinaryIO) -> tuple[int | None, int | None, bool]:
    """``(declared, available, pcm_beyond)``: the ``data`` chunk's declared and actual byte counts,
    and whether it declares fewer bytes than follow it while what follows is not another chunk
    (4 ASCII letters) — a header that lies small over PCM that is there."""
    _, _, start, size = _walk_riff(fileobj)
    if start is None or size is None:
        return None, None, False
    fileobj.seek(0, io.SEEK_END)
    available = fileobj.tell() - start
    if size >= available - 8:
        return size, available, False
    fileobj.seek(start + size + (size & 1))
    nxt = fileobj.read(4)
    return size, available, not (len(nxt) == 4 and all(32 <= c < 127 for c in nxt))


def _read_wav_fallback(fileobj: BinaryIO, name: str, max_seconds: float, why: str
                       ) -> tuple[np.ndarray, int, int, str, bool]:
    """Walk the RIFF chunks with struct and decode the PCM that follows the ``data`` header,
    trusting the file's real length over the sizes the header declares."""
    endian, fmt_chunk, data_start, data_size = _walk_riff(fileobj)
    if fmt_chunk is None or len(fmt_chunk) < 16 or data_start is None:
        missing = "fmt " if fmt_chunk is None or len(fmt_chunk) < 16 else "data"
        raise AudioFormatError(f"{name}: WAV file without a complete '{missing}' chunk ({why}); the file is "
                               "truncated or corrupt: copy or export it again")
    tag, channels, rate, _, block_align, bits = struct.unpack(endian + "HHIIHH", fmt_chunk[:16])
    if tag == 0xFFFE and len(fmt_chunk) >= 26:  # WAVE_FORMAT_EXTENSIBLE: sub-format GUID's first 2 bytes
        tag = struct.unpack(endian + "H", fmt_chunk[24:26])[0]
    subtype = _WAV_SUBTYPES.get((tag, bits))
    if subtype is None or channels == 0 or rate == 0:
        raise AudioFormatError(f"{name}: WAV encoding (format tag {tag}, {bits} bit, {channels} ch, {rate} Hz) "
                               f"cannot be decoded ({why}); convert it to 16-bit PCM WAV or FLAC")
    width = bits // 8
    block_align = channels * width
    fileobj.seek(0, io.SEEK_END)
    available = fileobj.tell() - data_start
    cap_frames = int(math.ceil(max_seconds * rate))
    assert data_size is not None
    declared_ok = 0 < data_size <= available and not _wav_data_sizes(fileobj)[2]
    n_bytes = data_size if declared_ok else available
    n_frames = n_bytes // block_align
    truncated = n_frames > cap_frames
    n_frames = min(n_frames, cap_frames)
    fileobj.seek(data_start)
    raw = fileobj.read(n_frames * block_align)
    x = _decode_pcm(raw, tag, width, endian).reshape(-1, channels)
    logger.warning("%s: libsndfile refused the file (%s); its WAV header declares %d data bytes, %d are present; "
                   "decoded %d frames of %s after the header", name, why, data_size, available, x.shape[0], subtype)
    return x, int(rate), int(channels), f"WAV {subtype}", truncated


def _decode_pcm(raw: bytes, tag: int, width: int, endian: str) -> np.ndarray:
    if tag == 3:
        return np.frombuffer(raw, dtype=f"{endian}f{width}").astype(np.float32)
    if width == 1:
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        lo, hi = (0, 2) if endian == "<" else (2, 0)
        v = b[:, lo] | (b[:, 1] << 8) | (b[:, hi] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return (v / float(1 << 23)).astype(np.float32)
    ints = np.frombuffer(raw, dtype=f"{endian}i{width}")
    return (ints / float(1 << (8 * width - 1))).astype(np.float32)
