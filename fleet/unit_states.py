"""Unit states beyond the heartbeat: per-group offline thresholds and flapping detection.

Offline policies
----------------
A unit is offline once it has been silent for the collector's default threshold, 1.5 × the poll
interval (AWS IoT counts a device disconnected after 1.5 × its keep-alive; FIELD_NOTES). Some
groups are silent on purpose — lab units switched off at night — so a group may have its own
threshold (Mender users ask for exactly this: MEN-4798, per-group offline thresholds). A policy
names a ``site``, ``hardware_rev``, ``tag`` or ``unit`` (serial) and a threshold in seconds. For
a unit the most specific policy wins: unit > tag > site = hardware_rev (the same order as alert
rule scopes, :mod:`fleet.alerts`); between policies of equal rank covering it (two tags, or its
site and its hardware revision), the longest threshold wins, so no policy makes a unit offline
earlier than another one meant to tolerate. A policy changes the status of units as they go
silent: a unit already marked offline stays offline until it answers again.

The collector keeps the resolved threshold of every unit in :class:`OfflineThresholds`: one
query on the (small) ``offline_policies`` table per cycle, and the units' groups (site,
hardware revision, tags) re-read only when the policies change, a unit appears, or every
:data:`UNIT_GROUPS_REFRESH` — never a query per unit.

Flapping
--------
As Nagios detects flapping ("Detection and Handling of State Flapping", Nagios Core docs, and
``check_for_host_flapping`` in ``base/flapping.c``): the last :data:`HISTORY_LENGTH` (21)
observations of each unit — here, whether it answered each poll (``1``) or not (``0``) — give
up to 20 state changes. Each change is weighted from 0.75 (oldest) to 1.25 (newest), so recent
changes count more; the weighted count over 20 is the *percent state change*. A unit starts
flapping when it reaches :data:`FLAP_HIGH_PCT` (50 %) and stops when it falls to
:data:`FLAP_LOW_PCT` (25 %); in between it keeps its flag (hysteresis). Nagios fills a new
history with the current state; a history shorter than 21 is padded with its oldest entry, the
same thing. A flapping unit keeps its status (online/offline as the threshold says); it gets
the ``flapping`` flag instead, the built-in "unit offline" alert is held back for it and a
"unit flapping" alert opens (:mod:`fleet.alerts`).

50 % / 25 % are the thresholds this project asked for and the values the Nagios-family
configuration docs give as examples (Nagios' sample ``nagios.cfg`` ships lower ones, 20 % / 5 %):
a unit missing every other poll (≈ 100 %) or every other pair of polls (≈ 51 %) flaps, one
dropped poll in 21 (≤ 12.4 %) does not.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Text, cast, false, func, or_, select
from sqlalchemy.orm import Session

from fleet.errors import FleetError
from fleet.models import OFFLINE_POLICY_SCOPES, OfflinePolicy, Unit
from speakerops import audit

logger = logging.getLogger(__name__)

#: Observations kept per unit (Nagios ``MAX_STATE_HISTORY_ENTRIES``).
HISTORY_LENGTH = 21
#: Percent state change at or above which a unit starts flapping (the project's requirement).
FLAP_HIGH_PCT = 50.0
#: Percent state change at or below which a flapping unit stops flapping.
FLAP_LOW_PCT = 25.0
#: Weight of the oldest and of the newest state change (Nagios ``low_curve_value`` /
#: ``high_curve_value``, ``base/flapping.c``).
OLDEST_WEIGHT, NEWEST_WEIGHT = 0.75, 1.25
#: Longest offline threshold a policy may set: the 1-minute rollups' retention (30 days,
#: :mod:`fleet.rollups`); a unit silent for longer has no recent data left and should be retired.
MAX_OFFLINE_AFTER_S = 30 * 86400.0
#: How often the collector re-reads the units' sites, hardware revisions and tags when nothing
#: else changed (an inventory edit takes effect within this time).
UNIT_GROUPS_REFRESH = timedelta(minutes=1)

#: Specificity of a policy scope: the highest-ranked policies covering a unit apply.
_SCOPE_RANK = {"site": 1, "hardware_rev": 1, "tag": 2, "unit": 3}
#: Weight of the change between observation ``x`` and ``x + 1`` (x = 0 oldest).
_WEIGHTS = tuple(OLDEST_WEIGHT + x * (NEWEST_WEIGHT - OLDEST_WEIGHT) / (HISTORY_LENGTH - 2)
                 for x in range(HISTORY_LENGTH - 1))
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class OfflinePolicyError(FleetError):
    """An offline policy that cannot be set or cleared; the message says why and what to do."""


# -- durations ------------------------------------------------------------------------------------
def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``15m``, ``12h``, ``1d`` or ``1h30m``.

    Raises
    ------
    OfflinePolicyError
        Empty text, a number without a unit, an unknown unit or a zero duration.
    """
    raw = (text or "").strip().lower().replace(" ", "")
    if not raw:
        raise OfflinePolicyError("no duration given; write it like 90s, 15m, 12h or 1d")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(raw):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(raw):
        hint = " (a number needs a unit)" if re.fullmatch(r"\d+(\.\d+)?", raw) else ""
        raise OfflinePolicyError(f"{text!r} is not a duration{hint}; write it like 90s, 15m, 12h, 1d or 1h30m")
    if total <= 0:
        raise OfflinePolicyError(f"{text!r} is zero; an offline threshold must be longer than 0 s")
    return total


def format_duration(seconds: float) -> str:
    """``43200`` → ``"12h"``, ``5400`` → ``"1h30m"``, ``15`` → ``"15s"`` (largest units first)."""
    rest = round(float(seconds))
    if rest <= 0:
        return f"{seconds:g}s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        n, rest = divmod(rest, int(_UNIT_S[unit]))
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


# -- policy resolution ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyIndex:
    """Offline policies indexed by scope: ``{scope_kind: {scope_value: offline_after_s}}``."""

    by_kind: dict[str, dict[str, float]]

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, float]]) -> PolicyIndex:
        """Index ``(scope_kind, scope_value, offline_after_s)`` rows (a repeated scope keeps its longest)."""
        by_kind: dict[str, dict[str, float]] = {k: {} for k in OFFLINE_POLICY_SCOPES}
        for kind, value, seconds in rows:
            scoped = by_kind.setdefault(kind, {})
            scoped[value] = max(float(seconds), scoped.get(value, 0.0))
        return cls(by_kind)

    def __bool__(self) -> bool:
        return any(self.by_kind.values())

    def resolve(self, serial: str, site: str | None, hardware_rev: str | None,
                tags: Sequence[str] | None, default_s: float) -> float:
        """The effective offline threshold of one unit, seconds (``default_s`` if no policy covers it)."""
        k = self.by_kind
        if serial in k["unit"]:
            return k["unit"][serial]
        tagged = [k["tag"][t] for t in (tags or ()) if t in k["tag"]]
        if tagged:
            return max(tagged)
        grouped = [v for v in (k["site"].get(site or ""), k["hardware_rev"].get(hardware_rev or ""))
                   if v is not None]
        return max(grouped) if grouped else default_s


def load_policy_index(session: Session) -> PolicyIndex:
    """Every offline policy, indexed (one query on ``offline_policies``)."""
    return PolicyIndex.from_rows(session.execute(
        select(OfflinePolicy.scope_kind, OfflinePolicy.scope_value, OfflinePolicy.offline_after_s)).all())


def effective_thresholds(index: PolicyIndex, serials: Sequence[str], sites: Sequence[Any],
                         hardware_revs: Sequence[Any], tags: Sequence[Any], default_s: float) -> list[float]:
    """Per unit (parallel sequences), its effective offline threshold in seconds."""
    if not index:
        return [float(default_s)] * len(serials)
    return [index.resolve(s, site, hw, list(t or ()), default_s)
            for s, site, hw, t in zip(serials, sites, hardware_revs, tags, strict=True)]


def _covered_by(index: PolicyIndex) -> ColumnElement[bool]:
    """SQL condition true for every unit a policy of ``index`` may cover (tags pre-filtered on
    the JSON text, ``"tag"`` as ``json.dumps`` writes it; :meth:`PolicyIndex.resolve` decides)."""
    k = index.by_kind
    conditions: list[ColumnElement[bool]] = []
    for kind, column in (("unit", Unit.serial), ("site", Unit.site), ("hardware_rev", Unit.hardware_rev)):
        if k[kind]:
            conditions.append(column.in_(sorted(k[kind])))
    for tag in sorted(k["tag"]):
        pattern = json.dumps(tag).replace("!", "!!").replace("%", "!%").replace("_", "!_")
        conditions.append(cast(Unit.tags, Text).like(f"%{pattern}%", escape="!"))
    return or_(*conditions) if conditions else false()


class OfflineThresholds:
    """The collector's cache of each unit's effective offline threshold (seconds).

    Parameters
    ----------
    default_s
        Threshold of units no policy covers (``CollectorSettings.offline_after_s``: 1.5 × the
        poll interval).
    unit_groups_refresh
        How long the units' groups are trusted when nothing else changed
        (default :data:`UNIT_GROUPS_REFRESH`).
    """

    def __init__(self, default_s: float, unit_groups_refresh: timedelta = UNIT_GROUPS_REFRESH) -> None:
        self.default_s = float(default_s)
        self._refresh_every = unit_groups_refresh
        self._index = PolicyIndex.from_rows(())
        self._groups_at: datetime | None = None
        self._known_ids: frozenset[int] = frozenset()
        self._by_unit: dict[int, float] = {}

    def refresh(self, session: Session, unit_ids: Iterable[int], now: datetime) -> None:
        """Re-read the policies (one small query); re-resolve the units when the policies
        changed, a unit in ``unit_ids`` is new, or the groups are older than the refresh time."""
        index = load_policy_index(session)
        if not index:  # the common case: no policy, no per-unit work at all
            self._index, self._by_unit, self._groups_at = index, {}, None
            return
        ids = frozenset(unit_ids)
        stale = (self._groups_at is None or now - self._groups_at >= self._refresh_every
                 or not ids <= self._known_ids)
        if index == self._index and not stale:
            return
        # only the units some policy may cover come back (at 10,000 units, decoding every unit's
        # tags cost ~0.1–0.5 s here); the rest keep the default
        covered = session.execute(select(Unit.id, Unit.serial, Unit.site, Unit.hardware_rev, Unit.tags)
                                  .where(_covered_by(index))).all()
        resolved = {uid: index.resolve(serial, site, hw, list(tags or ()), self.default_s)
                    for uid, serial, site, hw, tags in covered}
        self._by_unit = {uid: s for uid, s in resolved.items() if s != self.default_s}
        self._known_ids = ids
        self._index, self._groups_at = index, now
        logger.debug("offline thresholds: %d units with their own threshold", len(self._by_unit))

    def offline_after_s(self, unit_id: int) -> float:
        """Seconds of silence after which unit ``unit_id`` is offline."""
        return self._by_unit.get(unit_id, self.default_s)


# -- policy administration -------------------------------------------------------------------------
def _policy_dict(p: OfflinePolicy) -> dict[str, Any]:
    return {"id": p.id, "scope_kind": p.scope_kind, "scope_value": p.scope_value,
            "offline_after_s": p.offline_after_s, "offline_after": format_duration(p.offline_after_s),
            "note": p.note, "created_by": p.created_by,
            "created_at": p.created_at.isoformat() if p.created_at else None,
            "updated_by": p.updated_by, "updated_at": p.updated_at.isoformat() if p.updated_at else None}


def _check_scope(session: Session, kind: str, value: str) -> None:
    """Refuse a scope that names no unit (a typo would silently do nothing)."""
    if kind not in OFFLINE_POLICY_SCOPES:
        raise OfflinePolicyError(f"unknown scope {kind!r}; use one of: {', '.join(OFFLINE_POLICY_SCOPES)}")
    if not value:
        raise OfflinePolicyError(f"scope {kind} needs a value, e.g. {kind}=<name>")
    if kind == "tag":
        known = sorted({t for tags in session.scalars(select(Unit.tags)) for t in (tags or ())})
    else:
        column = {"site": Unit.site, "hardware_rev": Unit.hardware_rev, "unit": Unit.serial}[kind]
        if session.scalar(select(func.count()).select_from(Unit).where(column == value)):
            return
        known = [] if kind == "unit" else sorted(v for v in session.scalars(select(column).distinct()) if v)
    if value in known:
        return
    what = {"unit": "no unit has serial", "tag": "no unit has tag", "site": "no unit is at site",
            "hardware_rev": "no unit has hardware revision"}[kind]
    shown = f"; known: {', '.join(known[:12])}{' …' if len(known) > 12 else ''}" if known else ""
    raise OfflinePolicyError(f"{what} {value!r}{shown}. Check the spelling (`speakerops units list` "
                             "shows the inventory) or import the units first")


def set_offline_policy(session: Session, scope_kind: str, scope_value: str, offline_after: float | str,
                       now: datetime, *, note: str | None = None, actor: str | None = None) -> dict[str, Any]:
    """Create or replace the offline policy of one scope, audited (``offline_policy.set``).

    Parameters
    ----------
    scope_kind, scope_value
        ``site``, ``hardware_rev``, ``tag`` or ``unit`` and the site, revision, tag or serial;
        at least one unit must be in the scope.
    offline_after
        Seconds, or a duration text (``90s``, ``15m``, ``12h``, ``1d``); from 1 s to
        :data:`MAX_OFFLINE_AFTER_S` (30 days).
    now
        Aware UTC time of the change.
    note
        Why (shown by ``list``), e.g. "lab units are switched off at night".
    actor
        Who; default :func:`speakerops.audit.current_actor`.

    Returns
    -------
    dict
        The policy as ``list_offline_policies`` shows it, plus ``created`` (True if new).

    Raises
    ------
    OfflinePolicyError
        Unknown scope kind, a scope naming no unit, or a bad duration.
    """
    seconds = parse_duration(offline_after) if isinstance(offline_after, str) else float(offline_after)
    if not math.isfinite(seconds) or seconds < 1.0:
        raise OfflinePolicyError(f"an offline threshold must be at least 1 s, got {seconds:g} s")
    if seconds > MAX_OFFLINE_AFTER_S:
        raise OfflinePolicyError(
            f"{format_duration(seconds)} is longer than the {format_duration(MAX_OFFLINE_AFTER_S)} limit "
            "(the minute rollups' retention); retire units that stay silent that long")
    scope_kind, scope_value = (scope_kind or "").strip(), (scope_value or "").strip()
    _check_scope(session, scope_kind, scope_value)
    who = actor or audit.current_actor(session)
    policy = session.scalar(select(OfflinePolicy).where(OfflinePolicy.scope_kind == scope_kind,
                                                        OfflinePolicy.scope_value == scope_value))
    before = _policy_dict(policy) if policy is not None else None
    if policy is None:
        policy = OfflinePolicy(scope_kind=scope_kind, scope_value=scope_value, offline_after_s=seconds,
                               note=note, created_by=who, created_at=now)
        session.add(policy)
    else:
        policy.offline_after_s, policy.updated_by, policy.updated_at = seconds, who, now
        if note is not None:
            policy.note = note
    session.flush()
    after = _policy_dict(policy)
    audit.record(session, "offline_policy.set", "offline_policy", policy.id, before=before, after=after,
                 actor=who, clock=lambda: now)
    logger.info("offline policy #%d: %s=%s offline after %s (by %s)", policy.id, scope_kind, scope_value,
                format_duration(seconds), who)
    return {**after, "created": before is None}


def clear_offline_policy(session: Session, policy_id: int, now: datetime, *,
                         actor: str | None = None) -> dict[str, Any]:
    """Delete offline policy ``policy_id``, audited (``offline_policy.clear``); its units fall
    back to the next most specific policy or the fleet default. Returns the deleted policy.

    Raises
    ------
    OfflinePolicyError
        No such policy.
    """
    policy = session.get(OfflinePolicy, policy_id)
    if policy is None:
        raise OfflinePolicyError(f"no offline policy #{policy_id}; `speakerops units offline-policy list` "
                                 "shows them")
    before = _policy_dict(policy)
    who = actor or audit.current_actor(session)
    session.delete(policy)
    session.flush()
    audit.record(session, "offline_policy.clear", "offline_policy", policy_id, before=before, after=None,
                 actor=who, clock=lambda: now)
    return before


def list_offline_policies(session: Session, default_s: float) -> list[dict[str, Any]]:
    """Every offline policy by scope, with ``units``: how many units it is the effective policy of
    (covered and not overridden by a more specific or longer one).

    Parameters
    ----------
    default_s
        The fleet default threshold, seconds (``CollectorSettings.offline_after_s``).
    """
    policies = list(session.scalars(select(OfflinePolicy).order_by(OfflinePolicy.scope_kind,
                                                                    OfflinePolicy.scope_value)))
    counts: dict[tuple[str, str], int] = {}
    if policies:
        index = PolicyIndex.from_rows((p.scope_kind, p.scope_value, p.offline_after_s) for p in policies)
        for serial, site, hw, tags in session.execute(select(Unit.serial, Unit.site, Unit.hardware_rev,
                                                             Unit.tags)):
            key = _winning_scope(index, serial, site, hw, list(tags or ()))
            if key is not None:
                counts[key] = counts.get(key, 0) + 1
    return [{**_policy_dict(p), "units": counts.get((p.scope_kind, p.scope_value), 0)} for p in policies]


def _winning_scope(index: PolicyIndex, serial: str, site: str | None, hw: str | None,
                   tags: list[str]) -> tuple[str, str] | None:
    """The (kind, value) of the policy that decides a unit's threshold, or None."""
    k = index.by_kind
    if serial in k["unit"]:
        return "unit", serial
    tagged = [(k["tag"][t], t) for t in tags if t in k["tag"]]
    if tagged:
        return "tag", max(tagged)[1]
    grouped = [(v, kind, name) for kind, name in (("site", site or ""), ("hardware_rev", hw or ""))
               if (v := k[kind].get(name)) is not None]
    if grouped:
        _, kind, name = max(grouped)
        return kind, name
    return None


# -- flapping -------------------------------------------------------------------------------------
@lru_cache(maxsize=8192)
def percent_state_change(history: str) -> float:
    """Weighted percent state change of an observation history (oldest first), 0–100.

    Nagios' formula (``base/flapping.c``): each of the up to 20 changes between consecutive
    observations weighs from 0.75 (oldest) to 1.25 (newest); the sum × 100 / 20. A history
    shorter than :data:`HISTORY_LENGTH` is padded with its oldest observation.
    """
    if len(history) < 2 or history.count(history[0]) == len(history):
        return 0.0
    padded = history[-HISTORY_LENGTH:].rjust(HISTORY_LENGTH, history[0])
    changes = sum(w for w, a, b in zip(_WEIGHTS, padded, padded[1:]) if a != b)
    return changes * 100.0 / (HISTORY_LENGTH - 1)


@dataclass(frozen=True)
class FlapState:
    """A unit's flap-detection state after one more observation (the ``units`` columns)."""

    state_history: str
    state_change_pct: float
    flapping: bool
    flapping_since: datetime | None

    def columns(self) -> dict[str, Any]:
        """The ``units`` column values to write."""
        return {"state_history": self.state_history, "state_change_pct": self.state_change_pct,
                "flapping": self.flapping, "flapping_since": self.flapping_since}

    def changed_columns(self, history: str | None, flapping: bool) -> dict[str, Any]:
        """:meth:`columns` if they differ from the unit's stored ``history``/``flapping``, else
        ``{}``: a steady unit's row is not rewritten with the same values every cycle."""
        if self.state_history == history and self.flapping == bool(flapping):
            return {}
        return self.columns()


#: The state of a unit that answered (``1``) or missed (``0``) all of its last 21 polls.
_STEADY = {m: FlapState(m * HISTORY_LENGTH, 0.0, False, None) for m in "01"}


def observe(history: str | None, flapping: bool, flapping_since: datetime | None, answered: bool,
            now: datetime, serial: str = "") -> FlapState:
    """Add one poll observation to a unit's history and decide whether it flaps.

    Parameters
    ----------
    history
        The unit's ``state_history`` (oldest first, ``1``/``0``; None or ``""`` for none yet).
    flapping, flapping_since
        Its flag and since when, before this observation.
    answered
        It answered this poll with a valid heartbeat.
    now
        Aware UTC time of the observation (becomes ``flapping_since`` when flapping starts).
    serial
        For the log line when flapping starts or stops.
    """
    mark = "1" if answered else "0"
    if not flapping and history == _STEADY[mark].state_history:  # most units, most polls: nothing changes
        return _STEADY[mark]
    new_history = ((history or "") + mark)[-HISTORY_LENGTH:]
    pct = percent_state_change(new_history)
    if pct >= FLAP_HIGH_PCT:
        now_flapping = True
    elif pct <= FLAP_LOW_PCT:
        now_flapping = False
    else:
        now_flapping = bool(flapping)
    if now_flapping and not flapping:
        logger.info("%s started flapping (%.1f %% state change >= %.0f %%)", serial, pct, FLAP_HIGH_PCT)
    elif flapping and not now_flapping:
        logger.info("%s stopped flapping (%.1f %% state change <= %.0f %%)", serial, pct, FLAP_LOW_PCT)
    since = (flapping_since or now) if now_flapping else None
    return FlapState(new_history, round(pct, 2), now_flapping, since)


__all__ = [
    "FLAP_HIGH_PCT", "FLAP_LOW_PCT", "HISTORY_LENGTH", "MAX_OFFLINE_AFTER_S", "FlapState",
    "OfflinePolicyError", "OfflineThresholds", "PolicyIndex", "clear_offline_policy",
    "effective_thresholds", "format_duration", "list_offline_policies", "load_policy_index", "observe",
    "parse_duration", "percent_state_change", "set_offline_policy",
]
