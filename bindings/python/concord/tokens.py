"""Room tokens for a Python backend, in the format docs/PROTOCOL.md
("Tokens") specifies, signed with the relay's Ed25519 key.

    from concord.tokens import load_key, mint_token
    key = load_key("concord-data/concord-relay.key")
    token = mint_token(key, room="todos", rights="rw", ttl_seconds=3600)

Needs the `cryptography` package (`pip install concord[tokens]`).
"""

import base64
import time
from typing import Optional, Union

__all__ = ["load_key", "mint_token", "encode_claims"]

#: Signed before the claims, so a token signature cannot be mistaken for
#: a signature over anything else.
_CONTEXT = b"concord-relay token v1\x00"
_RIGHTS = {"r": 0, "rw": 1}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _varint(n: int) -> bytes:
    """postcard's unsigned LEB128 varint."""
    if n < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_claims(room: str, rights: str, expires_at: int, replica: Optional[int] = None) -> bytes:
    """The postcard bytes of a token's claims (room, rights, expiry, replica)."""
    if rights not in _RIGHTS:
        raise ValueError(f"rights must be 'r' or 'rw', not {rights!r}")
    if not (0 <= expires_at < 2**64):
        raise ValueError("expires_at must be a u64 (Unix seconds)")
    room_bytes = room.encode("utf-8")
    claims = _varint(len(room_bytes)) + room_bytes + _varint(_RIGHTS[rights]) + _varint(expires_at)
    if replica is None:
        return claims + b"\x00"
    if not (0 <= replica < 2**64):
        raise ValueError("replica must be a u64")
    return claims + b"\x01" + _varint(replica)


def load_key(path: str) -> bytes:
    """The 32-byte signing seed from a `concord-relay.key` file (base64url)."""
    with open(path, "r", encoding="ascii") as f:
        seed = _b64url_decode(f.read())
    if len(seed) != 32:
        raise ValueError(f"{path}: expected a 32-byte Ed25519 seed, found {len(seed)} bytes")
    return seed


def mint_token(
    key: Union[bytes, str],
    room: str,
    rights: str = "rw",
    ttl_seconds: int = 3600,
    replica: Optional[Union[int, str]] = None,
    now: Optional[int] = None,
) -> str:
    """A token granting `room` with `rights` ('r' or 'rw') for `ttl_seconds`,
    optionally to one replica (an int or its 16-hex-digit id), signed with
    `key` (the 32-byte seed, or its base64url text)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = _b64url_decode(key) if isinstance(key, str) else bytes(key)
    if len(seed) != 32:
        raise ValueError("the key must be a 32-byte Ed25519 seed")
    if isinstance(replica, str):
        replica = int(replica, 16)
    issued = int(time.time()) if now is None else int(now)
    claims = encode_claims(room, rights, issued + int(ttl_seconds), replica)
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(_CONTEXT + claims)
    return f"{_b64url(claims)}.{_b64url(signature)}"
