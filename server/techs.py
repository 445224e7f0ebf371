"""Tech and API-token administration: the service functions the CLI and admin panel share."""

from __future__ import annotations

import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select

from server.dav import store
from server.dav.rights import BOOKINGS_CALENDAR
from server.db import Database
from server.hours import parse_working_hours
from server.freebusy import index as busy_index
from server.freebusy.policy import ALLDAY_POLICIES
from server.models import ApiToken, Tech, TechSettings
from server.principals import TOKEN_SCOPES, name_taken
from server.security import generate_password, generate_token_secret, hash_password

USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
RESERVED = {"dav", "api", "admin", "hooks", "oauth", "metrics", "healthz", "well-known", "root"}

BOOKINGS_PROPS = {
    "tag": "VCALENDAR",
    "D:displayname": "Bookings",
    "C:calendar-description": "Jobs booked through Lockstep",
    "C:supported-calendar-component-set": "VEVENT",
    "ICAL:calendar-color": "#2a7ae2ff",
}


_DEFAULT_SETTINGS = {"tentative_blocks": False, "allday": "working_hours",
                     "buffer_before_min": 0, "buffer_after_min": 0, "min_notice_min": 0}


class AdminError(ValueError):
    """A refused administrative action; the message is meant for a person."""


@dataclass(frozen=True)
class NewCredential:
    name: str
    secret: str


def validate_username(username: str) -> str:
    if not USERNAME.match(username) or username in RESERVED:
        raise AdminError(
            f"{username!r} is not a valid user name: use 1-63 lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit (not a reserved word)"
        )
    return username


def validate_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise AdminError(f"{name!r} is not an IANA time zone (e.g. America/Los_Angeles)") from None
    return name


def add_tech(
    database: Database,
    username: str,
    *,
    name: str,
    email: str,
    tz: str,
    hours: str = "mon-fri 08:00-17:00",
    password: str | None = None,
    settings: Settings | None = None,
) -> NewCredential:
    """Create the tech, their CalDAV home and its bookings calendar in one transaction."""
    validate_username(username)
    validate_timezone(tz)
    if "@" not in email:
        raise AdminError(f"{email!r} is not an e-mail address")
    try:
        parse_working_hours(hours)
    except ValueError as exc:
        raise AdminError(f"working hours: {exc}") from None
    _validate_settings(settings or Settings())
    secret = password or generate_password()
    with database.write([username]) as session:
        if name_taken(session, username):
            raise AdminError(f"the name {username!r} is already taken by a tech or a token")
        session.add(
            Tech(
                username=username,
                name=name,
                email=email,
                timezone=tz,
                working_hours=hours,
                password_hash=hash_password(secret),
            )
        )
        session.flush()
        tech = session.scalar(select(Tech).where(Tech.username == username))
        assert tech is not None
        chosen = {k: v for k, v in (settings or Settings()).__dict__.items() if v is not None}
        session.add(TechSettings(tech_id=tech.id, **{**_DEFAULT_SETTINGS, **chosen}))
        store.ensure_collection(session, username, {})
        store.ensure_collection(session, f"{username}/{BOOKINGS_CALENDAR}", BOOKINGS_PROPS)
    return NewCredential(username, secret)


@dataclass(frozen=True)
class Settings:
    """Optional per-tech availability settings; None leaves a value unchanged."""

    tentative_blocks: bool | None = None
    allday: str | None = None
    buffer_before_min: int | None = None
    buffer_after_min: int | None = None
    min_notice_min: int | None = None


def update_tech(
    database: Database, username: str, *, name: str | None = None, email: str | None = None,
    tz: str | None = None, hours: str | None = None, settings: Settings = Settings(),
) -> int:
    """Change a tech; time zone, hours or policy changes rebuild their busy index. Returns items re-indexed."""
    if tz is not None:
        validate_timezone(tz)
    if hours is not None:
        try:
            parse_working_hours(hours)
        except ValueError as exc:
            raise AdminError(f"working hours: {exc}") from None
    if email is not None and "@" not in email:
        raise AdminError(f"{email!r} is not an e-mail address")
    _validate_settings(settings)
    with database.write([username]) as session:
        tech = session.scalar(select(Tech).where(Tech.username == username))
        if tech is None:
            raise AdminError(f"no tech named {username!r}")
        for field, value in (("name", name), ("email", email), ("timezone", tz), ("working_hours", hours)):
            if value is not None:
                setattr(tech, field, value)
        row = session.get(TechSettings, tech.id)
        if row is None:
            row = TechSettings(tech_id=tech.id, tentative_blocks=False, allday=ALLDAY_POLICIES[0],
                               buffer_before_min=0, buffer_after_min=0, min_notice_min=0)
            session.add(row)
        for field, value in settings.__dict__.items():
            if value is not None:
                setattr(row, field, value)
        session.flush()
        return busy_index.reindex_tech(session, username)


def _validate_settings(settings: Settings) -> None:
    if settings.allday is not None and settings.allday not in ALLDAY_POLICIES:
        raise AdminError(f"allday must be one of {', '.join(ALLDAY_POLICIES)}")
    for field in ("buffer_before_min", "buffer_after_min", "min_notice_min"):
        value = getattr(settings, field)
        if value is not None and not 0 <= value <= 7 * 24 * 60:
            raise AdminError(f"{field.removesuffix('_min').replace('_', ' ')} must be 0 to 10080 minutes")


def list_techs(database: Database) -> list[Tech]:
    with database.read() as session:
        return list(session.scalars(select(Tech).order_by(Tech.username)))


def remove_tech(database: Database, username: str) -> None:
    """Remove the tech and every calendar in their home (each deletion is logged)."""
    with database.write([username]) as session:
        tech = session.scalar(select(Tech).where(Tech.username == username))
        if tech is None:
            raise AdminError(f"no tech named {username!r}")
        store.delete_collection_tree(session, username)
        session.delete(tech)


def set_password(database: Database, username: str, password: str | None = None) -> NewCredential:
    secret = password or generate_password()
    with database.write([username]) as session:
        tech = session.scalar(select(Tech).where(Tech.username == username))
        if tech is None:
            raise AdminError(f"no tech named {username!r}")
        tech.password_hash = hash_password(secret)
    return NewCredential(username, secret)


def create_token(database: Database, name: str, scope: str) -> NewCredential:
    """An API/CalDAV credential for booking software; the secret is returned once."""
    validate_username(name)
    if scope not in TOKEN_SCOPES:
        raise AdminError(f"scope must be one of {', '.join(TOKEN_SCOPES)}")
    secret = generate_token_secret()
    with database.write([name]) as session:
        if name_taken(session, name):
            raise AdminError(f"the name {name!r} is already taken by a tech or a token")
        session.add(ApiToken(name=name, scope=scope, secret_hash=hash_password(secret)))
    return NewCredential(name, secret)


def revoke_token(database: Database, name: str) -> None:
    """Delete the credential: the next request with it fails, on every node (the verifier's
    memory is keyed by the stored hash, which is gone)."""
    with database.write([name]) as session:
        token = session.scalar(select(ApiToken).where(ApiToken.name == name))
        if token is None:
            raise AdminError(f"no API token named {name!r}")
        session.delete(token)
