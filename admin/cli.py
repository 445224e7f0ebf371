"""``lockstep admin create USER``: the password comes from a prompt or stdin, never from argv
(where every local user could read it in the process list)."""

from __future__ import annotations

import getpass
import sys

from admin.accounts import create_admin
from server.config import Config
from server.db import Database
from server.techs import AdminError


def read_new_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password for the new admin user: ")
        if getpass.getpass("Same password again: ") != first:
            raise AdminError("the two passwords differ; nothing was created")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def create_admin_user(database: Database, config: Config, username: str) -> str:
    account = create_admin(database, username, read_new_password())
    return f"Created admin user {account.username}. Log in at {config.public_url}/admin/"
