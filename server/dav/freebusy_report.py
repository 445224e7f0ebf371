"""CalDAV free-busy-query REPORT and ``?view=freebusy`` answered from the busy index.

Radicale computes free/busy by parsing every event (and reads all-day events
as UTC). Its two call sites look up ``freebusy_collection_text`` as a module
global; ``install`` points both at ``collection_freebusy_text`` for our
collections, so CalDAV and /api/v1/freebusy share one set of semantics.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

import radicale.app.get as radicale_get
import radicale.app.report as radicale_report

from server.dav.storage import Collection
from server.freebusy import index as busy_index
from server.freebusy.epochs import epoch_of
from server.freebusy.vfreebusy import TechSpans, report_vfreebusy

_original = radicale_report.freebusy_collection_text


def collection_freebusy_text(
    collection: Any, range_start: datetime.datetime, range_end: datetime.datetime,
    max_occurrence: int, unlock_storage_fn: Callable[[], None], time_range_element: Any = None,
) -> str:
    if not isinstance(collection, Collection) or collection.row is None:
        return _original(collection, range_start, range_end, max_occurrence, unlock_storage_fn,
                         time_range_element)
    start, end = epoch_of(_utc(range_start)), epoch_of(_utc(range_end))
    tech = collection.path.split("/", 1)[0]
    row_id = collection.row.id

    def query(session: Any) -> TechSpans:
        policies = busy_index.policies_for(session, [tech])
        if not policies:
            return [], []
        return busy_index.busy_epochs_for_many(session, policies, start, end, collection_id=row_id)[tech]

    busy, tentative = collection.read(query)
    unlock_storage_fn()
    return report_vfreebusy(start, end, busy, tentative)


def install() -> None:
    radicale_report.freebusy_collection_text = collection_freebusy_text
    radicale_get.freebusy_collection_text = collection_freebusy_text


def _utc(value: datetime.datetime | datetime.date) -> datetime.datetime:
    if not isinstance(value, datetime.datetime):
        value = datetime.datetime.combine(value, datetime.time())
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc)
