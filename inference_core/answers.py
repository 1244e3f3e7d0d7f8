"""Answers of the voice loop: offline providers (weather, news, facts, music, schedule) behind
small Protocols a real deployment can replace, number and time words, and the :class:`Answerer`
that turns an :class:`inference_core.qa.IntentResult` into the sentence the speaker says.

Split from :mod:`inference_core.qa`, which classifies; this module answers.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from inference_core.errors import InferenceError, ModelLoadError
from inference_core.qa import IntentResult, normalize

logger = logging.getLogger(__name__)


# -- providers -------------------------------------------------------------------------------------
class ProviderError(InferenceError):
    """A provider has no data for a request (unknown city, topic, country …)."""


def _load_json(name: str, path: Path | None) -> dict:
    """A provider file: ``path`` if given, else ``resources/providers/<name>``.

    Raises
    ------
    ModelLoadError
        If the file is missing or not JSON.
    """
    try:
        if path is None:
            return json.loads(resources.files("resources").joinpath("providers", name).read_text("utf-8"))
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"provider file {path or 'resources/providers/' + name} cannot be read: {exc}") from exc


class WeatherProvider(Protocol):
    def forecast(self, city: str, day: int) -> dict:
        """Forecast of ``city`` ``day`` days from today: ``name``, ``condition``, ``low_c``,
        ``high_c`` (°C), ``precipitation_pct``. Raises ProviderError when unknown."""


class NewsProvider(Protocol):
    def headlines(self, topic: str | None, n: int = 3) -> list[str]:
        """Up to ``n`` headlines of ``topic`` (None: general). Raises ProviderError when unknown."""


class FactProvider(Protocol):
    def capital(self, country: str) -> dict:
        """``{"country": display name, "capital": str}``; ProviderError when unknown."""

    def height(self, landmark: str) -> dict:
        """``{"name": display name, "height_m": float}`` (metres); ProviderError when unknown."""

    def author(self, book: str) -> dict:
        """``{"title": str, "author": str}``; ProviderError when unknown."""


class MusicCatalogue(Protocol):
    def tracks(self, genre: str | None) -> list[dict]:
        """Tracks (``title``, ``artist``, ``genre``) of ``genre`` (None: all)."""


class _JsonProvider:
    _file = ""

    def __init__(self, path: Path | None = None) -> None:
        self.data = _load_json(self._file, path)

    def _get(self, section: str, key: str, what: str) -> Any:
        try:
            return self.data[section][key.lower()]
        except KeyError:
            raise ProviderError(f"no {what} for {key!r}") from None


class JsonWeatherProvider(_JsonProvider):
    """Offline forecasts from ``resources/providers/weather.json`` (synthetic; day offsets 0–7)."""

    _file = "weather.json"

    def forecast(self, city: str, day: int) -> dict:
        entry = self._get("cities", city, "forecast")
        days = {d["day_offset"]: d for d in entry["days"]}
        if day not in days:
            raise ProviderError(f"no forecast for {entry['name']} {day} days ahead (0–{max(days)} known)")
        return {"name": entry["name"], **days[day]}


class JsonNewsProvider(_JsonProvider):
    """Offline headlines from ``resources/providers/news.json`` (synthetic)."""

    _file = "news.json"

    def headlines(self, topic: str | None, n: int = 3) -> list[str]:
        return list(self._get("topics", topic or "general", "news"))[:n]


class JsonFactProvider(_JsonProvider):
    """Capitals, landmark heights (metres) and book authors from ``resources/providers/facts.json``."""

    _file = "facts.json"

    def capital(self, country: str) -> dict:
        name = self.data.get("country_names", {}).get(country.lower(), country.title())
        return {"country": name, "capital": self._get("capitals", country, "capital")}

    def height(self, landmark: str) -> dict:
        return dict(self._get("heights_m", landmark, "height"))

    def author(self, book: str) -> dict:
        return dict(self._get("authors", book, "author"))


class JsonMusicCatalogue(_JsonProvider):
    """A small catalogue from ``resources/providers/music.json`` (titles and artists, no audio)."""

    _file = "music.json"

    def tracks(self, genre: str | None) -> list[dict]:
        genres = [genre.lower()] if genre else list(self.data["genres"])
        return [{**t, "genre": g} for g in genres for t in self.data["genres"].get(g, [])]


@dataclass(frozen=True)
class ScheduleEntry:
    """An event, reminder or alarm. ``day`` is a local date; ``at`` a local time or None."""

    kind: str          # "event" | "reminder" | "alarm"
    title: str
    day: date
    at: dt_time | None = None


class ScheduleStore(Protocol):
    def add(self, entry: ScheduleEntry) -> ScheduleEntry: ...

    def list(self, day: date) -> list[ScheduleEntry]:
        """Entries of ``day``, by time (untimed first)."""

    def cancel(self, kind: str, title: str | None = None, day: date | None = None) -> list[ScheduleEntry]:
        """Remove the entries of ``kind`` matching ``title`` and ``day`` (None: any); return them."""


class InMemoryScheduleStore:
    """A :class:`ScheduleStore` in a list (a database-backed one implements the same Protocol)."""

    def __init__(self) -> None:
        self.entries: list[ScheduleEntry] = []

    def add(self, entry: ScheduleEntry) -> ScheduleEntry:
        self.entries.append(entry)
        return entry

    def list(self, day: date) -> list[ScheduleEntry]:
        return sorted((e for e in self.entries if e.day == day), key=lambda e: (e.at is not None, e.at or dt_time()))

    def cancel(self, kind: str, title: str | None = None, day: date | None = None) -> list[ScheduleEntry]:
        gone = [e for e in self.entries if e.kind == kind and title in (None, e.title) and day in (None, e.day)]
        self.entries = [e for e in self.entries if e not in gone]
        return gone


# -- number and time words -------------------------------------------------------------------------
_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                     "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_OPERATORS = {"plus": "+", "add": "+", "minus": "-", "subtract": "-", "less": "-", "times": "*",
              "multiplied": "*", "divided": "/", "over": "/"}


def parse_number(words: list[str]) -> int | None:
    """``["forty", "two"]`` → 42, ``["a", "hundred"]`` → 100, ``["7"]`` → 7; None if not a number."""
    total = current = 0
    seen = False
    for w in words:
        if w.isdigit():
            current += int(w)
        elif w in _UNITS:
            current += _UNITS[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w in _SCALES:
            current = max(current, 1) * _SCALES[w]
            if _SCALES[w] > 100:
                total, current = total + current, 0
        elif w in ("a", "and") and seen:
            continue
        elif w == "a":
            continue
        else:
            return None
        seen = True
    return total + current if seen else None


def _number_runs(words: list[str]) -> list[tuple[int, int, int]]:
    """(start, end, value) of each maximal run of number words."""
    runs, i = [], 0
    ok = set(_UNITS) | set(_TENS) | set(_SCALES)
    while i < len(words):
        j = i
        while j < len(words) and (words[j] in ok or words[j].isdigit() or (words[j] == "a" and j + 1 < len(words)
                                                                            and words[j + 1] in _SCALES)):
            j += 1
        if j > i and (value := parse_number(words[i:j])) is not None:
            runs.append((i, j, value))
        i = max(j, i + 1)
    return runs


def parse_math(text: str) -> tuple[int, str, int, float] | None:
    """``"what is seven times six"`` → (7, "*", 6, 42.0); ``"add five and seven"`` → (5, "+", 7, 12.0).

    Returns None without two numbers and an operator word; division by zero gives ``nan``.
    """
    words = normalize(text).split()
    runs = _number_runs(words)
    if len(runs) < 2:
        return None
    (_, end_a, a), (start_b, _, b) = runs[0], runs[1]
    between = words[end_a:start_b] + words[:end_a]
    op = next((_OPERATORS[w] for w in between if w in _OPERATORS), None)
    if op is None:
        return None
    result = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else float("nan")}[op]
    return a, op, b, float(result)


def parse_time(text: str) -> dt_time | None:
    """Clock time in words: "seven thirty in the evening" → 19:30, "noon" → 12:00, "twelve at night"
    → 00:00, "six forty five" → 06:45, "7:30" → 07:30; None when there is no time."""
    s = normalize(text.replace(":", " "))
    if re.search(r"\bnoon\b", s):
        return dt_time(12, 0)
    if re.search(r"\bmidnight\b", s):
        return dt_time(0, 0)
    words = s.split()
    for i, w in enumerate(words):
        hour = int(w) if w.isdigit() else _UNITS.get(w)
        if hour is None or not 1 <= hour <= 12:
            continue
        rest = words[i + 1:]
        minute = 0
        if rest and rest[0] == "o'clock":
            rest = rest[1:]
        elif rest and rest[0] in _TENS and _TENS[rest[0]] < 60:           # "forty five"
            minute, rest = _TENS[rest[0]], rest[1:]
            if rest and 1 <= _UNITS.get(rest[0], 0) <= 9:
                minute, rest = minute + _UNITS[rest[0]], rest[1:]
        elif rest and ((rest[0].isdigit() and int(rest[0]) < 60) or 10 <= _UNITS.get(rest[0], 0)):  # "fifteen"
            minute, rest = int(rest[0]) if rest[0].isdigit() else _UNITS[rest[0]], rest[1:]
        tail = " ".join(rest[:4])
        pm = re.match(r"(in the (afternoon|evening)|at night|pm|p m)\b", tail)
        am = re.match(r"(in the morning|am|a m)\b", tail)
        if pm:
            hour = 0 if hour == 12 and "night" in pm.group() else hour % 12 + 12
        elif am and hour == 12:
            hour = 0
        return dt_time(hour % 24, minute)
    return None


# -- answers ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """What the speaker says (``text``) and the facts behind it (``data``; ``data["defaults"]``
    names each slot that was missing and the default used)."""

    text: str
    data: dict


_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_DAY_OFFSETS = {"today": 0, "tonight": 0, "this morning": 0, "this afternoon": 0, "this evening": 0,
                "tomorrow": 1, "next week": 7}
#: Defaults for missing slots: the service's home city and the day a request means when it names none.
DEFAULT_CITY, DEFAULT_DAY = "Seoul", "today"


def _clock_text(t: dt_time) -> str:
    """09:30 → "9:30 AM" (how the speaker reads a time)."""
    return f"{t.hour % 12 or 12}:{t.minute:02d} {'AM' if t.hour < 12 else 'PM'}"


def _with_article(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


class Answerer:
    """Turn an :class:`IntentResult` into the sentence the speaker says.

    Parameters
    ----------
    weather, news, facts, schedule
        Providers; None gives the offline ones (``Json*`` on ``resources/providers/`` and an
        :class:`InMemoryScheduleStore`).
    clock
        ``clock() -> datetime``, aware (UTC in the house style); None: the system clock.
    music
        Catalogue for the music intents (None: ``resources/providers/music.json``).
    tz
        IANA zone the speaker lives in: days and times are said in it (default UTC; the unit's
        zone comes from the inventory).

    Raises
    ------
    ModelLoadError
        If a bundled provider file is missing.
    """

    def __init__(self, weather: WeatherProvider | None = None, news: NewsProvider | None = None,
                 facts: FactProvider | None = None, schedule: ScheduleStore | None = None,
                 clock: Callable[[], datetime] | None = None, *, music: MusicCatalogue | None = None,
                 tz: str = "UTC") -> None:
        self.weather = weather if weather is not None else JsonWeatherProvider()
        self.news = news if news is not None else JsonNewsProvider()
        self.facts = facts if facts is not None else JsonFactProvider()
        self.schedule = schedule if schedule is not None else InMemoryScheduleStore()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.music = music if music is not None else JsonMusicCatalogue()
        self.tz = ZoneInfo(tz)
        self.now_playing: dict | None = None

    def answer(self, result: IntentResult) -> Answer:
        """The spoken answer; never raises for a known or unknown intent (providers' gaps are said)."""
        handler = getattr(self, "_" + result.intent.replace(".", "_"), None)
        if result.intent == "none" or handler is None:
            return Answer("Sorry, I can't help with that yet.", {"intent": result.intent})
        defaults: dict[str, str] = {}
        try:
            text, data = handler(result, defaults)
        except ProviderError as exc:
            text, data = f"Sorry, I don't have that information: {exc}.", {"error": str(exc)}
        return Answer(text, {"intent": result.intent, **data, "defaults": defaults})

    # -- helpers -------------------------------------------------------------------------------------
    def _now(self) -> datetime:
        return self.clock().astimezone(self.tz)

    def _slot(self, result: IntentResult, name: str, default: str | None, defaults: dict[str, str]) -> str | None:
        if name in result.slots:
            return result.slots[name]
        if default is not None:
            defaults[name] = default
        return default

    def _day(self, word: str) -> tuple[int, date]:
        """Day words → (offset from today, local date); weekdays are the next such day (today included)."""
        today = self._now().date()
        if word in _WEEKDAYS:
            offset = (_WEEKDAYS.index(word) - today.weekday()) % 7
        elif word == "this weekend":
            offset = (5 - today.weekday()) % 7 if today.weekday() != 6 else 0
        else:
            offset = _DAY_OFFSETS.get(word, 0)
        return offset, today + timedelta(days=offset)

    @staticmethod
    def _day_text(offset: int, day: date, word: str = "") -> str:
        if offset == 0 and word.startswith(("tonight", "this ")):
            return word
        return {0: "today", 1: "tomorrow"}.get(offset, f"on {day.strftime('%A')}, {day.strftime('%B')} {day.day}")

    # -- weather and news ----------------------------------------------------------------------------
    def _weather_forecast(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        city = self._slot(r, "city", DEFAULT_CITY, defaults)
        word = self._slot(r, "day", DEFAULT_DAY, defaults)
        offset, day = self._day(word)
        f = self.weather.forecast(city, offset)
        when = word.capitalize() if word in _DAY_OFFSETS or word == "this weekend" else f"On {word.capitalize()}"
        text = f"{when} in {f['name']}: {f['condition']}, {f['low_c']} to {f['high_c']} degrees."
        asked = next((k for k in ("rain", "umbrella", "snow", "sunny", "cloudy") if k in r.text.split()), None)
        if asked:
            wants = {"rain": ("rain", "shower", "thunder"), "umbrella": ("rain", "shower", "thunder"),
                     "snow": ("snow",), "sunny": ("sunny", "clear"), "cloudy": ("cloud", "overcast", "fog")}[asked]
            text = ("Yes. " if any(w in f["condition"] for w in wants) else "No. ") + text
        return text, {"city": f["name"], "day": word, "date": day.isoformat(), "forecast": f}

    def _news_read(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        topic = r.slots.get("news_topic")
        items = self.news.headlines(topic, 3)
        text = f"Here are the latest {topic + ' ' if topic else ''}headlines: " + " ".join(
            h.rstrip(".") + "." for h in items)
        return text, {"topic": topic or "general", "headlines": items}

    # -- schedule ------------------------------------------------------------------------------------
    def _when(self, r: IntentResult, defaults: dict) -> tuple[date, dt_time | None, str]:
        word = self._slot(r, "day", DEFAULT_DAY, defaults)
        offset, day = self._day(word)
        at = parse_time(r.slots["time"]) if "time" in r.slots else None
        return day, at, self._day_text(offset, day, word) + (f" at {_clock_text(at)}" if at else "")

    def _schedule_add(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        title = self._slot(r, "event", "event", defaults)
        day, at, when = self._when(r, defaults)
        self.schedule.add(ScheduleEntry("event", title, day, at))
        return f"Added {_with_article(title)} to your calendar {when}.", {
            "event": title, "date": day.isoformat(), "time": at.isoformat("minutes") if at else None}

    def _schedule_remind(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        task = self._slot(r, "task", None, defaults)
        if task is None:
            defaults["task"] = "(not heard)"
        day, at, when = self._when(r, defaults)
        self.schedule.add(ScheduleEntry("reminder", task or "reminder", day, at))
        what = " to " + re.sub(r"\bmy\b", "your", task) if task else ""
        return f"OK, I'll remind you{what} {when}.", {
            "task": task, "date": day.isoformat(), "time": at.isoformat("minutes") if at else None}

    def _schedule_alarm(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        at = parse_time(r.slots["time"]) if "time" in r.slots else None
        if at is None:
            at = dt_time(7, 0)
            defaults["time"] = "7:00 AM"
        if "day" in r.slots:
            offset, day = self._day(r.slots["day"])
        else:   # the next time the clock shows ``at``
            now = self._now()
            offset = 0 if (now.hour, now.minute) < (at.hour, at.minute) else 1
            day = now.date() + timedelta(days=offset)
        self.schedule.add(ScheduleEntry("alarm", "alarm", day, at))
        return f"Alarm set for {_clock_text(at)} {self._day_text(offset, day)}.", {
            "date": day.isoformat(), "time": at.isoformat("minutes")}

    def _schedule_list(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        word = self._slot(r, "day", DEFAULT_DAY, defaults)
        offset, day = self._day(word)
        entries = self.schedule.list(day)
        when = self._day_text(offset, day, word)
        if not entries:
            return f"You have nothing on your calendar {when}.", {"date": day.isoformat(), "entries": []}
        items = [(f"{_with_article(e.title)}" if e.kind == "event" else f"a reminder to {e.title}" if e.kind ==
                  "reminder" else "an alarm") + (f" at {_clock_text(e.at)}" if e.at else "") for e in entries]
        listing = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
        n = len(items)
        return f"{when[0].upper() + when[1:]} you have {n} thing{'s' if n > 1 else ''}: {listing}.", {
            "date": day.isoformat(), "entries": [{"kind": e.kind, "title": e.title, "date": e.day.isoformat(),
                                                  "time": e.at.isoformat("minutes") if e.at else None}
                                                 for e in entries]}

    def _schedule_cancel(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        day = self._day(r.slots["day"])[1] if "day" in r.slots else None
        kind, titles = "event", [v for k, v in r.slots.items() if k.split("_")[0] == "event"] or [None]
        if "alarm" in r.text.split():
            kind, titles = "alarm", [None]
        for title in titles:   # "call off the meeting": the first event value that is on the calendar
            if gone := self.schedule.cancel(kind, title, day):
                break
        title = title if gone else titles[0]
        what = "alarm" if kind == "alarm" else (title or "event")
        text = (f"Cancelled your {what}." if len(gone) == 1 else f"Cancelled {len(gone)} {what}s." if gone
                else f"I couldn't find your {what} on your calendar.")
        return text, {"kind": kind, "title": title, "cancelled": len(gone)}

    # -- music ---------------------------------------------------------------------------------------
    def _music_play(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        genre = r.slots.get("genre")
        tracks = self.music.tracks(genre)
        self.now_playing = tracks[0] if tracks else None
        said = f"{genre} music" if genre in ("relaxing", "dance", "piano", "country", "classical") else genre
        return f"Playing some {said or 'music'}.", {"genre": genre, "track": self.now_playing}

    def _music_recommend(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        genre = r.slots.get("genre")
        tracks = self.music.tracks(genre)
        if not tracks:
            return f"Sorry, I have no {genre} to recommend yet.", {"genre": genre, "track": None}
        pick = tracks[self._now().toordinal() % len(tracks)]   # changes daily, stable within a day
        return f"You might like {pick['title']} by {pick['artist']}.", {"genre": genre, "track": pick}

    def _music_pause(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        was, self.now_playing = self.now_playing, None
        return "Music paused.", {"paused": was}

    def _music_next(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        tracks = self.music.tracks(self.now_playing["genre"] if self.now_playing else None)
        i = tracks.index(self.now_playing) + 1 if self.now_playing in tracks else 0
        self.now_playing = tracks[i % len(tracks)] if tracks else None
        if self.now_playing is None:
            return "Skipping to the next song.", {"track": None}
        return (f"Next up: {self.now_playing['title']} by {self.now_playing['artist']}.",
                {"track": self.now_playing})

    # -- questions -----------------------------------------------------------------------------------
    def _qa_time(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        now = self._now()
        data = {"local_time": now.isoformat(timespec="minutes"), "tz": str(self.tz)}
        if {"date", "day"} & set(r.text.split()):
            return f"Today is {now.strftime('%A')}, {now.strftime('%B')} {now.day}.", data
        return f"It's {_clock_text(now.time())}.", data

    def _qa_math(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        parsed = parse_math(r.text)
        if parsed is None:
            return "Sorry, I didn't catch the numbers.", {"expression": None}
        a, op, b, value = parsed
        if value != value:   # nan
            return "I can't divide by zero.", {"expression": f"{a} {op} {b}", "result": None}
        shown = str(int(value)) if value.is_integer() else f"{value:.3g}"
        spoken = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}[op]
        return f"{a} {spoken} {b} is {shown}.", {"expression": f"{a} {op} {b}", "result": value}

    def _qa_capital(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        if "country" not in r.slots:
            return "Which country's capital would you like to know?", {"country": None}
        fact = self.facts.capital(r.slots["country"])
        return f"The capital of {fact['country']} is {fact['capital']}.", fact

    def _qa_height(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        if "landmark" not in r.slots:
            return "Which landmark do you mean?", {"landmark": None}
        fact = self.facts.height(r.slots["landmark"])
        name = fact["name"][0].upper() + fact["name"][1:]
        return f"{name} is {fact['height_m']:g} metres tall.", fact

    def _qa_author(self, r: IntentResult, defaults: dict) -> tuple[str, dict]:
        if "book" not in r.slots:
            return "Which book do you mean?", {"book": None}
        fact = self.facts.author(r.slots["book"])
        return f"{fact['title']} was written by {fact['author']}.", fact
