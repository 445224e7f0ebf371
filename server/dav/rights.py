"""Radicale rights plugin: a tech owns their home; tokens see bookings and free/busy."""

from __future__ import annotations

from radicale import pathutils, rights

from server.dav.request_scope import remembered
from server.db import Database
from server.principals import KIND_TECH, SCOPE_BOOKINGS, Principal, lookup_principal

BOOKINGS_CALENDAR = "bookings"


def permissions(principal: Principal | None, sane_path: str, home_exists: bool) -> str:
    """Radicale permission letters for ``principal`` on ``sane_path`` (no slashes around)."""
    if principal is None:
        return ""
    if not sane_path:
        return "R"
    parts = sane_path.split("/")
    # The bookings calendar is the source of truth: nobody deletes or overwrites it whole.
    protect = "do" if len(parts) == 2 and parts[1] == BOOKINGS_CALENDAR else ""
    if principal.kind == KIND_TECH:
        if parts[0] != principal.name:
            return ""
        return "RW" if len(parts) == 1 else ("rw" + protect if len(parts) == 2 else "")
    # API token: only homes of existing techs, never anything above or below calendars.
    if not home_exists or len(parts) > 2:
        return ""
    if len(parts) == 1:
        return "R"
    if parts[1] == BOOKINGS_CALENDAR and principal.scope == SCOPE_BOOKINGS:
        return "rw" + protect
    return "f"


class Rights(rights.BaseRights):
    def __init__(self, configuration, database: Database) -> None:  # type: ignore[no-untyped-def]
        super().__init__(configuration)
        self._database = database

    def authorization(self, user: str, user_groups: set, path: str) -> str:
        if not user:
            return ""
        sane_path = pathutils.strip_path(path)
        owner = sane_path.split("/", 1)[0]
        principal = self._principal(user)
        home = self._principal(owner) if owner else None
        home_exists = home is not None and home.kind == KIND_TECH
        return permissions(principal, sane_path, home_exists)

    def _principal(self, name: str) -> Principal | None:
        def lookup() -> Principal | None:
            with self._database.read() as session:
                return lookup_principal(session, name)

        return remembered(("principal", name), lookup)
