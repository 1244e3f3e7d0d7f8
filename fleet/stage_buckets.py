"""Rollup rows summed per time bucket: request counts and per-stage latency histograms as arrays.

The service-flow figures (stage percentiles over time, the stage breakdown, SLO compliance) all
sum rollup rows — per unit or per cohort, per minute or per hour — into buckets. At 10,000 units
a day of cohort minutes is about a million rows (~700 cohorts a minute), so the rows are read in
batches and each batch is summed with numpy (:func:`sum_rows`), and what has been summed is
kept as a :class:`StageBuckets` (``fleet.stage_cache`` keeps them between refreshes).

No Qt, no database access here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from fleet.models import LATENCY_EDGES_MS, STAGES

#: Stages with a histogram in the rollups, in this order along :attr:`StageBuckets.hist`'s axis 1
#: (the six pipeline stages, then end to end and the server part).
HIST_STAGES: tuple[str, ...] = (*STAGES, "e2e", "server")
#: Buckets of a latency histogram: one per :data:`fleet.models.LATENCY_EDGES_MS` edge plus the open last one.
N_BUCKETS: int = len(LATENCY_EDGES_MS) + 1
#: Count columns of :attr:`StageBuckets.counts`, in order.
COUNT_COLUMNS: tuple[str, ...] = ("requests", "errors", "e2e_over_budget", "server_over_budget")
#: Rows summed per numpy step: a batch's decoded JSON stays alive until it is summed, and many
#: live containers make Python's garbage collector slow (and, in the console, the GUI thread's
#: young collections long), so batches are small.
BATCH_ROWS = 2_000


@dataclass
class StageBuckets:
    """Rollup figures summed per bucket.

    Attributes
    ----------
    starts
        Bucket starts, seconds since the epoch (int64), ascending, shape (n,).
    counts
        Per bucket the sums of :data:`COUNT_COLUMNS`, int64, shape (n, 4).
    hist
        Per bucket and stage of :data:`HIST_STAGES` the summed latency histogram, int64,
        shape (n, 8, :data:`N_BUCKETS`).
    sum_ms
        Per bucket and stage the summed latencies, ms, shape (n, 8).
    """

    starts: np.ndarray
    counts: np.ndarray
    hist: np.ndarray
    sum_ms: np.ndarray

    @classmethod
    def zeros(cls, starts: Sequence[int] | np.ndarray) -> StageBuckets:
        """Empty buckets starting at ``starts`` (epoch seconds)."""
        n = len(starts)
        return cls(np.asarray(starts, dtype=np.int64), np.zeros((n, len(COUNT_COLUMNS)), dtype=np.int64),
                   np.zeros((n, len(HIST_STAGES), N_BUCKETS), dtype=np.int64),
                   np.zeros((n, len(HIST_STAGES)), dtype=float))

    def __len__(self) -> int:
        return len(self.starts)

    def select(self, mask: np.ndarray) -> StageBuckets:
        """The buckets where ``mask`` (bool, shape (n,)) is true."""
        return StageBuckets(self.starts[mask], self.counts[mask], self.hist[mask], self.sum_ms[mask])

    def rebucket(self, step_s: int) -> StageBuckets:
        """Sum into buckets of ``step_s`` seconds aligned to the epoch; only buckets with a row
        of ``self`` are kept."""
        keys = self.starts // step_s * step_s
        out_starts, g = np.unique(keys, return_inverse=True)
        out = StageBuckets.zeros(out_starts)
        np.add.at(out.counts, g, self.counts)
        np.add.at(out.hist, g, self.hist)
        np.add.at(out.sum_ms, g, self.sum_ms)
        return out

    @staticmethod
    def concat(parts: Sequence[StageBuckets]) -> StageBuckets:
        """The buckets of ``parts`` one after the other (starts must not repeat)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return StageBuckets.zeros([])
        out = StageBuckets(np.concatenate([p.starts for p in parts]), np.concatenate([p.counts for p in parts]),
                           np.concatenate([p.hist for p in parts]), np.concatenate([p.sum_ms for p in parts]))
        order = np.argsort(out.starts, kind="stable")
        return StageBuckets(out.starts[order], out.counts[order], out.hist[order], out.sum_ms[order])


def sum_rows(rows: Iterable[Sequence[Any]], step_s: int) -> StageBuckets:
    """Sum rollup rows into buckets of ``step_s`` seconds (aligned to the epoch).

    Parameters
    ----------
    rows
        ``(bucket_start epoch seconds, requests, errors, e2e_over_budget, server_over_budget,
        latency_hist, latency_sum_ms)`` tuples, e.g. a streamed query; the JSON columns as
        stored by ``fleet.rollups`` (``{"stt": [counts…], …}``, ``{"stt": ms, …}``). Histograms
        of another length than :data:`N_BUCKETS` are skipped.
    step_s
        Bucket width, seconds.

    Returns
    -------
    StageBuckets
        Only buckets that had a row.
    """
    stage_index = {s: i for i, s in enumerate(HIST_STAGES)}
    parts: list[StageBuckets] = []
    it = iter(rows)
    while batch := list(islice(it, BATCH_ROWS)):
        starts = np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch)) // step_s * step_s
        keys, g = np.unique(starts, return_inverse=True)
        part = StageBuckets.zeros(keys)
        np.add.at(part.counts, g, np.asarray([[int(v or 0) for v in r[1:5]] for r in batch], dtype=np.int64))
        rows_i: list[int] = []
        stages_i: list[int] = []
        flat: list[int] = []  # the histograms' counts, N_BUCKETS per (row, stage)
        sums: list[float] = []
        for i, r in enumerate(batch):
            hist_json, sum_json = r[5] or {}, r[6] or {}
            for name, counts in hist_json.items():
                s = stage_index.get(name)
                if s is None or counts is None or len(counts) != N_BUCKETS:
                    continue
                rows_i.append(g[i])
                stages_i.append(s)
                flat.extend(counts)
                sums.append(float(sum_json.get(name) or 0.0))
        if rows_i:
            hist = np.asarray(flat, dtype=np.int64).reshape(len(rows_i), N_BUCKETS)
            np.add.at(part.hist, (np.asarray(rows_i), np.asarray(stages_i)), hist)
            np.add.at(part.sum_ms, (np.asarray(rows_i), np.asarray(stages_i)), np.asarray(sums))
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    merged = StageBuckets.concat(parts)
    return merged.rebucket(step_s) if len(np.unique(merged.starts)) != len(merged) else merged
