"""Google API error bodies, shaped as the Calendar "Handle API errors" guide shows.

Every failure inside the emulator is raised as :class:`ApiError` and turned into
``{"error": {"code", "message", "errors": [...], "status"}}`` at the HTTP edge,
so clients see the same structure (``HttpError.error_details``, ``reason``) as
they would from Google.
"""

from __future__ import annotations

from typing import Any

# Canonical status names Google's front end adds next to the HTTP code. 410 has no
# canonical mapping that the public docs show, so it is left out there.
_STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class ApiError(Exception):
    """An error answer of the Calendar API (not of the OAuth endpoints)."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str,
        domain: str = "global",
        location: str | None = None,
        location_type: str | None = None,
        headers: dict[str, str] | None = None,
        item_message: str | None = None,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.location = location
        self.location_type = location_type
        self.headers = dict(headers or {})
        self.item_message = item_message or message

    def body(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "domain": self.domain,
            "reason": self.reason,
            "message": self.item_message,
        }
        if self.location_type:
            item["locationType"] = self.location_type
        if self.location:
            item["location"] = self.location
        err: dict[str, Any] = {"errors": [item], "code": self.code, "message": self.message}
        status = _STATUS_NAMES.get(self.code)
        if status:
            err["status"] = status
        return {"error": err}


def bad_request(
    message: str, *, reason: str = "invalid", location: str | None = None,
    location_type: str | None = "parameter", domain: str = "global",
) -> ApiError:
    return ApiError(400, message, reason=reason, domain=domain, location=location,
                    location_type=location_type if location else None)


def required(message: str, location: str | None = None) -> ApiError:
    return ApiError(400, message, reason="required", location=location,
                    location_type="parameter" if location else None)


def not_found() -> ApiError:
    return ApiError(404, "Not Found", reason="notFound")


def duplicate() -> ApiError:
    return ApiError(409, "The requested identifier already exists.", reason="duplicate")


def deleted() -> ApiError:
    return ApiError(410, "Resource has been deleted", reason="deleted")


def full_sync_required() -> ApiError:
    return ApiError(410, "Sync token is no longer valid, a full sync is required.",
                    reason="fullSyncRequired", domain="calendar",
                    location="syncToken", location_type="parameter")


def updated_min_too_long_ago() -> ApiError:
    return ApiError(410, "The requested minimum modification time lies too far in the past.",
                    reason="updatedMinTooLongAgo", domain="calendar",
                    location="updatedMin", location_type="parameter")


def condition_not_met() -> ApiError:
    return ApiError(412, "Precondition Failed", reason="conditionNotMet",
                    location="If-Match", location_type="header")


def time_range_empty(location: str = "timeMax") -> ApiError:
    return ApiError(400, "The specified time range is empty.", reason="timeRangeEmpty",
                    domain="calendar", location=location, location_type="parameter")


def auth_missing() -> ApiError:
    return ApiError(
        401,
        "Request is missing required authentication credential. Expected OAuth 2 access "
        "token, login cookie or other valid authentication credential.",
        reason="required", location="Authorization", location_type="header",
        item_message="Login Required.",
        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
    )


def auth_invalid() -> ApiError:
    return ApiError(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential.",
        reason="authError", location="Authorization", location_type="header",
        item_message="Invalid Credentials",
        headers={"WWW-Authenticate":
                 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
    )


def insufficient_scope() -> ApiError:
    return ApiError(403, "Request had insufficient authentication scopes.",
                    reason="insufficientPermissions", item_message="Insufficient Permission",
                    headers={"WWW-Authenticate":
                             'Bearer realm="https://accounts.google.com/", '
                             'error="insufficient_scope"'})


def writer_access_required() -> ApiError:
    return ApiError(403, "You need to have writer access to this calendar.",
                    reason="requiredAccessLevel", domain="calendar")


_DEFAULTS: dict[tuple[int, str], tuple[str, str]] = {
    (403, "rateLimitExceeded"): ("usageLimits", "Rate Limit Exceeded"),
    (403, "userRateLimitExceeded"): ("usageLimits", "User Rate Limit Exceeded"),
    (403, "quotaExceeded"): ("usageLimits", "Calendar usage limits exceeded."),
    (429, "rateLimitExceeded"): ("usageLimits", "Rate Limit Exceeded"),
    (500, "backendError"): ("global", "Backend Error"),
    (503, "backendError"): ("global", "Backend Error"),
}

_DEFAULT_REASON: dict[int, str] = {
    400: "badRequest", 401: "authError", 403: "rateLimitExceeded", 404: "notFound",
    409: "conflict", 410: "deleted", 412: "conditionNotMet", 429: "rateLimitExceeded",
    500: "backendError", 502: "backendError", 503: "backendError", 504: "backendError",
}


def injected(code: int, reason: str | None = None, message: str | None = None,
             headers: dict[str, str] | None = None) -> ApiError:
    """An error for a fault the test asked for, with the documented body for its reason."""
    reason = reason or _DEFAULT_REASON.get(code, "backendError")
    domain, default_message = _DEFAULTS.get((code, reason), ("global", "Backend Error"))
    if code == 404:
        default_message = "Not Found"
    return ApiError(code, message or default_message, reason=reason, domain=domain,
                    headers=headers)
