"""Topics of free-text feedback: MiniLM sentence embeddings (the inference core's ONNX encoder),
k-means clusters, each topic named by its most typical phrases.

The encoder is the QA bundle's ``model.onnx`` + ``tokenizer.json``
(:class:`inference_core.intent_model.OnnxEncoder`; mean pooling and L2 norm in the graph, so
cosine = dot product). Build the bundle once with ``speakerops models build``.

A topic's *phrases* are the member texts nearest its centroid (the most central), its *keywords*
the words most over-represented in it against all texts; its label joins the top keywords.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from feedback.models import Feedback

logger = logging.getLogger(__name__)

Embed = Callable[[list[str]], np.ndarray]

#: Most texts clustered in one call (the newest); embedding runs ~2–5 ms per text on 2 cores.
MAX_TEXTS = 20_000
_WORD = re.compile(r"[^\W\d_]{3,}", re.UNICODE)
_STOP = frozenset("""the and for you your that this with was were are not but have has had did does
just what when then than too very can cant can't won't dont don't its it's i'm ive i've she him her his our
they them their from into about again still all any some one out get got would could should there here
me my myself we us it is be been being to of in on at by an or as so if no yes please thanks thank""".split())


@dataclass(frozen=True)
class Topic:
    """One group of similar feedback texts."""

    label: str
    keywords: tuple[str, ...]
    phrases: tuple[str, ...]
    size: int
    #: Feedback ids of the members (in the order given), for drill-down.
    ids: tuple[int, ...]
    mean_rating: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "keywords": list(self.keywords), "phrases": list(self.phrases),
                "size": self.size, "mean_rating": self.mean_rating, "ids": list(self.ids)}


def load_encoder(models_root: Path, version: str | None = None) -> Embed:
    """The embedding function of the QA bundle ``<models_root>/qa/<version>`` (default version:
    ``inference_core.bundles.DEFAULT_VERSIONS["qa"]``).

    Raises
    ------
    inference_core.errors.ModelLoadError
        If the bundle is missing (build it with ``speakerops models build``).
    """
    from inference_core.bundles import DEFAULT_VERSIONS, bundle_dir
    from inference_core.intent_model import OnnxEncoder

    encoder = OnnxEncoder(bundle_dir(Path(models_root), "qa", version or DEFAULT_VERSIONS["qa"]))
    return encoder.encode


def _words(text: str) -> set[str]:
    return {w for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOP}


def cluster_topics(texts: Sequence[str], embed: Embed, *, ids: Sequence[int] | None = None,
                   ratings: Sequence[int] | None = None, n_topics: int | None = None, seed: int = 0,
                   n_phrases: int = 3, n_keywords: int = 3) -> list[Topic]:
    """Group ``texts`` into topics, largest first.

    Parameters
    ----------
    embed
        Texts → float32 (n, d) unit-norm embeddings (:func:`load_encoder`).
    n_topics
        Clusters; default ``round(sqrt(n / 2))`` clipped to 2..12 (a common rule of thumb for k).
    """
    texts = [t.strip() for t in texts]
    keep = [i for i, t in enumerate(texts) if t]
    if not keep:
        return []
    texts = [texts[i] for i in keep]
    ids = [int(ids[i]) for i in keep] if ids is not None else keep
    rates = np.array([ratings[i] for i in keep], dtype=float) if ratings is not None else None
    n = len(texts)
    k = n_topics or int(np.clip(round(np.sqrt(n / 2)), 2, 12))
    k = max(1, min(k, n))
    emb = np.asarray(embed(texts), dtype=np.float32)
    if k == 1:
        labels = np.zeros(n, dtype=int)
        centers = emb.mean(axis=0, keepdims=True)
    else:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(emb)
        labels, centers = km.labels_, km.cluster_centers_
    doc_words = [_words(t) for t in texts]
    overall = Counter(w for ws in doc_words for w in ws)
    topics = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if not len(members):
            continue
        center = centers[c] / (np.linalg.norm(centers[c]) or 1.0)
        order = members[np.argsort(-(emb[members] @ center))]
        phrases: list[str] = []
        for i in order:
            p = texts[i] if len(texts[i]) <= 80 else texts[i][:77] + "..."
            if p.lower() not in (q.lower() for q in phrases):
                phrases.append(p)
            if len(phrases) == n_phrases:
                break
        inside = Counter(w for i in members for w in doc_words[i])
        score = {w: cnt / len(members) - overall[w] / n for w, cnt in inside.items() if cnt >= min(2, len(members))}
        keywords = tuple(w for w, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:n_keywords])
        topics.append(Topic(label=" / ".join(keywords) or phrases[0], keywords=keywords, phrases=tuple(phrases),
                            size=len(members), ids=tuple(ids[i] for i in members),
                            mean_rating=float(rates[members].mean()) if rates is not None else None))
    topics.sort(key=lambda t: -t.size)
    return topics


def feedback_topics(session: Session, embed: Embed, *, since: datetime | None = None,
                    max_texts: int = MAX_TEXTS, **kwargs: Any) -> list[Topic]:
    """Topics of the stored feedback texts (newest ``max_texts``, from ``since``)."""
    stmt = select(Feedback.id, Feedback.text, Feedback.rating).where(Feedback.text.is_not(None))
    if since is not None:
        stmt = stmt.where(Feedback.submitted_at >= since)
    rows = session.execute(stmt.order_by(Feedback.submitted_at.desc()).limit(max_texts)).all()
    return cluster_topics([r[1] for r in rows], embed, ids=[r[0] for r in rows], ratings=[r[2] for r in rows],
                          **kwargs)
