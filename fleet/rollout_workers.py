"""Helpers of :mod:`fleet.rollout`: the runner's lease (which process runs a rollout), the count of
units that need SSH (:func:`note_ssh_phase`) and the worker processes of
``RolloutRunner(workers="processes")``.

A rollout is held by one runner at a time (``rollouts.runner`` = ``host:pid``, renewed in
``runner_seen_at``). A lease of a dead process on this host, or one not renewed for
:data:`LEASE_S` by another host, may be taken over — so ``kill -9`` of a runner and a new
``speakerops rollout run`` resume at once, while two live runners never work on one rollout.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet.models import Unit
from fleet.rollout_control import RolloutError, get_rollout
from fleet.rollout_models import Rollout, RolloutUnit
from speakerops import audit
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

#: A runner's lease lasts this long without renewal (another host may then take over), s.
LEASE_S = 60.0


def runner_id() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed child not yet reaped) is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def lease_is_live(rollout: Rollout, now: datetime, me: str) -> bool:
    """True if a runner other than ``me`` holds the rollout and is alive (same host: its pid
    exists; other host: it renewed the lease within :data:`LEASE_S`)."""
    if not rollout.runner or rollout.runner == me:
        return False
    host, _, pid = rollout.runner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return _pid_alive(int(pid))
    seen = rollout.runner_seen_at
    return seen is not None and now - seen < timedelta(seconds=LEASE_S)



class RolloutBusy(RolloutError):
    """Another live process runs this rollout."""


def note_ssh_phase(step: Any, busy: Any, wake: Any = None) -> None:
    """Keep a unit's ``busy`` flag (an Event, or a manager's proxy of one) for the runner's count of
    units that need SSH: set from the start, cleared when the unit reaches its health gate (it
    holds no session then, ``fleet.unit_update``), set again for a rollback. The runner starts
    another unit only while fewer than K units are busy; ``wake`` tells it at once. A unit that
    fails before its gate stays busy until its result is recorded (so the error threshold is
    applied before the next unit starts)."""
    name = str(step)
    if name == "health_gate" and busy.is_set():
        busy.clear()
        if wake is not None:
            wake.set()
    elif name == "rollback":
        busy.set()


def claim_lease(sf: sessionmaker[Session], rollout_id: int, me: str, clock: Clock) -> set[int]:
    """Take the rollout for runner ``me`` (a ``planned`` rollout starts); put units a killed runner
    left ``in_progress`` back to ``pending`` and return their row ids (they are run again:
    ``update_unit`` converges).

    Raises
    ------
    RolloutBusy
        Another live runner holds it (:func:`lease_is_live`).
    """
    interrupted: set[int] = set()
    with sf.begin() as s:
        r = get_rollout(s, rollout_id)
        now = clock()
        if lease_is_live(r, now, me):
            raise RolloutBusy(f"rollout #{rollout_id} is being run by {r.runner} (last seen "
                              f"{r.runner_seen_at:%Y-%m-%d %H:%M:%S} UTC); stop that process first, "
                              "or wait for its lease to lapse")
        if r.runner and r.runner != me:
            logger.warning("rollout #%d: taking over from %s", rollout_id, r.runner)
        r.runner, r.runner_seen_at = me, now
        if r.state == "planned":
            r.state, r.started_at, r.updated_at = "running", now, now
            audit.record(s, "rollout.start", "rollout", r.id, before={"state": "planned"},
                         after={"state": "running"}, clock=clock)
        for u in s.execute(select(RolloutUnit).where(RolloutUnit.rollout_id == rollout_id,
                                                     RolloutUnit.state == "in_progress")).scalars():
            interrupted.add(u.id)
            logger.warning("rollout #%d: %s was in progress (step %s) when its runner stopped; running it "
                           "again", rollout_id, u.serial, u.step_reached)
            u.state = "pending"
            u.error = f"interrupted at step {u.step_reached or 'start'}; resumed"
            u.updated_at = now
    return interrupted


def release_lease(sf: sessionmaker[Session], rollout_id: int, me: str, clock: Clock) -> None:
    """Give the rollout up (if ``me`` still holds it)."""
    with sf.begin() as s:
        r = s.get(Rollout, rollout_id)
        if r is not None and r.runner == me:
            r.runner, r.runner_seen_at = None, clock()


# -- worker processes (RolloutRunner(workers="processes")) -----------------------------------------
@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to rebuild the runner's parts (picklable)."""

    db_url: str
    ssh_settings: dict[str, Any]
    trust_on_first_use: bool
    agent_urls: dict[str, str]
    #: The parent's data directory: its secret store holds the SSH client key (when no key file).
    data_dir: str | None = None


_WORKER_PARTS: list[tuple[WorkerSpec, tuple[Any, Any, Any]]] = []


def _worker_parts(spec: WorkerSpec) -> tuple[Any, Any, Any]:
    """Session factory, SSH connector and health check of this worker process (built once)."""
    parts = next((p for s, p in _WORKER_PARTS if s == spec), None)
    if parts is None:
        import httpx

        from fleet import unit_update
        from fleet.settings import SshSettings
        from fleet.ssh import SshConnector
        from speakerops.db import make_engine, make_session_factory

        sf = make_session_factory(make_engine(spec.db_url))
        connector = SshConnector(sf, SshSettings(**spec.ssh_settings), trust_on_first_use=spec.trust_on_first_use,
                                 data_dir=Path(spec.data_dir) if spec.data_dir else None)
        # one client for the life of the worker: no TLS context and connection set-up per poll
        health = unit_update.default_health_check(spec.agent_urls.__getitem__, client=httpx.Client())
        parts = (sf, connector, health)
        _WORKER_PARTS[:] = [(spec, parts)]
    return parts


def process_update(spec: WorkerSpec, row_id: int, target: Any, kind: str, version: str, bundle_dir: Path,
                   health_timeout_s: float, timeout_s: float, cancel: Any, ssh_slot: Any = None,
                   busy: Any = None, wake: Any = None) -> Any:
    """One unit's update in a worker process; steps are committed as in the thread runner.
    ``ssh_slot``, ``busy``, ``wake``: the runner's session semaphore and events (manager proxies)."""
    from fleet import unit_update

    sf, connector, health = _worker_parts(spec)
    last: list[str] = ["connect"]

    def on_step(step: Any, detail: Any = None) -> None:
        if str(step) == last[0]:
            return
        last[0] = str(step)
        if busy is not None:
            note_ssh_phase(step, busy, wake)
        with sf.begin() as s:
            u = s.get(RolloutUnit, row_id)
            if u is not None:
                u.step_reached, u.updated_at = str(step), utc_now()

    return unit_update.update_unit(connector, sf, target, kind, version, bundle_dir, health_check=health,
                                   health_timeout_s=health_timeout_s, timeout_s=timeout_s, on_step=on_step,
                                   cancelled=cancel.is_set, ssh_slot=ssh_slot)


def process_pool(sf: sessionmaker[Session], connector: Any, install_root: str | None,
                 workers: int) -> tuple[ProcessPoolExecutor, Any, WorkerSpec]:
    """A forkserver pool of ``workers`` processes for :func:`process_update`, a started
    multiprocessing manager (for events and the session semaphore) and the spec the workers
    rebuild the runner's parts from (database URL, SSH settings with the client key, agent URLs)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["fleet.rollout", "fleet.unit_update"])
    manager = ctx.Manager()
    # a key file when the parent uses one; else the workers open the same secret store (data_dir)
    settings = connector.settings.model_copy(
        update={"client_key_path": str(connector.key_path) if connector.key_path is not None else None})
    if install_root is not None:
        settings = settings.model_copy(update={"install_root": install_root})
    with sf() as s:
        urls = dict(s.execute(select(Unit.serial, Unit.agent_url)).all())
    spec = WorkerSpec(sf.kw["bind"].url.render_as_string(hide_password=False), settings.model_dump(),
                      bool(connector.known_hosts.trust_on_first_use), urls, str(connector.keys.data_dir))
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx), manager, spec


def accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    """True if ``fn`` takes the keyword ``name`` (or ``**kwargs``): a custom ``update_unit`` that
    does not know ``ssh_slot`` keeps its SSH slot for the whole unit."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def registry_bundle_dir(session: Session, kind: str, version: str) -> Path:
    """The registry's stored, signed copy of ``kind``/``version`` (``ModelVersion.source_path``)."""
    from fleet.models import ModelVersion

    mv = session.execute(select(ModelVersion).where(ModelVersion.kind == kind,
                                                    ModelVersion.version == version)).scalar_one_or_none()
    if mv is None:
        raise RolloutError(f"{kind} {version} is not in the model registry; import it first "
                           "(speakerops models import BUNDLE_DIR)")
    return Path(mv.source_path)
