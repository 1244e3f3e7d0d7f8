"""A 50 MB bundle to 50 simulated sshd units, 20 at a time: the real rollout engine vs OpenSSH ``scp``.

The engine run is a whole rollout (one group of every unit, at most 20 SSH sessions): connect
with host-key check, free-space check, SFTP upload, unit-side SHA-256 + signature check, symlink
switch, service restart and the health gate (the agent reports the new version and a healthy
state; the unit holds no SSH session then), and the clean-up. ``scp`` only copies the same file,
with the same parallelism, to the same servers. Target (issue #5): engine time ≤ 1.3 × scp time
(OpenSSH's default cipher). The engine offers AES-GCM first (``fleet.ssh.PREFERRED_CIPHERS``), so
``scp -c aes128-gcm@openssh.com`` is timed as well, for reference.

The machine's load average is printed before and after: other work on the 2 cores slows both sides
unevenly, so compare quiet runs. Every timed phase starts after ``sync``: the 2.5 GB an earlier
phase wrote is then not flushed to disk during a later phase (the first ``scp`` run's pages
otherwise reached their 30 s write-back age while the engine ran). ``scp`` runs before and after the
engine and the ratio is taken to the mean of the two (load drifting during the run then biases
neither side). CPU-seconds are printed for each side too, which other work disturbs less than wall
time: the console process (paramiko, the runner, the database, the health polls — and the
simulator's HTTP agent, which runs in this process too), the ``scp``/``ssh`` client processes, and
the units (each sshd with every session, shell and unit-side program it ran:
``utime+stime+cutime+cstime`` from ``/proc``). For the thread runner a timeline line says when the
last unit started its upload, verified, restarted and passed its health gate: the simulated units
report ``updating`` for ``fleet.simulator.behaviour.UPDATING_S`` (3 s) after a restart, so the last
gate alone adds ~3.3 s that ``scp`` does not pay.

Usage::

    .venv/bin/python benchmarks/rollout_vs_scp.py [--units 50] [--mb 50] [--parallel 20] [--workers threads]

Prints both wall times, the throughput of each and the ratio. Starting 50 sshd units takes a
while; the database is a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet.inventory import import_units  # noqa: E402
from fleet.registry import import_bundle  # noqa: E402
from fleet.rollout import RolloutRunner  # noqa: E402
from fleet.rollout_control import create_rollout  # noqa: E402
from fleet.rollout_models import RolloutUnit  # noqa: E402
from fleet.rollout_plan import RolloutPlan  # noqa: E402
from fleet.settings import SshSettings  # noqa: E402
from fleet.signing import Signer  # noqa: E402
from fleet.simulator import Simulator  # noqa: E402
from fleet.ssh import SshConnector  # noqa: E402
from inference_core.bundles import write_manifest  # noqa: E402
from sqlalchemy import select  # noqa: E402
from speakerops.db import make_engine, make_session_factory, upgrade  # noqa: E402

VERSION = "stt-bench-1.0"


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` (itself and the children it reaped), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) * _TICK_S


def cpu_now(sim: Simulator) -> dict[str, float]:
    """CPU-seconds so far: ``console`` (this process, and with ``--workers processes`` the worker
    processes, reaped by the forkserver, and the manager), ``clients`` (reaped child processes:
    scp, ssh) and ``units`` (every unit's sshd and the sessions it reaped)."""
    import resource

    sshd = {u.pid for u in sim.ssh_units if u.pid is not None}
    units = sum(_tree_cpu_s(pid) for pid in sshd)
    helpers = 0.0  # live children other than the units' sshd: forkserver (+ its workers), manager
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in sshd:
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == os.getpid():
                helpers += _tree_cpu_s(int(entry.name))
    own = os.times()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"console": own.user + own.system + helpers, "clients": kids.ru_utime + kids.ru_stime, "units": units}


def cpu_since(sim: Simulator, before: dict[str, float]) -> dict[str, float]:
    time.sleep(0.5)  # the units' sshd reap their last sessions
    now = cpu_now(sim)
    return {k: now[k] - before[k] for k in now}


def _cpu_text(cpu: dict[str, float]) -> str:
    return (f"{sum(cpu.values()):5.1f} CPU-s (console {cpu['console']:.1f}, scp/ssh {cpu['clients']:.1f}, "
            f"units {cpu['units']:.1f})")


class StepTimeline:
    """Wraps :func:`fleet.unit_update.update_unit` (threads mode) to note when each unit reached
    each step, seconds since the rollout started: where the wall time goes."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.steps: dict[str, dict[str, float]] = {}

    def __call__(self, *args, on_step=lambda s, d: None, **kwargs):
        from fleet.unit_update import update_unit

        serial = args[2].serial
        marks = self.steps.setdefault(serial, {"start": time.perf_counter() - self.t0})

        def noting(step, detail):
            marks.setdefault(str(step), time.perf_counter() - self.t0)
            on_step(step, detail)

        return update_unit(*args, on_step=noting, **kwargs)

    def report(self, end_s: float) -> str:
        def last(step: str) -> float:
            return max(m.get(step, 0.0) for m in self.steps.values())

        uploads = sorted(m["verify"] - m["upload"] for m in self.steps.values() if "verify" in m and "upload" in m)
        gates = sorted(m["done"] - m["health_gate"] for m in self.steps.values() if "done" in m)
        return (f"last upload started {last('upload'):.1f} s, last verify {last('verify'):.1f} s, last restart "
                f"{last('restart'):.1f} s, last gate passed {last('done'):.1f} s, end {end_s:.1f} s; upload per unit "
                f"median {statistics.median(uploads):.1f} s; health gate + clean-up per unit median "
                f"{statistics.median(gates):.1f} s")


def scp_all(sim: Simulator, key: Path, payload: Path, parallel: int, cipher: str | None = None) -> float:
    """Copy ``payload`` to every SSH unit's staging directory with ``scp``, ``parallel`` at a time
    (``cipher``: ``scp -c``; None: OpenSSH's default)."""
    def one(unit) -> None:
        dest = f"{unit.user}@{unit.host}:{unit.root / 'staging' / 'scp-bench.bin'}"
        subprocess.run(["scp", "-q", "-i", str(key), "-P", str(unit.port), "-o", "StrictHostKeyChecking=no",
                        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                        *(["-c", cipher] if cipher else []), str(payload), dest], check=True, timeout=600)

    os.sync()
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, sim.ssh_units))
    return time.perf_counter() - start


def reset_units(sim: Simulator) -> None:
    """Put every unit back on its old stt version and drop the benchmark version from it."""
    import shutil

    for u in sim.ssh_units:
        models = u.root / "models" / "stt"
        previous = os.readlink(models / "previous")
        tmp_link = models / "current.tmp"
        tmp_link.unlink(missing_ok=True)
        os.symlink(previous, tmp_link)
        os.replace(tmp_link, models / "current")
        shutil.rmtree(models / VERSION, ignore_errors=True)
        shutil.rmtree(u.root / "staging" / "stt", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=50)
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=20)
    ap.add_argument("--workers", choices=("threads", "processes", "both"), default="both",
                    help="How the engine runs units: a thread pool, worker processes, or each in turn.")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")

    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        sim = Simulator(args.units, seed=11, ssh_units=args.units, data_dir=tmp / "sim").start()
        print(f"started {args.units} sshd units in {time.perf_counter() - t0:.1f} s")
        try:
            signer = Signer.generate()
            for u in sim.ssh_units:
                u.trust_key(signer.public_pem, signer.key_id)
            src = tmp / "bundle" / "stt" / VERSION
            src.mkdir(parents=True)
            payload = src / "model.bin"
            with payload.open("wb") as f:
                for _ in range(args.mb):
                    f.write(os.urandom(1 << 20))
            write_manifest(src, "stt", VERSION, {"benchmark": True})

            engine = make_engine(f"sqlite:///{tmp / 'bench.db'}")
            upgrade(engine)
            sf = make_session_factory(engine)
            with sf.begin() as s:
                import_units(s, sim.write_inventory(tmp / "inventory.csv"), lambda: _now())
                import_bundle(s, src, tmp / "registry", signer)
            root = str(tmp / "sim" / "units" / "{serial}" / "root")
            settings = SshSettings(client_key_path=str(tmp / "sim" / "client_key"), install_root=root)
            connector = SshConnector(sf, settings, trust_on_first_use=True)
            modes = ["threads", "processes"] if args.workers == "both" else [args.workers]
            total_mb = args.units * args.mb
            times: dict[str, float] = {}
            cpus: dict[str, dict[str, float]] = {}
            timelines: dict[str, str] = {}
            per_unit: dict[str, tuple[float, float]] = {}
            before = cpu_now(sim)
            scp_first = scp_all(sim, tmp / "sim" / "client_key", payload, args.parallel)
            cpus["scp"] = cpu_since(sim, before)
            for i, mode in enumerate(modes):
                if i:  # back to the old version, so the next run uploads again
                    reset_units(sim)
                    with sf.begin() as s:
                        import_units(s, sim.write_inventory(tmp / "inventory.csv"), lambda: _now())
                with sf.begin() as s:
                    plan = RolloutPlan(kind="stt", version=VERSION, canary_units=0, waves_pct=[100],
                                       max_parallel=args.parallel, health_timeout_s=60, unit_timeout_s=600,
                                       gate={"enabled": False})
                    rid = create_rollout(s, plan, override_reason="benchmark: synthetic weights, not evaluated").id
                timeline = StepTimeline() if mode == "threads" else None
                runner = RolloutRunner(sf, connector, install_root=root, poll_s=0.1, workers=mode,
                                       update_unit=timeline)
                os.sync()
                before = cpu_now(sim)
                start = time.perf_counter()
                if timeline is not None:
                    timeline.t0 = start
                summary = runner.run(rid)
                times[mode] = time.perf_counter() - start
                cpus[mode] = cpu_since(sim, before)
                if timeline is not None:
                    timelines[mode] = timeline.report(times[mode])
                with sf() as s:
                    spans = sorted((u.finished_at - u.started_at).total_seconds() for u in s.execute(
                        select(RolloutUnit).where(RolloutUnit.rollout_id == rid)).scalars())
                per_unit[mode] = (statistics.median(spans), spans[-1])
                if summary.state != "completed" or summary.counts["succeeded"] != args.units:
                    print(f"rollout ({mode}) did not complete: {summary}", file=sys.stderr)
                    sys.exit(1)
            scp_last = scp_all(sim, tmp / "sim" / "client_key", payload, args.parallel)
            scp_s = (scp_first + scp_last) / 2
            gcm_s = scp_all(sim, tmp / "sim" / "client_key", payload, args.parallel, "aes128-gcm@openssh.com")
            for mode, engine_s in times.items():
                print(f"rollout engine ({mode:>9}): {engine_s:6.1f} s  ({total_mb / engine_s:6.1f} MB/s; "
                      f"{args.units} units × {args.mb} MB, {args.parallel} parallel; upload + verify + switch + "
                      "restart + health gate)")
                print(f"    per unit: median {per_unit[mode][0]:.1f} s, slowest {per_unit[mode][1]:.1f} s "
                      "(connect → clean-up after the health gate)")
                print(f"    {_cpu_text(cpus[mode])}")
                if mode in timelines:
                    print(f"    {timelines[mode]}")
            print(f"scp                       : {scp_s:6.1f} s  ({total_mb / scp_s:6.1f} MB/s; copy only; "
                  f"before the engine {scp_first:.1f} s, after {scp_last:.1f} s)")
            print(f"    {_cpu_text(cpus['scp'])} (the run before the engine)")
            print(f"scp -c aes128-gcm         : {gcm_s:6.1f} s  ({total_mb / gcm_s:6.1f} MB/s; copy only, the "
                  "engine's cipher)")
            for mode, engine_s in times.items():
                print(f"ratio engine ({mode})/scp: {engine_s / scp_s:.2f} (target ≤ 1.3); "
                      f"/ scp -c aes128-gcm: {engine_s / gcm_s:.2f}; CPU-seconds engine/scp: "
                      f"{sum(cpus[mode].values()) / sum(cpus['scp'].values()):.2f}")
            engine.dispose()
        finally:
            sim.stop()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _now():
    from speakerops.timeutil import utc_now

    return utc_now()


if __name__ == "__main__":
    main()
