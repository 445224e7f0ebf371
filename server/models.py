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
    in the same transaction as the item change they describe.
    """

    __tablename__ = "dav_changes"
    __table_args__ = (Index("ix_dav_changes_collection_id", "collection_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    collection_id: Mapped[int] = mapped_column(Integer)
    collection_path: Mapped[str] = mapped_column(String(512))
    href: Mapped[str] = mapped_column(String(512))
    uid: Mapped[str] = mapped_column(String(512))
    operation: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
