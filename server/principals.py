"""Who is asking: a tech or an API token. Names are unique across both."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import ApiToken, Tech

KIND_TECH = "tech"
KIND_TOKEN = "token"

SCOPE_BOOKINGS = "bookings"
SCOPE_FREEBUSY = "freebusy"
TOKEN_SCOPES = (SCOPE_FREEBUSY, SCOPE_BOOKINGS)


@dataclass(frozen=True)
class Principal:
    name: str
    kind: str
    scope: str
    secret_hash: str


def lookup_principal(session: Session, name: str) -> Principal | None:
    tech = session.scalar(select(Tech).where(Tech.username == name))
    if tech is not None:
        return Principal(tech.username, KIND_TECH, "", tech.password_hash)
    token = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if token is not None:
        return Principal(token.name, KIND_TOKEN, token.scope, token.secret_hash)
    return None


def name_taken(session: Session, name: str) -> bool:
    return lookup_principal(session, name) is not None
