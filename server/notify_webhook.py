"""Webhook channel: a signed JSON POST for dispatch systems (scheme in docs/notifications.md).

The signature is ``HMAC-SHA256(secret, "<timestamp>.<raw body>")`` in hex, sent
as ``X-Lockstep-Signature: sha256=<hex>`` next to ``X-Lockstep-Timestamp``
(Unix seconds). Signing the timestamp with the body lets a receiver refuse
replays: it checks the signature and that the timestamp is recent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from server.config import Config
from server.notify_channels import DeliveryError, Outgoing

SIGNATURE_HEADER = "X-Lockstep-Signature"
TIMESTAMP_HEADER = "X-Lockstep-Timestamp"
USER_AGENT = "Lockstep-Webhook/1"


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    secret: str
    timeout: float

    @classmethod
    def from_config(cls, config: Config) -> WebhookSettings | None:
        """None when no webhook URL is configured (the channel is off)."""
        values = config.values["notify"]
        url = str(values["webhook_url"]).strip()
        if not url:
            return None
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"[notify] webhook_url must be an http(s) URL, not {url!r}")
        return cls(url=url, secret=values["webhook_secret"], timeout=float(values["webhook_timeout_seconds"]))


def body_of(outgoing: Outgoing) -> bytes:
    payload = {"id": outgoing.id, "kind": outgoing.kind, "tech": outgoing.tech,
               "message": outgoing.message, "created_at": outgoing.created_at_utc}
    return json.dumps(payload, separators=(",", ":")).encode()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Lockstep-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is the receiver's misconfiguration: never re-send the body elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def send_webhook(settings: WebhookSettings, outgoing: Outgoing) -> None:
    """One attempt: 2xx is delivered; 4xx (but 408/429) is permanent; anything else retries."""
    body = body_of(outgoing)
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, TIMESTAMP_HEADER: timestamp,
               "X-Lockstep-Notification": str(outgoing.id)}
    if settings.secret:
        headers[SIGNATURE_HEADER] = signature(settings.secret, timestamp, body)
    request = urllib.request.Request(settings.url, data=body, headers=headers, method="POST")
    try:
        with _opener.open(request, timeout=settings.timeout) as response:
            response.read(65536)
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
        permanent = 400 <= status < 500 and status not in (408, 425, 429)
        raise DeliveryError(f"webhook answered HTTP {status}", permanent=permanent) from None
    except (OSError, ValueError) as exc:  # refused, timed out, TLS, a malformed URL
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"webhook unreachable: {type(reason).__name__}: {reason}"[:500]) from None
