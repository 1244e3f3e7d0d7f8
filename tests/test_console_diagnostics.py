"""The Diagnostics page, offscreen, on the real voice loop and real espeak-ng recordings.

The default model bundles are built once per session into a tmp dir (~30 s). One test loads the
loop through the page's own lazy path; the others share a loop loaded once, to keep the file
under a minute. Waits use ``qtbot.waitUntil`` / ``waitSignal``, never sleeps; every test ends by
shutting the executors down and checking that no worker thread is left.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from console.errors import ErrorReporter
from console.jobs import Executors
from console.pages.diagnostics import DiagnosticsPage
from console.pages.diagnostics_work import (
    check_value_text,
    load_voice_loop,
    loading_message,
    write_wav,
)
from console.theme import DARK
from inference_core.pipeline import REQUIREMENTS, STAGES, Check, LoopOptions

pytestmark = [pytest.mark.gui,
              pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")]

WEATHER = "what is the weather in seoul tomorrow"
COMMANDS = {"weather": (WEATHER, "weather.forecast"),
            "news": ("read me the latest news", "news.read"),
            "alarm": ("set an alarm for seven am", "schedule.alarm"),
            "music": ("play some jazz music", "music.play")}


def espeak(text: str, out: Path) -> Path:
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(out), text], check=True, capture_output=True)
    return out


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recordings")
    out = {name: espeak(text, folder / f"{name}.wav") for name, (text, _) in COMMANDS.items()}
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(7).bytes(4096))
    out["corrupt"] = corrupt
    return out


@pytest.fixture(scope="session")
def shared_loop(models_root: Path):
    """A loop without the optional measures (DNSMOS, speaker count, general LM: ~5 s a file):
    the same models and stages, for the tests about batches rather than figures."""
    options = LoopOptions(mos=False, speakers=False, general_transcript=False)
    return load_voice_loop(models_root, options, report=lambda fraction, message: None)


@pytest.fixture
def make_page(qtbot, models_root: Path, executors: Executors, reporter: ErrorReporter, tmp_path: Path):
    pages: list[DiagnosticsPage] = []

    def make(loop=None) -> DiagnosticsPage:
        page = DiagnosticsPage(models_root, executors, reporter, DARK, reports_dir=tmp_path / "reports")
        page.opened_urls = []
        page.url_opener = lambda url: page.opened_urls.append(url) or True
        page.loop = loop
        qtbot.addWidget(page)
        page.resize(1400, 900)
        page.show()
        pages.append(page)
        return page

    yield make
    for page in pages:
        page.shutdown()


def run(qtbot, page: DiagnosticsPage, files: list[Path], reference: str | None = None,
        timeout: int = 60_000) -> int:
    with qtbot.waitSignal(page.sig_run_finished, timeout=timeout) as blocker:
        assert page.run_files(files, reference=reference)
    return blocker.args[0]


# --------------------------------------------------------------------------------- Qt-free parts


def test_loading_message_says_when_bundles_will_be_built(tmp_path: Path, models_root: Path) -> None:
    assert loading_message(tmp_path / "empty") == "Building model bundles (first use, ~30 s)…"
    assert loading_message(models_root) == "Loading models…"


def test_answer_audio_is_written_as_16_bit_wav(tmp_path: Path) -> None:
    samples = np.sin(np.linspace(0, 100, 16000)).astype(np.float32)
    path = write_wav(tmp_path / "a.wav", samples, 16000)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 16000)


def test_check_values_carry_their_unit() -> None:
    assert check_value_text(Check("server_latency", "Server", 1234.4, True)) == "1,234 ms"
    assert check_value_text(Check("stt_accuracy", "STT", 0.9, True)) == "90 %"
    assert check_value_text(Check("mos", "MOS", 3.126, False)) == "3.13 MOS"
    assert check_value_text(Check("speakers", "Speakers", 1.0, None)) == "1 speaker"
    assert check_value_text(Check("speakers", "Speakers", None, None)) == "—"


# --------------------------------------------------------------------------------- the page


def test_diagnosis_of_a_spoken_command(qtbot, make_page, recordings: dict[str, Path],
                                       reporter: ErrorReporter) -> None:
    page = make_page()  # no loop yet: the page loads it once, lazily, on the inference executor
    with qtbot.waitSignal(page.sig_loop_loaded, timeout=60_000):
        assert page.run_files([recordings["weather"]], reference=WEATHER)
        assert page.progress.isVisible()
        assert page.progress.label.text() == "Loading models…"
        assert page.progress.bar.maximum() == 0  # busy: no fraction while loading
    qtbot.waitUntil(lambda: not page.is_busy, timeout=60_000)
    assert not page.progress.isVisible()
    assert len(page.results) == 1
    result = page.results[0]
    panel = page.result_panel
    assert page.detail_stack.currentIndex() == 1  # the new result is shown
    transcript = panel.field_text("transcript")
    assert {"weather", "seoul"} <= set(transcript.split()), transcript
    assert panel.field_text("general_transcript") != "—"
    assert panel.field_text("intent").startswith("weather.forecast")
    assert "seoul" in panel.field_text("slots")
    assert panel.field_text("alignment").startswith("REF: what is")
    assert panel.alignment.isVisible()
    assert panel.field_text("answer") == result.answer
    assert panel.field_text("noise_floor").endswith("dBFS")
    assert panel.field_text("mos_answer") != "—"
    # one checklist row per requirement, each with a mark; one bar per stage
    assert panel.checks_model.rowCount() == len(REQUIREMENTS)
    assert {panel.checks_model.text(r, 0) for r in range(len(REQUIREMENTS))} <= {"✔", "✖", "–"}
    assert panel.chart.bar_count() == len(STAGES)
    assert panel.chart.timings()[STAGES.index("stt")] == pytest.approx(result.timings_ms["stt"])
    assert page.results_model.text(0, 0) in ("✔ pass", "✖ fail")
    assert page.tiles["all"].value_text() == "1"
    # playback: no sound device here, so a note, never a crash
    panel.play_answer_button.click()
    panel.play_input_button.click()
    assert panel.play_note.text()
    assert reporter.history == []
    # the loop is loaded once: the next run does not load it again
    loop, loaded = page.loop, []
    page.sig_loop_loaded.connect(loaded.append)
    assert run(qtbot, page, [recordings["corrupt"]]) == 1
    assert page.loop is loop and loaded == []


def test_an_unreadable_file_shows_its_error_in_the_page_and_the_batch_goes_on(
        qtbot, shared_loop, make_page, recordings: dict[str, Path], reporter: ErrorReporter) -> None:
    page = make_page(shared_loop)
    assert run(qtbot, page, [recordings["corrupt"], recordings["weather"]], reference="") == 2
    bad, good = page.results
    assert bad.error and good.error is None
    assert good.intent == "weather.forecast"
    page.select_row(0)
    assert page.results_model.text(0, 0) == "▲ error"
    assert "corrupt.wav" in page.result_panel.field_text("error")
    assert not page.result_panel.body.isVisible()
    page.select_row(1)
    assert page.result_panel.field_text("error") == ""
    assert not page.result_panel.alignment.isVisible()  # no reference given
    assert page.tiles["error"].value_text() == "1"
    assert reporter.dialogs == [] and reporter.history == []


def test_cancel_stops_a_batch_and_leaves_no_thread_running(
        qtbot, shared_loop, make_page, recordings: dict[str, Path], executors: Executors) -> None:
    page = make_page(shared_loop)
    files = [recordings[name] for name in ("weather", "news", "alarm", "music")] * 2
    assert page.run_files(files)
    assert not page.run_files(files)  # one run at a time
    assert "in progress" in page.message_bar.text()
    qtbot.waitUntil(lambda: len(page.results) >= 1, timeout=60_000)
    with qtbot.waitSignal(page.sig_run_finished, timeout=60_000) as blocker:
        page.cancel()
    assert 1 <= blocker.args[0] < len(files)
    assert len(page.results) == blocker.args[0]
    assert "Cancelled after" in page.message_bar.text()
    assert not page.is_busy and page.controls.open_button.isEnabled()
    assert executors.inference.wait_for_done(10)
    assert executors.inference.active_thread_count() == 0


def evaluate(qtbot, page: DiagnosticsPage, recordings: dict[str, Path], folder: Path) -> dict:
    manifest = folder / "manifest.jsonl"
    lines = [{"audio": str(recordings[name]), "text": text, "intent": intent, "speakers": 1}
             for name, (text, intent) in COMMANDS.items()]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    with qtbot.waitSignal(page.sig_evaluation_finished, timeout=90_000) as blocker:
        assert page.evaluate(manifest)
    return blocker.args[0]


def test_evaluation_of_a_manifest_shows_the_summary(
        qtbot, shared_loop, make_page, recordings: dict[str, Path], tmp_path: Path) -> None:
    page = make_page(shared_loop)
    report = evaluate(qtbot, page, recordings, tmp_path)
    assert report["summary"]["utterances"] == 4 and not report["cancelled"]
    panel = page.evaluation_panel
    assert page.detail_stack.currentIndex() == 2
    assert panel.requirements_model.rowCount() == len(report["summary"]["requirements"])
    assert panel.requirements_model.text(0, 0).split()[-1] in ("pass", "fail", "n/a")
    assert panel.figure_text("WER").endswith("%")
    assert panel.figure_text("Intent accuracy", 2).endswith("%")  # the baseline beside the loop
    stages = [panel.latency_model.payload(r) for r in range(panel.latency_model.rowCount())]
    assert {"stt", "server"} <= set(stages)
    assert "4 utterances" in panel.summary_label.text()
    assert page.results_model.text(0, 1) == "Evaluation · manifest.jsonl"


def test_open_html_report_writes_it_and_opens_it(
        qtbot, shared_loop, make_page, recordings: dict[str, Path], tmp_path: Path,
        reporter: ErrorReporter) -> None:
    page = make_page(shared_loop)
    evaluate(qtbot, page, recordings, tmp_path)
    with qtbot.waitSignal(page.sig_report_written, timeout=30_000,
                          check_params_cb=lambda path: True) as written:
        page.evaluation_panel.open_button.click()
        qtbot.waitUntil(lambda: bool(reporter.history) or page.last_report_path is not None,
                        timeout=30_000)
        assert reporter.history == [], reporter.history[0].details
    path = Path(written.args[0])
    assert path.is_file() and path.parent == tmp_path / "reports"
    assert "Evaluation report" in path.read_text(encoding="utf-8")
    assert [u.toLocalFile() for u in page.opened_urls] == [str(path)]


def test_main_window_shows_the_diagnostics_page(qtbot, executors: Executors, reporter: ErrorReporter,
                                                tmp_path: Path) -> None:
    from PySide6.QtCore import QSettings

    from console.bootstrap import build
    from console.main_window import MainWindow

    ctx = build(f"sqlite:///{tmp_path / 'speakerops.db'}", collect=False)
    try:
        assert ctx.models_root == ctx.settings.data_dir / "models"
        win = MainWindow(ctx, executors, reporter, DARK,
                         qsettings=QSettings(str(tmp_path / "c.ini"), QSettings.Format.IniFormat))
        qtbot.addWidget(win)
        page = win.show_page("Diagnostics")
        assert page is win.diagnostics_page
        assert page.models_root == ctx.models_root
        win.shutdown()
    finally:
        ctx.close()


def test_two_talkers_show_their_turns_and_that_only_the_first_was_answered(qtbot, make_page, models_root: Path,
                                                                            tmp_path: Path) -> None:
    first, second = espeak(WEATHER, tmp_path / "a.wav"), tmp_path / "b.wav"
    subprocess.run(["espeak-ng", "-v", "en-us+f2", "-w", str(second), "play some jazz music"], check=True)
    from inference_core.audio import load_audio

    a, b = load_audio(first).samples, load_audio(second).samples
    gap = np.zeros(8000, np.float32)  # 0.5 s between the talkers, on top of espeak-ng's own silence
    two = tmp_path / "two.wav"
    write_wav(two, np.concatenate([gap, a, gap, b, gap]), 16000)
    loop = load_voice_loop(models_root, LoopOptions(mos=False, general_transcript=False),
                           report=lambda fraction, message: None)
    page = make_page(loop)
    run(qtbot, page, [two], reference=WEATHER)
    result = page.results[0]
    panel = page.result_panel
    assert result.speakers == 2 and result.transcribed_span_s is not None
    assert result.transcript == WEATHER and result.intent == "weather.forecast"
    assert panel.field_text("transcript") == WEATHER
    assert "first speaker only" in panel.transcript_note.text()
    assert panel.field_text("speakers").startswith("2 (#1 0.") and ", #2 " in panel.field_text("speakers")
