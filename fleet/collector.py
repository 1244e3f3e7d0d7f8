"""The heartbeat collector: polls every unit's ``/v1/health`` and writes heartbeats in batches.

One shared ``aiohttp.ClientSession`` (httpx's default transport loses throughput as concurrency
grows — encode/httpx #3215, FIELD_NOTES — and even over the ``httpx-aiohttp`` transport it polled
551 units/s here against 854 for bare aiohttp: ``benchmarks/collector_throughput.py``), bounded concurrency, connect/read timeouts, retries with exponential backoff for transient
connection errors, and one database transaction per cycle. A unit is offline once it has missed
``offline_after_factor`` × the poll interval (AWS IoT's 1.5 × keep-alive), or its group's own
threshold; each poll also feeds flap detection (both in :mod:`fleet.unit_states`).

Nothing collected is lost when the database refuses a write (a locked SQLite file, PostgreSQL
restarting): the cycle's heartbeats stay in memory and are written with the next cycle.
One bad unit never affects another: every failure is recorded on its own unit.

Runs headless (``speakerops collect``) or inside the console (:class:`BackgroundCollector`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import aiohttp
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

# imported here, not in the maintenance thread: first imports on worker threads crashed Qt
from fleet import alerts, rollups, slo, unit_states  # noqa: F401  (slo: used by alerts' burn-rate rules)
from fleet.errors import HealthReportError, UnitUnreachable
from fleet.health import HealthReport, parse_health
from fleet.models import CollectorStatus, Heartbeat, Unit
from fleet.settings import CollectorSettings
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

_STATE_TO_STATUS = {"ok": "online", "degraded": "degraded", "updating": "updating"}

#: How often the maintaining collector rolls heartbeats up (the 1-minute rollup's bucket).
ROLLUP_EVERY = timedelta(minutes=1)
#: How often it prunes rows past their retention (raw 24 h, 1-minute 30 d, 1-hour 1 y).
PRUNE_EVERY = timedelta(hours=1)


@dataclass(frozen=True)
class PollTarget:
    """What the collector needs to know of a unit to poll it."""

    id: int
    serial: str
    agent_url: str
    status: str
    last_heartbeat_at: datetime | None
    created_at: datetime
    poll_failures: int
    #: Flap detection's observations and flag (``fleet.unit_states``).
    state_history: str = ""
    flapping: bool = False
    flapping_since: datetime | None = None


#: PollTarget fields a not-yet-written unit update overrides (``Collector._load_targets``).
_PENDING_FIELDS = ("status", "last_heartbeat_at", "poll_failures", "state_history", "flapping", "flapping_since")


@dataclass(frozen=True)
class PollOutcome:
    """The result of polling one unit: a report, or what went wrong."""

    serial: str
    received_at: datetime
    report: HealthReport | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.report is not None


@dataclass(frozen=True)
class CycleResult:
    """One poll cycle over the collector's units.

    Attributes
    ----------
    started_at
        When the cycle began (aware UTC).
    duration_s
        Wall time of polling plus writing, seconds.
    polled, ok, failed
        Units polled, answered with a valid heartbeat, failed.
    written
        Heartbeat rows committed in this cycle (including earlier pending ones).
    pending
        Heartbeat rows held in memory because the database write failed.
    db_error
        Why the database write (or the unit list read) failed, or None.
    outcomes
        Per unit serial, its :class:`PollOutcome` (a per-unit result, never all-or-nothing).
    """

    started_at: datetime
    duration_s: float
    polled: int
    ok: int
    failed: int
    written: int
    pending: int
    db_error: str | None = None
    outcomes: Mapping[str, PollOutcome] = field(default_factory=dict)

    def succeeded_units(self) -> dict[str, PollOutcome]:
        return {s: o for s, o in self.outcomes.items() if o.ok}

    def failed_units(self) -> dict[str, PollOutcome]:
        return {s: o for s, o in self.outcomes.items() if not o.ok}


def default_collector_name(shard: tuple[int, int] | None = None) -> str:
    """``host:pid`` (plus ``shard I/N``): the key of this process's collector status row."""
    base = f"{socket.gethostname()}:{os.getpid()}"
    return f"{base} shard {shard[0]}/{shard[1]}" if shard else base


class _Transient(Exception):
    """A connection-level failure worth retrying (refused, reset, dropped)."""


def _describe_transport_error(exc: BaseException) -> tuple[str, bool]:
    """A readable reason for an HTTP failure and whether a retry may help."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "unreachable: the unit closed the connection without answering", True
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return "timeout: no complete answer in time", False
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"unreachable: cannot connect ({exc.os_error.strerror or exc.os_error})", True
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"unreachable: answer cut off ({exc})", True
    return f"unreachable: {type(exc).__name__}: {exc}", True


class Collector:
    """Polls units and stores their heartbeats.

    Parameters
    ----------
    session_factory
        Makes the sessions of each cycle's unit of work.
    clock
        Returns aware UTC now; heartbeats are stamped with it.
    settings
        Tuning; defaults from :class:`fleet.settings.CollectorSettings`.
    name
        Key of this collector's row in ``collector_status``; default ``host:pid``.
    shard
        ``(i, n)`` with 1 ≤ i ≤ n: poll only units whose ``id % n == i - 1``, so that n collector
        processes share a fleet with no unit polled twice or missed.
    maintenance
        After each cycle, roll heartbeats up (every :data:`ROLLUP_EVERY`), evaluate the alert rules
        and prune old rows (every :data:`PRUNE_EVERY`). Default: on, except for shards other than
        the first, so that a sharded fleet has one maintainer.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        clock: Clock = utc_now,
        settings: CollectorSettings | None = None,
        name: str | None = None,
        shard: tuple[int, int] | None = None,
        maintenance: bool | None = None,
    ) -> None:
        if shard is not None and not (1 <= shard[0] <= shard[1]):
            raise ValueError(f"shard {shard[0]}/{shard[1]} is out of range: use I/N with 1 <= I <= N")
        self._session_factory = session_factory
        self._clock = clock
        self.settings = settings or CollectorSettings()
        self.shard = shard
        self.name = name or default_collector_name(shard)
        self._started_at = clock()
        self._client: aiohttp.ClientSession | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._targets: list[PollTarget] = []
        self._pending_heartbeats: deque[dict] = deque(maxlen=self.settings.max_pending_rows)
        self._pending_units: dict[int, dict] = {}
        self._offline_thresholds = unit_states.OfflineThresholds(self.settings.offline_after_s)
        self._dropped_rows = 0
        self.maintenance = maintenance if maintenance is not None else (shard is None or shard[0] == 1)
        self._last_rollup: datetime | None = None
        self._last_prune: datetime | None = None
        self.last_maintenance_error: str | None = None
        self._maintenance_task: asyncio.Task | None = None

    # -- HTTP ---------------------------------------------------------------------------------
    def _ensure_client(self) -> aiohttp.ClientSession:
        if self._client is None or self._client.closed:
            s = self.settings
            connector = aiohttp.TCPConnector(limit=s.concurrency, limit_per_host=0, ttl_dns_cache=300)
            self._client = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=True,
                headers={"Accept": "application/json", "User-Agent": "speakerops-collector"},
                timeout=aiohttp.ClientTimeout(total=s.connect_timeout_s + s.read_timeout_s,
                                              sock_connect=s.connect_timeout_s, sock_read=s.read_timeout_s),
            )
            self._semaphore = asyncio.Semaphore(s.concurrency)
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client (idempotent)."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _fetch(self, url: str) -> bytes:
        s = self.settings
        client = self._ensure_client()
        try:
            async with client.get(url) as resp:
                if resp.status != 200:
                    detail = (await resp.content.read(200)).decode("utf-8", "replace").strip()
                    raise UnitUnreachable(f"HTTP {resp.status} from the unit: {detail or resp.reason}")
                if resp.content_length is not None and resp.content_length > s.max_body_bytes:
                    raise HealthReportError(
                        f"answer of {resp.content_length} bytes is over the {s.max_body_bytes}-byte limit")
                # read to the end, but never more than the limit (``read(n)`` alone returns what has
                # arrived so far, which cut bodies that came in several packets)
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    if size > s.max_body_bytes:
                        raise HealthReportError(f"answer is over the {s.max_body_bytes}-byte limit")
                    chunks.append(chunk)
                return b"".join(chunks)
        except (UnitUnreachable, HealthReportError):
            raise
        except TimeoutError as exc:
            raise UnitUnreachable(
                f"timeout: no complete answer within {s.connect_timeout_s + s.read_timeout_s:.1f} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            message, transient = _describe_transport_error(exc)
            if transient:
                raise _Transient(message) from exc
            raise UnitUnreachable(message) from exc

    async def _fetch_again(self, url: str) -> bytes:
        """Retry a fetch whose first attempt failed transiently: ``retries`` more attempts with
        exponential backoff and jitter. Only failed polls pay for tenacity's machinery (its
        per-call set-up was ~10 % of a 10,000-unit cycle's CPU when every poll went through it)."""
        s = self.settings
        # the waits after retries 1, 2, … are those after attempts 2, 3, … of the whole poll
        wait = wait_exponential_jitter(multiplier=2 * s.backoff_s, max=2.0, jitter=s.backoff_s)
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(s.retries),
            wait=wait,
            retry=retry_if_exception(lambda e: isinstance(e, _Transient)),
            reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number == 1:  # the backoff after the first failure
                    await asyncio.sleep(s.backoff_s + random.uniform(0, s.backoff_s))
                return await self._fetch(url)
        raise AssertionError("unreachable: tenacity reraises the last failure")

    async def _poll(self, target: PollTarget) -> PollOutcome:
        url = target.agent_url.rstrip("/") + "/v1/health"
        s = self.settings
        assert self._semaphore is not None
        async with self._semaphore:
            try:
                try:
                    body = await self._fetch(url)
                except _Transient:
                    if s.retries < 1:
                        raise
                    body = await self._fetch_again(url)
                report = parse_health(body)
            except (_Transient, UnitUnreachable, HealthReportError) as exc:
                return PollOutcome(target.serial, self._clock(), error=str(exc))
            except Exception as exc:  # a bug must not stop the other units' polls
                logger.exception("unexpected error polling %s", target.serial)
                return PollOutcome(target.serial, self._clock(), error=f"internal error: {exc!r}")
        if report.serial != target.serial:
            return PollOutcome(
                target.serial, self._clock(),
                error=(f"identity mismatch: the unit at {target.agent_url} answered as {report.serial!r}; "
                       "check the inventory (agent URL or serial changed)"),
            )
        return PollOutcome(target.serial, self._clock(), report=report)

    # -- database -----------------------------------------------------------------------------
    def _load_targets(self) -> list[PollTarget]:
        stmt = select(Unit.id, Unit.serial, Unit.agent_url, Unit.status, Unit.last_heartbeat_at,
                      Unit.created_at, Unit.poll_failures, Unit.state_history, Unit.flapping,
                      Unit.flapping_since).order_by(Unit.id)
        if self.shard is not None:
            i, n = self.shard
            stmt = stmt.where(Unit.id % n == i - 1)
        with self._session_factory() as session:
            rows = session.execute(stmt).all()
            # per-group offline thresholds: one query on the policies per cycle (fleet.unit_states)
            self._offline_thresholds.refresh(session, (r[0] for r in rows), self._clock())
        targets = []
        for row in rows:
            t = PollTarget(*row)
            pending = self._pending_units.get(t.id)
            if pending:  # the database has not seen our latest view of this unit yet
                t = replace(t, **{k: pending[k] for k in _PENDING_FIELDS if k in pending})
            targets.append(t)
        return targets

    def _unit_update(self, t: PollTarget, o: PollOutcome) -> tuple[dict, dict | None]:
        now = o.received_at
        flap = unit_states.observe(t.state_history, t.flapping, t.flapping_since, o.report is not None, now,
                                   t.serial).changed_columns(t.state_history, t.flapping)
        if o.report is not None:
            r = o.report
            status = _STATE_TO_STATUS[r.state]
            versions = r.model_versions()
            upd = {
                "id": t.id, "status": status, "last_heartbeat_at": now, "last_poll_at": now,
                "last_poll_error": None, "poll_failures": 0, "updated_at": now,
                "clock_skew_s": (r.time - now).total_seconds() if r.time else None, **flap,
                **{f"{k}_version": v for k, v in versions.items() if v},
            }
            hb = {
                "unit_id": t.id, "received_at": now, "unit_time": r.time, "state": r.state,
                "uptime_s": r.uptime_s, "cpu_pct": r.cpu_pct, "temp_c": r.temp_c, "mem_pct": r.mem_pct,
                "disk_free_mb": r.disk_free_mb, "mic_noise_dbfs": r.mic_noise_dbfs,
                "wifi_rssi_dbm": r.wifi_rssi_dbm, "wake_false_accepts_per_h": r.wake_false_accepts_per_h,
                "requests": r.requests, "errors": r.errors, "latency_ms": r.latency_ms,
                **{f"{k}_version": v for k, v in versions.items()},
            }
        else:
            since = t.last_heartbeat_at or t.created_at
            silent_s = (now - since).total_seconds()
            offline_after_s = self._offline_thresholds.offline_after_s(t.id)
            status = "offline" if silent_s >= offline_after_s else t.status
            upd = {"id": t.id, "status": status, "last_poll_at": now, "last_poll_error": o.error,
                   "poll_failures": t.poll_failures + 1, "updated_at": now, **flap}
            hb = None
        if status != t.status:
            upd["status_changed_at"] = now
        return upd, hb

    def _write(self, heartbeats: list[dict], units: list[dict], status: dict) -> None:
        with self._session_factory.begin() as session:
            if heartbeats:
                session.execute(insert(Heartbeat), heartbeats)
            if units:
                session.execute(update(Unit), units)
            session.merge(CollectorStatus(**status))

    def _write_dropping_deleted_units(self, heartbeats: list[dict], units: list[dict], status: dict) -> int:
        """Write; if units were deleted since the poll, drop their rows and write the rest."""
        try:
            self._write(heartbeats, units, status)
            return len(heartbeats)
        except IntegrityError:
            with self._session_factory() as session:
                alive = set(session.scalars(select(Unit.id)))
            kept_hb = [h for h in heartbeats if h["unit_id"] in alive]
            kept_units = [u for u in units if u["id"] in alive]
            logger.warning("dropped %d heartbeats of %d units deleted during the cycle",
                           len(heartbeats) - len(kept_hb), len(units) - len(kept_units))
            self._write(kept_hb, kept_units, status)
            return len(kept_hb)

    # -- cycles -------------------------------------------------------------------------------
    async def run_cycle(self, *, background_maintenance: bool = False) -> CycleResult:
        """Poll every unit once and write the results; never raises for a unit or DB failure.

        Maintenance (rollups, alert rules, pruning; :meth:`_maintain`) follows a successful write.
        With ``background_maintenance`` it runs in a worker thread while the next cycle polls
        (as :meth:`run` does: at 10,000 units it takes seconds, which would otherwise come out of
        the 10 s poll interval); a maintenance still running when the next one is due is skipped
        that cycle. Otherwise it is awaited. ``duration_s`` never includes it.
        """
        started_at = self._clock()
        t0 = time.perf_counter()
        self._ensure_client()
        db_error = None
        try:
            self._targets = await asyncio.to_thread(self._load_targets)
        except SQLAlchemyError as exc:
            db_error = f"cannot read the unit list ({_short(exc)}); polling the {len(self._targets)} units known"
            logger.warning(db_error)
        targets = self._targets
        outcomes = await asyncio.gather(*(self._poll(t) for t in targets))

        before = len(self._pending_heartbeats)
        for t, o in zip(targets, outcomes, strict=True):
            upd, hb = self._unit_update(t, o)
            self._pending_units[t.id] = {**self._pending_units.get(t.id, {}), **upd}
            if hb is not None:
                self._pending_heartbeats.append(hb)
        dropped = before + sum(o.ok for o in outcomes) - len(self._pending_heartbeats)
        if dropped > 0:
            self._dropped_rows += dropped
            logger.error("pending heartbeats over %d rows: dropped the %d oldest (%d in all)",
                         self.settings.max_pending_rows, dropped, self._dropped_rows)

        ok = sum(o.ok for o in outcomes)
        heartbeats = list(self._pending_heartbeats)
        units = list(self._pending_units.values())
        duration = time.perf_counter() - t0
        status = {
            "name": self.name, "started_at": self._started_at, "last_cycle_at": started_at,
            "cycle_s": duration, "interval_s": self.settings.interval_s, "units_polled": len(targets),
            "units_ok": ok, "units_failed": len(targets) - ok, "pending_rows": 0, "last_error": db_error,
        }
        written = 0
        try:
            written = await asyncio.to_thread(self._write_dropping_deleted_units, heartbeats, units, status)
            self._pending_heartbeats.clear()
            self._pending_units.clear()
        except SQLAlchemyError as exc:
            db_error = (f"database write failed ({_short(exc)}); {len(heartbeats)} heartbeats kept in memory "
                        "and retried next cycle")
            logger.warning(db_error)
        duration = time.perf_counter() - t0
        if self.maintenance and db_error is None:
            if background_maintenance:
                self._start_maintenance(self._clock())
            else:
                await asyncio.to_thread(self._maintain, self._clock())
        result = CycleResult(
            started_at=started_at, duration_s=duration, polled=len(targets), ok=ok,
            failed=len(targets) - ok, written=written, pending=len(self._pending_heartbeats),
            db_error=db_error, outcomes={o.serial: o for o in outcomes},
        )
        logger.info("cycle: %d polled, %d ok, %d failed, %d written, %d pending in %.2f s",
                    result.polled, result.ok, result.failed, result.written, result.pending, result.duration_s)
        return result

    def _start_maintenance(self, now: datetime) -> None:
        task = self._maintenance_task
        if task is not None and not task.done():
            logger.info("maintenance of the previous cycle still running; skipped this cycle's")
            return
        self._maintenance_task = asyncio.create_task(asyncio.to_thread(self._maintain, now))

    async def wait_maintenance(self) -> None:
        """Wait for a maintenance started in the background (no-op if none runs)."""
        if self._maintenance_task is not None:
            await asyncio.gather(self._maintenance_task, return_exceptions=True)
            self._maintenance_task = None

    def _maintain(self, now: datetime) -> None:
        """Rollups, alert rules and retention; a failure is logged and kept in
        ``last_maintenance_error``, never raised: collection goes on."""
        steps = [("alerts", lambda s: alerts.evaluate(s, now))]
        if self._last_rollup is None:  # first maintenance of this process: the built-in rules exist
            steps.insert(0, ("alert rules", lambda s: alerts.ensure_builtin_rules(s, now)))
        if self._last_rollup is None or now - self._last_rollup >= ROLLUP_EVERY:
            steps.insert(0, ("rollups", lambda s: rollups.compute_rollups(s, now)))
            self._last_rollup = now
        if self._last_prune is None or now - self._last_prune >= PRUNE_EVERY:
            steps.append(("prune", lambda s: rollups.prune(s, now)))
            self._last_prune = now
        errors = []
        for name, step in steps:
            try:
                with self._session_factory.begin() as session:
                    step(session)
            except Exception as exc:  # one failing step must not stop the others or the polling
                logger.exception("maintenance step %s failed", name)
                errors.append(f"{name}: {_short(exc)}")
        self.last_maintenance_error = "; ".join(errors) or None

    async def run(self, stop: asyncio.Event, on_cycle: Callable[[CycleResult], None] | None = None) -> None:
        """Run cycles every ``interval_s`` until ``stop`` is set; closes the client at the end."""
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                t0 = loop.time()
                result = await self.run_cycle(background_maintenance=True)
                if on_cycle is not None:
                    try:
                        on_cycle(result)
                    except Exception:
                        logger.exception("on_cycle callback failed")
                delay = max(0.0, self.settings.interval_s - (loop.time() - t0))
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    pass
        finally:
            await self.wait_maintenance()
            await self.aclose()


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class BackgroundCollector:
    """Runs a :class:`Collector` on its own asyncio loop in a daemon thread.

    ``on_cycle`` is called from the collector's thread after every cycle; a GUI must hand the
    result to its own thread (the console uses a queued signal).
    """

    def __init__(self, collector: Collector, on_cycle: Callable[[CycleResult], None] | None = None) -> None:
        self.collector = collector
        self._on_cycle = on_cycle
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._ready = threading.Event()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread; returns once its loop runs."""
        if self.is_running:
            return
        self._ready.clear()
        self._thread = threading.Thread(target=self._main, name="speakerops-collector", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._stop = asyncio.Event()
            self._task = loop.create_task(self.collector.run(self._stop, self._on_cycle))
            loop.call_soon(self._ready.set)
            try:
                loop.run_until_complete(self._task)
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.exception("collector stopped by an error")
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._ready.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the collector to finish its cycle and stop; cancel it if it takes over ``timeout``."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            return
        if self._stop is not None:
            loop.call_soon_threadsafe(self._stop.set)
        thread.join(timeout)
        if thread.is_alive() and self._task is not None:
            loop.call_soon_threadsafe(self._task.cancel)
            thread.join(timeout)
        if thread.is_alive():
            logger.error("collector thread did not stop within %.1f s", 2 * timeout)
