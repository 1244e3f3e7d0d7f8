"""The Diagnostics page's work, Qt-free: what its jobs run on the ``inference`` executor and the
plain-text figures its widgets show.

Job functions take ``report(fraction, message)`` and ``cancelled()`` keywords (the console's
:class:`console.jobs.Job` passes them) and put what they produce into a ``sink`` (a
``queue.SimpleQueue``) as they go, so that the page keeps the results of a batch that was
cancelled half-way (a cancelled job's return value is dropped by the job API).
"""

from __future__ import annotations

import logging
import math
import queue
import wave
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from console.formatting import MISSING, format_number
# The jobs' modules are imported here, on the GUI thread: a first import of scikit-learn on a
# worker thread while Qt's event loop ran crashed the console test suite (segmentation fault).
from inference_core.bundles import DEFAULT_VERSIONS, MANIFEST, bundle_dir
from inference_core.evaluate import evaluate
from inference_core.report_html import render_evaluation
from inference_core.pipeline import STAGES, Check, LoopOptions, LoopResult, Utterance, VoiceLoop

logger = logging.getLogger(__name__)

Report = Callable[[float, str], None]
Cancelled = Callable[[], bool]

#: Denoise methods offered by the page, in the selector's order (``inference_core.denoise``).
DENOISE_METHODS: tuple[str, ...] = ("auto", "rnnoise", "noisereduce", "none")
#: Per-stage budgets drawn on the timing chart, ms: the server part (stt + qa + tts) and the
#: whole answer (``inference_core.pipeline.REQUIREMENTS``).
SERVER_BUDGET_MS = 2000.0
END_TO_END_BUDGET_MS = 3000.0
#: Recording file patterns offered by the "Open recordings…" dialog.
AUDIO_FILTER = "Recordings (*.wav *.flac *.ogg *.WAV *.FLAC *.OGG);;All files (*)"
#: (word, glyph, Okabe–Ito colour) per recording verdict; a word and a glyph, never colour alone.
VERDICTS: dict[str, tuple[str, str, str]] = {
    "pass": ("pass", "✔", "#009E73"),   # bluish green
    "fail": ("fail", "✖", "#D55E00"),   # vermillion
    "error": ("error", "▲", "#E69F00"),  # orange
}
#: Glyph and colour of a requirement check: passed, failed, does not apply.
CHECK_MARKS: dict[bool | None, tuple[str, str]] = {
    True: ("✔", "#009E73"), False: ("✖", "#D55E00"), None: ("–", "#999999")}


def default_manifest() -> Path | None:
    """The shipped test set (``resources/testset/manifest.jsonl``) if it is installed, else None."""
    path = Path(str(files("resources") / "testset" / "manifest.jsonl"))
    return path if path.is_file() else None


def bundles_missing(models_root: Path) -> bool:
    """True when a default bundle (:data:`DEFAULT_VERSIONS`) is not built under ``models_root``."""
    return any(not (bundle_dir(models_root, kind, version) / MANIFEST).is_file()
               for kind, version in DEFAULT_VERSIONS.items())


def loading_message(models_root: Path) -> str:
    """What the page says while the loop loads: building the bundles takes ~30 s the first time."""
    if bundles_missing(models_root):
        return "Building model bundles (first use, ~30 s)…"
    return "Loading models…"


def load_voice_loop(models_root: Path, options: LoopOptions, *, report: Report) -> VoiceLoop:
    """Load the voice loop from the bundles under ``models_root`` (worker thread; seconds).

    Missing default bundles are built first (``VoiceLoop.from_root(build_missing=True)``). It
    reports once, with fraction ``-1`` (no fraction known: the page shows a busy bar) and
    :func:`loading_message`.

    Raises
    ------
    inference_core.errors.ModelLoadError
        If a bundle cannot be built or loaded.
    """
    report(-1.0, loading_message(models_root))
    return VoiceLoop.from_root(Path(models_root), options=replace(options))


def run_recordings(loop: VoiceLoop, paths: Sequence[Path | str], reference: str | None,
                   denoise: str, sink: queue.SimpleQueue, *, report: Report,
                   cancelled: Cancelled) -> int:
    """Run ``paths`` through ``loop`` one by one, putting each :class:`LoopResult` into ``sink``.

    A bad file gives a result with ``error`` and the batch goes on; ``cancelled()`` stops it
    between files. Runs on the inference executor (one thread), which also serialises the
    change of ``loop.options.denoise``.

    Returns
    -------
    int
        Results produced (fewer than ``len(paths)`` when cancelled).
    """
    loop.options.denoise = denoise
    items = [Utterance(Path(p), reference or None) for p in paths]
    n = 0
    for result in loop.run_batch(items, report=report, cancelled=cancelled):
        sink.put(result)
        n += 1
    return n


def evaluate_manifest(loop: VoiceLoop, manifest: Path, denoise: str, sink: queue.SimpleQueue, *,
                      report: Report, cancelled: Cancelled) -> dict[str, Any]:
    """Evaluate ``loop`` on ``manifest`` (``inference_core.evaluate.evaluate``); the report dict
    also goes into ``sink`` so that a cancelled evaluation still shows what it measured.

    Raises
    ------
    FileNotFoundError
        If the manifest does not exist.
    """

    loop.options.denoise = denoise
    result = evaluate(Path(manifest), loop, report=report, cancelled=cancelled)
    sink.put(result)
    return result


def write_report_html(report: dict[str, Any], reports_dir: Path, now: datetime) -> Path:
    """Write the evaluation report as HTML under ``reports_dir`` (``render_evaluation``).

    Returns
    -------
    Path
        ``<reports_dir>/evaluation-<YYYYmmdd-HHMMSS>.html``.
    """

    out = Path(reports_dir) / f"evaluation-{now.strftime('%Y%m%d-%H%M%S')}.html"
    return render_evaluation(report, out)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = 16000) -> Path:
    """Write float samples in [-1, 1] (shape ``(n,)``) as 16-bit mono PCM with :mod:`wave`."""
    x = np.clip(np.nan_to_num(np.asarray(samples, dtype=np.float32)), -1.0, 1.0)
    pcm = (x * 32767.0).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm)
    return Path(path)


def drain(sink: queue.SimpleQueue) -> list[Any]:
    """Everything in ``sink`` now, oldest first."""
    out = []
    while True:
        try:
            out.append(sink.get_nowait())
        except queue.Empty:
            return out


# -- figures as text ------------------------------------------------------------------------------
def verdict(result: LoopResult) -> str:
    """``"error"`` (unreadable), ``"fail"`` (a requirement check failed) or ``"pass"``."""
    if result.error:
        return "error"
    return "fail" if any(c.passed is False for c in result.checks) else "pass"


def evaluation_verdict(report: dict[str, Any]) -> str:
    """``"fail"`` if a service requirement failed, ``"error"`` if every utterance was unreadable,
    else ``"pass"``."""
    summary = report.get("summary", {})
    if summary.get("utterances") and summary.get("errors") == summary.get("utterances"):
        return "error"
    return "fail" if any(r.get("passed") is False for r in summary.get("requirements", [])) else "pass"


def stage_timings(result: LoopResult) -> list[float]:
    """Time per stage of :data:`STAGES`, ms (0 for a stage that did not run)."""
    return [float(result.timings_ms.get(s, 0.0) or 0.0) for s in STAGES]


def format_pct(value: float | None, decimals: int = 0) -> str:
    """A fraction 0–1 as ``"92 %"``; ``"—"`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return format_number(100.0 * value, decimals, "%")


def check_value_text(check: Check) -> str:
    """A check's measured value with its unit: ``"812 ms"``, ``"100 %"``, ``"3.12 MOS"``."""
    if check.value is None:
        return MISSING
    if check.key.endswith("latency"):
        return format_number(check.value, 0, "ms")
    if check.key in ("stt_accuracy", "answer_accuracy"):
        return format_pct(check.value)
    if check.key == "mos":
        return format_number(check.value, 2, "MOS")
    if check.key == "speakers":
        n = int(round(check.value))
        return f"{n} speaker" + ("" if n == 1 else "s")
    return format_number(check.value, 2)


def check_mark(check: Check) -> str:
    """``"✔"``, ``"✖"`` or ``"–"`` (does not apply)."""
    return CHECK_MARKS[check.passed][0]


def mos_text(mos: dict[str, float] | None) -> str:
    """DNSMOS overall (P.835 OVRL) with the signal/background parts, e.g. ``"3.1 (sig 3.4, bak 3.9)"``."""
    if not mos:
        return MISSING
    return (f"{format_number(mos.get('ovrl'), 2)} (sig {format_number(mos.get('sig'), 1)}, "
            f"bak {format_number(mos.get('bak'), 1)})")


def requirement_value_text(row: dict[str, Any]) -> str:
    """An evaluation requirement row's value (``evaluate``'s ``summary["requirements"]``)."""
    value = row.get("value")
    if value is None:
        return MISSING
    if row["key"].endswith("latency"):
        return f"{format_number(value, 0, 'ms')} ({row.get('measure', '')})"
    if row["key"] == "mos":
        return format_number(value, 2, "MOS")
    return format_pct(value, 1)


def requirement_target_text(row: dict[str, Any]) -> str:
    """An evaluation requirement row's target, with its unit."""
    if row["key"].endswith("latency"):
        return format_number(row["target"], 0, "ms")
    if row["key"] == "mos":
        return format_number(row["target"], 1, "MOS")
    return format_pct(row["target"])
