"""Language pack compilation and recognition on real speech (espeak-ng, en-us voice)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
from pathlib import Path

import jiwer
import numpy as np
import pytest

from inference_core import stt
from inference_core.audio import load_audio
from inference_core.errors import ModelLoadError, TemplateError
from inference_core.stt import GeneralRecognizer, Recognizer, Transcript, build_language_pack
from inference_core.templates import TemplateSet

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "resources" / "templates" / "en-us.ini"

#: Two phrasings the templates produce but the LM must not see: built with them as holdout.
HOLDOUT = ("how cold will it be in seoul tonight", "what is seven plus five")
COMMANDS = (
    "what is the weather like in paris tomorrow",
    "set an alarm for seven thirty in the morning",
    "remind me to call mom tonight",
    "play some jazz music",
    "what is the capital of japan",
    "who wrote pride and prejudice",
    "read me the latest sports news",
    "pause the music",
    *HOLDOUT,
)
OUT_OF_DOMAIN = ("tell me a joke about cats", "order a pizza", "the quick brown fox jumps over the lazy dog")


def speak(text: str, folder: Path) -> np.ndarray:
    """A real spoken command (espeak-ng, en-us) as 16 kHz float32."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian package espeak-ng)")
    path = folder / (text.replace(" ", "_")[:60] + ".wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, timeout=30)
    return load_audio(path).samples


@pytest.fixture(scope="session")
def templates() -> TemplateSet:
    return TemplateSet.load(TEMPLATES)


@pytest.fixture(scope="session")
def pack(templates: TemplateSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_language_pack(templates, tmp_path_factory.mktemp("pack"), holdout=HOLDOUT)


@pytest.fixture(scope="session")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    folder = tmp_path_factory.mktemp("speech")
    return {text: speak(text, folder) for text in COMMANDS + OUT_OF_DOMAIN}


@pytest.fixture(scope="session")
def recognizer(pack: Path) -> Recognizer:
    return Recognizer(pack)


# -- language pack ------------------------------------------------------------------------------------
def test_pack_has_its_four_files_and_describes_itself(pack: Path, templates: TemplateSet) -> None:
    assert sorted(p.name for p in pack.iterdir()) == sorted(stt.PACK_FILES)
    info = json.loads((pack / "pack.json").read_text())
    assert info["vocabulary_size"] == len(templates.vocabulary())
    assert info["sentence_count"] > 5000
    assert info["pocketsphinx_version"].startswith("5.1")
    assert info["templates_sha256"] == hashlib.sha256(TEMPLATES.read_text(encoding="utf-8").encode()).hexdigest()
    assert info["holdout_dropped"] >= 1   # qa.math is enumerated in full: "what is seven plus five" was in it
    assert (pack / "grammar.jsgf").read_text() == templates.to_jsgf()
    dict_words = {line.split()[0].split("(")[0] for line in (pack / "words.dict").read_text().splitlines()}
    assert dict_words == templates.vocabulary()
    lm = (pack / "lm.arpa").read_text()
    assert "\\data\\" in lm and "ngram 3=" in lm and " <s> " in lm


def test_holdout_sentences_are_not_in_the_lm_text(templates: TemplateSet, tmp_path: Path) -> None:
    a = build_language_pack(templates, tmp_path / "a", sentences_per_intent=50)
    b = build_language_pack(templates, tmp_path / "b", sentences_per_intent=50,
                            holdout=[ex.text for ex in templates.examples("music.pause")])
    info_a, info_b = (json.loads((p / "pack.json").read_text()) for p in (a, b))
    assert info_b["sentence_count"] == info_a["sentence_count"] - templates.count("music.pause")
    assert info_b["holdout_dropped"] == templates.count("music.pause")


def test_pack_is_deterministic(templates: TemplateSet, tmp_path: Path) -> None:
    first = build_language_pack(templates, tmp_path / "one", sentences_per_intent=300, holdout=HOLDOUT)
    second = build_language_pack(templates, tmp_path / "two", sentences_per_intent=300, holdout=HOLDOUT)
    for name in stt.PACK_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_word_without_pronunciation_names_word_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.ini"
    path.write_text("[music.play]\nplay [some] music\nplay zqxvorp music\n")
    monkeypatch.setattr(stt, "_g2p", lambda words: {})   # as on a machine without espeak-ng
    with pytest.raises(TemplateError, match=r"'zqxvorp'.*t\.ini:3"):
        build_language_pack(TemplateSet.load(path), tmp_path / "pack")


def test_missing_pronunciation_is_generated_or_given(templates: TemplateSet, tmp_path: Path) -> None:
    # "busan" is not in cmudict: espeak-ng's IPA gives its phones
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    pack = build_language_pack(templates, tmp_path / "g", sentences_per_intent=20)
    generated = json.loads((pack / "pack.json").read_text())["generated_pronunciations"]
    assert set(generated) == {"busan"} and set(generated["busan"].split()) <= stt.PHONES
    given = build_language_pack(templates, tmp_path / "p", sentences_per_intent=20,
                                pronunciations={"busan": "B UW S AA N"})
    assert "busan B UW S AA N\n" in (given / "words.dict").read_text()
    with pytest.raises(TemplateError, match="not phones"):
        build_language_pack(templates, tmp_path / "x", pronunciations={"busan": "B OO S AN"})


# -- recognition ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["lm", "jsgf"])
def test_commands_are_transcribed(pack: Path, audio: dict[str, np.ndarray], recognizer: Recognizer,
                                  mode: str) -> None:
    rec = recognizer if mode == "lm" else Recognizer(pack, mode="jsgf")
    transcripts = [rec.transcribe(audio[c]) for c in COMMANDS]
    wer = jiwer.wer(list(COMMANDS), [t.text for t in transcripts])
    assert wer <= 0.1, [(c, t.text) for c, t in zip(COMMANDS, transcripts, strict=True) if c != t.text]
    for t in transcripts:
        assert isinstance(t, Transcript) and t.words == t.text.split() and 0.0 <= t.confidence <= 1.0
        assert t.elapsed_ms > 0
    held_out = [t for c, t in zip(COMMANDS, transcripts, strict=True) if c in HOLDOUT]
    assert sum(not t.rejected for t in held_out) >= 1


def test_gated_mode_searches_the_grammar_only_for_sentences_no_template_makes(
        pack: Path, templates: TemplateSet, audio: dict[str, np.ndarray]) -> None:
    gated = Recognizer(pack, mode="gated", templates=templates)
    lm = Recognizer(pack)
    for c in COMMANDS:
        before = gated.grammar_passes
        t, base = gated.transcribe(audio[c]), lm.transcribe(audio[c])
        if templates.match(base.text) is not None:  # the LM's sentence stands: no grammar pass
            assert (t.text, t.search, gated.grammar_passes) == (base.text, "lm", before)
            assert t.confidence == pytest.approx(base.confidence)
        else:
            assert gated.grammar_passes == before + 1 and t.search in ("lm", "gated")
            assert t.search == "lm" or templates.match(t.text) is not None  # the grammar's words are a template's
    wer = jiwer.wer(list(COMMANDS), [gated.transcribe(audio[c]).text for c in COMMANDS])
    assert wer <= 0.1
    assert sum(gated.transcribe(audio[t]).rejected for t in OUT_OF_DOMAIN) >= 2 and gated.grammar_passes > 0
    silence = gated.transcribe(np.zeros(800, np.float32))  # nothing decoded: no grammar sentence to name
    assert silence.text == "" and silence.search == "lm"


def test_gated_mode_needs_the_templates(pack: Path, tmp_path: Path) -> None:
    bare = tmp_path / "pack"
    shutil.copytree(pack, bare)
    with pytest.raises(ModelLoadError, match="templates.ini"):
        Recognizer(bare, mode="gated")
    shutil.copyfile(TEMPLATES, bare / "templates.ini")  # as an stt bundle holds it
    assert Recognizer(bare, mode="gated").mode == "gated"


def test_out_of_domain_speech_is_rejected(recognizer: Recognizer, audio: dict[str, np.ndarray]) -> None:
    ood = [recognizer.transcribe(audio[t]) for t in OUT_OF_DOMAIN]
    in_domain = [recognizer.transcribe(audio[c]).confidence for c in COMMANDS]
    # every out-of-domain sentence scores below every command ...
    assert max(t.confidence for t in ood) < min(in_domain)
    # ... and most fall below the threshold: the joke, forced onto "delete on tokyo tokyo this",
    # sits at 0.52, just above it (the shipped and held-out sets measure the rate: README)
    assert sum(t.rejected for t in ood) >= 2
    assert all(t.rejected == (t.confidence < recognizer.rejection_threshold) for t in ood)


def test_nothing_heard(recognizer: Recognizer) -> None:
    for samples in (np.zeros(16000, np.float32), np.zeros(10, np.float32), np.zeros(0, np.float32),
                    np.random.default_rng(0).normal(0, 0.02, 32000).astype(np.float32)):
        t = recognizer.transcribe(samples)
        assert t.text == "" and t.words == [] and t.confidence == 0.0 and t.rejected


def test_other_sample_rates_are_resampled(recognizer: Recognizer, audio: dict[str, np.ndarray]) -> None:
    import soxr

    # (8 kHz input loses the 4-8 kHz band the wideband acoustic model relies on: no test of it here)
    x = soxr.resample(audio["play some jazz music"], 16000, 48000)
    assert recognizer.transcribe(x, sample_rate=48000).text == "play some jazz music"


def test_one_recognizer_shared_by_threads(recognizer: Recognizer, audio: dict[str, np.ndarray]) -> None:
    commands = COMMANDS[:4]
    expected = {c: recognizer.transcribe(audio[c]).text for c in commands}
    results: dict[str, str] = {}

    def work(c: str) -> None:
        results[c] = recognizer.transcribe(audio[c]).text

    threads = [threading.Thread(target=work, args=(c,)) for c in commands]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == expected


def test_missing_pack_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="build_language_pack"):
        Recognizer(tmp_path)
    with pytest.raises(ValueError, match="mode"):
        Recognizer(tmp_path, mode="grammar")  # type: ignore[arg-type]


def test_general_recognizer_loads_on_first_use(audio: dict[str, np.ndarray]) -> None:
    general = GeneralRecognizer()
    assert not general.loaded
    t = general.transcribe(audio["what is the weather like in paris tomorrow"])
    assert general.loaded and general.load_ms > 0
    assert t.text and "weather" in t.words


def test_grammar_wins_keeps_near_misses_and_far_likelier_sentences_that_explain_what_was_said() -> None:
    # a near miss of the LM's words (word distance 0.5 of its own words) that scores as well is kept
    assert stt.grammar_wins("delete the time", -1000.0, 100, "tell me the time", -1000.0, 100)
    assert not stt.grammar_wins("delete the time", -1000.0, 100, "tell me the time", -1100.0, 100)
    # a looser miss (0.6): kept only when 20 logmath units per frame likelier or more
    assert not stt.grammar_wins("delete the latest news week", -1000.0, 100, "tell me the latest news", -500.0, 100)
    assert stt.grammar_wins("delete the latest news week", -5000.0, 100, "tell me the latest news", -2500.0, 100)
    # ... but never a template sentence that explains a fraction of what was heard (miss 1.0, 1.67)
    assert not stt.grammar_wins("the evening on monday", -5000.0, 100, "recommend a pop song", -2500.0, 100)
    assert not stt.grammar_wins("me to buy milk are", -5000.0, 100, "what are the", -2500.0, 100)
    assert stt.grammar_wins("anything", None, 0, "what are the", -2500.0, 100)  # the LM had no usable score


def test_gated_mode_acts_on_a_template_sentence_heard_word_for_word_and_not_on_a_partial_one(
        pack: Path, templates: TemplateSet, tmp_path: Path) -> None:
    gated = Recognizer(pack, mode="gated", templates=templates)
    # the LM hears "delete the time"; the grammar pass "tell me the time", which the loop now acts on
    # (confidence 0.23 under the grammar pass's former calibration centre, 5)
    heard = gated.transcribe(speak("tell me the time", tmp_path))
    assert (heard.text, heard.search, heard.rejected) == ("tell me the time", "gated", False)
    # out of domain: the grammar's "put meeting to my" scored far better than the LM's words but
    # explains too little of them; the LM's words stand, and are rejected
    car = gated.transcribe(speak("i need to buy a new car", tmp_path))
    assert car.search == "lm" and car.rejected and templates.match(car.text) is None


def test_the_same_recording_gets_the_same_transcript_and_confidence_whatever_came_before(
        pack: Path, templates: TemplateSet, audio: dict[str, np.ndarray]) -> None:
    # pocketsphinx's front end kept its noise estimate across utterances: decoding a clip again,
    # or after others, moved its confidence (0.32 → 0.26 for an out-of-domain sentence)
    first = Recognizer(pack, mode="gated", templates=templates)
    fresh = first.transcribe(audio["tell me a joke about cats"])
    again = first.transcribe(audio["tell me a joke about cats"])
    other = Recognizer(pack, mode="gated", templates=templates)
    for c in COMMANDS[:3]:
        other.transcribe(audio[c])
    later = other.transcribe(audio["tell me a joke about cats"])
    assert (again.text, again.search) == (later.text, later.search) == (fresh.text, fresh.search)
    assert again.confidence == later.confidence == fresh.confidence
