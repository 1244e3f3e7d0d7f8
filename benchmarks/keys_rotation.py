"""What the secret store and key rotation cost: opening an encrypted key, rotating the fleet SSH key
and pushing trusted signing keys over real sshd units.

    .venv/bin/python benchmarks/keys_rotation.py [--units 10] [--parallel 10]

An encrypted file store (``SPEAKEROPS_KEY_PASSPHRASE`` set, no lab opt-in) in a temporary data
directory; ``--units`` simulator units with a real sshd each. Prints: seal/unseal of one key
(scrypt n = 2**15), the connector's first key load (current + previous: two unseals), one
``rotate_ssh`` over all units (two logins and two scripts per unit) and one ``push_trust``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=10)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="keys-bench-"))
    os.environ.pop("SPEAKEROPS_KEYS_UNENCRYPTED_LAB", None)
    os.environ["SPEAKEROPS_KEY_PASSPHRASE"] = "benchmark passphrase"
    os.environ["SPEAKEROPS_DATA_DIR"] = str(tmp / "data")

    from fleet.inventory import import_units
    from fleet.key_formats import seal, unseal
    from fleet.key_rotation import push_trust, rotate_ssh, ssh_targets
    from fleet.settings import SshSettings
    from fleet.signing import KeyStore
    from fleet.simulator import Simulator
    from fleet.ssh import SshConnector
    from speakerops.db import make_engine, make_session_factory, upgrade
    from speakerops.timeutil import utc_now

    secret = os.urandom(48)
    t = time.perf_counter()
    sealed = seal(secret, "pw", "x")
    t_seal = time.perf_counter() - t
    t = time.perf_counter()
    assert unseal(sealed, "pw", "x", "bench") == secret
    t_unseal = time.perf_counter() - t
    print(f"seal one key {t_seal * 1000:.0f} ms, unseal {t_unseal * 1000:.0f} ms (scrypt n=2**15, r=8, p=1)")

    engine = make_engine(f"sqlite:///{tmp / 'db.sqlite'}")
    upgrade(engine)
    sf = make_session_factory(engine)
    sim = Simulator(args.units, seed=5, ssh_units=args.units, data_dir=tmp / "sim").start()
    try:
        with sf.begin() as s:
            import_units(s, sim.write_inventory(tmp / "inventory.csv"), utc_now)
        store = KeyStore(tmp / "data")
        store.import_ssh(tmp / "sim" / "client_key")
        store.signer()
        settings = SshSettings(install_root=str(tmp / "sim" / "units" / "{serial}" / "root"), connect_timeout_s=10)
        with sf() as s:
            targets, _ = ssh_targets(s, settings)
        store.begin_ssh_rotation()
        connector = SshConnector(sf, settings, data_dir=tmp / "data", trust_on_first_use=True, key_store=store)
        t = time.perf_counter()
        connector.keys.keys()
        print(f"connector key load (current + previous) {(time.perf_counter() - t) * 1000:.0f} ms")
        t = time.perf_counter()
        out = rotate_ssh(connector, store, targets, parallel=args.parallel)
        took = time.perf_counter() - t
        print(f"rotate-ssh over {len(targets)} units (parallel {args.parallel}): {took:.2f} s, "
              f"{len(out.succeeded)} switched, {len(out.failed)} failed; {took / max(1, len(targets)) * 1000:.0f} ms/unit")
        store.finish_ssh_rotation([t.serial for t in targets])
        store.rotate_signing()
        t = time.perf_counter()
        out = push_trust(connector, targets, parallel=args.parallel)
        took = time.perf_counter() - t
        print(f"push-trust of {len(store.trusted_signing_keys())} keys to {len(targets)} units: {took:.2f} s, "
              f"{len(out.succeeded)} ok")
    finally:
        sim.stop()
        engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
