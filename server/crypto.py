"""Encryption at rest for provider credentials (refresh tokens, MSAL caches, app passwords).

Ciphertexts carry the id of the key that made them (``v1.<key id>.<Fernet token>``),
so keys can be rotated: encrypt with the first key of the ring, decrypt with
whichever key the ciphertext names. Keys are derived from secrets with HKDF.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "v1"


class DecryptionError(ValueError):
    """The ciphertext is damaged, or was made with a key this ring does not hold."""


@dataclass(frozen=True)
class _Key:
    key_id: str
    fernet: Fernet


def _derive(secret: str) -> _Key:
    key_id = hashlib.sha256(("lockstep-key-id:" + secret).encode()).hexdigest()[:12]
    material = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"lockstep credential encryption v1").derive(secret.encode())
    return _Key(key_id, Fernet(base64.urlsafe_b64encode(material)))


class KeyRing:
    """The current secret first, then retired ones still able to decrypt."""

    def __init__(self, current: str, *retired: str) -> None:
        if not current:
            raise ValueError("an encryption secret is required")
        self._keys = [_derive(secret) for secret in (current, *retired) if secret]
        self._by_id = {key.key_id: key for key in self._keys}

    @property
    def current_id(self) -> str:
        return self._keys[0].key_id

    def encrypt(self, plaintext: str) -> str:
        key = self._keys[0]
        token = key.fernet.encrypt(plaintext.encode()).decode()
        return f"{PREFIX}.{key.key_id}.{token}"

    def decrypt(self, ciphertext: str) -> str:
        try:
            prefix, key_id, token = ciphertext.split(".", 2)
        except ValueError:
            raise DecryptionError("not a Lockstep ciphertext") from None
        key = self._by_id.get(key_id)
        if prefix != PREFIX or key is None:
            raise DecryptionError(f"ciphertext made with unknown key {key_id!r}; was the secret key changed?")
        try:
            return key.fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise DecryptionError("ciphertext is damaged or was tampered with") from None

    def needs_rotation(self, ciphertext: str) -> bool:
        return not ciphertext.startswith(f"{PREFIX}.{self.current_id}.")
