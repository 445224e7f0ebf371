"""An Apple configuration profile (.mobileconfig) that adds the tech's CalDAV account.

One ``com.apple.caldav.account`` payload (Apple's "CalDAV" payload keys:
CalDAVHostName, CalDAVUsername, CalDAVPassword, CalDAVUseSSL, CalDAVPort,
CalDAVPrincipalURL, CalDAVAccountDescription). Without a password iOS asks for
the app password while installing the profile, so no secret is stored for it.
"""

from __future__ import annotations

import plistlib
import uuid
from urllib.parse import urlsplit

PROFILE_MIME = "application/x-apple-aspen-config"


def caldav_profile(public_url: str, username: str, *, display_name: str, password: str | None = None,
                   organization: str = "Lockstep") -> bytes:
    parts = urlsplit(public_url)
    use_ssl = parts.scheme == "https"
    port = parts.port or (443 if use_ssl else 80)
    host = parts.hostname or "localhost"
    account: dict[str, object] = {
        "PayloadType": "com.apple.caldav.account",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"lockstep.{host}.caldav.{username}",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{public_url}/dav/{username}/")).upper(),
        "PayloadDisplayName": f"Calendar ({display_name})",
        "PayloadDescription": "Bookings and calendars synced by Lockstep",
        "CalDAVAccountDescription": f"{organization} ({username})",
        "CalDAVHostName": host,
        "CalDAVPort": port,
        "CalDAVUseSSL": use_ssl,
        "CalDAVUsername": username,
        "CalDAVPrincipalURL": f"{public_url.rstrip('/')}/dav/{username}/",
    }
    if password:
        account["CalDAVPassword"] = password
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"lockstep.{host}.{username}",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{public_url}/profile/{username}")).upper(),
        "PayloadDisplayName": f"{organization} calendar for {display_name}",
        "PayloadOrganization": organization,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile)
