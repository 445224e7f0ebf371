"""Where remote calendars live locally, and how remote events become local items.

Pure helpers shared by the engine: naming of mirror calendars and items, and
the decision whether an inbound event is an echo of our own write.
"""

from __future__ import annotations

import hashlib
import re

from server.dav.rights import BOOKINGS_CALENDAR
from server.models import EventLink

ORIGIN_LOCAL = "local"
ORIGIN_REMOTE = "remote"


def mirror_slug(provider: str, name: str, primary: bool, taken: set[str]) -> str:
    """``<provider>-<slug>``, unique within the tech's home (e.g. google-primary, google-team-2)."""
    base = "primary" if primary else (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "calendar")
    candidate = f"{provider}-{base[:40]}"
    number = 2
    while candidate in taken or candidate == BOOKINGS_CALENDAR:
        candidate = f"{provider}-{base[:36]}-{number}"
        number += 1
    return candidate


def mirror_href(remote_id: str) -> str:
    """A stable, path-safe item name for a remote event."""
    return "r" + hashlib.sha256(remote_id.encode()).hexdigest()[:32] + ".ics"


def is_echo(link: EventLink | None, remote_etag: str) -> bool:
    """The remote version is the one we wrote or read last: nothing happened there."""
    return link is not None and bool(remote_etag) and link.remote_etag == remote_etag


def local_is_current(link: EventLink | None, local_etag: str) -> bool:
    """The local version is the one we synced last: the change row is our own inbound write."""
    return link is not None and bool(local_etag) and link.local_etag == local_etag
