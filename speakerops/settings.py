"""Core settings: where the database and the data directory are.

Read from the environment (prefix ``SPEAKEROPS_``) and, if present, from
``<platform config dir>/speakerops/settings.toml``; the environment wins.

Environment variables (a contract, documented in the README):

``SPEAKEROPS_DB_URL``
    SQLAlchemy URL of the database, e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``.
    Default: SQLite file ``speakerops.db`` in the data directory.
``SPEAKEROPS_DATA_DIR``
    Directory for the embedded database, simulator state, keys and reports. Default: the
    platform's user data directory (``platformdirs.user_data_dir("speakerops")``, e.g.
    ``~/.local/share/speakerops`` on Linux).
"""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

APP_NAME = "speakerops"


def config_file() -> Path:
    """Path of the optional settings file in the platform's config directory."""
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "settings.toml"


class CoreSettings(BaseSettings):
    """Database and data-directory settings shared by the console, the CLI and collectors."""

    model_config = SettingsConfigDict(env_prefix="SPEAKEROPS_", extra="ignore")

    db_url: str | None = Field(
        default=None, description="SQLAlchemy database URL; None means SQLite in data_dir"
    )
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)),
        description="directory for the embedded database and other local state",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=config_file()),
        )

    def resolved_db_url(self) -> str:
        """The database URL to use: ``db_url`` if set, else the embedded SQLite file."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{self.data_dir / 'speakerops.db'}"
