"""Sentence templates: the one source of the service's language, as in Rhasspy and Home
Assistant's Speech-to-Phrase.

The same templates compile into the recognizer's JSGF grammar and n-gram language model
(``inference_core.stt``) and give the intent model its examples and its slot filler
(``inference_core.qa``).

File format (``resources/templates/en-us.ini``; documented in ``docs/templates.md``)::

    # comment
    [weather.forecast]                 an intent section: <feature>.<action>
    what is the weather [like] [in {city}] [{day}]
    will it (rain | snow) [in {city}] [{day}]

    [none]                             out-of-domain examples (intent model only, not the grammar)
    tell me a joke about cats

    {city}                             a slot list: one value per line
    seoul
    new york = New York                spoken words = value (default: the words)
    (one | two) o'clock                a line may itself be a template (value = the words)

Template syntax: words (lower case, letters and apostrophes), ``(a | b)`` alternatives,
``[a]`` optional, ``{slot}`` a slot list, ``|`` at the top level of a line for alternatives.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from inference_core.errors import TemplateError

logger = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z][a-z']*|[0-9]+")
_TOKEN = re.compile(r"\s*(\(|\)|\[|\]|\||\{[a-z_][a-z0-9_]*\}|[a-z][a-z']*|[0-9]+)")
_INTENT_HEADER = re.compile(r"^\[(none|[a-z_]+\.[a-z_]+)\]$")
_SLOT_HEADER = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")


# -- syntax tree ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Word:
    text: str


@dataclass(frozen=True)
class Slot:
    name: str


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Opt:
    inner: Node


Node = Word | Slot | Seq | Alt | Opt


def parse_template(text: str) -> Node:
    """Parse one template line into a syntax tree.

    Raises
    ------
    TemplateError
        On an unknown character, an unbalanced bracket or an empty alternative.
    """
    tokens: list[str] = []
    pos = 0
    text = text.strip().lower()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise TemplateError(f"unexpected {text[pos:].strip()[:10]!r} in {text!r}: use words, ( | ), [ ], {{slot}}")
        tokens.append(m.group(1))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    node, rest = _parse_alt(tokens, 0, text)
    if rest != len(tokens):
        raise TemplateError(f"unbalanced {tokens[rest]!r} in {text!r}")
    return node


def _parse_alt(tokens: list[str], i: int, text: str) -> tuple[Node, int]:
    options = []
    seq, i = _parse_seq(tokens, i, text)
    options.append(seq)
    while i < len(tokens) and tokens[i] == "|":
        seq, i = _parse_seq(tokens, i + 1, text)
        options.append(seq)
    if any(isinstance(o, Seq) and not o.items for o in options) and len(options) > 1:
        raise TemplateError(f"empty alternative in {text!r}: use [a] for an optional part")
    return (options[0] if len(options) == 1 else Alt(tuple(options))), i


def _parse_seq(tokens: list[str], i: int, text: str) -> tuple[Node, int]:
    items: list[Node] = []
    while i < len(tokens) and tokens[i] not in ("|", ")", "]"):
        tok = tokens[i]
        if tok in ("(", "["):
            inner, i = _parse_alt(tokens, i + 1, text)
            close = ")" if tok == "(" else "]"
            if i >= len(tokens) or tokens[i] != close:
                raise TemplateError(f"missing {close!r} in {text!r}")
            items.append(inner if tok == "(" else Opt(inner))
            i += 1
        elif tok.startswith("{"):
            items.append(Slot(tok[1:-1]))
            i += 1
        else:
            items.append(Word(tok))
            i += 1
    return (items[0] if len(items) == 1 else Seq(tuple(items))), i


# -- slot lists and templates ---------------------------------------------------------------------
@dataclass(frozen=True)
class SlotValue:
    """One value of a slot list: its spoken template and canonical value."""

    spoken: Node
    value: str | None  # None: the words as spoken


@dataclass
class SlotList:
    name: str
    values: list[SlotValue] = field(default_factory=list)


@dataclass(frozen=True)
class Template:
    intent: str
    text: str
    node: Node
    line: int

    @property
    def feature(self) -> str:
        return self.intent.split(".")[0]


@dataclass(frozen=True)
class Example:
    """One sentence a template produces: its words, intent and slot values."""

    text: str
    intent: str
    slots: dict[str, str]

    @property
    def feature(self) -> str:
        return self.intent.split(".")[0]


@dataclass
class TemplateSet:
    """All intents and slot lists of a template file."""

    intents: dict[str, list[Template]] = field(default_factory=dict)
    slots: dict[str, SlotList] = field(default_factory=dict)
    source: str = "<string>"

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path | str) -> TemplateSet:
        """Read a template file.

        Raises
        ------
        TemplateError
            If a line cannot be parsed or a slot is used but never defined; the message names
            the file and line.
        """
        path = Path(path)
        return cls.loads(path.read_text(encoding="utf-8"), source=str(path))

    @classmethod
    def loads(cls, text: str, source: str = "<string>") -> TemplateSet:
        ts = cls(source=source)
        section: tuple[str, str] | None = None
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if m := _INTENT_HEADER.match(line):
                section = ("intent", m.group(1))
                ts.intents.setdefault(m.group(1), [])
                continue
            if m := _SLOT_HEADER.match(line):
                section = ("slot", m.group(1))
                ts.slots.setdefault(m.group(1), SlotList(m.group(1)))
                continue
            if section is None:
                raise TemplateError(f"{source}:{lineno}: {line!r} is outside any [intent] or {{slot}} section")
            try:
                if section[0] == "intent":
                    ts.intents[section[1]].append(Template(section[1], line, parse_template(line), lineno))
                else:
                    spoken, _, value = line.partition("=")
                    ts.slots[section[1]].values.append(
                        SlotValue(parse_template(spoken), value.strip() or None))
            except TemplateError as exc:
                raise TemplateError(f"{source}:{lineno}: {exc}") from None
        for intent, templates in ts.intents.items():
            for t in templates:
                for name in _slot_names(t.node):
                    if name not in ts.slots:
                        raise TemplateError(f"{source}:{t.line}: slot {{{name}}} of {intent} is not defined; "
                                            f"add a {{{name}}} section with its values")
        return ts

    # -- views ------------------------------------------------------------------------------------
    @property
    def in_domain_intents(self) -> list[str]:
        """Intents the grammar covers (every intent but ``none``)."""
        return [i for i in self.intents if i != "none"]

    def vocabulary(self, include_none: bool = False) -> set[str]:
        """Every word the templates and slot lists can produce."""
        words: set[str] = set()
        for intent, templates in self.intents.items():
            if intent == "none" and not include_none:
                continue
            for t in templates:
                words |= _words(t.node)
        for sl in self.slots.values():
            for v in sl.values:
                words |= _words(v.spoken)
        return words

    def count(self, intent: str) -> int:
        """How many distinct derivations the intent's templates have (a measure of coverage)."""
        return sum(_count(t.node, self) for t in self.intents[intent])

    def examples(self, intent: str, limit: int = 200, seed: int = 0) -> list[Example]:
        """Sentences of ``intent``: all of them if there are at most ``limit``, else ``limit``
        drawn uniformly at random (seeded), without duplicates."""
        rng = random.Random(f"{seed}:{intent}")
        templates = self.intents[intent]
        counts = [_count(t.node, self) for t in templates]
        out: dict[str, Example] = {}
        if sum(counts) <= limit:
            for t in templates:
                for words, slots in _enumerate(t.node, self):
                    text = " ".join(words)
                    out.setdefault(text, Example(text, intent, slots))
            return list(out.values())
        tries = 0
        while len(out) < limit and tries < limit * 20:
            tries += 1
            t = rng.choices(templates, weights=counts)[0]
            words, slots = _sample(t.node, self, rng)
            text = " ".join(words)
            out.setdefault(text, Example(text, intent, slots))
        return list(out.values())

    def sentences(self, limit_per_intent: int = 200, seed: int = 0, include_none: bool = False) -> list[Example]:
        """Examples of every intent (see :meth:`examples`)."""
        return [ex for intent in self.intents if include_none or intent != "none"
                for ex in self.examples(intent, limit_per_intent, seed)]

    def to_jsgf(self, grammar_name: str = "speakerops") -> str:
        """The in-domain templates as a JSGF grammar whose public rule is ``<command>``."""
        lines = ["#JSGF V1.0;", f"grammar {grammar_name};", ""]
        rules = []
        for intent in self.in_domain_intents:
            rule = "intent_" + intent.replace(".", "_")
            rules.append(f"<{rule}>")
            body = " | ".join(_jsgf(t.node) for t in self.intents[intent])
            lines.append(f"<{rule}> = {body};")
        for name, sl in self.slots.items():
            lines.append(f"<slot_{name}> = {' | '.join(_jsgf(v.spoken) for v in sl.values)};")
        lines.append(f"public <command> = {' | '.join(rules)};")
        return "\n".join(lines) + "\n"

    def match(self, text: str) -> Example | None:
        """The intent and slots of ``text`` if a template produces it exactly, else None."""
        norm = " ".join(_WORD.findall(text.lower()))
        for intent in self.intents:
            for t in self.intents[intent]:
                m = self._regex(t).fullmatch(norm + " ")
                if m:
                    return Example(norm, intent, self._slot_values(m))
        return None

    # -- regex compilation (slot filling) ------------------------------------------------------
    def _regex(self, t: Template) -> re.Pattern[str]:
        cache = self.__dict__.setdefault("_regex_cache", {})
        if t not in cache:
            counter: dict[str, int] = {}
            pattern = _regex(t.node, self, counter)
            cache[t] = re.compile(pattern)
        return cache[t]

    def _slot_values(self, m: re.Match[str]) -> dict[str, str]:
        slots = {}
        for group, spoken in m.groupdict().items():
            if spoken is None:
                continue
            name = group.rsplit("__", 1)[0]
            slots[name] = self.canonical(name, spoken.strip())
        return slots

    def canonical(self, slot: str, spoken: str) -> str:
        """The canonical value of ``spoken`` in slot list ``slot`` (the words if it has none)."""
        for v in self.slots[slot].values:
            if v.value is not None and " ".join(_first_words(v.spoken)) == spoken:
                return v.value
        return spoken


# -- tree operations ------------------------------------------------------------------------------
def _slot_names(node: Node) -> Iterator[str]:
    if isinstance(node, Slot):
        yield node.name
    elif isinstance(node, Seq):
        for item in node.items:
            yield from _slot_names(item)
    elif isinstance(node, Alt):
        for opt in node.options:
            yield from _slot_names(opt)
    elif isinstance(node, Opt):
        yield from _slot_names(node.inner)


def _words(node: Node) -> set[str]:
    if isinstance(node, Word):
        return {node.text}
    if isinstance(node, Seq):
        return set().union(*(_words(i) for i in node.items)) if node.items else set()
    if isinstance(node, Alt):
        return set().union(*(_words(o) for o in node.options))
    if isinstance(node, Opt):
        return _words(node.inner)
    return set()


def _first_words(node: Node) -> list[str]:
    """The words of the first derivation (for fixed slot values: the phrase itself)."""
    if isinstance(node, Word):
        return [node.text]
    if isinstance(node, Seq):
        return [w for i in node.items for w in _first_words(i)]
    if isinstance(node, Alt):
        return _first_words(node.options[0])
    if isinstance(node, Opt):
        return _first_words(node.inner)
    return []


def _count(node: Node, ts: TemplateSet) -> int:
    if isinstance(node, Word):
        return 1
    if isinstance(node, Slot):
        return sum(_count(v.spoken, ts) for v in ts.slots[node.name].values)
    if isinstance(node, Seq):
        n = 1
        for item in node.items:
            n *= _count(item, ts)
        return n
    if isinstance(node, Alt):
        return sum(_count(o, ts) for o in node.options)
    return 1 + _count(node.inner, ts)


def _enumerate(node: Node, ts: TemplateSet) -> Iterator[tuple[list[str], dict[str, str]]]:
    if isinstance(node, Word):
        yield [node.text], {}
    elif isinstance(node, Slot):
        for v in ts.slots[node.name].values:
            for words, _ in _enumerate(v.spoken, ts):
                yield words, {node.name: v.value or " ".join(words)}
    elif isinstance(node, Seq):
        def rec(i: int) -> Iterator[tuple[list[str], dict[str, str]]]:
            if i == len(node.items):
                yield [], {}
                return
            for w1, s1 in _enumerate(node.items[i], ts):
                for w2, s2 in rec(i + 1):
                    yield w1 + w2, {**s1, **s2}
        yield from rec(0)
    elif isinstance(node, Alt):
        for o in node.options:
            yield from _enumerate(o, ts)
    else:
        yield [], {}
        yield from _enumerate(node.inner, ts)


def _sample(node: Node, ts: TemplateSet, rng: random.Random) -> tuple[list[str], dict[str, str]]:
    """One derivation, uniformly over all derivations (choices weighted by their counts)."""
    if isinstance(node, Word):
        return [node.text], {}
    if isinstance(node, Slot):
        values = ts.slots[node.name].values
        v = rng.choices(values, weights=[_count(x.spoken, ts) for x in values])[0]
        words, _ = _sample(v.spoken, ts, rng)
        return words, {node.name: v.value or " ".join(words)}
    if isinstance(node, Seq):
        words: list[str] = []
        slots: dict[str, str] = {}
        for item in node.items:
            w, s = _sample(item, ts, rng)
            words += w
            slots.update(s)
        return words, slots
    if isinstance(node, Alt):
        o = rng.choices(node.options, weights=[_count(x, ts) for x in node.options])[0]
        return _sample(o, ts, rng)
    inner = _count(node.inner, ts)
    if rng.random() < 1 / (1 + inner):
        return [], {}
    return _sample(node.inner, ts, rng)


def _jsgf(node: Node) -> str:
    if isinstance(node, Word):
        return node.text
    if isinstance(node, Slot):
        return f"<slot_{node.name}>"
    if isinstance(node, Seq):
        return " ".join(_jsgf(i) for i in node.items)
    if isinstance(node, Alt):
        return "( " + " | ".join(_jsgf(o) for o in node.options) + " )"
    return "[ " + _jsgf(node.inner) + " ]"


def _regex(node: Node, ts: TemplateSet, counter: dict[str, int]) -> str:
    """A regex over space-separated words; each word is followed by one space in the pattern
    (the matched text gets a trailing space added by :meth:`TemplateSet.match`)."""
    if isinstance(node, Word):
        return re.escape(node.text) + " "
    if isinstance(node, Slot):
        counter[node.name] = counter.get(node.name, 0) + 1
        inner = "|".join(_regex(v.spoken, ts, {}) for v in ts.slots[node.name].values)
        return f"(?P<{node.name}__{counter[node.name]}>(?:{inner}))"
    if isinstance(node, Seq):
        return "".join(_regex(i, ts, counter) for i in node.items)
    if isinstance(node, Alt):
        return "(?:" + "|".join(_regex(o, ts, counter) for o in node.options) + ")"
    return "(?:" + _regex(node.inner, ts, counter) + ")?"
