"""Understanding and answering: intent classification, slot filling, providers and answers.

Run time uses onnxruntime and ``tokenizers`` only (the model is built by
:func:`inference_core.intent_model.build_intent_model`). Figures quoted below were measured by
``tests/test_qa.py`` and ``benchmarks/qa_speed.py`` on the en-us templates.

>>> clf = IntentClassifier(model_dir, TemplateSet.load("resources/templates/en-us.ini"))
>>> answerer = Answerer(clock=clock)          # offline providers, in-memory schedule
>>> answerer.answer(clf.classify("will it rain in seoul tomorrow")).text
'Yes. Tomorrow in Seoul: light rain, 4 to 9 degrees.'
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference_core.errors import ModelLoadError
from inference_core.intent_model import OnnxEncoder, intent_scores, load_meta, softmax
from inference_core.templates import Alt, Node, Opt, Seq, Slot, TemplateSet, Word

logger = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z][a-z']*|[0-9]+")   # the tokenisation of TemplateSet.match
#: Words that introduce a clock time; a bare number is taken as a {time} only after one of them.
_TIME_CUES = ("at", "for", "by", "around", "until", "before", "after")
_TIME_MARKED = re.compile(r"o'clock|noon|midnight|morning|afternoon|evening|night")


def normalize(text: str) -> str:
    """Lower-case words separated by single spaces (as ``TemplateSet.match`` sees them)."""
    return " ".join(_WORD.findall(text.lower()))


@dataclass(frozen=True)
class IntentResult:
    """What a request asks for.

    Attributes
    ----------
    intent
        ``<feature>.<action>`` of the templates, or ``"none"`` (out of domain).
    feature
        The part before the dot (``"none"`` for none).
    slots
        Slot name → canonical value; a slot found twice adds ``<name>_2`` (e.g. ``number_2``).
    confidence
        Probability of ``intent`` in [0, 1]: 1.0 for an exact template match, 0 for empty text.
    alternatives
        Up to 3 (label, probability) pairs by probability, best first. ``none`` may appear, and
        near the threshold may rank above an accepted intent (the in/out decision is the cosine
        threshold's, see :class:`IntentClassifier`).
    in_domain
        False when the intent is ``none``.
    elapsed_ms
        Wall time of :meth:`classify`, milliseconds.
    text
        The normalised request (lower case, single spaces).
    source
        ``"template"`` (exact match), ``"model"``, ``"keywords"`` (baseline) or ``"empty"``.
    """

    intent: str
    feature: str
    slots: dict[str, str]
    confidence: float
    alternatives: list[tuple[str, float]]
    in_domain: bool
    elapsed_ms: float
    text: str = ""
    source: str = "model"


def _result(intent: str, slots: dict[str, str], confidence: float, alternatives: list[tuple[str, float]],
            t0: float, text: str, source: str) -> IntentResult:
    return IntentResult(intent=intent, feature=intent.split(".")[0], slots=slots,
                        confidence=float(min(max(confidence, 0.0), 1.0)),
                        alternatives=[(a, round(float(p), 4)) for a, p in alternatives[:3]],
                        in_domain=intent != "none", elapsed_ms=(time.perf_counter() - t0) * 1000.0,
                        text=text, source=source)


# -- slot filling ----------------------------------------------------------------------------------
def _phrases(node: Node) -> list[str]:
    """Every word sequence a slot value's template produces."""
    if isinstance(node, Word):
        return [node.text]
    if isinstance(node, Slot):
        return []
    if isinstance(node, Seq):
        out = [""]
        for item in node.items:
            out = [f"{a} {b}".strip() for a in out for b in _phrases(item)]
        return out
    if isinstance(node, Alt):
        return [p for o in node.options for p in _phrases(o)]
    if isinstance(node, Opt):
        return ["", *_phrases(node.inner)]
    return []


def _slot_names(node: Node) -> set[str]:
    if isinstance(node, Slot):
        return {node.name}
    if isinstance(node, Seq):
        return set().union(*(_slot_names(i) for i in node.items)) if node.items else set()
    if isinstance(node, Alt):
        return set().union(*(_slot_names(o) for o in node.options))
    if isinstance(node, Opt):
        return _slot_names(node.inner)
    return set()


class SlotFiller:
    """Find slot values in free text: longest phrase first, on word boundaries.

    A value written with a leading "the" in the slot list ("the eiffel tower") is also found
    without it. A bare hour ("seven") counts as a ``{time}`` only after a cue word ("at seven");
    times with "o'clock", "noon", "in the evening" … count anywhere.
    """

    def __init__(self, templates: TemplateSet) -> None:
        self.templates = templates
        self.intent_slots = {intent: sorted(set().union(*(_slot_names(t.node) for t in tl)) if tl else [])
                             for intent, tl in templates.intents.items()}
        self._spoken: dict[str, dict[str, str]] = {}   # slot → phrase heard → phrase of the list
        self._regex: dict[str, re.Pattern[str]] = {}
        for name, sl in templates.slots.items():
            phrases: dict[str, str] = {}
            for v in sl.values:
                for p in _phrases(v.spoken):
                    if p:
                        phrases.setdefault(p, p)
                        if p.startswith("the ") and len(p) > 4:
                            phrases.setdefault(p[4:], p)
            self._spoken[name] = phrases
            alts = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
            self._regex[name] = re.compile(rf"(?<![a-z'])(?:{alts})(?![a-z'])")

    def fill(self, text: str, intent: str) -> dict[str, str]:
        """Slots of ``intent`` found in ``text`` (normalised), mapped to canonical values."""
        text = normalize(text)
        found: list[tuple[int, int, str]] = []
        for name in self.intent_slots.get(intent, []):
            for m in self._regex[name].finditer(text):
                if name == "time" and not _TIME_MARKED.search(m.group()):
                    before = text[:m.start()].split()
                    if not before or before[-1] not in _TIME_CUES:
                        continue
                found.append((m.start(), m.end(), name))
        taken: list[tuple[int, int, str]] = []
        for start, end, name in sorted(found, key=lambda f: (f[0] - f[1], f[0])):   # longest first
            if all(end <= s or start >= e for s, e, _ in taken):
                taken.append((start, end, name))
        slots: dict[str, str] = {}
        for start, end, name in sorted(taken):
            key, n = name, 1
            while key in slots:
                n += 1
                key = f"{name}_{n}"
            spoken = self._spoken[name][text[start:end]]
            slots[key] = self.templates.canonical(name, spoken)
        return slots


# -- classifiers -----------------------------------------------------------------------------------
class IntentClassifier:
    """Intent and slots of a request, from sentence templates and the exported MiniLM model.

    An exact template match (``TemplateSet.match``) wins with confidence 1.0. Otherwise the request
    is embedded; it is in domain when its best cosine to an in-domain example reaches the threshold
    calibrated at build time (``meta.json``: ``ood_threshold``), and its intent is the argmax of the
    linear probe (``method="probe"``, default) or of the per-intent max cosine
    (``method="max_cosine"``). Confidence: ``P(in) * P(intent)``, with
    ``P(in) = sigmoid((cos - threshold) / in_domain_width)``; ``none`` gets the rest.

    Parameters
    ----------
    model_dir
        A directory written by :func:`~inference_core.intent_model.build_intent_model`.
    templates
        The templates the model was built from (exact matches and slot lists).
    method
        ``"probe"`` or ``"max_cosine"`` (the comparison is in ``benchmarks/qa_speed.py``).
    num_threads
        onnxruntime intra-op threads. Default 1: a request is ~10 tokens, and on the 2-core test
        machine (shared) one thread gave p50 6.9 ms per int8 query against 15 ms with two
        (``benchmarks/qa_speed.py --threads``). None: onnxruntime's choice (all cores).

    Raises
    ------
    ModelLoadError
        If the directory is incomplete, of another format, or built from other intents.
    """

    def __init__(self, model_dir: Path, templates: TemplateSet, *, method: str = "probe",
                 num_threads: int | None = 1) -> None:
        if method not in ("probe", "max_cosine"):
            raise ValueError(f"method must be 'probe' or 'max_cosine', not {method!r}")
        t0 = time.perf_counter()
        self.model_dir = Path(model_dir)
        self.templates = templates
        self.method = method
        self.meta = load_meta(self.model_dir)
        self.encoder = OnnxEncoder(self.model_dir, num_threads=num_threads)
        try:
            with np.load(self.model_dir / "examples.npz") as z:
                self.embeddings = z["embeddings"]
                self.labels = z["labels"]
                self.classes = [str(c) for c in z["classes"]]
                self.probe_w, self.probe_b = z["probe_w"], z["probe_b"]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelLoadError(f"{self.model_dir / 'examples.npz'} is missing or incomplete ({exc}); "
                                 "rebuild the intent model") from exc
        missing = set(templates.in_domain_intents) - set(self.classes)
        if missing:
            raise ModelLoadError(f"the intent model in {self.model_dir} lacks intents {sorted(missing)}; "
                                 "rebuild it from the current templates")
        self.intents = [c for c in self.classes if c != "none"]
        self.threshold = float(self.meta["ood_threshold"])
        self.width = float(self.meta["in_domain_width"])
        self.temperature = float(self.meta["temperature"])
        self.top_k = int(self.meta["scoring"]["top_k"])
        keep = np.isin(self.labels, self.intents)     # in-domain examples, grouped by intent for reduceat
        order = np.argsort(np.array([self.intents.index(lab) for lab in self.labels[keep]]), kind="stable")
        self._grouped = self.embeddings[keep][order]
        self._starts = np.searchsorted(np.array([self.intents.index(lab) for lab in self.labels[keep]])[order],
                                       np.arange(len(self.intents)))
        self.slot_filler = SlotFiller(templates)
        self.load_ms = (time.perf_counter() - t0) * 1000.0
        logger.info("intent model loaded from %s in %.0f ms (%s, %d examples, threshold %.3f)",
                    self.model_dir, self.load_ms, "int8" if self.meta["quantized"] else "fp32",
                    len(self.labels), self.threshold)

    def scores(self, text: str) -> tuple[dict[str, float], float, str]:
        """The model's view of ``text``, ignoring exact template matches.

        Returns
        -------
        probs
            Label (every intent and ``none``) → probability; they sum to 1.
        best_cosine
            Best cosine to an in-domain example, in [-1, 1].
        top
            The intent picked before the out-of-domain test (the probe's argmax may be ``none``).
        """
        v = self.encoder.encode([normalize(text)])
        if self.top_k == 1:   # per-intent max cosine, the default (~20x faster than the general path)
            cos = np.maximum.reduceat(v[0] @ self._grouped.T, self._starts)
        else:
            cos = intent_scores(v @ self.embeddings.T, self.labels, self.intents, self.top_k)[0]
        best = float(cos.max())
        if self.method == "probe":
            p = softmax(v @ self.probe_w + self.probe_b, 1.0)[0]
            probs = dict(zip(self.classes, p.tolist(), strict=True))
        else:
            probs = dict(zip(self.intents, softmax(cos, self.temperature).tolist(), strict=True))
            probs["none"] = 0.0
        top = max(probs, key=probs.get)
        p_in = 1.0 / (1.0 + float(np.exp(-(best - self.threshold) / self.width)))
        p_none = probs.pop("none")
        out = {k: p_in * p for k, p in probs.items()}
        out["none"] = (1.0 - p_in) + p_in * p_none
        return out, best, top

    def classify(self, text: str) -> IntentResult:
        """Intent, slots and confidence of one request (see the class notes for the rules)."""
        t0 = time.perf_counter()
        norm = normalize(text)
        if not norm:
            return _result("none", {}, 0.0, [], t0, norm, "empty")
        match = self.templates.match(norm)
        if match is not None:
            slots = dict(match.slots)
            extra = self.slot_filler.fill(norm, match.intent)
            if any(k.endswith("_2") for k in extra):   # a slot said twice ("seven times six")
                slots = extra
            return _result(match.intent, slots, 1.0, [(match.intent, 1.0)], t0, norm, "template")
        probs, best, top = self.scores(norm)
        intent = "none" if best < self.threshold else top
        slots = self.slot_filler.fill(norm, intent) if intent != "none" else {}
        ranked = sorted(probs.items(), key=lambda kv: kv[1], reverse=True)
        return _result(intent, slots, probs[intent], ranked, t0, norm, "model")


#: The baseline's rules, first match wins: a few keywords per intent (the floor every model figure
#: is compared with).
KEYWORD_RULES: tuple[tuple[str, str], ...] = (
    ("music.next", r"\b(next|skip)\b"),
    ("music.pause", r"\b(pause|stop)\b"),
    ("music.recommend", r"\b(recommend|suggest)\b"),
    ("schedule.alarm", r"\b(alarm|wake)\b"),
    ("schedule.remind", r"\b(remind|reminder)\b"),
    ("schedule.cancel", r"\b(cancel|delete|remove)\b"),
    ("schedule.add", r"\b(add|create)\b"),
    ("schedule.list", r"\b(calendar|schedule|appointments)\b"),
    ("weather.forecast", r"\b(weather|rain|snow|forecast|temperature|umbrella|sunny|cloudy)\b"),
    ("news.read", r"\b(news|headlines)\b"),
    ("music.play", r"\b(play|music|listen)\b"),
    ("qa.capital", r"\bcapital\b"),
    ("qa.math", r"\b(plus|minus|times)\b"),
    ("qa.time", r"\b(time|date)\b"),
    ("qa.height", r"\b(tall|height)\b"),
    ("qa.author", r"\b(wrote|author)\b"),
)


class KeywordIntentMatcher:
    """Baseline: keyword rules per intent (``KEYWORD_RULES``), no templates matching, no model.

    Same :meth:`classify` API as :class:`IntentClassifier`; confidence is 1.0 when a rule fires and
    0.0 when none does (the result is then ``none``). Slots come from the same :class:`SlotFiller`.
    """

    def __init__(self, templates: TemplateSet, rules: tuple[tuple[str, str], ...] = KEYWORD_RULES) -> None:
        self.templates = templates
        self.rules = [(intent, re.compile(rx)) for intent, rx in rules if intent in templates.intents]
        self.slot_filler = SlotFiller(templates)

    def classify(self, text: str) -> IntentResult:
        """Intent of the first rule whose keywords occur in ``text``, else ``none``."""
        t0 = time.perf_counter()
        norm = normalize(text)
        if not norm:
            return _result("none", {}, 0.0, [], t0, norm, "empty")
        for intent, rx in self.rules:
            if rx.search(norm):
                return _result(intent, self.slot_filler.fill(norm, intent), 1.0, [(intent, 1.0)], t0, norm,
                               "keywords")
        return _result("none", {}, 0.0, [("none", 0.0)], t0, norm, "keywords")
