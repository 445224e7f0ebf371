"""Credential checks shared by CalDAV Basic auth and API bearer tokens.

A verified (name, secret, stored hash) triple is remembered in memory as a keyed
digest, so repeated requests skip argon2; changing or removing the credential
changes the stored hash and invalidates the memory at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading

from server.db import Database
from server.principals import Principal, lookup_principal
from server.security import verify_password

_MAX_REMEMBERED = 10_000


class CredentialVerifier:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def verify(self, name: str, secret: str) -> Principal | None:
        with self._database.read() as session:
            principal = lookup_principal(session, name)
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
