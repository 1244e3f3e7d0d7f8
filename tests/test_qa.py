"""Intent model build, classification, slot filling and answers (no Qt, real model, real providers).

The intent model is exported once per session (fp32 and int8, a few seconds each). The held-out
phrasings and out-of-domain sentences below were written by hand, not produced by the templates;
``benchmarks/qa_speed.py`` reuses them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from inference_core.errors import ModelLoadError
from inference_core.intent_model import build_intent_model
from inference_core.answers import Answerer, InMemoryScheduleStore, parse_math, parse_time
from inference_core.qa import IntentClassifier, KeywordIntentMatcher
from inference_core.templates import TemplateSet

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "resources" / "templates" / "en-us.ini"

#: 40 in-domain requests no template produces, with their intent.
HELD_OUT = [
    ("could you tell me if it'll rain in tokyo", "weather.forecast"),
    ("is it gonna be cold outside tomorrow", "weather.forecast"),
    ("what's the forecast looking like for this weekend in london", "weather.forecast"),
    ("do i need a jacket today", "weather.forecast"),
    ("tell me the weather in paris", "weather.forecast"),
    ("how warm is it going to get in sydney on friday", "weather.forecast"),
    ("any chance of snow in berlin tonight", "weather.forecast"),
    ("give me the weather report for chicago", "weather.forecast"),
    ("what's going on in the world today", "news.read"),
    ("catch me up on the sports news", "news.read"),
    ("i want to hear the latest headlines", "news.read"),
    ("brief me on today's business news", "news.read"),
    ("what are today's top stories", "news.read"),
    ("anything new in technology", "news.read"),
    ("put a dentist appointment in my calendar for friday", "schedule.add"),
    ("i've got a meeting tomorrow at ten", "schedule.add"),
    ("don't let me forget to take my medicine tonight", "schedule.remind"),
    ("i need a wake up call at six thirty in the morning", "schedule.alarm"),
    ("what does my day look like tomorrow", "schedule.list"),
    ("am i busy on friday", "schedule.list"),
    ("get rid of my dentist appointment", "schedule.cancel"),
    ("call off the meeting on monday", "schedule.cancel"),
    ("make sure i remember to pay the bills on friday", "schedule.remind"),
    ("wake me at seven tomorrow", "schedule.alarm"),
    ("i'd like to hear some jazz", "music.play"),
    ("could you put on some relaxing music", "music.play"),
    ("throw on a little rock", "music.play"),
    ("any good song suggestions", "music.recommend"),
    ("recommend me something to listen to", "music.recommend"),
    ("shut the music off", "music.pause"),
    ("skip to the next one", "music.next"),
    ("i don't like this song next please", "music.next"),
    ("which city is the capital of japan", "qa.capital"),
    ("tell me what the capital city of brazil is", "qa.capital"),
    ("do you have the current time", "qa.time"),
    ("what's today's date", "qa.time"),
    ("what do you get if you add five and seven", "qa.math"),
    ("calculate twelve minus four", "qa.math"),
    ("how tall is the eiffel tower in meters", "qa.height"),
    ("who is the writer of moby dick", "qa.author"),
]

#: 20 out-of-domain requests, none of them in the templates' [none] section.
OUT_OF_DOMAIN = [
    "what's the best recipe for lasagna", "turn off the kitchen lights", "set the thermostat to seventy degrees",
    "order me a new phone charger", "who is the president of france", "can you tell me a bedtime story",
    "how do i get to the train station", "start the vacuum cleaner", "what's your favorite color",
    "find me a cheap flight to rome", "how many calories are in an apple", "play the movie on the tv",
    "who are you", "spell the word necessary", "unlock the car", "email my boss that i'm running late",
    "what's the stock price of apple", "roll a dice", "good night", "feed the cat",
]

#: 20 reference texts for the fp32/int8 comparison: template sentences, paraphrases, out of domain.
REFERENCE = [t for t, _ in HELD_OUT[::4]] + OUT_OF_DOMAIN[::4] + [
    "what is the weather in busan tomorrow", "play some jazz", "what is seven times six",
    "who wrote hamlet", "set an alarm for seven thirty in the evening",
]


@pytest.fixture(scope="session")
def templates() -> TemplateSet:
    return TemplateSet.load(TEMPLATES)


@pytest.fixture(scope="session")
def int8_dir(models_root: Path) -> Path:
    """The int8 intent model of the session's default bundles (tests/conftest.py)."""
    return models_root / "qa" / "qa-1.0.0-int8"


@pytest.fixture(scope="session")
def fp32_dir(models_root: Path) -> Path:
    return models_root / "qa" / "qa-1.0.0-fp32"


@pytest.fixture(scope="session")
def clf(int8_dir: Path, templates: TemplateSet) -> IntentClassifier:
    return IntentClassifier(int8_dir, templates)


@pytest.fixture
def answerer(clock) -> Answerer:  # noqa: ANN001 - the frozen clock of conftest (Saturday 2026-11-21 06:00 UTC)
    return Answerer(clock=clock, schedule=InMemoryScheduleStore())


def ask(clf: IntentClassifier, answerer: Answerer, text: str) -> str:
    return answerer.answer(clf.classify(text)).text


# -- build ----------------------------------------------------------------------------------------
def test_build_writes_model_examples_and_meta(int8_dir: Path, templates: TemplateSet) -> None:
    meta = json.loads((int8_dir / "meta.json").read_text())
    assert meta["quantized"] is True and meta["export"]["opset_version"] == 17
    assert set(meta["example_counts"]) == set(templates.intents)
    assert 0.2 < meta["ood_threshold"] < 0.9
    assert (int8_dir / "tokenizer.json").is_file()
    assert (int8_dir / "model.onnx").stat().st_size < 30e6          # int8: ~23 MB vs ~90 MB fp32
    with np.load(int8_dir / "examples.npz") as z:
        emb, labels = z["embeddings"], z["labels"]
        assert emb.dtype == np.float32 and emb.shape == (sum(meta["example_counts"].values()), 384)
        assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)
        assert "none" in set(labels.tolist())


def test_build_is_deterministic(int8_dir: Path, templates: TemplateSet, tmp_path: Path) -> None:
    again = build_intent_model(templates, tmp_path / "again")
    for name in ("model.onnx", "examples.npz", "meta.json"):
        assert (again / name).read_bytes() == (int8_dir / name).read_bytes(), name


def test_missing_model_is_a_clear_error(tmp_path: Path, templates: TemplateSet) -> None:
    with pytest.raises(ModelLoadError, match="rebuild"):
        IntentClassifier(tmp_path, templates)


def test_runtime_needs_no_torch(int8_dir: Path) -> None:
    code = ("import sys; from inference_core.templates import TemplateSet; from inference_core.qa import "
            f"IntentClassifier; c = IntentClassifier({str(int8_dir)!r}, TemplateSet.load({str(TEMPLATES)!r})); "
            "c.classify('could you tell me if it will rain'); "
            "assert not {'torch', 'sentence_transformers', 'transformers'} & set(sys.modules), 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


# -- classification ---------------------------------------------------------------------------------
def test_fp32_and_int8_agree(clf: IntentClassifier, fp32_dir: Path, templates: TemplateSet) -> None:
    fp32 = IntentClassifier(fp32_dir, templates)
    same = sum(clf.classify(t).intent == fp32.classify(t).intent for t in REFERENCE)
    assert len(REFERENCE) == 20 and same >= 19


def test_feature_accuracy_on_held_out_phrasings(clf: IntentClassifier, templates: TemplateSet) -> None:
    assert all(templates.match(t) is None for t, _ in HELD_OUT)   # really held out
    results = [clf.classify(t) for t, _ in HELD_OUT]
    right = sum(r.feature == intent.split(".")[0] for r, (_, intent) in zip(results, HELD_OUT, strict=True))
    assert right / len(HELD_OUT) >= 0.95, [(t, r.intent) for r, (t, i) in zip(results, HELD_OUT) if r.intent != i]


def test_out_of_domain_comes_out_none(clf: IntentClassifier, templates: TemplateSet) -> None:
    none_section = {" ".join(e.text.split()) for e in templates.examples("none")}
    assert not none_section & set(OUT_OF_DOMAIN)
    results = {t: clf.classify(t) for t in OUT_OF_DOMAIN}
    rejected = [t for t, r in results.items() if r.intent == "none" and not r.in_domain]
    assert len(rejected) >= 18, {t: r.intent for t, r in results.items() if r.intent != "none"}


def test_keyword_baseline_scores_lower(clf: IntentClassifier, templates: TemplateSet) -> None:
    baseline = KeywordIntentMatcher(templates)
    model = sum(clf.classify(t).intent == i for t, i in HELD_OUT)
    floor = sum(baseline.classify(t).intent == i for t, i in HELD_OUT)
    assert floor < model
    assert baseline.classify("will it rain in tokyo").intent == "weather.forecast"


def test_exact_template_match_wins(clf: IntentClassifier) -> None:
    r = clf.classify("What is the weather like in New York tomorrow?")
    assert (r.intent, r.feature, r.confidence, r.source) == ("weather.forecast", "weather", 1.0, "template")
    assert r.slots == {"city": "New York", "day": "tomorrow"}
    joke = clf.classify("tell me a joke")
    assert joke.intent == "none" and not joke.in_domain and joke.confidence == 1.0


def test_result_fields(clf: IntentClassifier) -> None:
    r = clf.classify("could you tell me if it'll rain in tokyo")
    assert r.source == "model" and r.in_domain and 0.0 <= r.confidence <= 1.0 and r.elapsed_ms > 0
    assert 1 <= len(r.alternatives) <= 3 and r.alternatives[0][0] == r.intent
    assert all(0.0 <= p <= 1.0 for _, p in r.alternatives)


@pytest.mark.parametrize("text", ["", "   ", "?!"])
def test_empty_text_is_none(clf: IntentClassifier, text: str) -> None:
    r = clf.classify(text)
    assert (r.intent, r.feature, r.confidence, r.in_domain) == ("none", "none", 0.0, False)


# -- slots --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "intent", "slots"), [
    ("set an alarm for seven thirty in the evening tomorrow", "schedule.alarm",
     {"time": "seven thirty in the evening", "day": "tomorrow"}),
    ("add a dentist appointment on friday at noon", "schedule.add",
     {"event": "dentist appointment", "day": "friday", "time": "noon"}),
    ("how tall is the eiffel tower", "qa.height", {"landmark": "eiffel tower"}),
    ("what is seven times six", "qa.math", {"number": "seven", "number_2": "six"}),
    ("play some hip hop music", "music.play", {"genre": "hip hop"}),
])
def test_slots_on_template_sentences(clf: IntentClassifier, text: str, intent: str, slots: dict) -> None:
    r = clf.classify(text)
    assert (r.intent, r.slots) == (intent, slots)


@pytest.mark.parametrize(("text", "intent", "slots"), [
    ("could you tell me if it'll rain in san francisco on sunday", "weather.forecast",
     {"city": "San Francisco", "day": "sunday"}),
    ("i've got a meeting tomorrow at ten", "schedule.add", {"event": "meeting", "day": "tomorrow", "time": "ten"}),
    ("make sure i remember to pay the bills on friday", "schedule.remind", {"task": "pay the bills", "day": "friday"}),
    ("i'd like to hear some jazz", "music.play", {"genre": "jazz"}),
    ("which city is the capital of japan", "qa.capital", {"country": "japan"}),
    ("how tall is eiffel tower in meters", "qa.height", {"landmark": "eiffel tower"}),
    ("catch me up on the sports news", "news.read", {"news_topic": "sports"}),
])
def test_slots_on_paraphrases(clf: IntentClassifier, text: str, intent: str, slots: dict) -> None:
    r = clf.classify(text)
    assert r.source == "model" and (r.intent, r.slots) == (intent, slots)


# -- answers ------------------------------------------------------------------------------------
def test_every_intent_gets_an_answer(clf: IntentClassifier, answerer: Answerer, templates: TemplateSet) -> None:
    for intent in templates.intents:
        for example in templates.examples(intent, limit=3, seed=1):
            result = clf.classify(example.text)
            assert result.intent == intent, example.text
            answer = answerer.answer(result)
            assert answer.text.strip() and answer.data["intent"] == intent, example.text


def test_capital_of_france_is_paris(clf: IntentClassifier, answerer: Answerer) -> None:
    answer = answerer.answer(clf.classify("what is the capital of france"))
    assert "Paris" in answer.text and answer.data["capital"] == "Paris"


def test_math_answers_the_number(clf: IntentClassifier, answerer: Answerer) -> None:
    answer = answerer.answer(clf.classify("what is seven times six"))
    assert "42" in answer.text and answer.data["result"] == 42
    assert "12" in ask(clf, answerer, "what do you get if you add five and seven")


def test_weather_answer_and_defaults(clf: IntentClassifier, answerer: Answerer) -> None:
    assert ask(clf, answerer, "will it rain in seoul tomorrow") == "Yes. Tomorrow in Seoul: light rain, 4 to 9 degrees."
    answer = answerer.answer(clf.classify("what is the weather"))
    assert answer.data["defaults"] == {"city": "Seoul", "day": "today"} and "Seoul" in answer.text


def test_schedule_add_list_cancel(clf: IntentClassifier, answerer: Answerer) -> None:
    assert ask(clf, answerer, "add a dentist appointment tomorrow at seven thirty in the evening") == \
        "Added a dentist appointment to your calendar tomorrow at 7:30 PM."
    assert "a dentist appointment at 7:30 PM" in ask(clf, answerer, "what is on my calendar tomorrow")
    assert ask(clf, answerer, "cancel my dentist appointment tomorrow") == "Cancelled your dentist appointment."
    assert "nothing" in ask(clf, answerer, "what is on my calendar tomorrow")
    alarm = answerer.answer(clf.classify("wake me up at six fifteen"))
    assert alarm.text == "Alarm set for 6:15 AM today." and alarm.data["time"] == "06:15"


def test_time_music_facts_and_none(clf: IntentClassifier, answerer: Answerer) -> None:
    assert ask(clf, answerer, "what time is it") == "It's 6:00 AM."              # the frozen clock, UTC
    assert ask(clf, answerer, "what day is it today") == "Today is Saturday, November 21."
    assert ask(clf, answerer, "play some jazz") == "Playing some jazz."
    assert ask(clf, answerer, "next song").startswith("Next up:")
    assert ask(clf, answerer, "who wrote pride and prejudice") == "Pride and Prejudice was written by Jane Austen."
    assert ask(clf, answerer, "how tall is mount everest") == "Mount Everest is 8849 metres tall."
    assert ask(clf, answerer, "order a pizza") == "Sorry, I can't help with that yet."


@pytest.mark.parametrize(("words", "hh_mm"), [
    ("seven thirty in the evening", "19:30"), ("seven o'clock in the morning", "07:00"), ("noon", "12:00"),
    ("midnight", "00:00"), ("twelve at night", "00:00"), ("six forty five", "06:45"),
    ("eleven fifteen at night", "23:15"), ("twelve in the afternoon", "12:00"),
])
def test_time_words(words: str, hh_mm: str) -> None:
    assert parse_time(words).strftime("%H:%M") == hh_mm


def test_math_words() -> None:
    assert parse_math("how much is a hundred minus twelve") == (100, "-", 12, 88.0)
    assert parse_math("what is twenty plus fifty") == (20, "+", 50, 70.0)
    assert parse_math("hello there") is None


def test_answer_uses_the_speakers_time_zone(clf: IntentClassifier) -> None:
    seoul = Answerer(clock=lambda: datetime(2026, 11, 21, 6, 0, tzinfo=UTC), tz="Asia/Seoul")
    assert seoul.answer(clf.classify("what time is it")).text == "It's 3:00 PM."
