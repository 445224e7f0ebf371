"""State of the Google Calendar emulator: configuration, users, calendars, event
records, the change clock behind sync tokens, and server-side page/sync tokens.

Every change stamps the touched record with the next value of one monotonic
counter. A sync token remembers the counter value (and the calendar's epoch) at
the moment its listing was taken, so an incremental list is "records stamped
after that", and expiring tokens is bumping the epoch.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

ROLE_ORDER = {"freeBusyReader": 0, "reader": 1, "writer": 2, "owner": 3}
_BASE32HEX = "0123456789abcdefghijklmnopqrstuv"
MAX_PAGE_STATES = 5000


@dataclass
class SandboxConfig:
    """Knobs of the emulator; defaults follow Google where it documents a number."""

    access_token_ttl: int = 3600
    auth_code_ttl: int = 600
    channel_default_ttl: int = 604800
    channel_max_ttl: int = 2592000
    expansion_horizon_days: int = 730
    max_instances_per_series: int = 2000
    sync_token_max_age: float | None = None
    updated_min_max_age: float = 28 * 86400
    require_https_webhooks: bool = False
    allow_remote_webhooks: bool = False
    push_retries: int = 2
    push_timeout: float = 5.0
    push_sync_delay: float = 0.1  # the "sync" message follows the watch answer
    consent_mode: str = "page"  # "page" | "approve" | "deny"
    consent_user: str | None = None


class Clock:
    """Wall clock with an adjustable offset, so tests can move time forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def new_id(length: int = 26) -> str:
    """A server-chosen event id in base32hex, like Google's."""
    return "".join(secrets.choice(_BASE32HEX) for _ in range(length))


def opaque_token(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(24).replace("-", "A").replace("_", "B")


@dataclass
class EventRecord:
    """One stored event (single, recurring master, or instance exception)."""

    resource: dict[str, Any]
    changed: int
    order: int

    @property
    def id(self) -> str:
        return str(self.resource["id"])

    @property
    def cancelled(self) -> bool:
        return self.resource.get("status") == "cancelled"

    @property
    def master_id(self) -> str | None:
        return self.resource.get("recurringEventId")

    @property
    def is_recurring(self) -> bool:
        return bool(self.resource.get("recurrence"))


@dataclass
class Calendar:
    id: str
    summary: str
    time_zone: str
    owner: str
    description: str = ""
    events: dict[str, EventRecord] = field(default_factory=dict)
    sync_epoch: int = 0
    changed: int = 0
    updated: float = 0.0


@dataclass
class ListEntry:
    """A calendar on a user's calendar list, with that user's access role."""

    calendar_id: str
    role: str
    changed: int
    hidden: bool = False
    selected: bool = True
    color_id: str = "14"


@dataclass
class User:
    email: str
    name: str
    primary: str
    entries: dict[str, ListEntry] = field(default_factory=dict)


@dataclass
class SyncTokenInfo:
    calendar_id: str
    user: str
    stamp: int
    epoch: int
    created: float
    kind: str


@dataclass
class PageState:
    """The rest of a listing, frozen when its first page was served."""

    kind: str
    calendar_id: str
    user: str
    items: list[dict[str, Any]]
    next_sync_token: str | None
    extra: dict[str, Any]


class Store:
    """All mutable state, guarded by one re-entrant lock."""

    def __init__(self, config: SandboxConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        self.users: dict[str, User] = {}
        self.calendars: dict[str, Calendar] = {}
        self.counter = 0
        self.sync_tokens: dict[str, SyncTokenInfo] = {}
        self.page_tokens: dict[str, PageState] = {}

    def tick(self) -> int:
        self.counter += 1
        return self.counter

    # --- users and calendars ---------------------------------------------------
    def add_user(self, email: str, name: str | None, time_zone: str) -> User:
        with self.lock:
            if email in self.users:
                return self.users[email]
            user = User(email=email, name=name or email.split("@")[0], primary=email)
            self.users[email] = user
            self.add_calendar(email, email, time_zone, calendar_id=email)
            return user

    def add_calendar(self, owner: str, summary: str, time_zone: str,
                     calendar_id: str | None = None, description: str = "") -> Calendar:
        with self.lock:
            cal_id = calendar_id or f"{new_id(26)}@group.calendar.google.com"
            cal = Calendar(id=cal_id, summary=summary, time_zone=time_zone, owner=owner,
                           description=description, updated=self.clock.now())
            self.calendars[cal_id] = cal
            self.share(cal_id, owner, "owner")
            return cal

    def share(self, calendar_id: str, email: str, role: str) -> None:
        with self.lock:
            user = self.users[email]
            user.entries[calendar_id] = ListEntry(calendar_id, role, self.tick())

    def resolve(self, user: str, calendar_id: str) -> tuple[Calendar, str] | None:
        """The calendar and the user's role on it, or None when not on their list."""
        with self.lock:
            account = self.users.get(user)
            if account is None:
                return None
            if calendar_id == "primary":
                calendar_id = account.primary
            entry = account.entries.get(calendar_id)
            cal = self.calendars.get(calendar_id)
            if entry is None or cal is None:
                return None
            return cal, entry.role

    def touch(self, cal: Calendar) -> int:
        stamp = self.tick()
        cal.changed = stamp
        cal.updated = self.clock.now()
        return stamp

    # --- tokens ------------------------------------------------------------------
    def mint_sync_token(self, cal: Calendar, user: str, stamp: int, kind: str) -> str:
        token = opaque_token("CP")
        self.sync_tokens[token] = SyncTokenInfo(cal.id, user, stamp, cal.sync_epoch,
                                                self.clock.now(), kind)
        return token

    def check_sync_token(self, token: str, cal_id: str, user: str,
                         kind: str) -> SyncTokenInfo | None:
        """The token's record, or None when it is unknown, foreign or expired."""
        info = self.sync_tokens.get(token)
        cal = self.calendars.get(cal_id)
        if info is None or cal is None or info.calendar_id != cal_id or info.user != user:
            return None
        if info.kind != kind or info.epoch != cal.sync_epoch:
            return None
        max_age = self.config.sync_token_max_age
        if max_age is not None and self.clock.now() - info.created > max_age:
            return None
        return info

    def expire_sync_tokens(self, calendar_id: str | None = None) -> None:
        with self.lock:
            for cal in self.calendars.values():
                if calendar_id in (None, cal.id):
                    cal.sync_epoch += 1

    def save_page(self, state: PageState) -> str:
        """Keep the rest of a listing; the oldest ones go once there are too many."""
        token = opaque_token("Eg")
        self.page_tokens[token] = state
        while len(self.page_tokens) > MAX_PAGE_STATES:
            del self.page_tokens[next(iter(self.page_tokens))]
        return token
