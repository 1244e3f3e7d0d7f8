"""Sentence templates: parsing, expansion, slot filling, JSGF, and clear errors."""

from __future__ import annotations

import pytest

from inference_core.bundles import default_templates_path
from inference_core.errors import TemplateError
from inference_core.templates import TemplateSet

SMALL = """
[weather.forecast]
what is the weather [like] [in {city}] [{day}]
will it (rain | snow) [{day}]

[none]
tell me a joke

{city}
seoul
new york = New York

{day}
today
tomorrow
"""


def test_expansion_enumerates_every_derivation_once() -> None:
    ts = TemplateSet.loads(SMALL)
    # 2 × 3 × 3 = 18 for the first line, 2 × 3 = 6 for the second
    assert ts.count("weather.forecast") == 24
    examples = ts.examples("weather.forecast", limit=100)
    assert len(examples) == 24 == len({e.text for e in examples})
    by_text = {e.text: e for e in examples}
    assert by_text["what is the weather like in new york tomorrow"].slots == {"city": "New York", "day": "tomorrow"}
    assert by_text["will it snow"].slots == {}


def test_sampling_is_seeded_and_bounded() -> None:
    ts = TemplateSet.load(default_templates_path())
    a = ts.examples("schedule.add", limit=50, seed=3)
    b = ts.examples("schedule.add", limit=50, seed=3)
    c = ts.examples("schedule.add", limit=50, seed=4)
    assert [e.text for e in a] == [e.text for e in b] and len(a) == 50
    assert [e.text for e in a] != [e.text for e in c]
    assert all(e.intent == "schedule.add" and "event" in e.slots and "day" in e.slots for e in a)


def test_match_fills_slots_with_canonical_values_and_refuses_paraphrases() -> None:
    ts = TemplateSet.load(default_templates_path())
    m = ts.match("What is the weather like in New York tomorrow?")
    assert (m.intent, m.slots) == ("weather.forecast", {"city": "New York", "day": "tomorrow"})
    m = ts.match("remind me to buy milk on friday at seven thirty in the evening")
    assert m.intent == "schedule.remind"
    assert m.slots == {"task": "buy milk", "day": "friday", "time": "seven thirty in the evening"}
    assert ts.match("could you maybe tell me about the weather") is None


def test_jsgf_names_every_in_domain_intent_and_slot() -> None:
    ts = TemplateSet.load(default_templates_path())
    jsgf = ts.to_jsgf()
    assert jsgf.startswith("#JSGF V1.0;")
    assert "public <command> =" in jsgf
    for intent in ts.in_domain_intents:
        assert f"<intent_{intent.replace('.', '_')}>" in jsgf
    assert "intent_none" not in jsgf and "joke" not in jsgf  # out-of-domain examples stay out
    for slot in ts.slots:
        assert f"<slot_{slot}> =" in jsgf


def test_every_feature_of_the_service_is_covered() -> None:
    ts = TemplateSet.load(default_templates_path())
    features = {i.split(".")[0] for i in ts.in_domain_intents}
    assert features == {"weather", "news", "schedule", "music", "qa"}
    assert "none" in ts.intents


@pytest.mark.parametrize(("text", "message"), [
    ("[weather.now]\nwhat is (the weather\n", "missing ')'"),
    ("[weather.now]\nwhat is the weather in {town}\n", "slot {town} of weather.now is not defined"),
    ("what is the weather\n", "outside any"),
    ("[weather.now]\nwhat is the weather ; now\n", "unexpected"),
    ("[weather.now]\nwhat (is | ) the weather\n", "empty alternative"),
])
def test_bad_templates_name_the_line_and_the_problem(text, message) -> None:
    with pytest.raises(TemplateError, match="<string>:") as err:
        TemplateSet.loads(text)
    assert message in str(err.value)
