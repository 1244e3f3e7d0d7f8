"""Feedback, ticket and trend verbs of the ``speakerops`` CLI (issue #6): ``feedback …``,
``tickets …``, ``trends``, ``serve-feedback``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the feedback, ticket and trend verbs to ``app``."""
