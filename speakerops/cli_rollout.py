"""Model-registry and rollout verbs of the ``speakerops`` CLI (issue #5): ``models import|list|show|
alias|evaluate`` (added to the ``models`` group of :mod:`speakerops.cli_voice`) and ``rollout …``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the registry and rollout verbs to ``app``."""
