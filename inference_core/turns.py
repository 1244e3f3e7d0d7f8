"""Speaker turns: who spoke when in a clip the speaker count split between two talkers.

A smart speaker answers the person who addressed it. When two people talk in turn (the service
must "tell apart up to 2 speakers"), the loop transcribes the first speaker's turn only and keeps
the second one out of the request: recognizing both turns as one utterance ran the second command
into the first (on the shipped test set, 9 of 16 two-speaker clips were understood as the wrong
feature, WER 1.09 against the first speaker's words).

:func:`speaker_turns` turns :class:`~inference_core.quality.SpeakerCount`'s per-window labels into
turns. A change of speaker is only located to within a window (1 s windows every 0.25 s), so the
boundary is moved to the quietest stretch near it: people leave a pause between turns (the test
set's are 0.25–0.5 s; conversational turn gaps are typically ~0.2 s, Stivers et al. 2009, PNAS 106).
A turn that ends in no such pause (overlapping talk, or noise filling the gap) is marked
``pause=False``; the loop then transcribes the whole clip rather than cut inside a word.

Conventions as in :mod:`inference_core.quality`: float32 mono samples in [-1, 1], times in seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from inference_core.quality import FRAME_S, SpeakerCount, frame_rms_dbfs

logger = logging.getLogger(__name__)

#: A run of fewer consecutive windows than this is not a turn of its own: it joins its neighbour.
#: One 1 s window of the "other" speaker is what a single talker's clip shows when the count errs
#: (in the shipped test set one clean one-voice clip was counted 2 on a single first window).
MIN_TURN_WINDOWS = 2
#: How far (s) either side of the estimated change point the pause is looked for: the change lies
#: between the centres of the last window of one run and the first of the next (0.25 s apart),
#: and windows are 1 s long, so a pause can sit up to ~0.5 s from the estimate.
PAUSE_SEARCH_S = 0.6
#: Length (s) of the quiet stretch a pause needs: longer than a stop consonant's closure (~0.05–0.1 s).
PAUSE_S = 0.12
#: A pause is at least this much (dB) below the speech's level (90th percentile of 20 ms frames):
#: the gap of a clean clip reads ~70 dB down, one at 10 dB SNR ~10–15 dB down.
PAUSE_DEPTH_DB = 10.0
#: ... and at most this much (dB) above the room's floor (10th percentile of 20 ms frames): a dip
#: inside one talker's speech (a pause before a stressed word, while the other one has stopped)
#: reads tens of dB above the floor; a pause between turns holds only the room.
PAUSE_ABOVE_FLOOR_DB = 10.0


@dataclass(frozen=True)
class Turn:
    """One speaker's turn.

    Attributes
    ----------
    speaker : int
        0 for the first speaker heard (the one the service answers), 1 for the other.
    start_s, end_s : float
        Span in the clip, seconds; consecutive turns share their boundary.
    pause : bool
        True when the turn ends at a pause found in the audio (or is the last turn); False when
        its end is only the estimate from the speaker windows.
    """

    speaker: int
    start_s: float
    end_s: float
    pause: bool = True

    def to_dict(self) -> dict:
        return {"speaker": self.speaker, "start_s": self.start_s, "end_s": self.end_s, "pause": self.pause}


def _runs(labels: tuple[int, ...]) -> list[list[int]]:
    """``[label, first_window, last_window]`` per run of equal labels, short runs merged away."""
    runs: list[list[int]] = []
    for i, lab in enumerate(labels):
        if runs and runs[-1][0] == lab:
            runs[-1][2] = i
        else:
            runs.append([lab, i, i])
    changed = True
    while changed and len(runs) > 1:
        changed = False
        for k, (_, first, last) in enumerate(runs):
            if last - first + 1 < MIN_TURN_WINDOWS:
                if k == 0:
                    runs[1][1] = first
                else:
                    runs[k - 1][2] = last
                del runs[k]
                merged: list[list[int]] = []
                for r in runs:  # neighbours that now touch with the same label become one run
                    if merged and merged[-1][0] == r[0]:
                        merged[-1][2] = r[2]
                    else:
                        merged.append(r)
                runs = merged
                changed = True
                break
    return runs


def speaker_turns(count: SpeakerCount, samples: np.ndarray, sample_rate: int = 16000) -> list[Turn]:
    """The turns of a counted clip, in order.

    Parameters
    ----------
    count : SpeakerCount
        :meth:`~inference_core.quality.SpeakerCounter.count` of the same ``samples``.
    samples : np.ndarray
        Shape ``(n,)``, float32 in [-1, 1].
    sample_rate : int
        Hz of ``samples``.

    Returns
    -------
    list of Turn
        ``[]`` when the count found no speech; one turn (speaker 0, first window's start to the
        last window's end) when it found one speaker or the second speaker's windows never make a
        run of :data:`MIN_TURN_WINDOWS`; otherwise one turn per run, each boundary moved to the
        quietest :data:`PAUSE_S` within :data:`PAUSE_SEARCH_S` of the change point when that is
        :data:`PAUSE_DEPTH_DB` below the speech level and within :data:`PAUSE_ABOVE_FLOOR_DB` of
        the floor (``pause`` True), else left at the change point (``pause`` False). Speakers are
        renumbered so that the first turn is speaker 0.

    Raises
    ------
    AudioFormatError
        Bad samples (see :mod:`inference_core.quality`).
    """
    windows = count.windows
    if not windows:
        return []
    labels = count.labels if count.n == 2 and len(count.labels) == len(windows) else (0,) * len(windows)
    runs = _runs(tuple(labels))
    if len(runs) < 2:
        return [Turn(0, windows[0][0], windows[-1][1], True)]
    db = frame_rms_dbfs(samples, sample_rate)
    speech_db, floor_db = float(np.percentile(db, 90)), float(np.percentile(db, 10))
    quiet_db = min(speech_db - PAUSE_DEPTH_DB, floor_db + PAUSE_ABOVE_FLOOR_DB)
    k = max(1, int(round(PAUSE_S / FRAME_S)))
    power = 10.0 ** (db / 10.0)
    smooth = 10.0 * np.log10(np.maximum(np.convolve(power, np.ones(k) / k, mode="valid"), 1e-30))
    first_label = runs[0][0]
    turns: list[Turn] = []
    start = windows[0][0]
    for prev, nxt in zip(runs, runs[1:]):
        a, b = windows[prev[2]], windows[nxt[1]]
        estimate = ((a[0] + a[1]) / 2 + (b[0] + b[1]) / 2) / 2
        lo = max(int((estimate - PAUSE_SEARCH_S) / FRAME_S), int(start / FRAME_S) + 1, 0)
        hi = min(int((estimate + PAUSE_SEARCH_S) / FRAME_S) - k + 1, len(smooth) - 1)
        end, pause = round(estimate, 3), False
        if hi > lo:
            i = lo + int(np.argmin(smooth[lo:hi + 1]))
            if smooth[i] <= quiet_db:
                end, pause = round((i + k / 2) * FRAME_S, 3), True
        turns.append(Turn(int(prev[0] != first_label), round(start, 3), end, pause))
        start = end
    turns.append(Turn(int(runs[-1][0] != first_label), round(start, 3), round(windows[-1][1], 3), True))
    logger.debug("speaker turns: %s", turns)
    return turns


def first_speaker_span(turns: list[Turn]) -> tuple[float, float] | None:
    """``(0, end_s)`` of the audio to transcribe for the first speaker, or None to take the whole clip.

    None unless there are two speakers' turns and the first turn ends at a pause. The span starts
    at 0 (the lead silence stays: the recognizer needs some) and ends in the pause's middle.
    """
    if len(turns) < 2 or not turns[0].pause or all(t.speaker == 0 for t in turns):
        return None
    return 0.0, turns[0].end_s


def turns_summary(turns: list[dict]) -> str:
    """``"#1 0.37–3.20 s, #2 3.20–5.12 s"`` for two speakers' turns as :class:`LoopResult` holds them
    (:meth:`Turn.to_dict`; ``#n`` is the speaker, a turn ending in no pause says ``no pause``);
    ``""`` for one turn or none. Shared by the Diagnostics page and ``speakerops diagnose``."""
    if len(turns) < 2:
        return ""
    return ", ".join(f"#{t['speaker'] + 1} {t['start_s']:.2f}–{t['end_s']:.2f} s" + ("" if t["pause"] else " no pause")
                     for t in turns)
