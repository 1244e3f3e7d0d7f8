"""Topics of free text with the real MiniLM encoder of the QA bundle (built once per session, ~40 s)."""

from __future__ import annotations

from feedback.ingest import ingest_records
from feedback.topics import cluster_topics, feedback_topics, load_encoder
from tests.feedback_helpers import add_unit, row

MISHEARD = ["it did not understand what I said", "kept mishearing my request", "heard the wrong words again",
            "it misheard my question", "did not understand me at all"]
SLOW = ["took forever to answer", "very slow response today", "long pause before it answered",
        "the answer came really slowly", "so slow to respond"]
MUSIC = ["played the wrong song", "wrong artist was played", "it played a different song than I asked",
         "put on the wrong music", "played the wrong album"]


def test_topics_group_similar_texts_and_name_them(models_root) -> None:
    embed = load_encoder(models_root)
    texts = MISHEARD + SLOW + MUSIC
    topics = cluster_topics(texts, embed, n_topics=3, ratings=[1] * 5 + [2] * 5 + [3] * 5)
    groups = [{texts[i] for i in t.ids} for t in topics]
    hits = [max(len(g & set(block)) for g in groups) for block in (MISHEARD, SLOW, MUSIC)]
    assert sum(hits) >= 13, groups  # at most two texts land in another topic
    for t in topics:
        assert t.phrases and t.phrases[0] in texts and t.label
        assert len(t.phrases) <= 3 and t.size == len(t.ids)
    music = max(topics, key=lambda t: len({texts[i] for i in t.ids} & set(MUSIC)))
    assert any(w in music.keywords for w in ("played", "wrong", "song"))


def test_topics_from_the_database(runtime, models_root) -> None:
    with runtime.session_factory.begin() as s:
        add_unit(s, "SPK-1", runtime.clock(), consent=True)
    records = [row(text=t, rating=1, submission_id=f"t{i}") for i, t in enumerate(MISHEARD + MUSIC)]
    with runtime.session_factory.begin() as s:
        ingest_records(s, records, runtime.clock, source="import", origin="t")
    with runtime.session_factory() as s:
        topics = feedback_topics(s, load_encoder(models_root), n_topics=2)
    assert sum(t.size for t in topics) == 10 and all(t.mean_rating == 1.0 for t in topics)
    assert cluster_topics(["", "  "], load_encoder(models_root)) == []
