"""Admin users and logging in: argon2 hashes, and a login rate limit shared by every node.

The limit counts failures per (user name, client address) in the database, not in
process memory, so N nodes behind a load balancer enforce one limit. Each attempt
claims a failure row *before* the password is checked (and a success removes the
rows), so concurrent guesses cannot slip past the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, func, select

from admin import audit
from server.db import Database
from server.models import AdminLoginFailure, AdminUser, utcnow
from server.security import hash_password, verify_password
from server.techs import USERNAME, AdminError

UTC = timezone.utc
MAX_FAILURES = 5
WINDOW = timedelta(minutes=15)
MIN_PASSWORD = 10


class TooManyAttempts(Exception):
    """Too many failed logins for this user name from this address; ``retry_after`` in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after // 60 + 1} minute(s)")
        self.retry_after = retry_after


@dataclass(frozen=True)
class AdminAccount:
    id: int
    username: str
    last_login: datetime | None


def create_admin(database: Database, username: str, password: str) -> AdminAccount:
    """A new panel user; refuses weak passwords and taken names with a sentence."""
    if not USERNAME.match(username):
        raise AdminError(f"{username!r} is not a valid user name: use 1-63 lowercase letters, digits, "
                         "'.', '_' or '-', starting with a letter or digit")
    if len(password) < MIN_PASSWORD:
        raise AdminError(f"the password must have at least {MIN_PASSWORD} characters")
    hashed = hash_password(password)
    with database.write([f"admin-user:{username}"]) as session:
        if session.scalar(select(AdminUser.id).where(AdminUser.username == username)) is not None:
            raise AdminError(f"an admin user named {username!r} already exists")
        user = AdminUser(username=username, password_hash=hashed)
        session.add(user)
        audit.add(session, "cli", "admin.create", username)
        session.flush()
        return AdminAccount(user.id, user.username, None)


def find_admin(database: Database, username: str) -> AdminAccount | None:
    with database.read() as session:
        user = session.scalar(select(AdminUser).where(AdminUser.username == username))
        return AdminAccount(user.id, user.username, user.last_login) if user else None


def log_in(database: Database, username: str, password: str, ip: str) -> AdminAccount | None:
    """The account when the password is right, None when not; TooManyAttempts when limited."""
    username, ip = username.strip()[:64], ip[:64]
    now = datetime.now(UTC)
    key = f"admin-login:{username}:{ip}"
    with database.write([key]) as session:
        failures = session.execute(select(func.count(), func.min(AdminLoginFailure.at)).where(
            AdminLoginFailure.username == username, AdminLoginFailure.ip == ip,
            AdminLoginFailure.at > now - WINDOW)).one()
        if failures[0] >= MAX_FAILURES:
            oldest = failures[1] if failures[1].tzinfo else failures[1].replace(tzinfo=UTC)
            audit.add(session, "-", "login.refused", username, f"rate limited, from {ip}")
            raise_after = int((oldest + WINDOW - now).total_seconds()) + 1
        else:
            raise_after = 0
            claim = AdminLoginFailure(username=username, ip=ip, at=now)
            session.add(claim)
            session.execute(delete(AdminLoginFailure).where(AdminLoginFailure.at < now - WINDOW))
            session.flush()
            claim_id = claim.id
            user = session.scalar(select(AdminUser).where(AdminUser.username == username))
            stored = user.password_hash if user else None
    if raise_after:
        raise TooManyAttempts(max(raise_after, 1))
    if not verify_password(stored, password):  # the dummy hash for unknown names: same cost
        audit.record(database, "-", "login.failed", username, f"from {ip}")
        return None
    with database.write([key]) as session:
        session.execute(delete(AdminLoginFailure).where(
            AdminLoginFailure.username == username, AdminLoginFailure.ip == ip,
            AdminLoginFailure.id <= claim_id))
        row = session.scalar(select(AdminUser).where(AdminUser.username == username))
        if row is None:
            return None
        previous = row.last_login
        row.last_login = utcnow()
        audit.add(session, username, "login", username, f"from {ip}")
        return AdminAccount(row.id, row.username, previous)
