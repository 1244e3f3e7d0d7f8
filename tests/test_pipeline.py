"""The whole voice loop on real models and real (espeak-ng) audio: diagnosis, bad input, bundles,
evaluation, comparison and the CLI verbs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from inference_core.bundles import load_bundle
from inference_core.errors import ModelLoadError
from inference_core.evaluate import compare, evaluate, read_manifest
from inference_core.pipeline import REQUIREMENTS, STAGES, LoopOptions, Utterance, VoiceLoop
from inference_core.report_html import render_evaluation
from conftest import espeak

FAST = LoopOptions(mos=False, speakers=False, general_transcript=False)


@pytest.fixture(scope="module")
def loop(models_root: Path) -> VoiceLoop:
    return VoiceLoop.from_root(models_root, options=FAST, build_missing=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    out = {
        "weather": espeak("what is the weather in seoul tomorrow", d / "weather.wav"),
        "music": espeak("play some jazz music", d / "music.wav", voice="en-us+f2"),
        "capital": espeak("what is the capital of france", d / "capital.wav", voice="en-us+m3"),
        "ood": espeak("tell me a joke about penguins", d / "ood.wav"),
    }
    sf.write(d / "noise.flac", (0.05 * rng.standard_normal(32000)).astype(np.float32), 16000)
    out["noise"] = d / "noise.flac"
    sf.write(d / "silence.wav", np.zeros(16000, dtype=np.float32), 16000)
    out["silence"] = d / "silence.wav"
    (d / "corrupt.wav").write_bytes(rng.bytes(3000))
    out["corrupt"] = d / "corrupt.wav"
    (d / "empty.wav").write_bytes(b"")
    out["empty"] = d / "empty.wav"
    return out


def test_diagnosis_of_a_command_reports_every_stage_and_requirement(models_root, clips) -> None:
    full = VoiceLoop.from_root(models_root, build_missing=False)  # every measure on
    r = full.run(clips["weather"], reference="what is the weather in seoul tomorrow", expected_speakers=1)
    assert r.error is None and r.speech
    assert r.transcript == "what is the weather in seoul tomorrow" and r.wer == 0.0
    assert (r.intent, r.feature) == ("weather.forecast", "weather")
    assert r.slots == {"city": "seoul", "day": "tomorrow"} or r.slots == {"city": "Seoul", "day": "tomorrow"}
    assert "Seoul" in r.answer and r.answer_audio is not None and len(r.answer_audio) > 8000
    assert all(r.timings_ms[s] > 0 for s in STAGES)
    assert r.timings_ms["server"] == pytest.approx(r.timings_ms["stt"] + r.timings_ms["qa"] + r.timings_ms["tts"])
    assert 0 < r.rtf["stt"] < 2
    assert r.general_transcript is not None and r.speakers == 1
    assert 1.0 < r.mos_answer["ovrl"] < 5.0 and 1.0 < r.mos_input["ovrl"] < 5.0
    checks = {c.key: c for c in r.checks}
    assert set(checks) == set(REQUIREMENTS)
    assert checks["stt_accuracy"].passed is True and checks["answer_accuracy"].passed is True
    assert checks["speakers"].passed is True
    # espeak-ng's formant voice scores about 3 (FIELD_NOTES): the check says so honestly
    assert checks["mos"].passed is (r.mos_answer["ovrl"] >= 4.0)
    json.dumps(r.to_dict(), default=str)  # JSON-able


def test_a_bad_file_never_stops_the_batch_and_says_what_was_wrong(loop, clips) -> None:
    items = [Utterance(clips["corrupt"]), Utterance(clips["music"]), Utterance(clips["empty"]),
             Utterance(clips["silence"]), Utterance(clips["noise"]), Utterance(Path("/nonexistent/x.wav"))]
    results = list(loop.run_batch(items))
    assert [Path(r.audio).name for r in results] == ["corrupt.wav", "music.wav", "empty.wav", "silence.wav",
                                                      "noise.flac", "x.wav"]
    corrupt, music, empty, silence, noise, missing = results
    assert corrupt.error and empty.error and missing.error
    assert "empty" in empty.error.lower() and "no such file" in missing.error
    assert music.error is None and music.intent == "music.play" and music.slots.get("genre") == "jazz"
    for r in (silence, noise):
        assert r.error is None and not r.speech and r.intent == "none" and r.answer is None


def test_out_of_domain_speech_is_not_answered_as_a_command(loop, clips) -> None:
    r = loop.run(clips["ood"], expected_intent="none")
    assert r.intent == "none"
    assert {c.key: c.passed for c in r.checks}["answer_accuracy"] is True


def test_cancel_stops_a_batch_between_files(loop, clips) -> None:
    seen = []
    results = list(loop.run_batch([Utterance(clips["music"])] * 4, report=lambda f, m: seen.append(f),
                                  cancelled=lambda: len(seen) >= 2))
    assert len(results) == 2


def test_bundles_are_verified_and_tampering_is_refused(models_root, tmp_path) -> None:
    copy = tmp_path / "stt"
    shutil.copytree(models_root / "stt" / "stt-1.0.0", copy)
    bundle = load_bundle(copy)
    assert bundle.kind == "stt" and {"grammar.jsgf", "lm.arpa", "words.dict"} <= set(bundle.manifest["files"])
    with (copy / "words.dict").open("a") as f:
        f.write("extra EH K S T R AH\n")
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load_bundle(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="outside the bundle"):
        load_bundle(copy)
    with pytest.raises(ModelLoadError, match="models build"):
        load_bundle(tmp_path / "nothing-here")


def _manifest(tmp_path: Path, clips: dict[str, Path]) -> Path:
    lines = [
        {"audio": str(clips["weather"]), "text": "what is the weather in seoul tomorrow", "intent": "weather.forecast",
         "slots": {"city": "seoul", "day": "tomorrow"}, "speakers": 1, "voice": "en-us", "kind": "command"},
        {"audio": str(clips["music"]), "text": "play some jazz music", "intent": "music.play",
         "slots": {"genre": "jazz"}, "speakers": 1, "voice": "en-us+f2", "kind": "command"},
        {"audio": str(clips["capital"]), "text": "what is the capital of france", "intent": "qa.capital",
         "speakers": 1, "voice": "en-gb <script>alert(1)</script>", "kind": "command"},
        {"audio": str(clips["ood"]), "text": "tell me a joke about penguins", "intent": "none", "voice": "en-us",
         "kind": "ood"},
        {"audio": str(clips["noise"]), "intent": "none", "speakers": 0, "voice": "none", "kind": "nonspeech"},
        "this line is not JSON",
        {"audio": "missing.wav", "text": "hello", "intent": "none", "kind": "command"},
    ]
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_evaluation_report_has_every_figure_in_manifest_order(loop, clips, tmp_path) -> None:
    manifest = _manifest(tmp_path, clips)
    assert [e.error is not None for e in read_manifest(manifest)] == [False] * 5 + [True, False]
    report = evaluate(manifest, loop)
    utt = report["utterances"]
    assert len(utt) == 7 and [u["line"] for u in utt] == list(range(1, 8))
    for key in ("audio", "transcript", "intent", "feature", "slots", "speakers", "timings_ms", "mos", "error"):
        assert all(key in u for u in utt)
    assert "manifest line 6" in utt[5]["error"] and utt[6]["error"]
    s = report["summary"]
    assert s["utterances"] == 7 and s["errors"] == 2
    assert s["wer"] is not None and s["wer"] < 0.2 and s["scored_transcripts"] == 3  # the in-domain ones
    assert s["wer_all"] > s["wer"]  # the joke is out of vocabulary by design
    assert s["intent_accuracy"] >= 0.75 and s["nonspeech_rejection"] == 1.0
    assert set(s["per_intent"]) >= {"weather.forecast", "music.play", "none"}
    assert len(s["confusion"]["matrix"]) == len(s["confusion"]["labels"])
    assert {r["key"] for r in s["requirements"]} == set(REQUIREMENTS)
    assert s["latency_ms"]["stt"]["p95"] > 0
    assert "voice" in report["breakdowns"] and "kind" in report["breakdowns"]
    assert report["baseline"]["wer"] is None  # no general transcripts in this loop's options
    html = render_evaluation(report, tmp_path / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "Service requirements" in html and "data:audio/wav;base64," in html


def test_comparing_two_versions_gives_per_utterance_diffs_and_intervals(models_root, clips, tmp_path) -> None:
    manifest = _manifest(tmp_path, clips)
    a = evaluate(manifest, VoiceLoop.from_root(models_root, {"qa": "qa-1.0.0-int8"}, FAST, build_missing=False))
    b = evaluate(manifest, VoiceLoop.from_root(models_root, {"qa": "qa-1.0.0-fp32"}, FAST, build_missing=False))
    diff = compare(a, b, n_boot=200)
    assert diff["a"]["qa"] == "qa-1.0.0-int8" and diff["b"]["qa"] == "qa-1.0.0-fp32"
    for name in ("wer", "intent_accuracy", "server_latency_ms"):
        lo, hi = diff["differences"][name]["ci95"]
        assert lo <= hi
    assert diff["differences"]["wer"]["b_minus_a"] == 0.0  # same STT bundle: same transcripts
    with pytest.raises(ValueError, match="same manifest"):
        compare(a, {**b, "utterances": b["utterances"][:-1]})


def test_cli_diagnose_and_evaluate(models_root, clips, tmp_path) -> None:
    from typer.testing import CliRunner

    from speakerops.cli import app

    out = tmp_path / "diag.json"
    r = CliRunner().invoke(app, ["diagnose", str(clips["weather"]), str(clips["corrupt"]), "--reference",
                                 "what is the weather in seoul tomorrow", "--json", str(out), "--audio-out",
                                 str(tmp_path / "answers"), "--models-dir", str(models_root)])
    assert r.exit_code == 2, r.output  # one unreadable file: partial
    data = json.loads(out.read_text())
    assert data["results"][0]["intent"] == "weather.forecast" and data["results"][1]["error"]
    assert Path(data["results"][0]["answer_audio_path"]).is_file()
    assert "✔ STT accuracy" in r.stdout
    manifest = _manifest(tmp_path, clips)
    r = CliRunner().invoke(app, ["evaluate", str(manifest), "--json", str(tmp_path / "e.json"), "--html",
                                 str(tmp_path / "e.html"), "--no-mos", "--models-dir", str(models_root)])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e.json").read_text())["summary"]["utterances"] == 7
    assert (tmp_path / "e.html").stat().st_size > 1000
    r = CliRunner().invoke(app, ["evaluate", str(manifest), "--models", "qa-9.9.9", "--models-dir", str(models_root)])
    assert r.exit_code == 1 and "no bundle named 'qa-9.9.9'" in r.stderr


def test_doubtful_transcripts_are_rescued_only_by_template_intent_model_or_general_lm(loop) -> None:
    from inference_core.pipeline import LoopResult

    exact = LoopResult(audio="x", rejected=True, transcript="who wrote hamlet", general_transcript="who road ham")
    assert loop._understand(exact).intent == "qa.author" and exact.intent_source == "template match"
    general = LoopResult(audio="x", rejected=True, transcript="delete my on is",
                         general_transcript="could you play some jazz music")
    assert loop._understand(general).intent == "music.play" and general.intent_source == "general LM"
    neither = LoopResult(audio="x", rejected=True, transcript="delete my on is",
                         general_transcript="tell me a joke about penguins")
    assert loop._understand(neither).intent == "none" and neither.intent_source == "rejected"
    confident = LoopResult(audio="x", rejected=False, transcript="play some jazz music")
    assert loop._understand(confident).intent == "music.play" and confident.intent_source == "in-domain"
    sure = LoopResult(audio="x", rejected=True, transcript="what is the capital of france please",
                      general_transcript="tell me a joke about penguins")
    assert loop._understand(sure).intent == "qa.capital" and sure.intent_source == "intent model"
    # the grammar pass only ever says template sentences: its rejected words are not rescued by themselves
    forced = LoopResult(audio="x", rejected=True, transcript="delete my doctor appointment wednesday",
                        transcript_search="gated", general_transcript="tell me a joke about penguins")
    assert loop._understand(forced).intent == "none" and forced.intent_source == "rejected"


def test_two_talkers_the_first_speaker_is_answered(models_root, tmp_path) -> None:
    """A second person talking after a pause is counted and kept out of the request: only the first
    speaker's turn is transcribed and answered (inference_core.turns)."""
    from inference_core.audio import load_audio

    first = load_audio(espeak("what is the weather in seoul tomorrow", tmp_path / "a.wav", voice="en-us+m3"))
    second = load_audio(espeak("play some rock music please", tmp_path / "b.wav", voice="en-us+f2"))
    floor = np.random.default_rng(0).normal(0, 1e-5, 16000).astype(np.float32)
    parts = [floor[:6400], first.samples, floor[:7200], second.samples, floor[:6400]]
    sf.write(tmp_path / "two.wav", np.concatenate(parts), 16000)
    loop = VoiceLoop.from_root(models_root, options=LoopOptions(mos=False, general_transcript=False,
                                                                  synthesize=False), build_missing=False)
    r = loop.run(tmp_path / "two.wav", reference="what is the weather in seoul tomorrow", expected_speakers=2)
    assert r.error is None and r.speakers == 2
    loud = [np.flatnonzero(np.abs(x.samples) > 0.01) for x in (first, second)]  # espeak-ng pads its own silence
    gap_start = (6400 + loud[0][-1]) / 16000
    gap_end = (6400 + len(first.samples) + 7200 + loud[1][0]) / 16000
    assert [t["speaker"] for t in r.turns] == [0, 1] and r.turns[0]["pause"]
    assert r.transcribed_span_s is not None and gap_start - 0.03 <= r.transcribed_span_s[1] <= gap_end + 0.03
    assert r.transcript == "what is the weather in seoul tomorrow" and r.intent == "weather.forecast"
    from speakerops.cli_voice import _describe  # what `speakerops diagnose` prints
    assert f"first speaker only (0.00–{r.transcribed_span_s[1]:.2f} s; turns #1 " in _describe(r)
    # the whole clip through the n-gram LM, as before turns: the second request runs into the first
    whole = VoiceLoop.from_root(models_root, options=LoopOptions(mos=False, general_transcript=False, stt_mode="lm",
                                                                   synthesize=False, speakers=False),
                                build_missing=False).run(tmp_path / "two.wav")
    assert whole.transcribed_span_s is None and whole.turns == []
    assert len(whole.transcript.split()) > len(r.transcript.split())
