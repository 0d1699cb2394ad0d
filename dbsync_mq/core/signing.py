"""Ed25519 envelopes: ``[signed_bytes, signature]`` packed as a two-item msgpack array.

The receiver checks the size, splits the envelope, verifies the signature over
the raw ``signed_bytes`` and only then decodes them: nothing unauthenticated is
parsed beyond the outer array. Key generation takes its seed from the caller so
that this module owns no randomness.
"""

from __future__ import annotations

import hashlib
import hmac

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from dbsync_mq.errors import ProtocolError, SignatureError

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def private_key_from_seed(seed: bytes) -> Ed25519PrivateKey:
    """Build a private key from 32 secret bytes (``os.urandom(32)`` at the edge)."""
    if len(seed) != SEED_BYTES:
        raise ValueError("an Ed25519 seed is exactly 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def private_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte seed of ``key``, for storage."""
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key of ``key``."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def load_public_key(raw: bytes) -> Ed25519PublicKey:
    """Parse a raw public key; raise ``ProtocolError`` if it is not one."""
    if not isinstance(raw, bytes) or len(raw) != PUBLIC_KEY_BYTES:
        raise ProtocolError("a public key is exactly 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def seal(signed_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """Wrap ``signed_bytes`` with its signature into an envelope."""
    envelope: bytes = msgpack.packb([signed_bytes, key.sign(signed_bytes)], use_bin_type=True)
    return envelope


def open_envelope(body: bytes, max_bytes: int) -> tuple[bytes, bytes]:
    """Split an envelope into ``(signed_bytes, signature)`` without verifying it."""
    if len(body) > max_bytes:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {max_bytes}-byte limit")
    try:
        # raw=False keeps msgpack str items apart from bin ones: with raw=True a str header
        # swapped in for a bin one would open, and verify, as the untouched envelope.
        parts = msgpack.unpackb(body, raw=False, max_array_len=2, max_map_len=0, max_ext_len=0)
    except Exception:
        raise ProtocolError("message body is not an envelope") from None
    if (
        not isinstance(parts, list)
        or len(parts) != 2
        or not all(isinstance(part, bytes) for part in parts)
        or len(parts[1]) != SIGNATURE_BYTES
    ):
        raise ProtocolError("message body is not an envelope")
    return parts[0], parts[1]


def verify(signed_bytes: bytes, signature: bytes, key: Ed25519PublicKey) -> None:
    """Raise ``SignatureError`` unless ``signature`` is ``key``'s over ``signed_bytes``."""
    try:
        key.verify(signature, signed_bytes)
    except InvalidSignature:
        raise SignatureError("signature does not verify") from None


def token_digest(token: str) -> bytes:
    """The stored form of an enrollment token: its SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def registration_proof(
    token_hash: bytes, node_id: int, server_key: bytes, request_id: str
) -> bytes:
    """HMAC, keyed by the token's hash, proving to a registering node that the server
    answering it knows the token: so the node can trust ``server_key``."""
    message = msgpack.packb([node_id, server_key, request_id], use_bin_type=True)
    return hmac.new(token_hash, message, hashlib.sha256).digest()


def proofs_match(expected: bytes, given: bytes) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(expected, given)


def body_digest(signed_bytes: bytes) -> bytes:
    """Digest identifying a request body, to detect a request id reused for another body."""
    return hashlib.sha256(signed_bytes).digest()
