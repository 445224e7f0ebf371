"""The busy-interval index: maintained in the transaction of every item write, read by range scans."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from server.freebusy.expand import BUSY, TENTATIVE, Span, intervals_for, merge
from server.freebusy.policy import Policy
from server.hours import parse_working_hours
from server.models import BusyInterval, DavCollection, DavItem, Tech, TechSettings

log = logging.getLogger("lockstep.freebusy")

UTC = timezone.utc
DAY = 86400
HORIZON_PAST = timedelta(days=30)
HORIZON_FUTURE = timedelta(days=400)
TRANSPARENT_PROP = "C:schedule-calendar-transp"



def horizon(now: datetime | None = None) -> Span:
    now = now or datetime.now(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - HORIZON_PAST, day + HORIZON_FUTURE


def policy_for(session: Session, username: str) -> Policy | None:
    return policies_for(session, [username]).get(username)


def policies_for(session: Session, usernames: list[str]) -> dict[str, Policy]:
    """Policies of the named techs that exist, in one query."""
    rows = session.execute(
        select(Tech, TechSettings)
        .outerjoin(TechSettings, TechSettings.tech_id == Tech.id)
        .where(Tech.username.in_(usernames))
    ).all()
    return {tech.username: _policy(tech, settings or TechSettings()) for tech, settings in rows}


def _policy(tech: Tech, settings: TechSettings) -> Policy:
    return Policy(
        timezone=tech.timezone,
        working_hours=parse_working_hours(tech.working_hours),
        emails=frozenset({tech.email.lower()}),
        tentative_blocks=bool(settings.tentative_blocks),
        allday=settings.allday or "working_hours",
        buffer_before_min=settings.buffer_before_min or 0,
        buffer_after_min=settings.buffer_after_min or 0,
        min_notice_min=settings.min_notice_min or 0,
    )


def collection_blocks(collection: DavCollection) -> bool:
    """Calendars count unless marked transparent (RFC 6638 schedule-calendar-transp)."""
    props = json.loads(collection.props or "{}")
    if props.get("tag") != "VCALENDAR":
        return False
    return "transparent" not in (props.get(TRANSPARENT_PROP) or "").lower()


def reindex_item(
    session: Session, collection: DavCollection, href: str, text: str | None,
    policy: Policy | None = None, fallback: Span | None = None,
) -> None:
    """Replace the item's rows. ``text`` None means the item is gone."""
    session.execute(
        delete(BusyInterval).where(BusyInterval.collection_id == collection.id, BusyInterval.href == href)
    )
    tech = collection.path.split("/", 1)[0]
    if text is None or "/" not in collection.path or not collection_blocks(collection):
        return
    policy = policy or policy_for(session, tech)
    if policy is None:
        return
    window = horizon()
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
    session.execute(delete(BusyInterval).where(BusyInterval.collection_id == collection_id))


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
    """One range scan for many techs; each tech's intervals merged under its own policy."""
    a, b = int(start.timestamp()), int(end.timestamp())
    query = select(BusyInterval.tech, BusyInterval.start_utc, BusyInterval.end_utc, BusyInterval.kind).where(
        BusyInterval.tech.in_(list(policies)),
        BusyInterval.start_utc > a - DAY,
        BusyInterval.start_utc < b,
        BusyInterval.end_utc > a,
    )
    if ignore_href is not None:
        query = query.where(BusyInterval.href != ignore_href)
    if collection_id is not None:
        query = query.where(BusyInterval.collection_id == collection_id)
    spans: dict[str, tuple[list[Span], list[Span]]] = {tech: ([], []) for tech in policies}
    for tech, row_start, row_end, kind in session.execute(query):
        busy, tentative = spans[tech]
        span = (_dt(max(row_start, a)), _dt(min(row_end, b)))
        if kind == BUSY or (kind == TENTATIVE and policies[tech].tentative_blocks):
            busy.append(span)
        else:
            tentative.append(span)
    return {tech: (merge(busy), merge(tentative)) for tech, (busy, tentative) in spans.items()}


def _item_range(item: DavItem) -> Span:
    low, high = horizon()
    start = _dt(max(item.range_start, int(low.timestamp())))
    end = _dt(min(item.range_end, int(high.timestamp())))
    return start, end


def _day_chunks(start: int, end: int) -> list[tuple[int, int]]:
    """Rows never exceed a day, so a range query can bound its scan by start_utc."""
    chunks = []
    while start < end:
        chunks.append((start, min(end, start + DAY)))
        start += DAY
    return chunks


def _dt(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
