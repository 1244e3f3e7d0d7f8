"""HTML rendering of evaluation reports (jinja2, autoescaped: text from manifests and
transcripts can never inject markup). The worst utterances are embedded as playable WAV."""

from __future__ import annotations

import base64
import io
import logging
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import soundfile as sf

from inference_core.audio import load_audio
from inference_core.errors import AudioFormatError

logger = logging.getLogger(__name__)

#: How many of the worst utterances the report embeds with their audio.
WORST_UTTERANCES = 12


def _env() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader(str(files("resources") / "reports"))
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["pct"] = lambda v: "—" if v is None else f"{100 * v:.1f} %"
    env.filters["num"] = lambda v, d=0: "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:,.{d}f}"
    return env


def wav_data_uri(samples: np.ndarray, sample_rate: int = 16000) -> str:
    """A ``data:`` URI holding ``samples`` as 16-bit PCM WAV (for ``<audio>`` in reports)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _audio_uri(path: str | None, max_seconds: float = 15.0) -> str | None:
    if not path:
        return None
    try:
        audio = load_audio(path, max_seconds=max_seconds)
    except AudioFormatError:
        return None
    return wav_data_uri(audio.samples, audio.sample_rate)


def worst_utterances(report: dict[str, Any], n: int = WORST_UTTERANCES) -> list[dict[str, Any]]:
    """Errors first, then wrong intents, then highest WER."""
    def badness(u: dict[str, Any]) -> tuple:
        wrong = u.get("expected_intent") is not None and u.get("intent") != u.get("expected_intent")
        return (u.get("error") is not None, wrong, u.get("wer") or 0.0)
    ranked = sorted(report["utterances"], key=badness, reverse=True)
    return [u for u in ranked if badness(u) != (False, False, 0.0)][:n]


def render_evaluation(report: dict[str, Any], out: Path, comparison: dict[str, Any] | None = None) -> Path:
    """Write the evaluation report as one self-contained HTML file."""
    worst = [{**u, "audio_uri": _audio_uri(u.get("audio"))} for u in worst_utterances(report)]
    html = _env().get_template("evaluation.html.j2").render(report=report, worst=worst, comparison=comparison)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
