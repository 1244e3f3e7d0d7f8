"""Bulk transfer to many units: SpeakerOps' SFTP uploader (``fleet.ssh.UnitSession.upload``) against
OpenSSH's own ``scp`` with the same parallelism, to the same real sshd units of the simulator.

One file of ``--mb`` MB goes to each of ``--units`` units, ``--parallel`` at a time:

* ``scp``: one ``scp`` process per unit (a thread pool waits on them);
* ``uploader/threads``: the uploader in a thread pool (one SSH connection per unit, in one
  process: paramiko's Python per packet shares the GIL);
* ``uploader/processes``: the same uploader spread over ``--parallel`` worker processes.

Every copy is checked (size + SHA-256 on the unit, which the uploader does anyway). Prints the
seconds of each and the ratio to scp (issue #5's target for a whole rollout: ≤ 1.3 × scp).
Usage::

    .venv/bin/python benchmarks/rollout_transfer.py --units 20 --parallel 10 --mb 50
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from fleet.models import KnownHost
from fleet.settings import SshSettings
from fleet.simulator import Simulator
from fleet.ssh import SshConnector, UnitTarget
from speakerops.db import make_engine, make_session_factory, upgrade

_WORKER: dict = {}


def _scp(key: Path, target: UnitTarget, local: Path, remote: str) -> None:
    subprocess.run(["scp", "-q", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o",
                    "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-P", str(target.port), str(local),
                    f"{target.user}@{target.host}:{remote}"], check=True, timeout=600)


def _init_worker(db_url: str, key: str) -> None:
    engine = make_engine(db_url)
    _WORKER["connector"] = SshConnector(make_session_factory(engine), SshSettings(client_key_path=key))


def _upload(target: UnitTarget, local: str, sha: str, connector: SshConnector | None = None) -> int:
    connector = connector or _WORKER["connector"]
    with connector.connect(target) as s:
        return s.upload(Path(local), "staging/bench.bin", sha256=sha)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=20)
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--mb", type=int, default=50)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        local = tmp / "bundle.bin"
        local.write_bytes(os.urandom(args.mb * 1_000_000))
        sha = hashlib.sha256(local.read_bytes()).hexdigest()
        db_url = f"sqlite:///{tmp / 'bench.db'}"
        engine = make_engine(db_url)
        upgrade(engine)
        sf = make_session_factory(engine)
        with Simulator(args.units, seed=1, ssh_units=args.units, data_dir=tmp / "sim") as sim:
            key = tmp / "sim" / "client_key"
            targets = [UnitTarget(u.serial, u.host, u.port, u.user, str(u.root)) for u in sim.ssh_units]
            with sf.begin() as session:  # the units' keys, approved up front
                for u in sim.ssh_units:
                    key_type, b64 = u.host_public_key.split()[:2]
                    now = __import__("speakerops.timeutil", fromlist=["utc_now"]).utc_now()
                    session.add(KnownHost(serial=u.serial, host=u.host, port=u.port, key_type=key_type,
                                          key_base64=b64, fingerprint=u.host_key_fingerprint, state="approved",
                                          first_seen_at=now, last_seen_at=now, approved_by="bench",
                                          approved_at=now))

            def clean() -> None:
                for u in sim.ssh_units:
                    (u.root / "staging" / "bench.bin").unlink(missing_ok=True)

            def check() -> None:
                for u in sim.ssh_units:
                    assert (u.root / "staging" / "bench.bin").stat().st_size == local.stat().st_size

            clean()
            t = time.perf_counter()
            with ThreadPoolExecutor(args.parallel) as pool:
                list(pool.map(lambda tg: _scp(key, tg, local, f"{tg.install_root}/staging/bench.bin"), targets))
            scp_s = time.perf_counter() - t
            check()

            clean()
            connector = SshConnector(sf, SshSettings(client_key_path=str(key)))
            t = time.perf_counter()
            with ThreadPoolExecutor(args.parallel) as pool:
                sent = list(pool.map(lambda tg: _upload(tg, str(local), sha, connector), targets))
            threads_s = time.perf_counter() - t
            assert all(n == local.stat().st_size for n in sent)
            check()

            clean()
            with ProcessPoolExecutor(args.parallel, initializer=_init_worker,
                                     initargs=(db_url, str(key))) as pool:
                list(pool.map(_init_noop, range(args.parallel)))  # workers started before timing
                t = time.perf_counter()
                sent = list(pool.map(_upload, targets, [str(local)] * len(targets), [sha] * len(targets)))
                procs_s = time.perf_counter() - t
            assert all(n == local.stat().st_size for n in sent)
            check()
            clean()
        engine.dispose()

    total_mb = args.units * args.mb
    print(f"{args.mb} MB to {args.units} sshd units, {args.parallel} at a time ({total_mb} MB in all), "
          f"{os.cpu_count()} CPUs")
    print(f"  scp                 {scp_s:7.2f} s  {total_mb / scp_s:7.1f} MB/s")
    print(f"  uploader/threads    {threads_s:7.2f} s  {total_mb / threads_s:7.1f} MB/s  ratio {threads_s / scp_s:.2f} × scp")
    print(f"  uploader/processes  {procs_s:7.2f} s  {total_mb / procs_s:7.1f} MB/s  ratio {procs_s / scp_s:.2f} × scp")
    sys.stdout.flush()


def _init_noop(_: int) -> None:
    time.sleep(0.05)


if __name__ == "__main__":
    main()
