"""PostgreSQL bulk path of the feedback import: ``COPY`` into a stage table, merge while the client
validates the next chunk.

Per chunk of rows: ``COPY`` them into a temporary stage table (no indexes, no WAL), then send
``INSERT INTO feedback … SELECT … FROM feedback_stage ON CONFLICT (submission_id) DO NOTHING``
and ``TRUNCATE feedback_stage`` in psycopg's pipeline mode, which returns as soon as they are
sent. The server merges the chunk (index updates, foreign-key checks: most of an import's time)
on one core while Python reads and validates the next chunk on the other; the pipeline is
closed — waiting for the merge and raising its error, if any — before the next ``COPY`` (COPY is
not allowed in a pipeline) and by :meth:`PgStage.finish`.

The outcome is the same as the Core ``INSERT … ON CONFLICT DO NOTHING`` of the other dialects;
everything runs in the caller's transaction. Measured (``benchmarks/feedback_import.py``,
1,000,000 rows, 2 cores): see ``docs/feedback.md``.
"""

from __future__ import annotations

import logging
from operator import itemgetter
from typing import Any

from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

__all__ = ["PgStage"]

STAGE = "feedback_stage"


class PgStage:
    """Stages rows of one import for ``feedback`` (see module doc); ``constants``: column → the
    value every row has (not staged). Use :meth:`write` per chunk,
    then :meth:`finish`; :meth:`wait` before any other query on the session between chunks;
    :meth:`close` on an error path (ends a pipeline in flight)."""

    def __init__(self, session: Session, constants: dict[str, Any] | None = None) -> None:
        self.session = session
        #: Columns with one value for every row of the import (``received_at``, ``source``,
        #: ``import_id``): not staged, given to the merge as parameters.
        self.constants = dict(constants or {})
        self._cols: list[str] | None = None
        self._get: Any = None
        self._cur: Any = None
        self._pipeline: Any = None

    def _cursor(self, cols: list[str]) -> Any:
        if self._cur is None:
            self._cols, self._get = cols, itemgetter(*cols)
            conn = self.session.connection().connection.dbapi_connection
            self._cur = conn.cursor()
            self._cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} ON COMMIT DROP AS "
                              f"SELECT {', '.join(cols)} FROM feedback WITH NO DATA")
            self._cur.execute(f"TRUNCATE {STAGE}")
        return self._cur

    def wait(self) -> None:
        """Wait for the merge in flight (raises its error). Call it before any other query on the
        session: SQLAlchemy cannot read results while a pipeline is open."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.__exit__(None, None, None)

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Stage ``rows`` (dicts with the same keys, ``feedback`` columns) and start merging them."""
        if not rows:
            return
        self.wait()
        cur = self._cursor([c for c in rows[0] if c not in self.constants])
        names = ", ".join(self._cols or ())
        get = self._get
        with cur.copy(f"COPY {STAGE} ({names}) FROM STDIN") as copy:
            write = copy.write_row
            for r in rows:
                write(get(r))
        self._pipeline = cur.connection.pipeline()
        self._pipeline.__enter__()
        fixed = list(self.constants)
        cur.execute(f"INSERT INTO feedback ({', '.join([names, *fixed])}) "
                    f"SELECT {', '.join([names, *['%s'] * len(fixed)])} FROM {STAGE} "
                    "ON CONFLICT (submission_id) DO NOTHING", [self.constants[c] for c in fixed])
        cur.execute(f"TRUNCATE {STAGE}")

    def finish(self) -> None:
        """Wait for the last merge and drop the stage table."""
        self.wait()
        if self._cur is not None:
            self._cur.execute(f"DROP TABLE {STAGE}")
            self._cur.close()
            self._cur = None

    def close(self) -> None:
        """End a pipeline in flight without raising (the caller is handling another error)."""
        try:
            self.wait()
        except Exception:  # noqa: BLE001 - the original error matters; the transaction is rolled back
            logger.debug("merge in flight failed while handling another error", exc_info=True)
        if self._cur is not None:
            self._cur.close()
            self._cur = None
