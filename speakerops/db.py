"""Database foundation: declarative base, aware-UTC column type, engine and session factory,
and Alembic migrations run from code.

SQLite (the embedded default) and PostgreSQL run the same code; the URL alone selects one.
Models live in the packages that own them (``fleet.models``, later ``feedback.models``) and
derive from :class:`Base`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

logger = logging.getLogger(__name__)

#: How long a SQLite connection waits for another writer's lock before failing, in seconds.
SQLITE_BUSY_TIMEOUT_S = 5.0


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always returned aware (``tzinfo=UTC``).

    SQLite has no time zones: values are stored as naive UTC and made aware on load.

    Raises
    ------
    ValueError
        On bind, if the value is a naive ``datetime`` (its zone would be a guess).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given for a UTC column; pass an aware one")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every SpeakerOps table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


def json_loads(text: str | bytes) -> Any:
    """Decode a JSON column: orjson (~5× faster than :func:`json.loads` on the rollups'
    histogram JSON, benchmarks/service_flow_load.py), falling back to :func:`json.loads` for
    what only it accepts (``NaN``/``Infinity``, which :func:`json.dumps` writes)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url``.

    For SQLite the parent directory is created, and each connection gets WAL journaling (readers
    don't block the writer), foreign keys on, and a busy timeout of ``SQLITE_BUSY_TIMEOUT_S``.
    JSON columns are decoded with :func:`json_loads` (written with :func:`json.dumps`, as before).

    Parameters
    ----------
    url
        SQLAlchemy URL, e.g. ``sqlite:////path/speakerops.db`` or
        ``postgresql+psycopg://postgres@127.0.0.1:5432/test``.
    """
    parsed = make_url(url)
    kwargs.setdefault("json_deserializer", json_loads)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cur.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory for units of work (``with factory.begin() as session: ...``)."""
    return sessionmaker(engine, expire_on_commit=False)


def describe_url(url: str) -> str:
    """The URL with any password hidden, for status bars and logs."""
    return make_url(url).render_as_string(hide_password=True)


def _alembic_config(engine: Engine):  # -> alembic.config.Config
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("speakerops") / "migrations"))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema of ``engine``'s database to ``revision`` with Alembic (idempotent)."""
    from alembic import command

    command.upgrade(_alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    """The newest revision the installed code knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
