"""Technician-workbench tables (issue #7): acoustic self-tests per unit over time, diagnosis runs.

* :class:`UnitSelftest` — one acoustic self-test of a unit (``POST /v1/selftest``): noise floor,
  SNR, clipping, capture level against the expected level, dropouts, and whether the known phrase
  was recognized. Kept per unit over time, so a degrading microphone shows as a trend.
* :class:`WorkbenchRun` — one diagnosis of a unit (``speakerops unit diagnose``): its verdict, why,
  and where the evidence is (run directory, JSON and HTML reports), linked to the ticket.

Times are aware UTC; physical units are in column names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from speakerops.db import Base

BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class UnitSelftest(Base):
    """One acoustic self-test of one unit (see :mod:`fleet.selftest`)."""

    __tablename__ = "unit_selftests"
    __table_args__ = (Index("ix_unit_selftests_unit_at", "unit_id", "at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    serial: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    phrase: Mapped[str] = mapped_column(String(200))
    noise_floor_dbfs: Mapped[float | None]
    snr_db: Mapped[float | None]
    clipping_ratio: Mapped[float | None]
    #: Active level of the captured phrase, dBFS, and what a healthy microphone captures, dBFS.
    capture_level_dbfs: Mapped[float | None]
    expected_level_dbfs: Mapped[float | None]
    #: Share of the capture inside runs of digital zeros ≥ 20 ms (a dropping microphone).
    dropout_ratio: Mapped[float | None]
    transcript: Mapped[str | None] = mapped_column(Text)
    wer: Mapped[float | None]
    recognized: Mapped[bool | None]
    #: ``ok``, ``room`` (too noisy), ``hardware`` (microphone) or ``failed`` (no capture).
    verdict: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(128), default="")


class WorkbenchRun(Base):
    """One diagnosis of a unit by the technician workbench (see :mod:`fleet.workbench`)."""

    __tablename__ = "workbench_runs"
    __table_args__ = (Index("ix_workbench_runs_serial_started", "serial", "started_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id", ondelete="SET NULL"))
    serial: Mapped[str] = mapped_column(String(64))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="SET NULL"))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    #: ``complete`` | ``partial`` | ``unreachable`` | ``cancelled`` (of the collection).
    status: Mapped[str] = mapped_column(String(16))
    #: ``ok`` | ``room`` | ``hardware`` | ``model`` | ``unreachable`` | ``inconclusive``.
    verdict: Mapped[str] = mapped_column(String(16))
    why: Mapped[list[Any]] = mapped_column(JSON, default=list)
    action: Mapped[str] = mapped_column(Text, default="")
    run_dir: Mapped[str] = mapped_column(Text)
    report_json: Mapped[str | None] = mapped_column(Text)
    report_html: Mapped[str | None] = mapped_column(Text)
    recordings_examined: Mapped[int] = mapped_column(default=0)
    bytes_collected: Mapped[int] = mapped_column(BigInteger, default=0)
    actor: Mapped[str] = mapped_column(String(128), default="")
