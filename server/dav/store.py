"""Calendar data in the database: collections, items and the change log.

These functions are the one way to write calendar data. The Radicale storage
plugin, the CLI and (later) the booking API and sync engine all call them inside
a ``Database.write`` transaction, so an item write and its change row commit
together.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from server.freebusy import index as busy_index
from server.models import DavChange, DavCollection, DavItem, utcnow

OP_PUT = "put"
OP_DELETE = "delete"


@dataclass(frozen=True)
class ItemData:
    """What the store keeps of an item besides its href: text plus query columns."""

    text: str
    uid: str
    etag: str
    component_name: str
    range_start: int
    range_end: int


def owner_of(path: str) -> str:
    """The tech home a sanitized path lives in ("" for the root)."""
    return path.split("/", 1)[0]


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def get_collection(session: Session, path: str) -> DavCollection | None:
    return session.scalar(select(DavCollection).where(DavCollection.path == path))


def child_collections(session: Session, parent_path: str) -> list[DavCollection]:
    query = select(DavCollection).where(DavCollection.parent_path == parent_path)
    return list(session.scalars(query.order_by(DavCollection.path)))


def load_props(collection: DavCollection) -> dict[str, str]:
    return dict(json.loads(collection.props or "{}"))


def ensure_collection(
    session: Session, path: str, props: Mapping[str, str] | None = None
) -> DavCollection:
    """Create ``path`` (and missing ancestors); set ``props`` when given."""
    collection = get_collection(session, path)
    if collection is None:
        parent = parent_of(path)
        if parent:
            ensure_collection(session, parent)
        collection = DavCollection(path=path, parent_path=parent, props="{}")
        session.add(collection)
    if props is not None:
        collection.props = json.dumps(dict(props), sort_keys=True)
    collection.modified_at = utcnow()
    session.flush()
    return collection


def set_props(session: Session, collection: DavCollection, props: Mapping[str, str]) -> None:
    """New properties; a calendar that starts or stops counting as busy is re-indexed."""
    blocked_before = busy_index.collection_blocks(collection)
    collection.props = json.dumps(dict(props), sort_keys=True)
    collection.modified_at = utcnow()
    session.flush()
    if busy_index.collection_blocks(collection) != blocked_before:
        busy_index.reindex_collection(session, collection)


def get_items(
    session: Session, collection_id: int, hrefs: Iterable[str] | None = None
) -> list[DavItem]:
    query = select(DavItem).where(DavItem.collection_id == collection_id)
    if hrefs is not None:
        wanted = list(dict.fromkeys(hrefs))
        if not wanted:
            return []
        query = query.where(DavItem.href.in_(wanted))
    return list(session.scalars(query.order_by(DavItem.href)))


def items_in_range(
    session: Session, collection_id: int, tag: str | None, start: int, end: int
) -> list[DavItem]:
    """Items whose stored time range overlaps [start, end) — an index range scan."""
    query = select(DavItem).where(
        DavItem.collection_id == collection_id,
        DavItem.range_start < end,
        DavItem.range_end > start,
    )
    if tag is not None:
        query = query.where(DavItem.component_name == tag)
    return list(session.scalars(query.order_by(DavItem.href)))


def items_by_uid(session: Session, uid: str) -> list[DavItem]:
    return list(session.scalars(select(DavItem).where(DavItem.uid == uid)))


def has_uid(session: Session, collection_id: int, uid: str) -> bool:
    query = select(DavItem.id).where(DavItem.collection_id == collection_id, DavItem.uid == uid)
    return session.scalar(query.limit(1)) is not None


def put_item(
    session: Session, collection: DavCollection, href: str, data: ItemData
) -> tuple[DavItem, DavItem | None]:
    """Insert or replace one item; returns (new row, snapshot of the old row or None)."""
    row = session.scalar(
        select(DavItem).where(DavItem.collection_id == collection.id, DavItem.href == href)
    )
    old = _detached_copy(row) if row is not None else None
    if row is None:
        row = DavItem(collection_id=collection.id, href=href)
        session.add(row)
    row.text = data.text
    row.uid = data.uid
    row.etag = data.etag
    row.component_name = data.component_name
    row.range_start = data.range_start
    row.range_end = data.range_end
    row.modified_at = utcnow()
    collection.modified_at = row.modified_at
    record_change(session, collection, href, data.uid, OP_PUT)
    busy_index.reindex_item(session, collection, href, data.text, fallback=_span(data))
    return row, old


def delete_item(session: Session, collection: DavCollection, href: str) -> bool:
    row = session.scalar(
        select(DavItem).where(DavItem.collection_id == collection.id, DavItem.href == href)
    )
    if row is None:
        return False
    session.delete(row)
    collection.modified_at = utcnow()
    record_change(session, collection, href, row.uid, OP_DELETE)
    busy_index.reindex_item(session, collection, href, None)
    return True


def move_item(
    session: Session, source: DavCollection, href: str, target: DavCollection, to_href: str
) -> None:
    """Move keeps the text; both collections log the change."""
    row = session.scalar(
        select(DavItem).where(DavItem.collection_id == source.id, DavItem.href == href)
    )
    if row is None:
        raise ValueError(f"no item {href!r} in {source.path!r}")
    if source.id != target.id or href != to_href:
        delete_item(session, target, to_href)
        session.flush()
    row.collection_id = target.id
    row.href = to_href
    row.modified_at = utcnow()
    source.modified_at = target.modified_at = row.modified_at
    record_change(session, source, href, row.uid, OP_DELETE)
    record_change(session, target, to_href, row.uid, OP_PUT)
    busy_index.reindex_item(session, source, href, None)
    busy_index.reindex_item(session, target, to_href, row.text)


def delete_collection_tree(session: Session, path: str) -> None:
    """Delete a collection and everything below it, logging each item's deletion."""
    collections = list(
        session.scalars(
            select(DavCollection).where(
                or_(DavCollection.path == path, DavCollection.path.like(_like_prefix(path), escape="\\"))
            )
        )
    )
    for collection in collections:
        for item in get_items(session, collection.id):
            record_change(session, collection, item.href, item.uid, OP_DELETE)
        session.execute(delete(DavItem).where(DavItem.collection_id == collection.id))
        busy_index.forget_collection(session, collection.id)
        session.delete(collection)
    session.flush()


def record_change(
    session: Session, collection: DavCollection, href: str, uid: str, operation: str
) -> None:
    session.add(
        DavChange(
            collection_id=collection.id,
            collection_path=collection.path,
            href=href,
            uid=uid,
            operation=operation,
        )
    )
    session.flush()


def current_revision(session: Session, collection_id: int) -> int:
    query = select(func.max(DavChange.id)).where(DavChange.collection_id == collection_id)
    return int(session.scalar(query) or 0)


def changed_hrefs(session: Session, collection_id: int, since: int) -> list[str]:
    query = (
        select(DavChange.href)
        .where(DavChange.collection_id == collection_id, DavChange.id > since)
        .distinct()
    )
    return list(session.scalars(query))


def all_hrefs(session: Session, collection_id: int) -> list[str]:
    query = select(DavItem.href).where(DavItem.collection_id == collection_id)
    return list(session.scalars(query.order_by(DavItem.href)))


def _span(data: ItemData) -> tuple[datetime, datetime]:
    return (datetime.fromtimestamp(max(data.range_start, 0), timezone.utc),
            datetime.fromtimestamp(min(data.range_end, 253402300799), timezone.utc))


def _like_prefix(path: str) -> str:
    escaped = path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"


def _detached_copy(row: DavItem) -> DavItem:
    values: dict[str, Any] = {
        column.key: getattr(row, column.key) for column in DavItem.__table__.columns
    }
    return DavItem(**values)


def item_data_from_text(text: str, collection_path: str) -> ItemData:
    """Parse and check iCalendar text as Radicale would on PUT, for writers other than Radicale."""
    import radicale.item as radicale_item
    from radicale.config import DEFAULT_CONFIG_SCHEMA

    limit = int(DEFAULT_CONFIG_SCHEMA["server"]["max_vevent_rrule_occurrence"]["value"])
    components = radicale_item.read_components(text)
    radicale_item.check_and_sanitize_items(components, tag="VCALENDAR", max_vevent_rrule_occurrence=limit)
    item = radicale_item.Item(collection_path=collection_path, vobject_item=components[0])
    item.prepare()
    return item_data(item)


def item_data(item: Any) -> ItemData:
    """The columns the store keeps for a Radicale item (parsed once, at write time)."""
    start, end = item.time_range
    return ItemData(text=item.serialize(), uid=item.uid, etag=item.etag,
                    component_name=item.component_name, range_start=start, range_end=end)
