"""What every ``speakerops`` verb module shares: the ``--db-url``/``--json`` options, the error exit,
JSON-or-text output and the runtime context (:mod:`speakerops.runtime`).

Exit status: 0 success, 1 failure (the message says what was wrong and what to do), 2 partial
success (some rows or units failed, each reported).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from sqlalchemy.exc import OperationalError

from speakerops.runtime import Runtime, build_runtime

DbUrl = Annotated[str | None, typer.Option("--db-url", envvar="SPEAKEROPS_DB_URL",
                                           help="SQLAlchemy URL; default SQLite in SPEAKEROPS_DATA_DIR.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _emit(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else text)


@contextmanager
def _runtime(db_url: str | None) -> Iterator[Runtime]:
    try:
        rt = build_runtime(db_url)
    except OperationalError as exc:
        raise _fail(f"cannot open the database: {str(exc.orig).strip()}. Check SPEAKEROPS_DB_URL "
                    "(or --db-url) and that the server is running.") from exc
    try:
        yield rt
    finally:
        rt.close()


def _db_url(ctx: typer.Context, db_url: str | None) -> str | None:
    """``--db-url`` of the verb, else of the root command (``speakerops --db-url URL verb``)."""
    return db_url or (ctx.obj or {}).get("db_url")
