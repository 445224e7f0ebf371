"""The admin web panel: a Flask blueprint at /admin/, server-rendered, no build step.

It calls the same service functions as the CLI (server.techs, server.connections,
server.sync_admin, the sync engine's Bridge) and keeps its own state in three
tables: admin users, the audit log and recent login failures.
"""

from __future__ import annotations

from admin.blueprint import create_admin_blueprint

__all__ = ["create_admin_blueprint"]
