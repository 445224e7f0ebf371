"""Busy islands: the busy index merged per tech, kind and UTC day, kept in step with every write.

A dense calendar has dozens of index rows a day (one per event instance and calendar); merged,
they are a few periods. Free/busy over all of a tech's calendars reads these merged pieces
instead of the rows (136 instead of 1,746 for 30 days of the benchmark's 5,000-event tech):
less to fetch and merge on the path that must answer in milliseconds. Merging the pieces of the kinds a
policy blocks on, in start order, gives the same periods as merging those kinds' rows, so one
set of pieces serves every policy.

Pieces never cross a UTC midnight, so a day's pieces depend on that day's rows only. Index
writes mark the days they touch (``mark``); the marked days are rebuilt from the rows once per
transaction, just before it commits, under the same tech lock as the rows themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, delete, event, insert, or_, select
from sqlalchemy.orm import Session

from server.models import BusyInterval, BusyIsland

DAY = 86400
Piece = tuple[int, int, str]  # (start_utc, end_utc, kind)

_DIRTY = "lockstep.busy_island_days"


def mark(session: Session, tech: str, spans: Iterable[tuple[int, int]]) -> None:
    """Remember the UTC days that index rows ``spans`` (written or removed) lie on."""
    days = session.info.setdefault(_DIRTY, {}).setdefault(tech, set())
    for start, end in spans:
        days.update(range(start // DAY, (max(start, end - 1)) // DAY + 1))


def pieces_of(rows: Iterable[Piece], low: int, high: int) -> list[Piece]:
    """Rows merged per kind and UTC day, clipped to [low, high); overlapping and touching rows
    join (as ``epochs.merge_rows`` joins them), but never across a midnight."""
    cut: list[tuple[str, int, int]] = []
    for start, end, kind in rows:
        start, end = max(start, low), min(end, high)
        while start < end:
            midnight = (start // DAY + 1) * DAY
            cut.append((kind, start, min(end, midnight)))
            start = midnight
    cut.sort()
    merged: list[tuple[str, int, int]] = []
    for kind, start, end in cut:
        if merged:
            last_kind, last_start, last_end = merged[-1]
            if last_kind == kind and start <= last_end and start // DAY == last_start // DAY:
                if end > last_end:
                    merged[-1] = (kind, last_start, end)
                continue
        merged.append((kind, start, end))
    return [(start, end, kind) for kind, start, end in merged]


def rebuild(connection: Session | Any, techs: Iterable[str]) -> None:
    """Every piece of ``techs`` from their rows (the migration that adds the table; tests that
    write rows directly). ``connection``: a Session or a Core Connection."""
    for tech in techs:
        rows = connection.execute(select(BusyInterval.start_utc, BusyInterval.end_utc, BusyInterval.kind)
                                  .where(BusyInterval.tech == tech)).all()
        connection.execute(delete(BusyIsland).where(BusyIsland.tech == tech))
        _insert(connection, tech, pieces_of(rows, -(1 << 62), 1 << 62))


def _rebuild_days(session: Session, tech: str, days: set[int]) -> None:
    """Three statements however many days (a weekly series marks one day a week all year)."""
    if not days:
        return
    ordered = sorted(days)
    low, high = ordered[0] * DAY, (ordered[-1] + 1) * DAY
    params = {"tech": tech, "below": low - DAY, "low": low, "high": high, "days": ordered}
    connection = session.connection()
    rows = connection.execute(_ROWS_ON_DAYS, params).all()
    connection.execute(_PIECES_ON_DAYS, params)
    _insert(connection, tech, [piece for piece in pieces_of(rows, low, high) if piece[0] // DAY in days])


def _insert(connection: Session | Any, tech: str, pieces: list[Piece]) -> None:
    if pieces:
        connection.execute(insert(BusyIsland.__table__), [
            {"tech": tech, "start_utc": start, "end_utc": end, "kind": kind} for start, end, kind in pieces])


# A row lies on the days of its first and last second (rows never exceed a day); a piece on its
# start's. Integer division on both backends; the start bounds keep each scan to the index range.
_DAYS = bindparam("days", expanding=True)
_ROWS_ON_DAYS = (
    select(BusyInterval.start_utc, BusyInterval.end_utc, BusyInterval.kind)
    .where(BusyInterval.tech == bindparam("tech"), BusyInterval.start_utc > bindparam("below"),
           BusyInterval.start_utc < bindparam("high"),
           or_((BusyInterval.start_utc // DAY).in_(_DAYS), ((BusyInterval.end_utc - 1) // DAY).in_(_DAYS)))
)
_PIECES_ON_DAYS = delete(BusyIsland.__table__).where(
    BusyIsland.tech == bindparam("tech"), BusyIsland.start_utc >= bindparam("low"),
    BusyIsland.start_utc < bindparam("high"), (BusyIsland.start_utc // DAY).in_(_DAYS))


def settle(session: Session) -> None:
    """Rebuild the days this session's writes marked: before it commits, and before it reads
    pieces itself (a transaction that wrote and then asks what is busy)."""
    marked: dict[str, set[int]] = session.info.pop(_DIRTY, None) or {}
    for tech, days in marked.items():
        _rebuild_days(session, tech, days)


@event.listens_for(Session, "before_commit")
def _settle_before_commit(session: Session) -> None:
    """Once per transaction, however many items it wrote (a calendar import writes thousands).
    Marks are not dropped on a rollback: rebuilding a day that did not change is harmless. A
    savepoint's commit leaves the work to the outer commit, so it is done once."""
    if not session.in_nested_transaction():
        settle(session)
