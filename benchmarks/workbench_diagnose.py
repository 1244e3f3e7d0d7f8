"""How long the technician workbench takes: SFTP collection throughput and a whole diagnosis.

    .venv/bin/python benchmarks/workbench_diagnose.py [--models-dir DIR] [--mb 20]

Starts the simulator (seed 330: SPK-000003 is a quiet home with consent) with real sshd units,
puts ``--mb`` of extra recordings on the unit, times :func:`fleet.workbench_collect.collect`
(MB/s), then times :func:`fleet.workbench.diagnose_unit` with the quick options (no MOS, no
general LM, no TTS round trip) and with everything on, on the unit's own 3 recordings.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=None, help="default bundles (built if missing)")
    ap.add_argument("--mb", type=float, default=20.0, help="extra recording megabytes to collect")
    args = ap.parse_args()

    from fleet.inventory import import_units
    from fleet.settings import SshSettings
    from fleet.simulator import Simulator
    from fleet.simulator.recordings import write_wav
    from fleet.ssh import SshConnector
    from fleet.workbench import DiagnoseOptions, WorkbenchContext, diagnose_unit
    from fleet.workbench_collect import CollectLimits, collect
    from inference_core.pipeline import LoopOptions
    from speakerops.db import make_engine, make_session_factory, upgrade
    from speakerops.timeutil import utc_now

    tmp = Path(tempfile.mkdtemp(prefix="wb-bench-"))
    models = args.models_dir or tmp / "models"
    engine = make_engine(f"sqlite:///{tmp / 'db.sqlite'}")
    upgrade(engine)
    sf = make_session_factory(engine)
    sim = Simulator(3, seed=330, ssh_units=3, data_dir=tmp / "sim").start()
    try:
        sim.write_inventory(tmp / "inv.csv")
        with sf.begin() as s:
            import_units(s, tmp / "inv.csv", utc_now)
        settings = SshSettings(client_key_path=str(tmp / "sim" / "client_key"),
                               install_root=str(tmp / "sim" / "units" / "{serial}" / "root"))
        connector = SshConnector(sf, settings, trust_on_first_use=True)
        unit = sim.ssh_unit("SPK-000003")
        bench_dir = unit.root / "bench"
        bench_dir.mkdir()
        n = max(1, int(args.mb))
        rng = np.random.default_rng(0)
        for i in range(n):  # ~1 MB each: 31 s of 16 kHz 16-bit audio
            write_wav(bench_dir / f"big-{i:03d}.wav", (rng.standard_normal(500_000) * 0.05).astype(np.float32))
        rec = unit.root / "recordings"
        for p in bench_dir.iterdir():
            shutil.move(p, rec / p.name)
        from fleet.unit_update import target_for_unit
        from fleet.models import Unit
        from sqlalchemy import select

        with sf() as s:
            target = target_for_unit(s.execute(select(Unit).where(Unit.serial == unit.serial)).scalar_one(), settings)
        limits = CollectLimits(max_recordings=n + 10, max_recording_bytes=int((args.mb + 10) * 2**20))
        t = time.perf_counter()
        col = collect(connector, target, tmp / "collect", consent_recordings=True, limits=limits)
        dt = time.perf_counter() - t
        mb = sum(f.bytes for f in col.files) / 1e6
        print(f"collect: {len(col.files)} files, {mb:.1f} MB in {dt:.2f} s = {mb / dt:.1f} MB/s "
              f"(status {col.status}, SHA-256 checked on the unit)")
        for p in rec.glob("big-*.wav"):
            p.unlink()
        ctx = WorkbenchContext(sf, connector, tmp / "data", models, ssh_settings=settings)
        for label, opts in (("quick", DiagnoseOptions(loop_options=LoopOptions(mos=False, general_transcript=False),
                                                      tts_round_trip=False)),
                            ("full", DiagnoseOptions())):
            for attempt in ("cold", "warm"):
                t = time.perf_counter()
                d = diagnose_unit(ctx, unit.serial, options=opts)
                print(f"diagnose ({label}, {attempt} loop): {time.perf_counter() - t:.2f} s, verdict {d.verdict}, "
                      f"{d.report['aggregate']['examined']} recordings")
    finally:
        sim.stop()
        engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
