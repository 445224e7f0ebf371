"""Database tables (SQLAlchemy 2). Alembic migrations in server/migrations mirror them."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from server.commit_order import current_transaction_id


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Tech(Base):
    """A technician: owns the CalDAV home ``/dav/<username>/``."""

    __tablename__ = "techs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    timezone: Mapped[str] = mapped_column(String(64))
    working_hours: Mapped[str] = mapped_column(String(400), default="mon-fri 08:00-17:00")
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """A credential for booking software; the secret is stored only as a hash."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DavCollection(Base):
    """A Radicale collection (principal home or calendar) and its properties."""

    __tablename__ = "dav_collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(512), unique=True)
    parent_path: Mapped[str] = mapped_column(String(512), index=True)
    props: Mapped[str] = mapped_column(Text, default="{}")
    modified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DavItem(Base):
    """One calendar object resource. Columns beside ``text`` let queries avoid parsing."""

    __tablename__ = "dav_items"
    __table_args__ = (
        UniqueConstraint("collection_id", "href", name="uq_dav_items_collection_href"),
        Index("ix_dav_items_collection_uid", "collection_id", "uid"),
        Index("ix_dav_items_collection_range", "collection_id", "range_start", "range_end"),
        Index("ix_dav_items_uid", "uid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(
        ForeignKey("dav_collections.id", ondelete="CASCADE")
    )
    href: Mapped[str] = mapped_column(String(512))
    uid: Mapped[str] = mapped_column(String(512))
    etag: Mapped[str] = mapped_column(String(80))
    component_name: Mapped[str] = mapped_column(String(32))
    range_start: Mapped[int] = mapped_column(BigInteger)
    range_end: Mapped[int] = mapped_column(BigInteger)
    text: Mapped[str] = mapped_column(Text)
    modified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DavChange(Base):
    """Append-only log of item writes; its id is the revision behind sync tokens.

    Consumers (RFC 6578 sync, busy index, sync engine) read it; rows are written
    in the same transaction as the item change they describe. ``txid`` lets the outbox
    read the whole log in commit order (server/commit_order.py); rows logged before it
    existed count as transaction 0.
    """

    __tablename__ = "dav_changes"
    __table_args__ = (Index("ix_dav_changes_collection_id", "collection_id", "id"),
                      Index("ix_dav_changes_txid", "txid", "id"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    collection_id: Mapped[int] = mapped_column(Integer)
    collection_path: Mapped[str] = mapped_column(String(512))
    href: Mapped[str] = mapped_column(String(512))
    uid: Mapped[str] = mapped_column(String(512))
    operation: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    txid: Mapped[int] = mapped_column(BigInteger, default=current_transaction_id(), server_default="0")


class TechSettings(Base):
    """Availability policy of a tech (one row per tech; defaults when absent)."""

    __tablename__ = "tech_settings"

    tech_id: Mapped[int] = mapped_column(ForeignKey("techs.id", ondelete="CASCADE"), primary_key=True)
    tentative_blocks: Mapped[bool] = mapped_column(default=False)
    allday: Mapped[str] = mapped_column(String(16), default="working_hours")
    buffer_before_min: Mapped[int] = mapped_column(Integer, default=0)
    buffer_after_min: Mapped[int] = mapped_column(Integer, default=0)
    min_notice_min: Mapped[int] = mapped_column(Integer, default=0)


class BusyInterval(Base):
    """The busy index: UTC epoch seconds, at most one day per row (bounded scans)."""

    __tablename__ = "busy_intervals"
    __table_args__ = (
        Index("ix_busy_tech_span", "tech", "start_utc", "end_utc", "kind"),  # covers the range scan
        Index("ix_busy_item", "collection_id", "href"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tech: Mapped[str] = mapped_column(String(64))
    collection_id: Mapped[int] = mapped_column(Integer)
    href: Mapped[str] = mapped_column(String(512))
    start_utc: Mapped[int] = mapped_column(BigInteger)
    end_utc: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))


class BusyIsland(Base):
    """The busy index merged per tech, kind and UTC day (server/freebusy/islands.py): what a
    free/busy request over all of a tech's calendars reads. Pieces never cross a UTC midnight."""

    __tablename__ = "busy_islands"

    tech: Mapped[str] = mapped_column(String(64), primary_key=True)
    start_utc: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    end_utc: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)


class IdempotentResponse(Base):
    """The first answer to a request carrying an Idempotency-Key, replayed on retries."""

    __tablename__ = "idempotent_responses"
    __table_args__ = (UniqueConstraint("token_name", "key", name="uq_idempotency_token_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_name: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """Work for the background workers; claimed exclusively with a lease, retried with backoff."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_ready", "state", "run_at"),
        Index("ix_jobs_dedupe", "kind", "dedupe_key", "state"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text, default="{}")
    dedupe_key: Mapped[str] = mapped_column(String(300), default="")
    state: Mapped[str] = mapped_column(String(16), default="ready")  # ready | running | done | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    worker: Mapped[str] = mapped_column(String(100), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Connection(Base):
    """A tech's account at a provider; credentials are ciphertext (server.crypto)."""

    __tablename__ = "connections"
    __table_args__ = (UniqueConstraint("tech_id", "provider", name="uq_connection_tech_provider"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tech_id: Mapped[int] = mapped_column(ForeignKey("techs.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(320), default="")
    state: Mapped[str] = mapped_column(String(16), default="ok")  # ok | degraded | needs_reauth
    credentials: Mapped[str] = mapped_column(Text, default="")
    booking_calendar: Mapped[str] = mapped_column(String(1024), default="")  # remote id; "" = primary
    selection: Mapped[str] = mapped_column(String(16), default="primary")  # primary | busy
    last_success: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    trouble_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RemoteCalendarRow(Base):
    """A provider calendar of a connection, its mirror path, sync cursor and push channel."""

    __tablename__ = "remote_calendars"
    __table_args__ = (UniqueConstraint("connection_id", "remote_id", name="uq_remote_calendar"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    remote_id: Mapped[str] = mapped_column(String(1024))
    name: Mapped[str] = mapped_column(String(300), default="")
    primary: Mapped[bool] = mapped_column(default=False)
    busy: Mapped[bool] = mapped_column(default=True)
    selected: Mapped[bool] = mapped_column(default=False)
    local_path: Mapped[str] = mapped_column(String(512), default="")
    cursor: Mapped[str] = mapped_column(Text, default="")
    watch_channel: Mapped[str] = mapped_column(String(200), default="")
    watch_resource: Mapped[str] = mapped_column(String(300), default="")
    watch_token: Mapped[str] = mapped_column(String(200), default="")
    watch_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EventLink(Base):
    """Local item ↔ remote event, with both sides' versions as last synced."""

    __tablename__ = "event_links"
    __table_args__ = (
        UniqueConstraint("remote_calendar_id", "remote_id", name="uq_link_remote"),
        Index("ix_link_local", "local_path", "local_href"),
        Index("ix_link_uid", "local_uid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    remote_calendar_id: Mapped[int] = mapped_column(ForeignKey("remote_calendars.id", ondelete="CASCADE"))
    remote_id: Mapped[str] = mapped_column(String(1024))
    remote_etag: Mapped[str] = mapped_column(String(300), default="")
    local_path: Mapped[str] = mapped_column(String(512))
    local_href: Mapped[str] = mapped_column(String(512))
    local_uid: Mapped[str] = mapped_column(String(512))
    local_etag: Mapped[str] = mapped_column(String(80), default="")
    origin: Mapped[str] = mapped_column(String(16))  # local | remote
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OAuthState(Base):
    """One-time consent links and the OAuth state/PKCE verifier of a flow in progress."""

    __tablename__ = "oauth_states"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    link_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(100), default="", index=True)
    provider: Mapped[str] = mapped_column(String(32))
    tech_id: Mapped[int] = mapped_column(ForeignKey("techs.id", ondelete="CASCADE"))
    code_verifier: Mapped[str] = mapped_column(Text, default="")  # ciphertext
    used: Mapped[bool] = mapped_column(default=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Conflict(Base):
    """A personal event overlapping a booking, recorded once."""

    __tablename__ = "conflicts"
    __table_args__ = (UniqueConstraint("tech", "booking_uid", "other_ref", name="uq_conflict_once"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tech: Mapped[str] = mapped_column(String(64), index=True)
    booking_uid: Mapped[str] = mapped_column(String(512))
    other_ref: Mapped[str] = mapped_column(String(1100))
    summary: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Notification(Base):
    """Something a tech or the dispatcher needs to hear about."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    audience: Mapped[str] = mapped_column(String(16))  # tech | dispatcher
    tech: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(48))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Marker(Base):
    """Named high-water marks (e.g. how far the change log has been dispatched)."""

    __tablename__ = "markers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class AdminUser(Base):
    """A person who may use the admin panel (``lockstep admin create USER``); argon2 hash only."""

    __tablename__ = "admin_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_login: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditEntry(Base):
    """Who changed what, when: one row per admin action (never holds a secret)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(300), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class AdminLoginFailure(Base):
    """A failed panel login, kept for the rate limit window; shared by every node through the database."""

    __tablename__ = "admin_login_failures"
    __table_args__ = (Index("ix_admin_login_failures_key", "username", "ip", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
