"""Revoking an API token (creating one is server.techs.create_token, shared with the CLI)."""

from __future__ import annotations

from sqlalchemy import select

from server.db import Database
from server.models import ApiToken
from server.techs import AdminError


def revoke_token(database: Database, name: str) -> None:
    """Delete the credential: the next request with it fails, on every node (the verifier's
    memory is keyed by the stored hash, which is gone)."""
    with database.write([name]) as session:
        token = session.scalar(select(ApiToken).where(ApiToken.name == name))
        if token is None:
            raise AdminError(f"no API token named {name!r}")
        session.delete(token)
