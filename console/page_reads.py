"""What the Fleet and Service-flow pages read, one unit of work per refresh (no Qt).

These run off the GUI thread: in the console's read processes (:mod:`console.read_process`,
the default) or on a ``db`` worker thread. Arguments and results are plain picklable data; the
session factory and the clock are the console's own in-process, :data:`~console.read_process.CHILD_SESSIONS`
and a :class:`~console.read_process.FixedClock` in a read process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import select

from console.models.snapshot_index import FleetFilter, SnapshotIndex, prepare_snapshot
from fleet.models import Unit
from fleet.queries import fleet_snapshot, unit_detail
from fleet.slo import SloStatus, health_aggregates, slo_report, stage_breakdown, stage_p95_series
from fleet.stage_cache import CohortMinuteCache

_CACHES: dict[str, CohortMinuteCache] = {}
_CACHES_LOCK = threading.Lock()


def named_cache(name: str) -> CohortMinuteCache:
    """This process's cohort-minute cache called ``name`` (made on first use): a page whose
    reads run in a read process names its cache, which then lives in that process."""
    with _CACHES_LOCK:
        cache = _CACHES.get(name)
        if cache is None:
            cache = _CACHES[name] = CohortMinuteCache()
        return cache


# -- Fleet page ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FleetLoad:
    """What one refresh read: the snapshot (indexed for the table, or a bare frame), the selected
    unit's detail, and when."""

    snapshot: pd.DataFrame | SnapshotIndex
    detail_serial: str | None
    detail: Any
    now: datetime

    @property
    def frame(self) -> pd.DataFrame:
        """The snapshot's rows (one per unit)."""
        return self.snapshot.frame if isinstance(self.snapshot, SnapshotIndex) else self.snapshot


def load_fleet(session_factory: Callable[[], Any], clock: Callable[[], datetime],
               serial: str | None, view: tuple[FleetFilter, str | None, bool] | None = None) -> FleetLoad:
    """Read the fleet snapshot and, if ``serial`` is given, that unit's detail, and index the
    snapshot for the table, with the rows of ``view`` (the table's ``view_spec``) ready."""
    now = clock()
    with session_factory() as session:
        snapshot = fleet_snapshot(session, now)
        detail = unit_detail(session, serial, now) if serial else None
    return FleetLoad(prepare_snapshot(snapshot, shown=[view] if view else ()), serial, detail, now)


def load_detail(session_factory: Callable[[], Any], clock: Callable[[], datetime],
                serial: str) -> FleetLoad:
    """Read only unit ``serial``'s detail; ``snapshot`` is left empty."""
    now = clock()
    with session_factory() as session:
        detail = unit_detail(session, serial, now)
    return FleetLoad(pd.DataFrame(), serial, detail, now)


# -- Service-flow page -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceFlowLoad:
    """What one Service-flow refresh read (plain data)."""

    now: datetime
    cohort: Any
    slo: list[SloStatus]
    breakdown: pd.DataFrame
    series: pd.DataFrame
    health: pd.DataFrame
    group_by: str
    options: dict[str, list[str]]


def cohort_options(session: Any) -> dict[str, list[str]]:
    """Distinct sites, hardware revisions and model versions of the units table."""
    rows = session.execute(select(Unit.site, Unit.hardware_rev, Unit.stt_version, Unit.qa_version,
                                  Unit.tts_version)).all()
    pick = lambda i: sorted({str(r[i]) for r in rows if r[i]})  # noqa: E731
    return {"site": pick(0), "hardware_rev": pick(1), "stt_version": pick(2), "qa_version": pick(3),
            "tts_version": pick(4)}


def load_service_flow(session_factory: Callable[[], Any], clock: Callable[[], datetime], cohort: Any,
                      span: timedelta, group_by: str,
                      cache: CohortMinuteCache | str | None = None) -> ServiceFlowLoad:
    """Everything the Service-flow page shows, in one unit of work. ``cache`` keeps the cohort
    minutes already read for the next refresh (``fleet.stage_cache``): a cache, or the name of
    this process's :func:`named_cache`."""
    now = clock()
    if isinstance(cache, str):
        cache = named_cache(cache)
    with session_factory() as session:
        return ServiceFlowLoad(
            now=now, cohort=cohort, slo=slo_report(session, now, cohort, cache=cache),
            breakdown=stage_breakdown(session, now, cohort=cohort, cache=cache),
            series=stage_p95_series(session, now, span, cohort, cache=cache),
            health=health_aggregates(session, now, group_by),  # type: ignore[arg-type]
            group_by=group_by, options=cohort_options(session))
