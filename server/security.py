"""Password hashing (argon2), generated secrets, and the server's secret key."""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random string: checking an unknown user name against it costs what a
    real check costs, so it is not faster to reject than a wrong password."""
    return _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def generate_password() -> str:
    """An app password that is easy to type on a phone: 4 groups of 4 lowercase letters/digits."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    groups = ["".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(4)]
    return "-".join(groups)


def generate_token_secret() -> str:
    return secrets.token_urlsafe(32)


def load_or_create_secret_key(data_dir: Path, configured: str = "") -> str:
    """The configured key, else LOCKSTEP_SECRET_KEY, else ``DATA/secret.key`` (created once, 0600)."""
    if configured:
        return configured
    if os.environ.get("LOCKSTEP_SECRET_KEY"):
        return os.environ["LOCKSTEP_SECRET_KEY"]
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key
