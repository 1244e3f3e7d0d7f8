"""The fleet snapshot indexed once for filtering and sorting in numpy (no Qt, any thread).

At 100,000 units, filtering and sorting the snapshot in pandas on every keystroke and header
click took 0.1–0.4 s, and the Fleet page's refresh slot 0.8 s, on the GUI thread
(``benchmarks/fleet_table_100k.py``). :class:`SnapshotIndex` does the per-row work once, when
the snapshot is built on the ``db`` worker thread (:func:`prepare_snapshot`): each text column
is factorized (codes + distinct values, lower-cased for the search), every column gets a sort key
(an integer rank or the float / int64 value), and the serial order is computed. Filtering is
then a substring search over the *distinct* values and a gather of codes; sorting is one stable
``argsort`` of a precomputed key (cached per column and direction); the table reads the cells of
the shown rows lazily (:class:`ViewColumn`). Nothing loops over rows in Python.

Semantics are those of the pandas version it replaces (the benchmark's ``--reference`` checks
rows and order are identical): a case-insensitive substring over :data:`TEXT_FILTER_COLUMNS`,
exact status and site, a model version equal to any of :data:`VERSION_COLUMNS`; numbers and
times sort by value, text case-insensitively, status most urgent first (:data:`STATUS_RANK`),
missing values last in both directions, ties in serial order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Sort order of the status column, most urgent first.
STATUS_RANK: dict[str, int] = {"offline": 0, "degraded": 1, "updating": 2, "unknown": 3, "online": 4}

#: Columns searched by the free-text filter.
TEXT_FILTER_COLUMNS: tuple[str, ...] = (
    "serial", "site", "region", "firmware_version", "stt_version", "qa_version", "tts_version")

#: Columns matched by the model-version filter.
VERSION_COLUMNS: tuple[str, ...] = ("stt_version", "qa_version", "tts_version")

#: Filters whose row masks are kept per snapshot (the operator flips between a few).
_MASK_CACHE_SIZE = 16
_INT64_MAX = np.iinfo(np.int64).max


#: :attr:`FleetFilter.status` value for the units flap detection marks (``fleet.unit_states``),
#: whatever their state.
FLAPPING = "flapping"


@dataclass(frozen=True)
class FleetFilter:
    """What the filter bar asks for; empty strings mean "any"; ``status`` may be a unit state
    or :data:`FLAPPING`."""

    text: str = ""
    status: str = ""
    site: str = ""
    version: str = ""


@dataclass(frozen=True)
class _Codes:
    """A column factorized: ``codes[i]`` indexes ``uniques`` (-1: missing)."""

    codes: np.ndarray  # intp, one per row
    uniques: np.ndarray  # object, distinct values as stored
    lower: np.ndarray  # str_, ``str(value).lower()`` per distinct value
    position: dict[Any, int]  # distinct value -> its code


class ViewColumn:
    """One column's cells in the shown rows' order, read lazily: ``col[row]`` is the snapshot's
    value at ``rows[row]`` (no copy of the column per filter or sort)."""

    __slots__ = ("_rows", "_values")

    def __init__(self, values: Any, rows: np.ndarray) -> None:
        self._values = values
        self._rows = rows

    def __getitem__(self, row: int) -> Any:
        return self._values[self._rows[row]]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Any:
        return (self._values[i] for i in self._rows)


class SnapshotIndex:
    """A fleet snapshot (rows of ``fleet.queries.fleet_snapshot``) with its filter and sort
    structures; build it with :func:`prepare_snapshot` off the GUI thread.

    Parameters
    ----------
    frame
        The snapshot; it is not modified (a copy with a 0..n-1 index is kept if its index is
        another one).

    Notes
    -----
    Structures are built on first use and cached; :meth:`warm` builds them all at once.
    Not thread-safe: build and warm it on one thread, then use it on the GUI thread only.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        if not isinstance(frame.index, pd.RangeIndex) or frame.index.start != 0 or frame.index.step != 1:
            frame = frame.reset_index(drop=True)
        self.frame = frame
        self.n_rows = len(frame)
        self._values: dict[str, Any] = {}
        self._codes: dict[str, _Codes] = {}
        self._sort_keys: dict[tuple[str, bool], np.ndarray] = {}
        self._orders: dict[tuple[str | None, bool], np.ndarray] = {}
        self._masks: dict[FleetFilter, np.ndarray | None] = {}
        self._serial_order: np.ndarray | None = None
        self._position: dict[str, int] | None = None

    # -- building -----------------------------------------------------------------------------
    def warm(self, sort_columns: Iterable[str] | None = None,
             shown: Iterable[tuple[FleetFilter, str | None, bool]] = ()) -> SnapshotIndex:
        """Build every structure now (cell values, codes of the filtered columns, sort keys of
        ``sort_columns`` — default every column — both directions, the serial positions) and
        the rows of each ``(filter, sort column, ascending)`` in ``shown`` (the table's current
        view, so that swapping the snapshot in is only a lookup); returns ``self``."""
        for col in self.frame.columns:
            self.values(col)
        for col in {*TEXT_FILTER_COLUMNS, "status", "site"} & set(self.frame.columns):
            self._codes_of(col)
        for col in self.frame.columns if sort_columns is None else sort_columns:
            if col in self.frame:
                self._sort_key(col, True)
                self._sort_key(col, False)
        self.serial_order()
        if "serial" in self.frame:
            self.position("")
        for flt, key, ascending in shown:
            self.rows(flt, key, ascending)
        return self

    def values(self, col: str) -> Any:
        """Cells of column ``col`` indexable by row: an object array (Python ``str``/``float``
        /``bool``, NaN or None when missing), or a ``DatetimeArray`` for times (``Timestamp``
        or ``NaT`` per cell).

        Raises
        ------
        KeyError
            If the snapshot has no column ``col``.
        """
        cached = self._values.get(col)
        if cached is None:
            series = self.frame[col]
            if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(series.dtype):
                cached = series.array  # Timestamps made per shown cell, not 100,000 up front
            else:
                cached = series.to_numpy(dtype=object)
            self._values[col] = cached
        return cached

    def _codes_of(self, col: str) -> _Codes:
        cached = self._codes.get(col)
        if cached is None:
            codes, uniques = pd.factorize(self.frame[col], use_na_sentinel=True)
            uniques = np.asarray(uniques, dtype=object)
            lower = np.array([str(v).lower() for v in uniques], dtype=str) if len(uniques) else np.array([], dtype=str)
            cached = _Codes(np.asarray(codes, dtype=np.intp), uniques, lower,
                            {v: i for i, v in enumerate(uniques)})
            self._codes[col] = cached
        return cached

    def serial_order(self) -> np.ndarray:
        """Row numbers in serial order (case-sensitive, missing last): the order of ties."""
        if self._serial_order is None:
            if "serial" not in self.frame:
                self._serial_order = np.arange(self.n_rows, dtype=np.intp)
            else:
                serial = self.frame["serial"]
                if serial.notna().all() and serial.is_monotonic_increasing:
                    self._serial_order = np.arange(self.n_rows, dtype=np.intp)  # fleet_snapshot's order
                else:
                    ordered = serial.sort_values(kind="mergesort", na_position="last")
                    self._serial_order = np.asarray(ordered.index, dtype=np.intp)
        return self._serial_order

    def _sort_key(self, col: str, ascending: bool) -> np.ndarray:
        """Per row, a key whose stable ascending ``argsort`` gives the order of ``col`` in that
        direction with missing values last."""
        cached = self._sort_keys.get((col, ascending))
        if cached is not None:
            return cached
        series = self.frame[col]
        sign = 1 if ascending else -1
        if col == "status":
            # as the pandas version: an unknown (or missing) status ranks after "online"
            c = self._codes_of(col)
            rank = np.array([STATUS_RANK.get(v, len(STATUS_RANK)) for v in c.uniques] + [len(STATUS_RANK)],
                            dtype=np.int16)
            key = sign * rank[c.codes]
        elif isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(series.dtype):
            ticks = series.array.asi8 if hasattr(series.array, "asi8") else series.to_numpy().view(np.int64)
            key = np.where(series.isna().to_numpy(), _INT64_MAX, sign * ticks)
        elif pd.api.types.is_numeric_dtype(series.dtype):
            values = series.to_numpy(dtype=float, na_value=np.nan)
            key = values if ascending else -values  # NaN sorts last either way
        else:
            c = self._codes_of(col)
            folded, inverse = np.unique(c.lower, return_inverse=True)  # case-insensitive rank
            rank = np.append(inverse.astype(np.int64), len(folded))  # missing (-1) last
            key = rank[c.codes] if ascending else np.where(c.codes < 0, len(folded), -rank[c.codes])
            key = key.astype(np.int32 if len(folded) < 2**31 else np.int64)
        self._sort_keys[(col, ascending)] = key
        return key

    # -- queries ------------------------------------------------------------------------------
    def position(self, serial: str) -> int | None:
        """Row number of unit ``serial`` in the snapshot, or None."""
        if self._position is None:
            if "serial" not in self.frame:
                self._position = {}
            else:
                self._position = {str(s): i for i, s in enumerate(self.values("serial").tolist())}
        return self._position.get(serial)

    def order(self, key: str | None, ascending: bool = True) -> np.ndarray:
        """All row numbers sorted by column ``key`` (None or unknown: by serial), ties in
        serial order, missing values last. Cached per column and direction."""
        if key is None or key not in self.frame:
            key, ascending = None, True
        cached = self._orders.get((key, ascending))
        if cached is None:
            base = self.serial_order()
            if key is None:
                cached = base
            else:
                sort_key = self._sort_key(key, ascending)
                cached = base[np.argsort(sort_key[base], kind="stable")]
            self._orders[(key, ascending)] = cached
        return cached

    def mask(self, flt: FleetFilter) -> np.ndarray | None:
        """Which rows match ``flt`` (bool per row); None when every row does."""
        if flt in self._masks:
            return self._masks[flt]
        mask: np.ndarray | None = None

        def both(m: np.ndarray) -> None:
            nonlocal mask
            mask = m if mask is None else mask & m

        text = flt.text.strip().lower()
        if text:
            hit = np.zeros(self.n_rows, dtype=bool)
            for col in TEXT_FILTER_COLUMNS:
                if col in self.frame:
                    c = self._codes_of(col)
                    found = np.strings.find(c.lower, text) >= 0 if len(c.lower) else np.zeros(0, bool)
                    hit |= np.append(found, False)[c.codes]  # missing (-1) never matches
            both(hit)
        if flt.status == FLAPPING:
            flapping = self.frame["flapping"] if "flapping" in self.frame else None
            both(np.zeros(self.n_rows, dtype=bool) if flapping is None else flapping.eq(True).to_numpy(dtype=bool))
        elif flt.status:
            both(self._equals("status", flt.status))
        if flt.site:
            both(self._equals("site", flt.site))
        if flt.version:
            hit = np.zeros(self.n_rows, dtype=bool)
            for col in VERSION_COLUMNS:
                hit |= self._equals(col, flt.version)
            both(hit)
        if len(self._masks) >= _MASK_CACHE_SIZE:
            self._masks.pop(next(iter(self._masks)))
        self._masks[flt] = mask
        return mask

    def _equals(self, col: str, value: str) -> np.ndarray:
        if col not in self.frame:
            raise KeyError(f"the fleet snapshot has no {col!r} column to filter on")
        c = self._codes_of(col)
        code = c.position.get(value)
        return np.zeros(self.n_rows, dtype=bool) if code is None else c.codes == code

    def rows(self, flt: FleetFilter, key: str | None, ascending: bool = True) -> np.ndarray:
        """Row numbers shown for filter ``flt`` sorted by ``key`` (see :meth:`order`)."""
        order = self.order(key, ascending)
        mask = self.mask(flt)
        return order if mask is None else order[mask[order]]

    def view_columns(self, rows: np.ndarray) -> dict[str, ViewColumn]:
        """Every column's cells in the order of ``rows`` (lazy, see :class:`ViewColumn`)."""
        return {col: ViewColumn(self.values(col), rows) for col in self.frame.columns}

    def distinct(self, col: str) -> list[str]:
        """The non-empty values of text column ``col`` as strings, sorted; [] without it."""
        if col not in self.frame or not self.n_rows:
            return []
        return sorted({s for v in self._codes_of(col).uniques if (s := str(v))})

    def counts(self, col: str) -> dict[Any, int]:
        """Rows per value of column ``col`` (missing values not counted); {} without it."""
        if col not in self.frame or not self.n_rows:
            return {}
        c = self._codes_of(col)
        present = c.codes[c.codes >= 0]
        counts = np.bincount(present, minlength=len(c.uniques))
        return {v: int(n) for v, n in zip(c.uniques.tolist(), counts.tolist(), strict=True)}


def prepare_snapshot(frame: pd.DataFrame, sort_columns: Iterable[str] | None = None,
                     shown: Iterable[tuple[FleetFilter, str | None, bool]] = ()) -> SnapshotIndex:
    """``frame`` indexed with every structure built (:meth:`SnapshotIndex.warm`), including the
    rows of the views in ``shown`` (``(filter, sort column, ascending)``).

    Call it on a worker thread right after ``fleet_snapshot`` (the Fleet page's ``load_fleet``
    does): at 100,000 units it is the tens of milliseconds the GUI thread no longer spends.
    """
    return SnapshotIndex(frame).warm(sort_columns, shown)
