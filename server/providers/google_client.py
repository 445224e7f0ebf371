"""The Google API client of one connection: credentials blob <-> google-auth, and every
failure of google-api-python-client / google-auth turned into the provider error types.

Calls go through :meth:`GoogleClient.execute` so that (1) the engine's own backoff is the
only one (``num_retries=0``), (2) a token refreshed by google-auth on the way is written
back into the blob and flagged ``changed``, and (3) no token ever reaches a message: only
the operation name, the HTTP status, Google's ``reason`` and its human message do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import google.oauth2.credentials
import httplib2
import requests
from google.auth.exceptions import RefreshError, TransportError
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from server.providers.base import (
    AuthorizationLost, CursorExpired, Credentials, PreconditionFailed, ProviderError, retry_after_of,
)

log = logging.getLogger(__name__)

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
GOOGLE_REVOKE_URI = "https://oauth2.googleapis.com/revoke"
GOOGLE_API_ENDPOINT = "https://www.googleapis.com/calendar/v3/"
CALENDAR_SCOPE = "https://www.googleapis.com/auth/calendar"
_RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded"})
_SCOPE_REASONS = frozenset({"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"})
_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client", "invalid_scope"})


@dataclass(frozen=True)
class GoogleConfig:
    """OAuth client and endpoints: Google's own by default, the sandbox's in tests."""

    client_id: str
    client_secret: str = ""
    token_uri: str = GOOGLE_TOKEN_URI
    revoke_uri: str = GOOGLE_REVOKE_URI
    api_endpoint: str = GOOGLE_API_ENDPOINT
    page_size: int = 250
    timeout: float = 60.0

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        return f"GoogleConfig(client_id={self.client_id!r}, api_endpoint={self.api_endpoint!r})"

    @classmethod
    def of(cls, source: Any) -> GoogleConfig:
        """From a GoogleConfig, a mapping, or any object with these attributes."""
        if isinstance(source, cls):
            return source
        get = source.get if isinstance(source, Mapping) else lambda k, d=None: getattr(source, k, d)
        values = {name: get(name) for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if v not in (None, "") or k == "client_id"})


class GoogleApiError(ProviderError):
    """A Google API failure that is not one of the engine's named cases; keeps status and reason
    so this package can act on 404/409/410 itself."""

    def __init__(self, message: str, *, status: int, reason: str = "", permanent: bool,
                 retry_after: float | None = None) -> None:
        super().__init__(message, permanent=permanent, retry_after=retry_after)
        self.status = status
        self.reason = reason


def http_reason(exc: HttpError) -> tuple[str, str]:
    """(first ``errors[].reason``, message) of Google's error body; empty when absent."""
    try:
        error = json.loads(exc.content.decode("utf-8"))["error"]
        items = error.get("errors") or [{}]
        reason = items[0].get("reason") or error.get("status") or ""
        return str(reason), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return "", ""


def translate_http(exc: HttpError, what: str) -> ProviderError:
    """HttpError -> the engine's error types (see the module doc for the table)."""
    status = int(exc.resp.status)
    reason, message = http_reason(exc)
    text = f"Google {what}: HTTP {status} {reason or exc.resp.reason}".rstrip()
    if message:
        text += f" - {message}"
    if status == 412:
        return PreconditionFailed(f"{text} (the event changed on Google meanwhile)")
    if status == 401:
        return AuthorizationLost(f"{text} (still refused after a token refresh: reconnect Google)")
    if status == 403 and reason in _SCOPE_REASONS:
        return AuthorizationLost(f"{text} (the grant lacks the calendar scope: reconnect Google)")
    if status == 410 and reason in ("fullSyncRequired", "updatedMinTooLongAgo"):
        return CursorExpired(text)
    transient = status == 429 or status >= 500 or status == 408 or (
        status == 403 and reason in _RATE_REASONS)
    return GoogleApiError(text, status=status, reason=reason, permanent=not transient,
                          retry_after=retry_after_of(exc.resp) if transient else None)


def translate_refresh(exc: RefreshError) -> ProviderError:
    """invalid_grant means the tech revoked access or the grant expired: only reconnecting helps."""
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    code = str(data.get("error") or "")
    first = str(exc.args[0]) if exc.args else ""
    if code == "invalid_grant" or first.startswith("invalid_grant"):
        return AuthorizationLost("Google refused the refresh token (invalid_grant): "
                                 "the tech must reconnect Google")
    if "necessary fields" in first:  # no refresh token stored and the access token expired
        return AuthorizationLost("Google credentials hold no refresh token: reconnect Google")
    if code in _CLIENT_ERRORS:
        return ProviderError(f"Google OAuth client rejected ({code}): check client_id, "
                             "client_secret and scopes", permanent=True)
    return ProviderError(f"Google token refresh failed ({code or 'no error code'})",
                         permanent=False)


class GoogleClient:
    """One connection's google-auth credentials and Calendar service (not thread-safe:
    httplib2 is not, so use one provider object per worker thread)."""

    def __init__(self, config: GoogleConfig, credentials: Credentials) -> None:
        self.config = config
        self.store = credentials
        try:
            self._extra: dict[str, Any] = dict(json.loads(credentials.blob or "{}"))
        except ValueError:
            raise ProviderError("Google credential blob is not JSON", permanent=True) from None
        scopes = self._extra.get("scopes") or [CALENDAR_SCOPE]
        self.creds = google.oauth2.credentials.Credentials(
            token=self._extra.get("token") or self._extra.get("access_token"),
            refresh_token=self._extra.get("refresh_token"),
            token_uri=config.token_uri, client_id=config.client_id,
            client_secret=config.client_secret,
            scopes=scopes.split() if isinstance(scopes, str) else list(scopes),
            expiry=_parse_expiry(self._extra.get("expiry")))
        self._seen = self._state()
        self._service: Any = None

    def revoke(self) -> None:
        """Revoke the grant (the refresh token, which takes its access tokens with it).
        A token Google no longer knows (400 invalid_token) is already revoked."""
        token = self.creds.refresh_token or self.creds.token
        if not token:
            return
        try:
            answer = requests.post(self.config.revoke_uri, data={"token": token}, timeout=self.config.timeout)
        except requests.RequestException as exc:
            raise ProviderError(f"Google revoke: {type(exc).__name__}") from None
        if answer.status_code >= 500:
            raise ProviderError(f"Google revoke: HTTP {answer.status_code}")

    @property
    def api(self) -> Any:
        """The Calendar v3 service, built on first use from the bundled discovery document."""
        if self._service is None:
            from google_auth_httplib2 import AuthorizedHttp

            http = AuthorizedHttp(self.creds, http=httplib2.Http(timeout=self.config.timeout))
            self._service = build("calendar", "v3", http=http, static_discovery=True,
                                  cache_discovery=False,
                                  client_options={"api_endpoint": self.config.api_endpoint})
        return self._service

    def execute(self, request: Any, what: str) -> Any:
        """Run one request once; failures come out as ProviderError subclasses."""
        try:
            return request.execute(num_retries=0)
        except HttpError as exc:
            raise translate_http(exc, what) from None
        except RefreshError as exc:
            raise translate_refresh(exc) from None
        except (TransportError, httplib2.HttpLib2Error, OSError) as exc:
            raise ProviderError(f"Google {what}: network error ({type(exc).__name__})",
                                permanent=False) from None
        finally:
            self.sync_blob()

    def sync_blob(self) -> Credentials:
        """Write refreshed tokens back into the engine's blob and flag it changed."""
        state = self._state()
        if state != self._seen:
            self._seen = state
            token, refresh, expiry = state
            self._extra.pop("access_token", None)
            self._extra.update({"token": token, "refresh_token": refresh,
                                "expiry": expiry})
            self.store.blob = json.dumps(self._extra, sort_keys=True)
            self.store.changed = True
            log.debug("google credentials refreshed (expiry %s)", expiry)
        return self.store

    def _state(self) -> tuple[str | None, str | None, str | None]:
        expiry = self.creds.expiry
        text = expiry.replace(tzinfo=None).isoformat() + "Z" if expiry else None
        return self.creds.token, self.creds.refresh_token, text


def _parse_expiry(value: Any) -> datetime | None:
    """google-auth wants naive UTC; accept ISO with or without a zone, or epoch seconds."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc).replace(tzinfo=None)
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment
