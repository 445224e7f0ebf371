"""The busy-interval index: maintained in the transaction of every item write, read by range scans."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from itertools import groupby
from operator import itemgetter
from typing import Any

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.orm import Session

from server.db import Query, Rows, plain_rows
from server.horizon import window as rolling_window
from server.freebusy import islands
from server.freebusy.epochs import EpochSpan, epoch_of, merge_rows, to_datetime
from server.freebusy.expand import BUSY, TENTATIVE, Span, intervals_for
from server.freebusy.policy import Policy
from server.hours import parse_working_hours
from server.models import BusyInterval, BusyIsland, DavCollection, DavItem, Tech, TechSettings

log = logging.getLogger("lockstep.freebusy")

UTC = timezone.utc
DAY = 86400
TRANSPARENT_PROP = "C:schedule-calendar-transp"



def horizon(now: datetime | None = None) -> Span:
    """The days the index holds (``[freebusy]`` horizon settings, see server/horizon.py)."""
    return rolling_window(now)


def policy_for(session: Session, username: str) -> Policy | None:
    return policies_for(session, [username]).get(username)


def policies_for(session: Session, usernames: list[str]) -> dict[str, Policy]:
    """Policies of the named techs that exist, in one query.

    Read on every request (so a change made on any node counts at once); only building a
    ``Policy`` from the same column values is remembered.
    """
    if not usernames:
        return {}
    return policies_from(plain_rows(session, *policies_query(usernames)))


def policies_query(usernames: list[str]) -> Query:
    """The policy rows of ``usernames``, for ``policies_from`` (or ``Database.read_many``)."""
    return _POLICIES, {"names": usernames}


def policies_from(rows: Rows) -> dict[str, Policy]:
    return {row[0]: _policy(*row[1:]) for row in rows}


_POLICIES = (
    select(Tech.username, Tech.timezone, Tech.working_hours, Tech.email, TechSettings.tentative_blocks,
           TechSettings.allday, TechSettings.buffer_before_min, TechSettings.buffer_after_min,
           TechSettings.min_notice_min)
    .outerjoin(TechSettings, TechSettings.tech_id == Tech.id)
    .where(Tech.username.in_(bindparam("names", expanding=True)))
)


@lru_cache(maxsize=4096)
def _policy(
    zone: str, working_hours: str, email: str, tentative_blocks: bool | None, allday: str | None,
    buffer_before_min: int | None, buffer_after_min: int | None, min_notice_min: int | None,
) -> Policy:
    """Policies are frozen and never mutated by their readers, so equal columns share one."""
    return Policy(
        timezone=zone,
        working_hours=parse_working_hours(working_hours),
        emails=frozenset({email.lower()}),
        tentative_blocks=bool(tentative_blocks),
        allday=allday or "working_hours",
        buffer_before_min=buffer_before_min or 0,
        buffer_after_min=buffer_after_min or 0,
        min_notice_min=min_notice_min or 0,
    )


def collection_blocks(collection: DavCollection) -> bool:
    """Calendars count unless marked transparent (RFC 6638 schedule-calendar-transp)."""
    props = json.loads(collection.props or "{}")
    if props.get("tag") != "VCALENDAR":
        return False
    return "transparent" not in (props.get(TRANSPARENT_PROP) or "").lower()


def reindex_item(
    session: Session, collection: DavCollection, href: str, text: str | None,
    policy: Policy | None = None, fallback: Span | None = None, now: datetime | None = None,
) -> None:
    """Replace the item's rows over the horizon as of ``now``. ``text`` None means the item is gone."""
    tech = collection.path.split("/", 1)[0]
    removed = session.execute(
        delete(BusyInterval).where(BusyInterval.collection_id == collection.id, BusyInterval.href == href)
        .returning(BusyInterval.start_utc, BusyInterval.end_utc)
    ).all()
    islands.mark(session, tech, removed)
    if text is None or "/" not in collection.path or not collection_blocks(collection):
        return
    policy = policy or policy_for(session, tech)
    if policy is None:
        return
    window = horizon(now)
    try:
        spans = [(i.start, i.end, i.kind) for i in intervals_for(text, policy, *window)]
    except Exception as exc:  # noqa: BLE001 - fail closed: unreadable data blocks its range
        log.warning("busy index: cannot expand %s/%s (%s); blocking its whole range", collection.path, href, exc)
        start, end = fallback or window
        spans = [(max(start, window[0]), min(end, window[1]), BUSY)]
    rows = [
        {"tech": tech, "collection_id": collection.id, "href": href,
         "start_utc": a, "end_utc": b, "kind": kind}
        for start, end, kind in spans
        for a, b in _day_chunks(int(start.timestamp()), int(end.timestamp()))
    ]
    if rows:
        session.execute(insert(BusyInterval), rows)
        islands.mark(session, tech, ((row["start_utc"], row["end_utc"]) for row in rows))


def reindex_collection(session: Session, collection: DavCollection) -> int:
    """Rebuild every item of a collection (after a policy or transparency change)."""
    tech = collection.path.split("/", 1)[0]
    policy = policy_for(session, tech)
    items = session.scalars(select(DavItem).where(DavItem.collection_id == collection.id)).all()
    for item in items:
        reindex_item(session, collection, item.href, item.text, policy, _item_range(item))
    return len(items)


def reindex_tech(session: Session, username: str) -> int:
    collections = session.scalars(
        select(DavCollection).where(DavCollection.parent_path == username)
    ).all()
    return sum(reindex_collection(session, collection) for collection in collections)


def forget_collection(session: Session, collection_id: int) -> None:
    removed = session.execute(delete(BusyInterval).where(BusyInterval.collection_id == collection_id)
                              .returning(BusyInterval.tech, BusyInterval.start_utc, BusyInterval.end_utc)).all()
    for tech, group in groupby(sorted(removed), itemgetter(0)):
        islands.mark(session, tech, ((start, end) for _, start, end in group))


def busy_for(
    session: Session, tech: str, policy: Policy, start: datetime, end: datetime,
    ignore_href: str | None = None, collection_id: int | None = None,
) -> tuple[list[Span], list[Span]]:
    """(blocking, non-blocking tentative) merged intervals of ``tech`` within [start, end)."""
    return busy_for_many(session, {tech: policy}, start, end, ignore_href, collection_id)[tech]


def busy_for_many(
    session: Session, policies: dict[str, Policy], start: datetime, end: datetime,
    ignore_href: str | None = None, collection_id: int | None = None,
) -> dict[str, tuple[list[Span], list[Span]]]:
    """As ``busy_epochs_for_many``, as datetimes (only the merged periods are converted)."""
    epochs = busy_epochs_for_many(session, policies, epoch_of(start), epoch_of(end), ignore_href, collection_id)
    return {tech: (as_datetimes(busy), as_datetimes(tentative)) for tech, (busy, tentative) in epochs.items()}


def busy_epochs_for_many(
    session: Session, policies: dict[str, Policy], start: int, end: int,
    ignore_href: str | None = None, collection_id: int | None = None,
) -> dict[str, tuple[list[EpochSpan], list[EpochSpan]]]:
    """One range scan for many techs; each tech's rows merged under its own policy and clipped to
    [start, end), all on integer epochs (a dense calendar has thousands of rows in a month)."""
    statement, params = range_scan(list(policies), start, end, ignore_href, collection_id)
    islands.settle(session)  # this transaction's own writes first
    return merge_scan(plain_rows(session, statement, params), policies, start, end)


def range_scan(
    techs: list[str], start: int, end: int, ignore_href: str | None = None, collection_id: int | None = None,
) -> Query:
    """The index scan of ``techs`` over [start, end), for ``merge_scan`` (or ``Database.read_many``).
    Over all of a tech's calendars it reads the merged pieces (server/freebusy/islands.py); leaving
    out an item or keeping to one calendar needs the rows themselves."""
    single = len(techs) == 1
    params: dict[str, Any] = {"low": start - DAY, "start": start, "end": end,
                              "tech": techs[0] if single else techs}
    if ignore_href is not None:
        params["ignore_href"] = ignore_href
    if collection_id is not None:
        params["collection_id"] = collection_id
    return _range_scan(single, ignore_href is not None, collection_id is not None), params


def merge_scan(
    rows: Rows, policies: dict[str, Policy], start: int, end: int,
) -> dict[str, tuple[list[EpochSpan], list[EpochSpan]]]:
    """The rows of ``range_scan`` over ``policies``' techs, merged per tech under its policy."""
    techs = list(policies)
    answer: dict[str, tuple[list[EpochSpan], list[EpochSpan]]] = {tech: ([], []) for tech in techs}
    if len(techs) == 1:
        answer[techs[0]] = merge_rows(rows, _blocking(policies[techs[0]]), start, end)
    else:
        for tech, group in groupby(rows, itemgetter(0)):
            if tech in answer:
                answer[tech] = merge_rows([row[1:] for row in group], _blocking(policies[tech]), start, end)
    return answer


def _blocking(policy: Policy) -> tuple[str, ...]:
    return (BUSY, TENTATIVE) if policy.tentative_blocks else (BUSY,)


@lru_cache(maxsize=None)
def _range_scan(single: bool, ignore_href: bool, in_collection: bool) -> Any:
    """The scan of ``ix_busy_tech_span`` (or of the islands' primary key), built once per shape
    (building a statement costs more than running it on a quiet calendar), in (tech, start)
    order as the index gives it. Rows and pieces never exceed a day, so start_utc > start - DAY
    finds every one overlapping start."""
    table: Any = BusyInterval if ignore_href or in_collection else BusyIsland
    columns = (table.start_utc, table.end_utc, table.kind)
    statement = select(*columns) if single else select(table.tech, *columns)
    statement = statement.where(
        table.tech == bindparam("tech") if single else table.tech.in_(bindparam("tech", expanding=True)),
        table.start_utc > bindparam("low"),
        table.start_utc < bindparam("end"),
        table.end_utc > bindparam("start"),
    )
    if ignore_href:
        statement = statement.where(BusyInterval.href != bindparam("ignore_href"))
    if in_collection:
        statement = statement.where(BusyInterval.collection_id == bindparam("collection_id"))
    order = (table.start_utc,) if single else (table.tech, table.start_utc)
    return statement.order_by(*order)


def as_datetimes(spans: list[EpochSpan]) -> list[Span]:
    return [(to_datetime(a), to_datetime(b)) for a, b in spans]


def _item_range(item: DavItem) -> Span:
    low, high = horizon()
    start = to_datetime(max(item.range_start, int(low.timestamp())))
    end = to_datetime(min(item.range_end, int(high.timestamp())))
    return start, end


def _day_chunks(start: int, end: int) -> list[tuple[int, int]]:
    """Rows never exceed a day, so a range query can bound its scan by start_utc."""
    chunks = []
    while start < end:
        chunks.append((start, min(end, start + DAY)))
        start += DAY
    return chunks
