"""State of the Microsoft Graph emulator: configuration, users (mailboxes),
calendars, event records, delta state tokens, and the opaque ids Graph uses.

One re-entrant lock guards everything. Every change stamps the touched record
with the next value of one counter; delta rounds compare snapshots of the
calendar view, so the counter only orders changes (and finds events that
changed outside a delta window).
"""

from __future__ import annotations

import base64
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from server.sandbox.google_store import Clock

__all__ = ["Clock", "GraphConfig", "Store"]

MAX_STATES = 5000
GRAPH_RESOURCE = "https://graph.microsoft.com/"


@dataclass
class GraphConfig:
    """Knobs of the emulator; defaults follow Graph where it documents a number."""

    tenant: str = "common"
    tenant_id: str = "9188040d-6c67-4c5b-b112-36a304b66dad"
    access_token_ttl: int = 3600
    auth_code_ttl: int = 600
    default_page_size: int = 10
    max_page_size: int = 1000
    expansion_horizon_days: int = 1100
    max_instances_per_series: int = 3000
    subscription_max_minutes: int = 10080
    validation_timeout: float = 10.0
    notification_timeout: float = 3.0
    notification_retries: int = 2
    require_https_webhooks: bool = False
    allow_remote_webhooks: bool = False
    webhook_ca_file: str | None = None  # extra CA to trust when POSTing to https webhooks
    consent_mode: str = "page"  # "page" | "approve" | "deny"


def new_item_id() -> str:
    """An opaque, URL-safe Exchange-style item id."""
    return "AAMkAG" + base64.urlsafe_b64encode(secrets.token_bytes(33)).decode().rstrip("=")


def new_change_key() -> str:
    return base64.b64encode(secrets.token_bytes(12)).decode()


def occurrence_id(master_id: str, key: str) -> str:
    """The id of one occurrence: opaque, but decodable back to master and start."""
    raw = f"{master_id}|{key}".encode()
    return "AAMkOC" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_occurrence_id(event_id: str) -> tuple[str, str] | None:
    if not event_id.startswith("AAMkOC"):
        return None
    raw = event_id[6:]
    try:
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    master, sep, key = decoded.rpartition("|")
    return (master, key) if sep and master else None


@dataclass
class Timing:
    """One end of an event: the UTC instant, the zone it was given in, the wall time there."""

    instant: datetime  # aware UTC
    zone: str          # the name as given (IANA or Windows)
    wall: datetime     # naive wall-clock time in ``zone``


@dataclass
class EventRecord:
    """A stored item: single instance, series master, or exception of a series."""

    id: str
    calendar_id: str
    owner: str
    data: dict[str, Any]
    start: Timing
    end: Timing
    recurrence: dict[str, Any] | None
    ical_uid: str
    created: float
    modified: float
    change_key: str
    stamp: int
    series_key: str = ""  # masters: changes only when the series itself changes
    transaction_id: str | None = None
    request_digest: str | None = None
    ext: dict[str, dict[str, str]] = field(default_factory=dict)  # lower(id) -> {id, value}
    master_id: str | None = None
    original_key: str | None = None  # exceptions: the occurrence's original start key
    exceptions: dict[str, EventRecord] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    deleted: bool = False

    @property
    def is_master(self) -> bool:
        return self.recurrence is not None and self.master_id is None


@dataclass
class Calendar:
    id: str
    name: str
    owner: str
    is_default: bool
    can_edit: bool
    change_key: str
    color: str = "auto"
    events: dict[str, EventRecord] = field(default_factory=dict)


@dataclass
class User:
    id: str
    email: str
    name: str
    time_zone: str
    default_calendar: str
    calendars: list[str] = field(default_factory=list)
    delta_epoch: int = 0


@dataclass
class DeltaState:
    """What a delta or skip token stands for."""

    user: str
    calendar_id: str
    start: datetime
    end: datetime
    epoch: int
    snapshot: dict[str, str]  # id -> changeKey of the view when the round ended
    stamp: int
    items: list[dict[str, Any]] = field(default_factory=list)  # skip tokens: the rest
    base_path: str = ""


class Store:
    """All mutable state."""

    def __init__(self, config: GraphConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        self.users: dict[str, User] = {}          # by lower-case email
        self.users_by_id: dict[str, str] = {}     # id -> lower-case email
        self.calendars: dict[str, Calendar] = {}
        self.counter = 0
        self.delta_states: dict[str, DeltaState] = {}
        self.transactions: dict[tuple[str, str], str] = {}  # (user, transactionId) -> event id

    def tick(self) -> int:
        self.counter += 1
        return self.counter

    # --- users and calendars -------------------------------------------------------
    def user(self, email: str) -> User:
        try:
            return self.users[email.lower()]
        except KeyError:
            raise KeyError(f"no such user {email!r}") from None

    def add_user(self, email: str, name: str | None, time_zone: str) -> User:
        with self.lock:
            if email.lower() in self.users:
                return self.users[email.lower()]
            user = User(id=str(uuid.uuid4()), email=email, name=name or email.split("@")[0],
                        time_zone=time_zone, default_calendar="")
            self.users[email.lower()] = user
            self.users_by_id[user.id] = email.lower()
            user.default_calendar = self.add_calendar(email, "Calendar", default=True).id
            return user

    def add_calendar(self, email: str, name: str, *, can_edit: bool = True,
                     default: bool = False) -> Calendar:
        with self.lock:
            user = self.user(email)
            cal = Calendar(id=new_item_id(), name=name, owner=user.email.lower(),
                           is_default=default, can_edit=can_edit or default,
                           change_key=new_change_key())
            self.calendars[cal.id] = cal
            user.calendars.append(cal.id)
            return cal

    def calendar_of(self, email: str, calendar_id: str) -> Calendar | None:
        cal = self.calendars.get(calendar_id)
        if cal is None or cal.owner != email.lower():
            return None
        return cal

    def find_event(self, email: str, event_id: str) -> EventRecord | None:
        """A live stored record (single, master or exception) of the user's, by id."""
        user = self.user(email)
        for cal_id in user.calendars:
            rec = self.calendars[cal_id].events.get(event_id)
            if rec is not None and not rec.deleted:
                return rec
        return None

    # --- delta state --------------------------------------------------------------
    def save_state(self, state: DeltaState) -> str:
        token = secrets.token_urlsafe(24)
        self.delta_states[token] = state
        while len(self.delta_states) > MAX_STATES:
            del self.delta_states[next(iter(self.delta_states))]
        return token

    def load_state(self, token: str, email: str) -> DeltaState | None:
        state = self.delta_states.get(token)
        if state is None or state.user != email.lower():
            return None
        if state.epoch != self.user(email).delta_epoch:
            return None
        return state

    def expire_delta_tokens(self, email: str | None = None) -> None:
        with self.lock:
            for user in self.users.values():
                if email is None or user.email.lower() == email.lower():
                    user.delta_epoch += 1
