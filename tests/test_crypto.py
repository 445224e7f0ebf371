"""Credentials at rest: encrypted, tagged with their key, rotatable."""

from __future__ import annotations

import pytest

from server.crypto import DecryptionError, KeyRing

REFRESH_TOKEN = "1//0g-refresh-token-of-mike"


def test_round_trip_and_nothing_in_clear() -> None:
    ring = KeyRing("first secret")
    sealed = ring.encrypt(REFRESH_TOKEN)
    assert REFRESH_TOKEN not in sealed
    assert sealed.startswith(f"v1.{ring.current_id}.")
    assert ring.decrypt(sealed) == REFRESH_TOKEN
    assert ring.encrypt(REFRESH_TOKEN) != sealed  # random IV: equal plaintexts look different


def test_rotation_keeps_old_ciphertexts_readable() -> None:
    old = KeyRing("first secret")
    sealed = old.encrypt(REFRESH_TOKEN)
    rotated = KeyRing("second secret", "first secret")
    assert rotated.current_id != old.current_id
    assert rotated.decrypt(sealed) == REFRESH_TOKEN
    assert rotated.needs_rotation(sealed)
    resealed = rotated.encrypt(rotated.decrypt(sealed))
    assert not rotated.needs_rotation(resealed)
    with pytest.raises(DecryptionError, match="unknown key"):
        KeyRing("second secret").decrypt(sealed)


def test_tampering_is_detected() -> None:
    ring = KeyRing("first secret")
    sealed = ring.encrypt(REFRESH_TOKEN)
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(DecryptionError):
        ring.decrypt(tampered)
    with pytest.raises(DecryptionError, match="not a Lockstep ciphertext"):
        ring.decrypt("plain text")
