"""One remote CalDAV account through the ``caldav`` library: the credential blob, the
DAVClient, and every failure turned into the provider error types.

The blob is JSON ``{"url", "username", "password"}`` (an app password); the engine
stores it encrypted and nothing here ever puts the password in a message or a repr.
Requests go through :meth:`DavSession.send` (raw ``DAVClient`` calls, checked here)
or :meth:`DavSession.call` (the library's higher-level helpers), so that

* 401 after the library's own auth negotiation -> AuthorizationLost (permanent);
* 429 and 503 -> transient, with the server's Retry-After (``caldav`` raises
  RateLimitError for them; its own sleeping retry is off: backoff is the engine's job);
* 5xx, 408, timeouts and network errors -> transient ProviderError;
* any other 4xx -> permanent ProviderError, unless the caller handles that status.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urljoin, urlsplit

from caldav import DAVClient
from caldav.lib import error as dav_error
from caldav.lib.http_sync import requests as http
from caldav.response import DAVResponse
from lxml import etree

from server.providers.base import AuthorizationLost, CursorExpired, ProviderError

T = TypeVar("T")
VALID_SYNC_TOKEN = "{DAV:}valid-sync-token"
_PCHAR_SAFE = "/~!$&'()*+,;=:@"  # RFC 3986 pchar (and '/'): left as is in a path


@dataclass(frozen=True)
class CalDAVSettings:
    """Server-wide knobs of the provider (the account itself is in the blob)."""

    timeout: float = 30.0
    page_size: int = 100  # objects fetched per calendar-multiget, and per ChangePage
    use_sync_collection: bool = True  # False: always the ctag + etag listing (tests, odd servers)


@dataclass(frozen=True)
class CalDAVAccount:
    url: str
    username: str
    password: str = field(repr=False)

    @classmethod
    def from_blob(cls, blob: str) -> CalDAVAccount:
        try:
            data = json.loads(blob or "{}")
            return cls(str(data["url"]), str(data["username"]), str(data["password"]))
        except (ValueError, KeyError, TypeError):
            raise ProviderError("CalDAV credential blob is not JSON {url, username, password}",
                                permanent=True) from None

    def to_blob(self) -> str:
        return json.dumps({"url": self.url, "username": self.username, "password": self.password},
                          sort_keys=True)


def canonical_path(href: str) -> str:
    """One spelling per resource: the path, percent-encoded the same way whatever the server sent."""
    return quote(unquote(urlsplit(href).path), safe=_PCHAR_SAFE)


def absolute(base: str, href: str) -> str:
    """``href`` (a path or a URL) on ``base``'s server, its path in canonical form."""
    parts = urlsplit(urljoin(base, href))
    return f"{parts.scheme}://{parts.netloc}{canonical_path(parts.path)}"


def preconditions(response: DAVResponse) -> list[str]:
    """Clark names of the DAV:error children of a refusal (e.g. ``{DAV:}valid-sync-token``)."""
    return dav_error.parse_preconditions(getattr(response, "_raw", None) or b"")


def xml(element: Any) -> str:
    """A body built with caldav.elements, as the string DAVClient sends."""
    return etree.tostring(element.xmlelement(), encoding="utf-8",
                          xml_declaration=True).decode("utf-8")


@dataclass(frozen=True)
class Refusal:
    """A 403 the caller asked to see: the caldav library raises it, the caller wants it like a
    DAVResponse (``status``, ``headers`` and the raw body that :func:`preconditions` reads)."""

    status: int
    headers: dict[str, str]
    _raw: bytes | str


class DavSession:
    """The DAVClient of one account (one thread at a time, like the session it wraps)."""

    def __init__(self, account: CalDAVAccount, settings: CalDAVSettings) -> None:
        self.account = account
        self.settings = settings
        self._client: DAVClient | None = None

    def __repr__(self) -> str:
        return f"DavSession(url={self.account.url!r}, username={self.account.username!r})"

    @property
    def client(self) -> DAVClient:
        if self._client is None:
            self._client = DAVClient(url=self.account.url, username=self.account.username,
                                     password=self.account.password, timeout=self.settings.timeout,
                                     rate_limit_handle=False)
        return self._client

    # --- calls ------------------------------------------------------------------------
    def call(self, what: str, action: Callable[[], T]) -> T:
        """Run a caldav-library helper; its exceptions come out as ProviderError subclasses."""
        try:
            return action()
        except ProviderError:
            raise
        except dav_error.RateLimitError as exc:
            raise ProviderError(f"CalDAV {what}: HTTP {exc.status or 429} slow down",
                                retry_after=exc.retry_after_seconds) from None
        except dav_error.DAVError as exc:
            raise translate_status(exc.status, what, exc.preconditions) from None
        except (http.exceptions.RequestException, OSError) as exc:
            raise ProviderError(f"CalDAV {what}: network error ({type(exc).__name__})") from None

    def send(self, what: str, method: str, url: str, body: str = "",
             headers: Mapping[str, str] | None = None, *, ok: Iterable[int] = ()) -> DAVResponse:
        """One raw request; a status outside 2xx and ``ok`` raises the translated error."""
        allowed = set(ok)

        def request() -> DAVResponse | Refusal:
            try:
                return self.client.request(url, method, body, dict(headers or {}))
            except dav_error.AuthorizationError as exc:  # the library raises on 401/403
                if exc.status in allowed:
                    return Refusal(exc.status, {}, exc.body or b"")
                raise

        response = self.call(what, request)
        if 200 <= response.status < 300 or response.status in allowed:
            return response  # type: ignore[return-value]
        raise translate_status(response.status, what, preconditions(response),
                               response.headers.get("Retry-After"))


def translate_status(status: int | None, what: str, found: list[str] | None = None,
                     retry_after: str | None = None) -> ProviderError:
    """An HTTP refusal -> the engine's error types (see the module doc for the table)."""
    found = found or []
    text = f"CalDAV {what}: HTTP {status or 'error'}"
    if found:
        text += " (" + ", ".join(name.split("}")[-1] for name in found) + ")"
    if VALID_SYNC_TOKEN in found:
        return CursorExpired(text)
    if status == 401:
        return AuthorizationLost(f"{text}: the server refused the user name or password")
    if status is None or status >= 500 or status in (408, 429):
        seconds = dav_error.parse_retry_after(retry_after) if retry_after else None
        return ProviderError(text, retry_after=seconds)
    return ProviderError(text, permanent=True)
