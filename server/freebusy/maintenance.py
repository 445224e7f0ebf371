"""Keeps the rolling horizon rolling: re-expands long series as days pass, prunes the past."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from server.db import Database
from server.freebusy import index as busy_index
from server.models import BusyInterval, BusyIsland, DavCollection, DavItem

log = logging.getLogger("lockstep.freebusy")
INTERVAL_SECONDS = 6 * 3600


def extend_horizon(database: Database, now: datetime | None = None) -> int:
    """Re-index items that reach past the horizon's end; returns how many were re-indexed."""
    start, end = busy_index.horizon(now)
    threshold = int((end - timedelta(days=2)).timestamp())
    with database.read() as session:
        work = session.execute(
            select(DavCollection.path, DavItem.href)
            .join(DavItem, DavItem.collection_id == DavCollection.id)
            .where(DavItem.range_end > threshold, DavItem.range_start < int(end.timestamp()))
        ).all()
    by_tech: dict[str, list[tuple[str, str]]] = {}
    for path, href in work:
        by_tech.setdefault(path.split("/", 1)[0], []).append((path, href))
    for tech, items in by_tech.items():
        with database.write([tech]) as session:
            policy = busy_index.policy_for(session, tech)
            for path, href in items:
                collection = session.scalar(select(DavCollection).where(DavCollection.path == path))
                item = session.scalar(select(DavItem).where(
                    DavItem.collection_id == (collection.id if collection else -1), DavItem.href == href))
                if collection is not None and item is not None:
                    busy_index.reindex_item(session, collection, href, item.text, policy, now=now)
    with database.write(["horizon-prune"]) as session:
        # The pieces of a day that straddles ``start`` may keep time before ``start`` that its pruned
        # rows no longer have: the index answers nothing before its horizon's start either way.
        for table in (BusyInterval, BusyIsland):
            session.execute(delete(table).where(table.end_utc < int(start.timestamp())))
    return len(work)


def start_maintenance(database: Database, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                count = extend_horizon(database)
                log.info("busy index horizon extended: %d long-running item(s) re-expanded in %.1fs",
                         count, time.monotonic() - began)
            except Exception:  # noqa: BLE001 - keep the loop alive, say what failed
                log.exception("busy index horizon extension failed; retrying later")
            stop.wait(INTERVAL_SECONDS)

    thread = threading.Thread(target=loop, name="freebusy-horizon", daemon=True)
    thread.start()
    return thread
