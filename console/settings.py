"""Console settings (environment prefix ``SPEAKEROPS_CONSOLE_``). Window geometry alone lives
in ``QSettings``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    """How the console starts.

    ``refresh_interval_s = 2``: the fleet table is re-read every 2 s while visible, a fifth of
    the collector's 10 s poll interval, so a new heartbeat shows within ~2 s of being written.
    """

    model_config = SettingsConfigDict(env_prefix="SPEAKEROPS_CONSOLE_", extra="ignore")

    theme: Literal["dark", "light"] = Field("dark", description="initial theme")
    refresh_interval_s: float = Field(2.0, gt=0, description="fleet page refresh period, s")
    collector: Literal["process", "thread"] = Field(
        "process", description="where the console's own collector runs: a child process "
        "(`speakerops collect`), or a thread of the console (benchmarks/gui_stall.py compares them)")
    reads: Literal["process", "thread"] = Field(
        "process", description="where the Fleet and Service-flow pages' periodic reads run: one child "
        "process per page with its own database connection (console.read_process), or threads of the "
        "console; an in-memory SQLite database always reads in threads")
