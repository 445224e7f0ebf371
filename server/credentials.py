"""Credential checks shared by CalDAV Basic auth and API bearer tokens.

A verified (name, secret, stored hash) triple is remembered in memory as a keyed
digest, so repeated requests skip argon2. The stored hash is still read from the
database on every request (on any node, a changed or revoked credential fails at
once); only the argon2 work is remembered. API requests read it together with their own
reads (``token_query`` + ``check_token``), so checking a token costs one indexed select and
no round trip of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading

from sqlalchemy import bindparam, select

from server.db import Database, Query, Rows
from server.models import ApiToken
from server.principals import KIND_TOKEN, Principal, lookup_principal
from server.security import verify_password

_MAX_REMEMBERED = 10_000
_TOKEN = select(ApiToken.scope, ApiToken.secret_hash).where(ApiToken.name == bindparam("name"))


def token_query(name: str) -> Query:
    return _TOKEN, {"name": name}


class CredentialVerifier:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def verify(self, name: str, secret: str) -> Principal | None:
        """A tech or a token, in a short transaction of its own (CalDAV Basic auth)."""
        with self._database.read() as session:
            principal = lookup_principal(session, name)
        return self._check(principal, name, secret)

    def check_token(self, rows: Rows, name: str, secret: str) -> Principal | None:
        """An API token from the rows of ``token_query(name)``, read with the request's own reads.
        Names are unique across techs and tokens, so a tech's name finds no token."""
        principal = Principal(name, KIND_TOKEN, rows[0][0], rows[0][1]) if rows else None
        return self._check(principal, name, secret)

    def _check(self, principal: Principal | None, name: str, secret: str) -> Principal | None:
        stored_hash = principal.secret_hash if principal else None
        digest = hmac.new(self._key, f"{name}\0{secret}\0{stored_hash}".encode(), hashlib.sha256).digest()
        with self._lock:
            remembered = self._verified.get(name)
        if principal is not None and remembered is not None and hmac.compare_digest(remembered, digest):
            return principal
        if not verify_password(stored_hash, secret) or principal is None:
            return None
        with self._lock:
            if len(self._verified) > _MAX_REMEMBERED:
                self._verified.clear()
            self._verified[name] = digest
        return principal
