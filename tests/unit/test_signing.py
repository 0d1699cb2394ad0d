"""Ed25519 envelopes: what was sealed opens and verifies; anything else is refused."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from dbsync_mq.core import signing
from dbsync_mq.errors import ProtocolError, SignatureError

LIMIT = 1024 * 1024
NODE_KEY = signing.private_key_from_seed(bytes(range(32)))
OTHER_KEY = signing.private_key_from_seed(bytes(range(1, 33)))


def open_and_verify(body: bytes, key: Ed25519PrivateKey = NODE_KEY) -> bytes:
    """What a receiver does: check size and shape, then the signature."""
    signed_bytes, signature = signing.open_envelope(body, LIMIT)
    signing.verify(signed_bytes, signature, key.public_key())
    return signed_bytes


@given(st.binary(max_size=2000))
def test_a_sealed_envelope_opens_to_the_same_bytes_and_verifies(signed_bytes: bytes) -> None:
    assert open_and_verify(signing.seal(signed_bytes, NODE_KEY)) == signed_bytes


@given(st.binary(min_size=1, max_size=300), st.data())
def test_changing_any_byte_of_an_envelope_is_refused(
    signed_bytes: bytes, data: st.DataObject
) -> None:
    # Given a valid envelope
    body = bytearray(signing.seal(signed_bytes, NODE_KEY))

    # When any one byte of it is replaced by another value
    position = data.draw(st.integers(0, len(body) - 1), label="position")
    body[position] = data.draw(
        st.integers(0, 255).filter(lambda b: b != body[position]), label="byte"
    )

    # Then it does not open, or it does not verify
    with pytest.raises(ProtocolError):
        open_and_verify(bytes(body))


def test_an_envelope_whose_items_are_retyped_as_text_is_refused() -> None:
    # Given a valid envelope: a two-item array of bin 8 items
    body = bytearray(signing.seal(b"push", NODE_KEY))
    assert body[:3] == b"\x92\xc4\x04"

    # When the signed bytes' header says str 8 instead, with the same length and content
    body[1] = 0xD9

    # Then the changed envelope is not accepted as the original one
    with pytest.raises(ProtocolError):
        open_and_verify(bytes(body))


def test_an_envelope_verified_with_another_key_raises_signature_error() -> None:
    body = signing.seal(b"push", NODE_KEY)

    with pytest.raises(SignatureError):
        open_and_verify(body, key=OTHER_KEY)


def test_a_signature_error_is_a_protocol_error() -> None:
    # Callers that only catch ProtocolError still refuse a forged message.
    assert issubclass(SignatureError, ProtocolError)


def test_a_body_at_the_size_limit_opens_and_one_byte_more_is_refused() -> None:
    # Given an envelope and limits exactly at, and one byte under, its size
    body = signing.seal(b"x" * 500, NODE_KEY)

    assert signing.open_envelope(body, len(body))[0] == b"x" * 500
    with pytest.raises(ProtocolError, match=f"exceeds the {len(body) - 1}-byte limit"):
        signing.open_envelope(body, len(body) - 1)


def test_an_oversize_body_is_refused_before_it_is_parsed() -> None:
    # Not even an envelope: only its size may be looked at.
    with pytest.raises(ProtocolError, match="exceeds"):
        signing.open_envelope(b"\xc1" * 101, 100)


SIGNATURE = b"s" * signing.SIGNATURE_BYTES


def packed(value: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="not-msgpack"),
        pytest.param(packed({b"signed": SIGNATURE}), id="a-map"),
        pytest.param(packed(b"signed"), id="bytes-alone"),
        pytest.param(packed([]), id="empty-array"),
        pytest.param(packed([b"signed"]), id="one-item-array"),
        pytest.param(packed([b"signed", SIGNATURE, b"more"]), id="three-item-array"),
        pytest.param(packed([b"signed", SIGNATURE[:-1]]), id="signature-63-bytes"),
        pytest.param(packed([b"signed", SIGNATURE + b"s"]), id="signature-65-bytes"),
        pytest.param(packed([b"signed", None]), id="signature-nil"),
        pytest.param(packed([7, SIGNATURE]), id="signed-bytes-an-integer"),
        pytest.param(packed([[b"signed"], SIGNATURE]), id="signed-bytes-an-array"),
        pytest.param(packed(["signed", SIGNATURE]), id="signed-bytes-text"),
        pytest.param(packed([b"signed", "s" * 64]), id="signature-text"),
        pytest.param(packed([b"signed", SIGNATURE])[:-1], id="truncated"),
        pytest.param(packed([b"signed", SIGNATURE]) + b"\x00", id="trailing-byte"),
        pytest.param(packed([msgpack.ExtType(1, b"x"), SIGNATURE]), id="extension-item"),
    ],
)
def test_bodies_that_are_not_envelopes_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="not an envelope"):
        signing.open_envelope(body, LIMIT)


def test_the_shape_cases_differ_from_a_valid_envelope_only_in_shape() -> None:
    # Guard for the cases above: the well-formed twin opens.
    assert signing.open_envelope(packed([b"signed", SIGNATURE]), LIMIT) == (b"signed", SIGNATURE)


def test_a_private_key_is_rebuilt_from_its_stored_seed() -> None:
    seed = bytes(range(100, 132))

    key = signing.private_key_from_seed(seed)

    assert signing.private_key_bytes(key) == seed
    rebuilt = signing.load_public_key(signing.public_key_bytes(key))
    signing.verify(b"m", key.sign(b"m"), rebuilt)


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33])
def test_a_seed_of_the_wrong_length_is_refused(seed: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        signing.private_key_from_seed(seed)


@pytest.mark.parametrize("raw", [b"", b"\x00" * 31, b"\x00" * 33, "k" * 32, None])
def test_a_public_key_of_the_wrong_length_or_type_is_refused(raw: Any) -> None:
    with pytest.raises(ProtocolError, match="32 bytes"):
        signing.load_public_key(raw)


PROOF_INPUTS = {
    "token_hash": signing.token_digest("token"),
    "node_id": 7,
    "server_key": signing.public_key_bytes(NODE_KEY),
    "request_id": "0" * 32,
}


@pytest.mark.parametrize(
    ("name", "other"),
    [
        ("token_hash", signing.token_digest("another token")),
        ("node_id", 8),
        ("server_key", signing.public_key_bytes(OTHER_KEY)),
        ("request_id", "1" * 32),
    ],
)
def test_the_registration_proof_depends_on_each_of_its_inputs(name: str, other: Any) -> None:
    proof = signing.registration_proof(**PROOF_INPUTS)  # type: ignore[arg-type]

    changed = signing.registration_proof(**{**PROOF_INPUTS, name: other})  # type: ignore[arg-type]

    assert not signing.proofs_match(proof, changed)


def test_the_registration_proof_is_the_same_for_the_same_inputs() -> None:
    first = signing.registration_proof(**PROOF_INPUTS)  # type: ignore[arg-type]
    second = signing.registration_proof(**PROOF_INPUTS)  # type: ignore[arg-type]

    assert signing.proofs_match(first, second)
    assert len(first) == hashlib.sha256().digest_size


def test_the_token_digest_is_the_sha256_of_the_token() -> None:
    # Stored hashes must stay valid across releases: pinned to the FIPS 180-2 "abc" vector.
    assert signing.token_digest("abc") == bytes.fromhex(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert signing.token_digest("abc") != signing.token_digest("abd")


def test_the_body_digest_tells_two_bodies_apart() -> None:
    assert signing.body_digest(b"push 1") == signing.body_digest(b"push 1")
    assert signing.body_digest(b"push 1") != signing.body_digest(b"push 2")
