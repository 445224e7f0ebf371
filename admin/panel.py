"""What every view needs: the database, the config, the key ring and the sync engine's Bridge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import g, render_template

from admin import audit
from server.caldav_bridge.engine import Bridge
from server.config import Config
from server.crypto import KeyRing
from server.db import Database


@dataclass(frozen=True)
class Panel:
    database: Database
    config: Config
    ring: KeyRing

    @property
    def bridge(self) -> Bridge:
        return Bridge(self.database, self.config, self.ring)

    @property
    def dav_url(self) -> str:
        return f"{self.config.public_url}/dav/"

    def audit(self, action: str, target: str = "", detail: str = "") -> None:
        """Record what the logged-in admin just did."""
        audit.record(self.database, g.admin, action, target, detail)


PageResponse = tuple[str, int, dict[str, str]]


def page(template: str, status: int = 200, **context: Any) -> PageResponse:
    """A rendered panel page; never cached (pages may carry a secret shown once)."""
    return render_template(f"admin/{template}", **context), status, {"Cache-Control": "no-store"}
