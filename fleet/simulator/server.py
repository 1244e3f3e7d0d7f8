"""The fleet simulator's HTTP side: every unit's agent on one aiohttp port, plus fault injection.

Routes (docs/unit-api.md for the unit ones):

``GET /units/<serial>/v1/info``, ``/v1/health``, ``/v1/metrics``
    The unit agent. Unknown serial: 404 ``{"error": ...}``. A unit that is offline (its
    behaviour says so, or the ``offline`` fault) drops the connection without answering.
``POST /units/<serial>/v1/selftest``
    The unit plays a reference phrase and answers what its microphone recorded
    (``fleet.simulator.recordings.selftest_capture``: room noise, failing microphone).
``POST /sim/units/<serial>/fault``
    Body ``{"fault": F, "delay_s": 5.0}`` with F in :data:`FAULTS`; answers the unit's fault.
``GET /sim/units``
    ``{"units": [{"serial", "agent_url", "ssh_port", "fault"}, ...]}``.

:class:`Simulator` runs the server on its own asyncio loop in a daemon thread, and the SSH units
(:class:`fleet.simulator.sshd.SshUnit`) of the first ``ssh_units`` units.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from fleet.inventory import INVENTORY_COLUMNS
from fleet.models import STAGES
from fleet.simulator import behaviour
from fleet.simulator.behaviour import UnitSpec, generate_fleet
from fleet.simulator.sshd import SshUnit, ensure_client_key
from speakerops.timeutil import utc_now

logger = logging.getLogger(__name__)

#: Fault modes settable per unit (see the module docstring of docs/unit-api.md "Errors").
FAULTS: tuple[str, ...] = (
    "none", "offline", "slow", "malformed", "truncated", "http_error", "wrong_serial",
    "missing_field",
)
#: Window of requests behind ``/v1/metrics`` (it must not consume the heartbeat counters), s.
METRICS_WINDOW_S = 60.0
#: Bucket bounds of the ``speakerops_stage_latency_ms`` histogram, ms.
LATENCY_BUCKETS_MS: tuple[float, ...] = (50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000)
_GAUGES: tuple[tuple[str, str], ...] = (
    ("uptime_s", "Seconds since the agent started"),
    ("cpu_pct", "CPU use, percent of all cores"),
    ("temp_c", "SoC temperature, degrees Celsius"),
    ("mem_pct", "Memory in use, percent"),
    ("disk_free_mb", "Free space on the model partition, MiB"),
    ("mic_noise_dbfs", "Microphone idle noise floor, dBFS"),
    ("wifi_rssi_dbm", "Wi-Fi received signal strength, dBm"),
    ("wake_false_accepts_per_h", "Wake-word false accepts per hour"),
    ("requests", f"Voice requests in the last {METRICS_WINDOW_S:.0f} s"),
    ("errors", f"Failed voice requests in the last {METRICS_WINDOW_S:.0f} s"),
)


class _Unit:
    """Mutable per-unit state of the server: fault, previous-poll time, restart marker."""

    __slots__ = ("spec", "fault", "delay_s", "last_health", "ssh", "marker_ns", "booted_at")

    def __init__(self, spec: UnitSpec) -> None:
        self.spec = spec
        self.fault = "none"
        self.delay_s = 5.0
        self.last_health: datetime | None = None
        self.ssh: SshUnit | None = None
        self.marker_ns: int | None = None
        self.booted_at: datetime | None = None


class _HealthCollector:
    """prometheus_client collector over one health body (``collect`` yields metric families)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def collect(self) -> Iterator[Any]:
        serial = self.body["serial"]
        for field, doc in _GAUGES:
            if field in self.body:
                family = GaugeMetricFamily(f"speakerops_{field}", doc, labels=["serial"])
                family.add_metric([serial], float(self.body[field]))
                yield family
        info = GaugeMetricFamily("speakerops_model_info", "Installed model version (value 1)",
                                 labels=["serial", "kind", "version"])
        for kind, version in self.body["models"].items():
            info.add_metric([serial, kind, str(version)], 1.0)
        yield info
        hist = HistogramMetricFamily(
            "speakerops_stage_latency_ms",
            f"Pipeline stage durations of the requests of the last {METRICS_WINDOW_S:.0f} s, ms",
            labels=["serial", "stage"])
        for stage in STAGES:
            values = self.body["latency_ms"][stage]
            buckets = [(str(float(b)), float(sum(v <= b for v in values)))
                       for b in LATENCY_BUCKETS_MS]
            buckets.append(("+Inf", float(len(values))))
            hist.add_metric([serial, stage], buckets, float(sum(values)))
        yield hist


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status,
                        content_type="application/json")


def _drop(request: web.Request) -> web.Response:
    """Abort the connection: the client sees it dropped without an answer."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=503)  # never sent


class Simulator:
    """A simulated fleet: every unit's HTTP agent on one port, and real sshd for some units.

    Parameters
    ----------
    n_units
        Fleet size (serials ``SPK-000001`` …, see :func:`behaviour.generate_fleet`).
    seed
        Fleet seed; the same seed gives the same fleet and, at the same times, the same figures.
    host, port
        Listen address of the HTTP server; ``port=0`` picks a free port.
    ssh_units
        The first ``ssh_units`` units also get a real OpenSSH server (:class:`SshUnit`). Their
        HTTP agent reads the ``current`` symlinks and ``run/restart`` on every request, and they
        are always reachable (no offline/flapping behaviour) unless a fault is set.
    data_dir
        Where SSH units keep keys and install roots (``<data_dir>/client_key``,
        ``<data_dir>/units/<serial>/``). None: a temporary directory removed by :meth:`stop`.
    clock
        Returns the aware UTC time the units report (tests pass a fake one); default: real time.

    Examples
    --------
    >>> with Simulator(100, seed=1) as sim:            # doctest: +SKIP
    ...     httpx.get(sim.agent_url("SPK-000001") + "/v1/health").json()
    """

    def __init__(self, n_units: int, seed: int = 0, host: str = "127.0.0.1", port: int = 0,
                 ssh_units: int = 0, data_dir: Path | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        if not 0 <= ssh_units <= n_units:
            raise ValueError(
                f"ssh_units must be between 0 and n_units ({n_units}), got {ssh_units}")
        self.seed = seed
        self.host = host
        self._requested_port = port
        self._n_ssh = ssh_units
        self._clock = clock
        self._own_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._units_list = generate_fleet(n_units, seed)
        self._units = {spec.serial: _Unit(spec) for spec in self._units_list}
        self._ssh: list[SshUnit] = []
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._selftest_runs: dict[str, int] = {}

    # ----------------------------------------------------------------- properties
    @property
    def units(self) -> list[UnitSpec]:
        """The fleet, in serial order."""
        return list(self._units_list)

    @property
    def ssh_units(self) -> list[SshUnit]:
        """The SSH-enabled units (started by :meth:`start`)."""
        return list(self._ssh)

    @property
    def port(self) -> int:
        """The HTTP port (0 until started)."""
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the HTTP server."""
        if not self._port:
            raise RuntimeError("the simulator is not started: call start() first")
        return f"http://{self.host}:{self._port}"

    def agent_url(self, serial: str) -> str:
        """The agent base URL of unit ``serial`` (the inventory's ``agent_url``)."""
        return f"{self.base_url}/units/{serial}"

    def ssh_unit(self, serial: str) -> SshUnit | None:
        """The SSH unit of ``serial``, or None if it has no SSH server."""
        unit = self._units.get(serial)
        return unit.ssh if unit is not None else None

    # ----------------------------------------------------------------- faults
    def set_fault(self, serial: str, fault: str, delay_s: float = 5.0) -> None:
        """Inject ``fault`` (one of :data:`FAULTS`) into unit ``serial``; ``none`` clears it.

        Raises
        ------
        KeyError
            Unknown serial.
        ValueError
            Unknown fault or negative delay.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        unit = self._units.get(serial)
        if unit is None:
            raise KeyError(f"unknown unit {serial!r}")
        unit.delay_s = float(delay_s)
        unit.fault = fault
        logger.info("fault of %s set to %s", serial, fault)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> Simulator:
        """Start the SSH units, then the HTTP server; return once both are listening.

        Raises
        ------
        RuntimeError
            sshd missing or failing to start, or the HTTP server failing to listen.
        """
        if self._thread is not None:
            return self
        try:
            self._start_ssh()
            self._start_http()
        except BaseException:
            self.stop()
            raise
        logger.info("simulator of %d units listening on %s (%d SSH units)",
                    len(self._units), self.base_url, len(self._ssh))
        return self

    def _start_ssh(self) -> None:
        if not self._n_ssh:
            return
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="speakerops-sim-"))
        _, authorized = ensure_client_key(self.data_dir)
        for spec in self._units_list[: self._n_ssh]:
            ssh = SshUnit(spec, self.data_dir, authorized, host=self.host)
            unit = self._units[spec.serial]
            unit.ssh = ssh
            unit.marker_ns = ssh.restart_marker_ns()
            self._ssh.append(ssh)
            ssh.launch()
        for ssh in self._ssh:
            ssh.wait_ready()

    def _start_http(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._port = int(sock.getsockname()[1])
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=1.0)
                loop.run_until_complete(runner.setup())
                loop.run_until_complete(web.SockSite(runner, sock, backlog=1024).start())
                self._runner = runner
            except BaseException as exc:  # noqa: BLE001 - handed to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(runner.cleanup())
                loop.close()

        self._thread = threading.Thread(target=run, name="speakerops-sim-http", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise RuntimeError(
                f"simulator HTTP server failed to start: {failure[0]}") from failure[0]

    def stop(self) -> None:
        """Stop the HTTP server and every sshd; safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            thread.join(10)
        for ssh in self._ssh:
            try:
                ssh.stop()
            except Exception:  # noqa: BLE001 - stop the others anyway
                logger.exception("failed to stop sshd of %s", ssh.serial)
        if self._own_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
        self._port = 0

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- inventory
    def write_inventory(self, path: Path) -> Path:
        """Write the inventory CSV (columns :data:`INVENTORY_COLUMNS`) for this running fleet.

        Tags are joined by ``;``, booleans written ``true``/``false``, ``ssh_*`` empty for units
        without SSH; an SSH unit's versions are read from its ``current`` symlinks.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(INVENTORY_COLUMNS)
            for spec in self._units_list:
                ssh = self._units[spec.serial].ssh
                models = ssh.models() if ssh is not None else spec.models
                writer.writerow([
                    spec.serial, spec.hardware_rev, spec.site, spec.region, spec.timezone,
                    self.agent_url(spec.serial),
                    ssh.host if ssh else "", ssh.port if ssh else "", ssh.user if ssh else "",
                    spec.firmware_version, models["stt"], models["qa"], models["tts"],
                    ";".join(spec.tags),
                    "true" if spec.consent_recordings else "false",
                    "true" if spec.consent_feedback_text else "false",
                ])
        logger.info("wrote inventory of %d units to %s", len(self._units_list), path)
        return path

    # ----------------------------------------------------------------- HTTP
    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/units/{serial}/v1/info", self._handle_info)
        app.router.add_get("/units/{serial}/v1/health", self._handle_health)
        app.router.add_get("/units/{serial}/v1/metrics", self._handle_metrics)
        app.router.add_post("/units/{serial}/v1/selftest", self._handle_selftest)
        app.router.add_post("/sim/units/{serial}/fault", self._handle_fault)
        app.router.add_get("/sim/units", self._handle_list)
        return app

    def _agent_view(self, unit: _Unit, now: datetime) -> tuple[dict[str, str] | None,
                                                               datetime | None]:
        """Models and restart time of an SSH unit, read from its install root now."""
        ssh = unit.ssh
        if ssh is None:
            return None, None
        marker = ssh.restart_marker_ns()
        if marker != unit.marker_ns:
            unit.marker_ns = marker
            if marker is not None:  # the voice service restarted: the agent starts again
                age_s = max(0.0, time.time() - marker / 1e9)
                unit.booted_at = now - timedelta(seconds=min(age_s, 60.0))
                logger.info("%s restarted its voice service", unit.spec.serial)
        return ssh.models(), unit.booted_at

    async def _prologue(self, request: web.Request) -> tuple[_Unit | None, web.Response | None]:
        """Common start of the agent routes: lookup, offline, slow and HTTP-error faults."""
        serial = request.match_info["serial"]
        unit = self._units.get(serial)
        if unit is None:
            return None, _json({"error": f"unknown unit {serial}"}, 404)
        fault = unit.fault
        if fault == "offline":
            return None, _drop(request)
        if unit.ssh is None and not behaviour.is_online(unit.spec, self._clock()):
            return None, _drop(request)
        if fault == "slow":
            await asyncio.sleep(unit.delay_s)
        elif fault == "http_error":
            return None, _json({"error": "voice service unavailable (injected fault)"}, 503)
        return unit, None

    def _answer(self, unit: _Unit, body: dict[str, Any]) -> web.Response:
        """Apply the body-level faults to an answer."""
        fault = unit.fault
        if fault == "wrong_serial":
            body["serial"] = f"SPK-{900001 + unit.spec.index:06d}"
        if fault == "malformed":
            return web.Response(body=b'{"serial": ', content_type="application/json")
        data = json.dumps(body, separators=(",", ":")).encode()
        if fault == "truncated":
            data = data[: len(data) // 2]
        return web.Response(body=data, content_type="application/json")

    async def _handle_info(self, request: web.Request) -> web.Response:
        unit, early = await self._prologue(request)
        if unit is None:
            return early  # type: ignore[return-value]
        now = self._clock()
        models, booted_at = self._agent_view(unit, now)
        return self._answer(unit, behaviour.info(unit.spec, now, models=models,
                                                 booted_at=booted_at))

    async def _handle_health(self, request: web.Request) -> web.Response:
        unit, early = await self._prologue(request)
        if unit is None:
            return early  # type: ignore[return-value]
        now = self._clock()
        models, booted_at = self._agent_view(unit, now)
        body = behaviour.health(unit.spec, now, unit.last_health, models=models,
                                booted_at=booted_at)
        unit.last_health = now
        if unit.fault == "missing_field":
            del body["cpu_pct"]
        return self._answer(unit, body)

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        unit, early = await self._prologue(request)
        if unit is None:
            return early  # type: ignore[return-value]
        now = self._clock()
        models, booted_at = self._agent_view(unit, now)
        body = behaviour.health(unit.spec, now, now - timedelta(seconds=METRICS_WINDOW_S),
                                models=models, booted_at=booted_at)
        if unit.fault == "wrong_serial":
            body["serial"] = f"SPK-{900001 + unit.spec.index:06d}"
        if unit.fault == "missing_field":
            del body["cpu_pct"]
        if unit.fault in ("malformed", "truncated"):
            return self._answer(unit, body)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_HealthCollector(body))  # type: ignore[arg-type]
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _handle_selftest(self, request: web.Request) -> web.Response:
        """``POST /v1/selftest``: play the reference phrase, record it (docs/unit-api.md)."""
        from fleet.simulator.recordings import SELFTEST_PHRASE, selftest_capture, write_wav

        unit, early = await self._prologue(request)
        if unit is None:
            return early  # type: ignore[return-value]
        phrase = SELFTEST_PHRASE
        if request.can_read_body:
            try:
                payload = await request.json()
                phrase = str((payload or {}).get("phrase") or SELFTEST_PHRASE)
            except (ValueError, AttributeError):
                return _json({"error": 'expected an empty body or JSON {"phrase": "..."}'}, 400)
        if not phrase.strip() or len(phrase) > 200:
            return _json({"error": "the phrase must be 1-200 characters"}, 400)
        run = self._selftest_runs.get(unit.spec.serial, 0)
        self._selftest_runs[unit.spec.serial] = run + 1
        now = self._clock()
        loop = asyncio.get_running_loop()  # synthesis and mixing take ~50 ms: off the event loop
        capture = await loop.run_in_executor(None, lambda: selftest_capture(unit.spec, phrase, run=run))
        if capture is None:
            return _json({"error": "the unit cannot play the reference (espeak-ng missing on the simulator)"}, 503)
        if unit.ssh is not None:  # the unit keeps its latest capture
            with contextlib.suppress(OSError):
                (unit.ssh.root / "run").mkdir(parents=True, exist_ok=True)
                write_wav(unit.ssh.root / "run" / "selftest-latest.wav", capture.samples)
        return _json({"serial": unit.spec.serial, "time": now.isoformat(timespec="seconds"), "run": run + 1,
                      **capture.as_json()})

    async def _handle_fault(self, request: web.Request) -> web.Response:
        serial = request.match_info["serial"]
        try:
            payload = await request.json()
            fault = payload["fault"]
            delay_s = float(payload.get("delay_s", 5.0))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _json({"error": f'expected JSON {{"fault": F, "delay_s": s}}: {exc}'}, 400)
        try:
            self.set_fault(serial, fault, delay_s)
        except KeyError:
            return _json({"error": f"unknown unit {serial}"}, 404)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"serial": serial, "fault": fault, "delay_s": delay_s})

    async def _handle_list(self, request: web.Request) -> web.Response:
        return _json({"units": [
            {"serial": serial, "agent_url": self.agent_url(serial),
             "ssh_port": unit.ssh.port if unit.ssh else None, "fault": unit.fault}
            for serial, unit in self._units.items()
        ]})

