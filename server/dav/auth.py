"""Radicale auth plugin: techs (app passwords) and API tokens from our tables."""

from __future__ import annotations

from radicale import auth

from server.credentials import CredentialVerifier
from server.db import Database


class Auth(auth.BaseAuth):
    """Basic credentials checked by the shared verifier; Radicale adds the failed-login delay."""

    def __init__(self, configuration, database: Database) -> None:  # type: ignore[no-untyped-def]
        super().__init__(configuration)
        self._verifier = CredentialVerifier(database)

    def _login(self, login: str, password: str) -> str:
        principal = self._verifier.verify(login, password)
        return principal.name if principal else ""
