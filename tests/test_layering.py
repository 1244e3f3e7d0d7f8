"""The core runs where Qt cannot be imported (headless collectors, CI jobs without Qt)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_core_modules_import_and_run_without_qt(tmp_path) -> None:
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        for blocked in ("PySide6", "pyqtgraph", "shiboken6", "console"):
            sys.modules[blocked] = None          # any import of these now raises ImportError
        sys.path.insert(0, {str(ROOT)!r})
        imported = []
        for pkg in ("speakerops", "fleet", "inference_core", "feedback"):
            mod = importlib.import_module(pkg)
            imported.append(pkg)
            for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
                if info.name.startswith("speakerops.migrations"):
                    continue                      # Alembic scripts, run by Alembic only
                importlib.import_module(info.name)
                imported.append(info.name)
        # and the CLI's non-GUI verbs work
        from typer.testing import CliRunner
        from speakerops.cli import app
        r = CliRunner().invoke(app, ["db", "info", "--json", "--db-url", "sqlite:///{tmp_path}/x.db"])
        assert r.exit_code == 0, r.output
        print(len(imported), "modules")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count = int(out.stdout.split()[0])
    assert count >= 15, out.stdout  # the walk really visited the core's modules
