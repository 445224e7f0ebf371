"""Error answers of the Microsoft Graph emulator, in Graph's JSON shape.

Graph answers every failure with ``{"error": {"code", "message", "innerError"}}``
(https://learn.microsoft.com/graph/errors). The codes used here are the ones
Graph documents or returns for the calendar, subscription and delta APIs.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any


class GraphError(Exception):
    """An HTTP error answer of the Graph API."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        request_id = str(uuid.uuid4())
        return {"error": {"code": self.code, "message": self.message,
                          "innerError": {"date": datetime.now(timezone.utc)
                                         .strftime("%Y-%m-%dT%H:%M:%S"),
                                         "request-id": request_id,
                                         "client-request-id": request_id}}}


def bad_request(message: str, code: str = "ErrorInvalidRequest") -> GraphError:
    return GraphError(400, code, message)


def not_found(message: str = "The specified object was not found in the store.") -> GraphError:
    return GraphError(404, "ErrorItemNotFound", message)


def unauthenticated(message: str) -> GraphError:
    return GraphError(401, "InvalidAuthenticationToken", message,
                      {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'})


def access_denied(message: str = "Access is denied. Check credentials and try again."
                  ) -> GraphError:
    return GraphError(403, "ErrorAccessDenied", message)


def conflict_changekey() -> GraphError:
    return GraphError(412, "ErrorIrresolvableConflict",
                      "The send or update operation could not be performed because the change "
                      "key passed in the request does not match the current change key for "
                      "the item.")


def sync_state_not_found() -> GraphError:
    return GraphError(410, "syncStateNotFound",
                      "The sync state is no longer valid (expired or unknown). "
                      "Restart the synchronization without a state token.")


def throttled(retry_after: float) -> GraphError:
    seconds = int(retry_after) if float(retry_after).is_integer() else retry_after
    return GraphError(429, "ApplicationThrottled",
                      "Application is over its MailboxConcurrency limit.",
                      {"Retry-After": str(seconds)})


_SERVER_CODES = {500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable",
                 504: "GatewayTimeout"}


def server_error(status: int) -> GraphError:
    return GraphError(status, _SERVER_CODES.get(status, "generalException"),
                      "The service is temporarily unavailable. Try again later.")
