"""Fleet simulator: many simulated smart-speaker units behind the unit agent protocol.

:class:`Simulator` serves every unit's agent (docs/unit-api.md) from one HTTP port and runs a real
OpenSSH server (:class:`SshUnit`) for the first few units; :func:`generate_fleet` draws the fleet
(:class:`UnitSpec`) from a seed. No Qt here: the console and the CLI drive it.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

from fleet.simulator.behaviour import UnitSpec, generate_fleet
from fleet.simulator.server import FAULTS, INVENTORY_COLUMNS, Simulator
from fleet.simulator.sshd import SshUnit

__all__ = [
    "FAULTS", "INVENTORY_COLUMNS", "Simulator", "SshUnit", "UnitSpec", "generate_fleet",
    "run_simulator",
]

logger = logging.getLogger(__name__)


def run_simulator(units: int, port: int, ssh_units: int, seed: int, inventory: Path | None,
                  data_dir: Path) -> None:
    """Run a simulator in the foreground until SIGINT or SIGTERM (``speakerops sim``).

    Starts :class:`Simulator`, writes the inventory CSV to ``inventory`` if given, prints the one
    line ``SIMULATOR READY <base_url> units=<n> ssh_units=<m>`` to stdout (another process waits
    for it), then blocks. On a signal it stops the HTTP server and every sshd before returning.
    Must be called from the main thread (it installs signal handlers).

    Parameters
    ----------
    units
        Fleet size.
    port
        HTTP port; 0 picks a free one (read it from the ready line).
    ssh_units
        How many of the first units also get a real sshd.
    seed
        Fleet seed.
    inventory
        Where to write the inventory CSV, or None.
    data_dir
        Keys and install roots of the SSH units (kept across runs, so host keys stay the same).

    Raises
    ------
    RuntimeError
        If the simulator cannot start (e.g. sshd missing, port taken).
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    sim = Simulator(units, seed=seed, port=port, ssh_units=ssh_units, data_dir=Path(data_dir))
    try:
        sim.start()
        if inventory is not None:
            sim.write_inventory(Path(inventory))
        for ssh in sim.ssh_units:
            logger.info("SSH unit %s: %s@%s:%d, host key %s, root %s", ssh.serial, ssh.user,
                        ssh.host, ssh.port, ssh.host_key_fingerprint, ssh.root)
        sys.stdout.write(f"SIMULATOR READY {sim.base_url} units={units} ssh_units={ssh_units}\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
        logger.info("simulator stopping")
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
