"""Microsoft's consent flow and token cache with MSAL (auth-code flow with PKCE).

The credential blob the engine stores (encrypted) is JSON: MSAL's serialized
``SerializableTokenCache`` plus which account of it is ours. MSAL refreshes the
access token from that cache (``acquire_token_silent``); the provider hands the
re-serialized cache back when it changed.

Every endpoint is configurable: ``authority`` (default
``https://login.microsoftonline.com/<tenant>``) and ``ca_bundle``, which is how
tests point the real MSAL at the local HTTPS emulator. MSAL refuses plain http.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msal
import requests

SCOPES = ["Calendars.ReadWrite"]  # MSAL adds openid, profile and offline_access itself
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
# MSAL's cache of discovery documents and throttling state, shared by the app objects of a
# process: without it every sync job would fetch the authority's OpenID configuration again.
_HTTP_CACHE: dict[Any, Any] = {}


@dataclass(frozen=True)
class MicrosoftSettings:
    client_id: str
    client_secret: str = ""
    tenant: str = "common"
    authority: str = ""
    graph_url: str = "https://graph.microsoft.com/v1.0"
    ca_bundle: str = ""
    subscription_minutes: int = 10080
    page_size: int = 100
    timeout: float = 60.0

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        return (f"MicrosoftSettings(client_id={self.client_id!r}, "
                f"authority={self.effective_authority!r})")

    @property
    def effective_authority(self) -> str:
        return (self.authority or f"{DEFAULT_AUTHORITY_HOST}/{self.tenant or 'common'}").rstrip("/")

    @classmethod
    def from_config(cls, values: dict[str, Any]) -> MicrosoftSettings:
        """From the ``[microsoft]`` section of server.config."""
        return cls(client_id=values["client_id"], client_secret=values["client_secret"],
                   tenant=values["tenant"], authority=values["authority"],
                   graph_url=values["graph_url"].rstrip("/"), ca_bundle=values["ca_bundle"],
                   subscription_minutes=int(values["subscription_minutes"]))


def http_session(settings: MicrosoftSettings) -> requests.Session:
    """The session MSAL and the Graph client share. With a CA bundle configured, the
    environment must not override it (REQUESTS_CA_BUNDLE wins over ``verify`` when
    ``trust_env`` is on), so the environment is ignored then."""
    session = requests.Session()
    if settings.ca_bundle:
        session.verify = settings.ca_bundle
        session.trust_env = False
    return session


def msal_app(settings: MicrosoftSettings, cache: msal.SerializableTokenCache | None = None,
             session: requests.Session | None = None) -> msal.ConfidentialClientApplication:
    custom = bool(settings.authority)
    return msal.ConfidentialClientApplication(
        settings.client_id, client_credential=settings.client_secret or None,
        authority=settings.effective_authority, token_cache=cache,
        http_client=session or http_session(settings), timeout=settings.timeout,
        http_cache=_HTTP_CACHE,
        instance_discovery=False if custom else None, validate_authority=not custom)


class ConsentError(ValueError):
    """The consent round trip failed; the message is for the person in the browser."""


def consent_url(settings: MicrosoftSettings, redirect_uri: str, state: str,
                login_hint: str = "") -> tuple[str, str]:
    """(URL to send the tech to, MSAL's flow as JSON to keep, encrypted, until the callback)."""
    flow = msal_app(settings).initiate_auth_code_flow(
        SCOPES, redirect_uri=redirect_uri, state=state, login_hint=login_hint or None,
        prompt="select_account", response_mode="form_post")  # the code never sits in a URL
    if "auth_uri" not in flow:
        reason = flow.get("error_description") or flow
        raise ConsentError(f"Microsoft sign-in could not start: {reason}")
    return str(flow["auth_uri"]), json.dumps(flow)


def exchange(settings: MicrosoftSettings, redirect_uri: str, callback_url: str, state: str,
             flow_json: str) -> str:
    """Redeem the callback's code with the stored flow; returns the credential blob (JSON).
    ``callback_url`` carries the answer's parameters as its query (the web layer puts a
    form_post body there)."""
    flow = json.loads(flow_json)
    if flow.get("state") != state or flow.get("redirect_uri") != redirect_uri:
        raise ConsentError("this sign-in does not belong to the stored flow")
    params = dict(parse_qsl(urlsplit(callback_url).query, keep_blank_values=True))
    cache = msal.SerializableTokenCache()
    app = msal_app(settings, cache)
    try:
        result = app.acquire_token_by_auth_code_flow(flow, params)
    except (ValueError, RuntimeError) as exc:  # forged state / nonce mismatch
        raise ConsentError(f"the sign-in answer was refused ({type(exc).__name__}: {exc})") \
            from None
    if "error" in result:
        described = str(result.get("error_description") or "").split(" Trace ID:")[0]
        raise ConsentError(f"{result['error']}: {described}".rstrip(": "))
    accounts = app.get_accounts()
    if not accounts:
        raise ConsentError("Microsoft returned no account; connect again")
    if not any(True for _ in cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN)):
        raise ConsentError("Microsoft returned no refresh token (offline_access refused?)")
    claims = result.get("id_token_claims") or {}
    username = str(claims.get("preferred_username") or claims.get("email") or "")
    return make_blob(cache, accounts[0], username)


def make_blob(cache: msal.SerializableTokenCache, account: dict[str, Any],
              username: str = "") -> str:
    return json.dumps({"msal_cache": cache.serialize(),
                       "home_account_id": account.get("home_account_id"),
                       "username": username or account.get("username") or ""})

