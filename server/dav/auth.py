"""Radicale auth plugin: techs (app passwords) and API tokens from our tables."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading

from radicale import auth

from server.db import Database
from server.principals import Principal, lookup_principal
from server.security import verify_password


class Auth(auth.BaseAuth):
    """Checks Basic credentials against argon2 hashes.

    A verified (login, password, stored hash) triple is remembered in memory as a
    keyed digest, so the next request skips argon2; changing or removing the
    credential changes the stored hash and invalidates it at once.
    """

    def __init__(self, configuration, database: Database) -> None:  # type: ignore[no-untyped-def]
        super().__init__(configuration)
        self._database = database
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _login(self, login: str, password: str) -> str:
        with self._database.read() as session:
            principal = lookup_principal(session, login)
        stored_hash = principal.secret_hash if principal else None
        digest = hmac.new(
            self._cache_key, f"{login}\0{password}\0{stored_hash}".encode(), hashlib.sha256
        ).digest()
        with self._lock:
            cached = self._verified.get(login)
        if principal is not None and cached is not None and hmac.compare_digest(cached, digest):
            return principal.name
        if not verify_password(stored_hash, password) or principal is None:
            return ""
        with self._lock:
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[login] = digest
        return principal.name


__all__ = ["Auth", "Principal"]
