"""The staged rollout engine: runs a stored rollout group by group over SSH, crash-safe.

:class:`RolloutRunner` works through a rollout created by
:func:`fleet.rollout_control.create_rollout` (its plan, groups and units are in the database):

1. It takes the rollout's lease (``rollouts.runner``; a lease of a dead process on this host,
   or one not renewed for :data:`LEASE_S`, is taken over).
2. Units a killed runner left ``in_progress`` go back to ``pending`` with the step they reached
   noted: they are run again through ``fleet.unit_update.update_unit``, which converges from any
   step (idempotent). Finished units are never redone.
3. Groups run one after the other. Within the running group, units are updated by a thread
   pool with at most ``max_parallel`` (K) SSH sessions open at once: a unit gives its session
   slot back before its health gate (which only polls the agent over HTTP), so up to
   :data:`IN_FLIGHT_FACTOR` × K units may be in flight while never more than K sessions are open.
   Each unit is marked ``in_progress`` (attempts + 1, ``started_at``)
   and committed *before* its SSH work starts; every step it reaches is committed as it begins
   (``step_reached``). Units outside their maintenance window wait (``waiting_window``); the
   rate limit holds back starts; a unit pinned meanwhile to another version is ``skipped``.
4. Each unit's result is committed with the unit's new ``Unit.<kind>_version`` in one
   transaction, and the rollout's counts recounted. After each result the group's error
   threshold is applied (pause, audited as ``rollout-runner``). When the group is complete its
   success threshold decides: the voice-quality gate (:mod:`fleet.rollout_gates`) after its soak
   time, then the next group — or the rollout ``failed``.
5. Between units it re-reads the rollout's state, so ``pause``/``resume``/``cancel`` written by
   another process take effect within one poll (:data:`POLL_S`).

No Qt: progress is reported through a plain ``progress(fraction, message)`` callback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fleet.errors import FleetError
from fleet.models import Unit
from fleet.rollout_control import RUNNER_ACTOR, RolloutError, get_rollout, refresh_counts
from fleet.rollout_gates import voice_quality_gate
from fleet.rollout_models import (
    ROLLOUT_FINAL,
    UNIT_FAILED,
    UNIT_FINAL,
    Rollout,
    RolloutGroup,
    RolloutUnit,
    UnitPin,
)
from fleet.rollout_plan import RateLimiter, RolloutPlan, group_verdict
from fleet.rollout_workers import (
    LEASE_S,
    RolloutBusy,
    WorkerSpec,
    accepts_keyword,
    claim_lease,
    note_ssh_phase,
    process_pool,
    release_lease,
    process_update,
    registry_bundle_dir,
    runner_id,
)

__all__ = ["RolloutBusy", "RolloutRunner", "RunSummary"]
from speakerops import audit
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

#: Seconds between reads of the rollout's state while waiting (controls take effect this fast).
POLL_S = 0.5
#: Extra seconds past ``unit_timeout_s`` before the runner asks an update to stop.
TIMEOUT_GRACE_S = 30.0
#: Units in flight at most, as a multiple of ``max_parallel`` (SSH sessions), per worker kind. A
#: unit spends about as long in its health gate (~3 s ``updating`` after a restart, docs/unit-api.md)
#: as in its SSH work at K = 20 (benchmarks/rollout_vs_scp.py), so 2 × K keeps K sessions busy;
#: threads are cheap, so they get more room for slow gates. Worker processes cost memory.
IN_FLIGHT_FACTOR = {"threads": 3, "processes": 2}

Progress = Callable[[float, str], None]


@dataclass
class RunSummary:
    """What :meth:`RolloutRunner.run` ended with: the rollout's state and counts, and why it stopped."""

    rollout_id: int
    state: str
    counts: dict[str, int]
    stopped_because: str
    results: dict[str, str] = field(default_factory=dict)

    @property
    def succeeded(self) -> list[str]:
        return [s for s, st in self.results.items() if st == "succeeded"]

    @property
    def failed(self) -> list[str]:
        return [s for s, st in self.results.items() if st in UNIT_FAILED]


@dataclass
class _InFlight:
    row_id: int
    serial: str
    group_id: int
    started: float
    cancel: Any  # threading.Event, or a multiprocessing.Manager Event for worker processes
    busy: Any  # the same kind of Event: set while the unit needs SSH (rollout_workers.note_ssh_phase)


class RolloutRunner:
    """Runs rollouts; one instance can run many rollouts one after the other.

    Parameters
    ----------
    session_factory
        Each state change is its own short transaction (committed before it is acted on).
    connector
        ``fleet.ssh.SshConnector`` (shared by the worker threads).
    clock
        Aware-UTC clock (windows, rate limit, timestamps).
    health_check
        ``(serial, kind, version) -> bool`` for the per-unit health gate; default
        ``fleet.unit_update.default_health_check`` over the units' ``agent_url``.
    bundle_dir_for
        ``(session, kind, version) -> Path`` of the signed bundle to install; default the
        registry's stored copy (``ModelVersion.source_path``).
    install_root
        Template of the units' install root (``{serial}`` is replaced); default
        ``SshSettings().install_root``.
    update_unit, target_for
        The per-unit update and the target builder; default ``fleet.unit_update``'s.
    poll_s
        Seconds between state reads while waiting (the runner also wakes when a unit finishes or
        gives its SSH slot back).
    workers
        ``"threads"`` (default): units are updated by a thread pool in this process.
        ``"processes"``: by a pool of worker processes (each with its own database engine and
        SSH connector built from this runner's), so SFTP encryption is not serialized by one
        interpreter's GIL — FIELD_NOTES: paramiko gets ~66 MB/s alone but ~96 MB/s in all from 4
        threads. Worker processes use the real clock.
    """

    def __init__(self, session_factory: sessionmaker[Session], connector: Any, clock: Clock = utc_now,
                 health_check: Callable[[str, str, str], bool] | None = None, *,
                 bundle_dir_for: Callable[[Session, str, str], Path] | None = None,
                 install_root: str | None = None, update_unit: Callable[..., Any] | None = None,
                 target_for: Callable[[Unit], Any] | None = None, poll_s: float = POLL_S,
                 workers: Literal["threads", "processes"] = "threads") -> None:
        from fleet import unit_update

        if workers not in ("threads", "processes"):
            raise ValueError(f"workers must be 'threads' or 'processes', got {workers!r}")
        if workers == "processes" and (update_unit is not None or health_check is not None or target_for is not None):
            raise ValueError("workers='processes' runs fleet.unit_update.update_unit with the default health "
                             "check in worker processes; custom update_unit/health_check/target_for need threads")
        self._workers = workers

        self._sf = session_factory
        self._connector = connector
        self._clock = clock
        self._update_unit = update_unit or unit_update.update_unit
        self._poll_s = poll_s
        self._install_root = install_root
        self._target_for = target_for
        self._bundle_dir_for = bundle_dir_for or registry_bundle_dir
        self._health_check = health_check
        self._me = runner_id()
        self._manager: Any = None
        self._spec: WorkerSpec | None = None
        self._slots: Any = None  # the K session slots (a semaphore) of the rollout being run
        self._wake: Any = None  # set when a unit finishes or reaches its health gate
        self._http: Any = None  # the default health check's HTTP client
        self._pass_slot = update_unit is None or accepts_keyword(update_unit, "ssh_slot")
        #: Units a killed runner left in flight: they finish even if the rollout is paused or
        #: cancelling (a unit may be half switched; update_unit converges it).
        self._interrupted: set[int] = set()

    def _make_pool(self, size: int, rollout_id: int) -> Executor:
        if self._workers == "threads":
            self._slots, self._wake = threading.BoundedSemaphore(size), threading.Event()
            return ThreadPoolExecutor(max_workers=size * IN_FLIGHT_FACTOR["threads"],
                                      thread_name_prefix=f"rollout{rollout_id}")
        pool, self._manager, self._spec = process_pool(self._sf, self._connector, self._install_root,
                                                       size * IN_FLIGHT_FACTOR["processes"])
        self._slots, self._wake = self._manager.BoundedSemaphore(size), self._manager.Event()
        return pool

    # ------------------------------------------------------------------ helpers
    def _target(self, unit: Unit) -> Any:
        from fleet import unit_update
        from fleet.settings import SshSettings

        if self._target_for is not None:
            return self._target_for(unit)
        settings = SshSettings() if self._install_root is None else SshSettings(install_root=self._install_root)
        return unit_update.target_for_unit(unit, settings)

    def _default_health_check(self) -> Callable[[str, str, str], bool]:
        import httpx

        from fleet import unit_update

        with self._sf() as s:
            urls = dict(s.execute(select(Unit.serial, Unit.agent_url)).all())
        # one client shared by the pool (closed by run()): no client set-up per poll
        self._http = httpx.Client()
        return unit_update.default_health_check(lambda serial: urls[serial], client=self._http)

    # ------------------------------------------------------------------ lease
    def _claim(self, rollout_id: int) -> None:
        self._interrupted = claim_lease(self._sf, rollout_id, self._me, self._clock)

    def _release(self, rollout_id: int) -> None:
        release_lease(self._sf, rollout_id, self._me, self._clock)

    # ------------------------------------------------------------------ run
    def run(self, rollout_id: int, cancelled: Callable[[], bool] = lambda: False,
            progress: Progress = lambda fraction, message: None, *,
            wait_while_paused: bool = False) -> RunSummary:
        """Run (or resume) rollout ``rollout_id`` until it is final, paused, or ``cancelled()``.

        Parameters
        ----------
        cancelled
            Polled between units: True stops *this process* (units in flight are asked to stop
            and converge; the rollout stays ``running`` and the next run resumes it). To cancel
            the rollout itself use :func:`fleet.rollout_control.cancel`.
        progress
            ``progress(fraction, message)``: fraction of the rollout's units finished (0–1).
        wait_while_paused
            Keep running while the rollout is paused (an operator may resume it from another
            process); default: return once paused and no unit is in flight.

        Returns
        -------
        RunSummary
            The rollout's state and counts, and each unit's final state from this run.

        Raises
        ------
        RolloutError
            Unknown rollout, or a final one (completed, cancelled, failed: use retry).
        RolloutBusy
            Another live process runs it.
        """
        with self._sf() as s:
            r = get_rollout(s, rollout_id)
            if r.state in ROLLOUT_FINAL:
                raise RolloutError(f"rollout #{rollout_id} is {r.state}; nothing to run"
                                   + (" (retry its failed units with `speakerops rollout retry`)"
                                      if r.state == "failed" else ""))
            plan = RolloutPlan.model_validate(r.plan)
        with self._sf() as s:
            bundle_dir = self._bundle_dir_for(s, plan.kind, plan.version)
        self._claim(rollout_id)
        results: dict[str, str] = {}
        pool: Executor | None = None
        flights: dict[Future[Any], _InFlight] = {}
        reason = "stopped"
        try:
            health = (self._health_check or self._default_health_check()) if self._workers == "threads" else None
            pool = self._make_pool(plan.max_parallel, rollout_id)
            reason = self._loop(rollout_id, plan, bundle_dir, health, pool, flights, results, cancelled,
                                progress, wait_while_paused)
        finally:
            if flights:  # stopping with units in flight: ask them to stop, record what they did
                for f in flights.values():
                    f.cancel.set()
                self._drain(rollout_id, plan, flights, results, block=True)
            if pool is not None:
                pool.shutdown(wait=True)
            self._slots = self._wake = None
            if self._manager is not None:
                self._manager.shutdown()
                self._manager = None
            if self._http is not None:
                self._http.close()
                self._http = None
            self._release(rollout_id)
        with self._sf() as s:
            r = get_rollout(s, rollout_id)
            summary = RunSummary(rollout_id, r.state, r.counts(), reason, results)
        progress(_fraction(summary.counts), f"rollout #{rollout_id} {summary.state}: {reason}")
        logger.info("rollout #%d: runner stops (%s), state %s, %s", rollout_id, reason, summary.state,
                    summary.counts)
        return summary

    def _loop(self, rollout_id: int, plan: RolloutPlan, bundle_dir: Path, health: Any,
              pool: Executor, flights: dict[Future[Any], _InFlight], results: dict[str, str],
              cancelled: Callable[[], bool], progress: Progress, wait_while_paused: bool) -> str:
        with self._sf() as s:
            recent = s.execute(select(RolloutUnit.started_at).where(
                RolloutUnit.rollout_id == rollout_id,
                RolloutUnit.started_at > self._clock() - timedelta(minutes=1))).scalars().all()
        limiter = RateLimiter(plan.max_per_minute, [t for t in recent if t is not None])
        last_lease = time.monotonic()
        last_message = ""
        while True:
            if cancelled():
                return "stopped by the caller; run again to resume"
            self._drain(rollout_id, plan, flights, results, block=False)
            self._check_timeouts(plan, flights)
            if time.monotonic() - last_lease > LEASE_S / 4:
                self._renew(rollout_id)
                last_lease = time.monotonic()
            with self._sf() as s:
                state = get_rollout(s, rollout_id).state
            if state in ROLLOUT_FINAL:
                return f"rollout {state}"
            if state in ("cancelling", "paused") and self._interrupted:
                with self._sf() as s:
                    groups = {u.group_id for u in s.execute(select(RolloutUnit).where(
                        RolloutUnit.id.in_(self._interrupted))).scalars()}
                for group_id in groups:
                    self._start_units(rollout_id, group_id, plan, bundle_dir, health, pool, flights, limiter,
                                      only=self._interrupted)
                self._interrupted.clear()
            if state == "cancelling":
                if not flights:
                    self._finish_cancel(rollout_id)
                    return "cancelled"
                self._wait(flights)
                continue
            if state == "paused":
                if flights:
                    self._wait(flights)
                    continue
                if not wait_while_paused:
                    return "paused"
                time.sleep(self._poll_s)
                continue
            message = self._advance(rollout_id, plan, bundle_dir, health, pool, flights, limiter)
            if message == "completed" or message == "failed":
                if not flights:
                    return f"rollout {message}"
            if message and message != last_message:
                with self._sf() as s:
                    counts = get_rollout(s, rollout_id).counts()
                progress(_fraction(counts), message)
                last_message = message
            self._wait(flights)

    def _wait(self, flights: dict[Future[Any], _InFlight]) -> None:
        """Until a unit finishes or gives its SSH slot back, or ``poll_s`` passed."""
        if flights and self._wake is not None:
            self._wake.wait(self._poll_s)
            self._wake.clear()  # the caller looks at every flight next, so a wake-up is not lost
        elif flights:
            wait(list(flights), timeout=self._poll_s, return_when=FIRST_COMPLETED)
        else:
            time.sleep(self._poll_s)

    def _renew(self, rollout_id: int) -> None:
        with self._sf.begin() as s:
            r = s.get(Rollout, rollout_id)
            if r is not None and r.runner == self._me:
                r.runner_seen_at = self._clock()

    def _check_timeouts(self, plan: RolloutPlan, flights: dict[Future[Any], _InFlight]) -> None:
        limit = plan.unit_timeout_s + TIMEOUT_GRACE_S
        for f in flights.values():
            if not f.cancel.is_set() and time.monotonic() - f.started > limit:
                logger.warning("%s: still in progress after %.0f s; asking it to stop", f.serial, limit)
                f.cancel.set()

    # ------------------------------------------------------------------ scheduling
    def _advance(self, rollout_id: int, plan: RolloutPlan, bundle_dir: Path, health: Any,
                 pool: Executor, flights: dict[Future[Any], _InFlight],
                 limiter: RateLimiter) -> str:
        """Start what may start now; close complete groups. Returns a status line."""
        with self._sf.begin() as s:
            r = get_rollout(s, rollout_id)
            if r.state != "running":
                return ""
            groups = list(r.groups)
            running = [g for g in groups if g.state == "running"]
            if not running:
                nxt = next((g for g in groups if g.state == "pending"), None)
                if nxt is None:
                    if any(g.state == "failed" for g in groups):
                        return "failed"
                    if not flights:
                        now = self._clock()
                        r.state, r.finished_at, r.updated_at = "completed", now, now
                        refresh_counts(s, r)
                        audit.record(s, "rollout.complete", "rollout", r.id, after=r.counts(),
                                     actor=RUNNER_ACTOR, clock=self._clock)
                    return "completed"
                nxt.state, nxt.started_at = "running", self._clock()
                logger.info("rollout #%d: group %d (%s, %d units) starts", rollout_id, nxt.index,
                            nxt.name, nxt.units)
                return f"group {nxt.index} ({nxt.name}) started"
        group = running[0]
        closed = self._close_group_if_done(rollout_id, group.id, plan, flights)
        if closed:
            return closed
        return self._start_units(rollout_id, group.id, plan, bundle_dir, health, pool, flights, limiter)

    def _start_units(self, rollout_id: int, group_id: int, plan: RolloutPlan, bundle_dir: Path,
                     health: Any, pool: Executor, flights: dict[Future[Any], _InFlight],
                     limiter: RateLimiter, only: set[int] | None = None) -> str:
        """Start the group's pending units that may start now. ``only``: just these rows, whatever
        the rollout's state, window and rate (units a killed runner left in flight)."""
        waiting = 0
        held_until: datetime | None = None
        started = 0
        with self._sf() as s:  # one read; units whose window is still closed cost no transaction
            candidates = s.execute(
                select(RolloutUnit.id, RolloutUnit.serial, RolloutUnit.state, Unit.timezone)
                .join(Unit, Unit.serial == RolloutUnit.serial, isouter=True)
                .where(RolloutUnit.group_id == group_id, RolloutUnit.state.in_(("pending", "waiting_window")))
                .order_by(RolloutUnit.position)).all()
        cap = plan.max_parallel * IN_FLIGHT_FACTOR[self._workers]
        for row_id, serial, state, tz in candidates:
            if len(flights) >= cap or sum(1 for f in flights.values() if f.busy.is_set()) >= plan.max_parallel:
                break  # K units busy with SSH (or waiting for it), or the pool is full
            now = self._clock()
            if only is None and state == "waiting_window" and tz is not None and plan.window is not None \
                    and not plan.window.is_open(now, tz):
                waiting += 1
                continue
            with self._sf.begin() as s:
                u = s.get(RolloutUnit, row_id)
                r = s.get(Rollout, rollout_id)
                if only is not None and row_id not in only:
                    continue
                if u is None or r is None or u.state not in ("pending", "waiting_window") \
                        or (only is None and r.state != "running"):
                    continue
                unit = s.execute(select(Unit).where(Unit.serial == serial)).scalar_one_or_none()
                pinned = s.execute(select(UnitPin.version).where(
                    UnitPin.serial == serial, UnitPin.kind == plan.kind)).scalar_one_or_none()
                if unit is None or (pinned is not None and pinned != plan.version):
                    u.state, u.finished_at, u.updated_at = "skipped", now, now
                    u.error = ("no longer in the inventory" if unit is None
                               else f"pinned to {plan.kind} {pinned} after the rollout was planned")
                    refresh_counts(s, r)
                    continue
                if only is None and plan.window is not None and not plan.window.is_open(now, unit.timezone):
                    waiting += 1
                    if u.state != "waiting_window":
                        u.state, u.updated_at = "waiting_window", now
                        u.error = f"waiting for window {plan.window.label()} ({unit.timezone})"
                    continue
                slot = limiter.next_slot(now) if only is None else now
                if slot > now:
                    held_until = slot
                    break
                try:
                    target = self._target(unit)
                except FleetError as exc:  # e.g. its SSH address was removed from the inventory
                    u.state, u.error, u.finished_at, u.updated_at = "failed", str(exc), now, now
                    refresh_counts(s, r)
                    self._apply_error_threshold(s, r, group_id)
                    continue
                u.state, u.attempts, u.started_at, u.updated_at = "in_progress", u.attempts + 1, now, now
                u.finished_at, u.step_reached = None, "connect"
                u.error = None
                if u.attempts == 1 or u.previous_version is None:
                    u.previous_version = getattr(unit, f"{plan.kind}_version")
            # committed: the unit is in_progress before any SSH work starts
            limiter.started(now)
            self._interrupted.discard(row_id)
            if self._workers == "processes":
                cancel, busy = self._manager.Event(), self._manager.Event()
                busy.set()
                fut = pool.submit(process_update, self._spec, row_id, target, plan.kind, plan.version, bundle_dir,
                                  plan.health_timeout_s, plan.unit_timeout_s, cancel, self._slots, busy, self._wake)
            else:
                cancel, busy = threading.Event(), threading.Event()
                busy.set()
                fut = pool.submit(self._update_one, row_id, target, plan, bundle_dir, health, cancel, busy)
            wake = self._wake
            fut.add_done_callback(lambda _f: wake.set())
            flights[fut] = _InFlight(row_id, serial, group_id, time.monotonic(), cancel, busy)
            started += 1
        if held_until is not None:
            return f"rate limit: next unit at {held_until:%H:%M:%S} UTC"
        if waiting and not flights:
            return f"{_units(waiting)} waiting for window {plan.window.label()}"  # type: ignore[union-attr]
        return f"{_units(len(flights))} in progress" if started or flights else ""

    def _update_one(self, row_id: int, target: Any, plan: RolloutPlan, bundle_dir: Path, health: Any,
                    cancel: threading.Event, busy: threading.Event) -> Any:
        last: list[str] = ["connect"]

        def on_step(step: Any, detail: Any = None) -> None:
            if str(step) == last[0]:  # upload progress repeats the step: write step changes only
                return
            last[0] = str(step)
            if self._pass_slot:  # an update_unit that takes no slot keeps its session through the gate
                note_ssh_phase(step, busy, self._wake)
            with self._sf.begin() as s:
                u = s.get(RolloutUnit, row_id)
                if u is not None:
                    u.step_reached, u.updated_at = str(step), self._clock()

        extra = {"ssh_slot": self._slots} if self._pass_slot else {}
        return self._update_unit(self._connector, self._sf, target, plan.kind, plan.version, bundle_dir,
                                 health_check=health, health_timeout_s=plan.health_timeout_s,
                                 timeout_s=plan.unit_timeout_s, on_step=on_step, cancelled=cancel.is_set,
                                 clock=self._clock, **extra)

    # ------------------------------------------------------------------ results
    def _drain(self, rollout_id: int, plan: RolloutPlan, flights: dict[Future[Any], _InFlight],
               results: dict[str, str], *, block: bool) -> None:
        if block and flights:
            wait(list(flights))
        for fut in [f for f in flights if f.done()]:
            info = flights.pop(fut)
            try:
                outcome, exc = fut.result(), None
            except Exception as e:  # noqa: BLE001 - update_unit must not raise; record it if it does
                logger.exception("%s: update raised", info.serial)
                outcome, exc = None, e
            results[info.serial] = self._record(rollout_id, plan, info, outcome, exc)

    def _record(self, rollout_id: int, plan: RolloutPlan, info: _InFlight, result: Any,
                exc: BaseException | None) -> str:
        now = self._clock()
        with self._sf.begin() as s:
            u = s.get(RolloutUnit, info.row_id)
            r = s.get(Rollout, rollout_id)
            assert u is not None and r is not None
            unit = s.execute(select(Unit).where(Unit.serial == u.serial)).scalar_one_or_none()
            if result is None:
                u.state, u.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
            else:
                u.step_reached = str(result.step_reached)
                u.bytes_sent = int(u.bytes_sent or 0) + int(result.bytes_sent or 0)
                if result.ok:
                    u.state, u.error = "succeeded", None
                    u.final_version = result.new_version or plan.version
                else:
                    u.state = "rolled_back" if result.rolled_back else "failed"
                    u.error = result.error or "failed"
                    u.final_version = (result.previous_version if result.rolled_back
                                       else getattr(result, "current_version", None) or u.previous_version)
                    if info.cancel.is_set() and "timed out" not in u.error:
                        u.error = f"stopped after {plan.unit_timeout_s:.0f} s or by the runner: {u.error}"
                if result.previous_version and u.attempts == 1:
                    u.previous_version = result.previous_version
            u.finished_at = u.updated_at = now
            if unit is not None and u.final_version:
                setattr(unit, f"{plan.kind}_version", u.final_version)
                unit.updated_at = now
            refresh_counts(s, r)
            r.updated_at = now
            if u.state == "rolled_back":
                audit.record(s, "rollout.unit_rollback", "unit", u.serial,
                             before={"version": plan.version}, after={"version": u.final_version},
                             reason=f"rollout #{rollout_id}: {u.error}", actor=RUNNER_ACTOR, clock=self._clock)
            self._apply_error_threshold(s, r, u.group_id)
            logger.info("rollout #%d: %s %s (step %s, %d bytes)%s", rollout_id, u.serial, u.state,
                        u.step_reached, u.bytes_sent, f": {u.error}" if u.error else "")
            return u.state

    def _group_counts(self, s: Session, group_id: int) -> tuple[int, int, int]:
        rows = dict(s.execute(select(RolloutUnit.state, func.count()).where(RolloutUnit.group_id == group_id)
                              .group_by(RolloutUnit.state)).all())
        succeeded = rows.get("succeeded", 0)
        failed = sum(rows.get(st, 0) for st in UNIT_FAILED)
        finished = sum(rows.get(st, 0) for st in UNIT_FINAL)
        return succeeded, failed, finished

    def _apply_error_threshold(self, s: Session, r: Rollout, group_id: int) -> None:
        g = s.get(RolloutGroup, group_id)
        if g is None or r.state != "running":
            return
        succeeded, failed, finished = self._group_counts(s, group_id)
        v = group_verdict(g.units, succeeded, failed, finished, success_threshold_pct=g.success_threshold_pct,
                          error_threshold_pct=g.error_threshold_pct, min_finished=g.min_finished)
        if v.error_tripped:
            before = {"state": r.state}
            r.state = "paused"
            r.pause_reason = (f"error threshold: {failed} of {finished} finished units of group {g.index} "
                              f"({g.name}) failed ({v.failure_rate:.0%} ≥ {g.error_threshold_pct:g} %)")
            audit.record(s, "rollout.pause", "rollout", r.id, before=before,
                         after={"state": "paused", **r.counts()}, reason=r.pause_reason, actor=RUNNER_ACTOR,
                         clock=self._clock)
            logger.warning("rollout #%d paused: %s", r.id, r.pause_reason)

    def _close_group_if_done(self, rollout_id: int, group_id: int, plan: RolloutPlan,
                             flights: dict[Future[Any], _InFlight]) -> str:
        if any(f.group_id == group_id for f in flights.values()):
            return ""
        with self._sf.begin() as s:
            r = s.get(Rollout, rollout_id)
            g = s.get(RolloutGroup, group_id)
            assert r is not None and g is not None
            succeeded, failed, finished = self._group_counts(s, group_id)
            v = group_verdict(g.units, succeeded, failed, finished, success_threshold_pct=g.success_threshold_pct,
                              error_threshold_pct=g.error_threshold_pct, min_finished=g.min_finished)
            if not v.complete:
                return ""
            now = self._clock()
            g.finished_at = g.finished_at or now
            if not v.success_met:
                g.state = "failed"
                r.state, r.finished_at, r.updated_at = "failed", now, now
                r.pause_reason = (f"group {g.index} ({g.name}): {succeeded} of {g.units} units succeeded "
                                  f"({v.success_rate:.0%} < success threshold {g.success_threshold_pct:g} %)")
                audit.record(s, "rollout.fail", "rollout", r.id, after=r.counts(), reason=r.pause_reason,
                             actor=RUNNER_ACTOR, clock=self._clock)
                return "failed"
            if plan.gate.enabled and g.gate_result is None:
                ready = g.finished_at + timedelta(seconds=plan.gate.soak_s)
                if now < ready:
                    return f"group {g.index} done; voice-quality gate at {ready:%H:%M:%S} UTC"
                result = self._gate(s, r, g, plan, now)
                g.gate_result = result.as_dict()
                if not result.passed:
                    g.state = "succeeded"
                    r.state, r.pause_reason, r.updated_at = "paused", result.reason(), now
                    audit.record(s, "rollout.pause", "rollout", r.id, before={"state": "running"},
                                 after={"state": "paused", "gate": g.gate_result}, reason=r.pause_reason,
                                 actor=RUNNER_ACTOR, clock=self._clock)
                    return "paused by the voice-quality gate"
            g.state = "succeeded"
            return f"group {g.index} ({g.name}) succeeded: {succeeded} of {g.units}"

    def _gate(self, s: Session, r: Rollout, g: RolloutGroup, plan: RolloutPlan, now: datetime) -> Any:
        members = list(s.execute(select(RolloutUnit).where(RolloutUnit.group_id == g.id)).scalars())
        updated = [u.serial for u in members if u.state == "succeeded"]
        since = min((u.finished_at for u in members if u.state == "succeeded" and u.finished_at), default=now)
        control = list(s.execute(select(RolloutUnit.serial).where(
            RolloutUnit.rollout_id == r.id, RolloutUnit.state.in_(("pending", "waiting_window")))).scalars())
        return voice_quality_gate(s, updated, control, since, now, plan.gate)

    def _finish_cancel(self, rollout_id: int) -> None:
        now = self._clock()
        with self._sf.begin() as s:
            r = s.get(Rollout, rollout_id)
            assert r is not None
            for u in s.execute(select(RolloutUnit).where(
                    RolloutUnit.rollout_id == rollout_id,
                    RolloutUnit.state.in_(("pending", "waiting_window")))).scalars():
                u.state, u.finished_at, u.updated_at = "cancelled", now, now
            for g in r.groups:
                if g.state in ("pending", "running"):
                    g.state, g.finished_at = "cancelled", g.finished_at or now
            r.state, r.finished_at, r.updated_at = "cancelled", now, now
            refresh_counts(s, r)
            audit.record(s, "rollout.cancelled", "rollout", r.id, after=r.counts(), actor=RUNNER_ACTOR,
                         clock=self._clock)


def _units(n: int) -> str:
    return f"{n} unit" if n == 1 else f"{n} units"


def _fraction(counts: dict[str, int]) -> float:
    total = counts.get("total", 0)
    done = sum(counts.get(k, 0) for k in ("succeeded", "failed", "rolled_back", "skipped", "cancelled"))
    return done / total if total else 1.0
