"""One connection's Graph client: MSAL's token cache ↔ the credential blob, requests over
one session, and every failure turned into the provider error types.

* Tokens come from ``acquire_token_silent`` (MSAL refreshes with the cached refresh
  token when the access token has under five minutes left); a 401 from Graph gets
  one forced refresh and one retry; still 401, or ``invalid_grant`` from the token
  endpoint, is AuthorizationLost (the tech must reconnect).
* 429 and 5xx are transient with Graph's Retry-After; the engine does the backoff,
  so every call here runs once.
* Reads ask for UTC (``Prefer: outlook.timezone="UTC"``) and text bodies; the mapping
  converts from the event's own zone names exactly.
* No token ever reaches a message: only the operation, the status, Graph's error
  code and its message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import msal
import requests

from server.providers.base import (
    AuthorizationLost, Credentials, PreconditionFailed, ProviderError, retry_after_of,
)
from server.providers.oauth_microsoft import SCOPES, MicrosoftSettings, http_session, msal_app

log = logging.getLogger(__name__)
PREFER = 'outlook.timezone="UTC", outlook.body-content-type="text"'
_GRANT_LOST = frozenset({"invalid_grant", "interaction_required", "consent_required",
                         "login_required"})
_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client", "invalid_scope"})


class GraphApiError(ProviderError):
    """A Graph failure that is not one of the engine's named cases; keeps status and code
    so this package can act on 404/410/409 itself."""

    def __init__(self, message: str, *, status: int, code: str = "", permanent: bool,
                 retry_after: float | None = None) -> None:
        super().__init__(message, permanent=permanent, retry_after=retry_after)
        self.status = status
        self.code = code


def error_of(response: requests.Response) -> tuple[str, str]:
    """(error.code, error.message) of a Graph error body; empty when absent."""
    try:
        error = response.json().get("error") or {}
        return str(error.get("code") or ""), str(error.get("message") or "")
    except (ValueError, AttributeError):
        return "", ""


def translate(response: requests.Response, what: str) -> ProviderError:
    status = response.status_code
    code, message = error_of(response)
    text = f"Microsoft {what}: HTTP {status} {code or response.reason}".rstrip()
    if message:
        text += f" - {message}"
    if status == 412:
        return PreconditionFailed(f"{text} (the event changed in Outlook meanwhile)")
    if status == 401:
        return AuthorizationLost(f"{text} (still refused after a token refresh: reconnect Outlook)")
    transient = status in (408, 429) or status >= 500
    return GraphApiError(text, status=status, code=code, permanent=not transient,
                         retry_after=retry_after_of(response.headers) if transient else None)


class GraphClient:
    """MSAL app + token cache + HTTP session of one connection (one thread at a time)."""

    def __init__(self, settings: MicrosoftSettings, credentials: Credentials) -> None:
        self.settings = settings
        self.store = credentials
        try:
            self._blob: dict[str, Any] = dict(json.loads(credentials.blob or "{}"))
        except ValueError:
            raise ProviderError("Microsoft credential blob is not JSON", permanent=True) from None
        self.cache = msal.SerializableTokenCache()
        if self._blob.get("msal_cache"):
            self.cache.deserialize(self._blob["msal_cache"])
        self.session = http_session(settings)
        self._app: msal.ConfidentialClientApplication | None = None
        self._token: str | None = None
        self._mailbox_zone: str | None = None

    @property
    def username(self) -> str:
        """The mailbox address of the connected account (the tech's own responses)."""
        return str(self._blob.get("username") or "")

    def mailbox_zone(self) -> str:
        """The mailbox's own time zone name (all-day events are written in it, so Outlook shows
        them on their day); "UTC" when Graph will not say."""
        if self._mailbox_zone is None:
            try:
                settings = self.json("GET", "me/mailboxSettings", "mailboxSettings.get")
                self._mailbox_zone = str(settings.get("timeZone") or "UTC")
            except GraphApiError:
                self._mailbox_zone = "UTC"
        return self._mailbox_zone

    # --- tokens ---------------------------------------------------------------------------
    def _msal(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            try:
                self._app = msal_app(self.settings, self.cache, self.session)
            except (requests.RequestException, ValueError) as exc:
                raise ProviderError(f"Microsoft sign-in service unreachable ({type(exc).__name__})",
                                    permanent=False) from None
        return self._app

    def token(self, force: bool = False) -> str:
        if self._token and not force:
            return self._token
        app = self._msal()
        everyone = app.get_accounts()
        ours = self._blob.get("home_account_id")
        accounts = [a for a in everyone if a.get("home_account_id") == ours] or everyone
        if not accounts:
            raise AuthorizationLost("Microsoft credentials hold no account: reconnect Outlook")
        try:
            result = app.acquire_token_silent_with_error(SCOPES, accounts[0], force_refresh=force)
        except requests.RequestException as exc:
            raise ProviderError(f"Microsoft token refresh: network error ({type(exc).__name__})",
                                permanent=False) from None
        finally:
            self.sync_blob()
        if not result:
            raise AuthorizationLost("Microsoft credentials hold no usable refresh token: "
                                    "reconnect Outlook")
        if "access_token" not in result:
            code = str(result.get("error") or "")
            described = str(result.get("error_description") or "")
            described = described.split("\r\n")[0].split(" Trace ID:")[0]
            if code in _GRANT_LOST:
                raise AuthorizationLost(f"Microsoft refused the refresh token ({code}): the tech "
                                        f"must reconnect Outlook. {described}".strip())
            raise ProviderError(
                f"Microsoft token refresh failed ({code or 'no error code'}) {described}".strip(),
                permanent=code in _CLIENT_ERRORS)
        self._token = str(result["access_token"])
        return self._token

    def sync_blob(self) -> Credentials:
        """Hand MSAL's re-serialized cache back to the engine when MSAL changed it."""
        if self.cache.has_state_changed:
            self._blob["msal_cache"] = self.cache.serialize()
            self.cache.has_state_changed = False
            self.store.blob = json.dumps(self._blob)
            self.store.changed = True
            log.debug("microsoft token cache refreshed")
        return self.store

    # --- requests --------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return path if path.startswith("https://") or path.startswith("http://") else \
            f"{self.settings.graph_url}/{path.lstrip('/')}"

    def call(self, method: str, path: str, what: str, *, params: dict[str, Any] | None = None,
             body: Any = None, headers: dict[str, str] | None = None) -> requests.Response:
        """One request (plus one retry after a forced token refresh on 401); raises on >= 400."""
        response = self._send(method, path, what, params, body, headers, self.token())
        if response.status_code == 401:
            response = self._send(method, path, what, params, body, headers, self.token(force=True))
        if response.status_code >= 400:
            raise translate(response, what)
        return response

    def json(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        response = self.call(method, path, what, **kwargs)
        if response.status_code == 204 or not response.content:
            return {}
        try:
            return dict(response.json())
        except ValueError:
            raise ProviderError(f"Microsoft {what}: answer is not JSON", permanent=False) from None

    def pages(self, path: str, what: str, params: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Every page of a collection, following @odata.nextLink."""
        next_url: str | None = path
        while next_url:
            page = self.json("GET", next_url, what, params=params, headers=headers)
            yield page
            next_url, params = page.get("@odata.nextLink"), None

    def _send(self, method: str, path: str, what: str, params: dict[str, Any] | None, body: Any,
              headers: dict[str, str] | None, token: str) -> requests.Response:
        sent = {"Authorization": f"Bearer {token}", "Prefer": PREFER, "Accept": "application/json"}
        sent.update(headers or {})
        try:
            return self.session.request(method, self.url(path), params=params, json=body,
                                        headers=sent, timeout=self.settings.timeout)
        except requests.RequestException as exc:
            raise ProviderError(f"Microsoft {what}: network error ({type(exc).__name__})",
                                permanent=False) from None
