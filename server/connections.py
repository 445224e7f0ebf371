"""Connecting a tech's provider account: one-time consent links, the OAuth round trip,
and the encrypted credential it leaves behind.

The link printed by ``lockstep connect google USER`` works once and for an
hour; the OAuth state and PKCE verifier live in the database (any node may
receive the callback), the verifier and the resulting tokens encrypted.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable
from urllib.parse import urlsplit

from sqlalchemy import select

from server import jobs
from server.config import Config
from server.crypto import KeyRing
from server.db import Database
from server.models import Connection, OAuthState, Tech
from server.providers.google import GoogleProvider
from server.providers.oauth_google import GoogleSettings, consent_url, exchange

UTC = timezone.utc
LINK_TTL = timedelta(hours=1)
OAUTH_PROVIDERS = ("google", "microsoft")
JOB_INITIAL_IMPORT = "initial_import"


class ConnectError(ValueError):
    """A refused connect step; the message is for the person in the browser or at the CLI."""


@dataclass(frozen=True)
class Connected:
    tech: str
    provider: str
    connection_id: int


def google_settings(config: Config) -> GoogleSettings:
    return GoogleProvider.settings_from(config)


def _oauth_flow(config: Config, provider: str
                ) -> tuple[object, Callable[..., tuple[str, str]], Callable[..., str]]:
    """(settings, consent_url, exchange) of an OAuth provider. For Microsoft the "verifier"
    kept between the two steps is MSAL's whole auth-code flow (state, nonce, PKCE), as JSON."""
    if provider == "microsoft":
        from server.providers import oauth_microsoft
        from server.providers.microsoft import MicrosoftProvider

        return MicrosoftProvider.settings_from(config), oauth_microsoft.consent_url, oauth_microsoft.exchange
    return google_settings(config), consent_url, exchange


def key_ring(config: Config, secret_key: str) -> KeyRing:
    retired = [k.strip() for k in config.get("security", "retired_keys").split(",") if k.strip()]
    return KeyRing(secret_key, *retired)


def redirect_uri(config: Config, provider: str) -> str:
    return f"{config.public_url}/oauth/{provider}/callback"


def create_consent_link(database: Database, config: Config, username: str, provider: str) -> str:
    """A one-time URL that starts the consent flow for ``username``."""
    _check_provider(config, provider)
    token = secrets.token_urlsafe(24)
    with database.write([username]) as session:
        tech = session.scalar(select(Tech).where(Tech.username == username))
        if tech is None:
            raise ConnectError(f"no tech named {username!r}")
        session.add(OAuthState(link_token_hash=_hash(token), provider=provider, tech_id=tech.id,
                               expires_at=datetime.now(UTC) + LINK_TTL))
    return f"{config.public_url}/oauth/{provider}/start?link={token}"


def begin_consent(database: Database, config: Config, ring: KeyRing, provider: str, link: str) -> str:
    """Spend the one-time link; returns the provider's consent URL."""
    _check_provider(config, provider)
    state = secrets.token_urlsafe(24)
    with database.write(["oauth"]) as session:
        row = session.scalar(select(OAuthState).where(OAuthState.link_token_hash == _hash(link)))
        if row is None or row.provider != provider:
            raise ConnectError("This connect link is not valid. Ask for a new one.")
        if row.used or _expired(row.expires_at):
            raise ConnectError("This connect link was already used or has expired. Ask for a new one.")
        tech = session.get(Tech, row.tech_id)
        settings, start, _ = _oauth_flow(config, provider)
        url, verifier = start(settings, redirect_uri(config, provider), state,
                              login_hint=tech.email if tech else "")
        row.used = True
        row.state = state
        row.code_verifier = ring.encrypt(verifier)
        row.expires_at = datetime.now(UTC) + LINK_TTL
    return url


def finish_consent(database: Database, config: Config, ring: KeyRing, provider: str,
                   state: str, callback_url: str,
                   exchange_code: Callable[..., str] | None = None) -> Connected:
    """Exchange the code, store the encrypted credential, queue the initial import."""
    if not state:
        raise ConnectError("The provider sent no state; start again from your connect link.")
    with database.read() as session:
        row = session.scalar(select(OAuthState).where(OAuthState.state == state,
                                                      OAuthState.provider == provider))
        if row is None or _expired(row.expires_at):
            raise ConnectError("This sign-in is unknown or has expired; start again from a new connect link.")
        tech = session.get(Tech, row.tech_id)
        verifier = ring.decrypt(row.code_verifier)
        state_id = row.id
    if tech is None:
        raise ConnectError("The tech of this sign-in no longer exists.")
    try:
        settings, _, default_exchange = _oauth_flow(config, provider)
        blob = (exchange_code or default_exchange)(settings, redirect_uri(config, provider), callback_url, state,
                                                   verifier)
    except Exception as exc:  # noqa: BLE001 - oauthlib raises many types; the person needs one sentence
        raise ConnectError(f"{provider.capitalize()} did not grant access: {_oauth_reason(exc)}") from None
    with database.write([tech.username]) as session:
        consumed = session.get(OAuthState, state_id)
        if consumed is not None:  # kept, spent, so the link reports "already used"
            consumed.state, consumed.code_verifier = "", ""
        connection = session.scalar(select(Connection).where(
            Connection.tech_id == tech.id, Connection.provider == provider))
        if connection is None:
            connection = Connection(tech_id=tech.id, provider=provider)
            session.add(connection)
        connection.credentials = ring.encrypt(blob)
        if connection.trouble_since is None:
            connection.state = "ok"
        # else: the first successful sync marks it ok and tells the tech what happened meanwhile
        session.flush()
        jobs.enqueue(session, JOB_INITIAL_IMPORT, {"connection": connection.id},
                     dedupe_key=f"import:{connection.id}")
        return Connected(tech.username, provider, int(connection.id))


def connect_caldav(database: Database, config: Config, ring: KeyRing, username: str,
                   url: str, remote_user: str, password: str) -> Connected:
    """Connect a remote CalDAV account (iCloud, Fastmail, Nextcloud...) with an app password:
    check it first (discovery must find a calendar), then store it encrypted and queue the import.
    Nothing is stored when the server refuses."""
    from server.providers.base import AuthorizationLost, ProviderError
    from server.providers.caldav_remote import CalDAVAccount, CalDAVProvider, check_account

    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectError(f"the CalDAV URL must be an https:// (or http://) address, not {url!r}")
    if parts.username or parts.password:
        raise ConnectError("give the user name and password with --username/--password, not in the URL")
    if not remote_user or not password:
        raise ConnectError("a CalDAV account needs a user name and an (app) password")
    with database.read() as session:
        if session.scalar(select(Tech.id).where(Tech.username == username)) is None:
            raise ConnectError(f"no tech named {username!r}")
    try:
        check_account(url.strip(), remote_user, password, CalDAVProvider.settings_from(config))
    except AuthorizationLost:
        raise ConnectError(f"{parts.hostname}: the server refused the user name or password "
                           "(use an app password where the service has them)") from None
    except ProviderError as exc:
        raise ConnectError(f"{parts.hostname}: could not use the CalDAV account: {exc}") from None
    blob = CalDAVAccount(url.strip(), remote_user, password).to_blob()
    with database.write([username]) as session:
        tech = session.scalar(select(Tech).where(Tech.username == username))
        if tech is None:
            raise ConnectError(f"no tech named {username!r}")
        connection = session.scalar(select(Connection).where(
            Connection.tech_id == tech.id, Connection.provider == "caldav"))
        if connection is None:
            connection = Connection(tech_id=tech.id, provider="caldav")
            session.add(connection)
        connection.credentials = ring.encrypt(blob)
        connection.account = f"{remote_user}@{parts.hostname}"
        if connection.trouble_since is None:
            connection.state = "ok"
        session.flush()
        jobs.enqueue(session, JOB_INITIAL_IMPORT, {"connection": connection.id},
                     dedupe_key=f"import:{connection.id}")
        return Connected(username, "caldav", int(connection.id))


def _check_provider(config: Config, provider: str) -> None:
    if provider not in OAUTH_PROVIDERS:
        raise ConnectError(f"unknown provider {provider!r}; use one of {', '.join(OAUTH_PROVIDERS)}")
    if not config.get(provider, "client_id"):
        raise ConnectError(f"[{provider}] client_id is not configured (LOCKSTEP_{provider.upper()}_CLIENT_ID)")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _expired(moment: datetime) -> bool:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment < datetime.now(UTC)


def _oauth_reason(exc: Exception) -> str:
    description = getattr(exc, "description", None) or getattr(exc, "error", None)
    if not description and isinstance(exc, ValueError):  # our own refusals say what happened
        description = str(exc)
    return str(description or type(exc).__name__)
