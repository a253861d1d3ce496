"""Package 1.0 <-> fields: strict decoding, every rule able to fail."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nomyo._envelope import MalformedPackage, Package, decode, encode

KEY_BYTES = 512


def package(**overrides: Any) -> Package:
    fields: dict[str, Any] = {
        "ciphertext": b"ciphertext bytes",
        "nonce": bytes(range(12)),
        "tag": bytes(range(16)),
        "wrapped_key": bytes(KEY_BYTES),
        "processed_at": None,
    }
    fields.update(overrides)
    return Package(**fields)


def as_json(pkg: Package | None = None) -> dict[str, Any]:
    return json.loads(encode(pkg or package()))  # type: ignore[no-any-return]


def dump(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_round_trip_and_wire_format() -> None:
    pkg = package(processed_at=1700000000)
    obj = as_json(pkg)
    assert obj == {
        "version": "1.0",
        "algorithm": "hybrid-aes256-rsa4096",
        "encrypted_payload": {
            "ciphertext": base64.b64encode(pkg.ciphertext).decode(),  # type: ignore[arg-type]
            "nonce": base64.b64encode(pkg.nonce).decode(),  # type: ignore[arg-type]
            "tag": base64.b64encode(pkg.tag).decode(),  # type: ignore[arg-type]
        },
        "encrypted_aes_key": base64.b64encode(pkg.wrapped_key).decode(),  # type: ignore[arg-type]
        "key_algorithm": "RSA-OAEP-SHA256",
        "payload_algorithm": "AES-256-GCM",
        "processed_at": 1700000000,
    }
    assert decode(encode(pkg), key_bytes=KEY_BYTES) == pkg
    assert "processed_at" not in as_json(package())


def test_repr_shows_sizes_not_bytes() -> None:
    assert "ciphertext bytes" not in repr(package())


def test_extra_fields_are_ignored() -> None:
    obj = as_json()
    obj["router_note"] = {"anything": [1, 2]}
    assert decode(dump(obj), key_bytes=KEY_BYTES) == package()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("version",), "1.1"),
        (("version",), "1"),
        (("version",), 1.0),
        (("algorithm",), "hybrid-aes128-rsa2048"),
        (("algorithm",), "HYBRID-AES256-RSA4096"),
        (("key_algorithm",), "RSA-OAEP-SHA1"),
        (("payload_algorithm",), "AES-128-GCM"),
        (("encrypted_payload",), "not an object"),
        (("encrypted_payload", "ciphertext"), 12),
        (("encrypted_payload", "ciphertext"), "Y2lwaGVydGV4dCBieXRlcw"),  # unpadded
        (("encrypted_payload", "ciphertext"), "Y2lwaGVydGV4dCBieXRlcw==="),
        (("encrypted_payload", "ciphertext"), "Y2lw aGVy"),
        (("encrypted_payload", "ciphertext"), "Y2lw-GVy"),  # urlsafe alphabet
        (("encrypted_payload", "nonce"), base64.b64encode(bytes(11)).decode()),
        (("encrypted_payload", "nonce"), base64.b64encode(bytes(13)).decode()),
        (("encrypted_payload", "tag"), base64.b64encode(bytes(15)).decode()),
        (("encrypted_payload", "tag"), base64.b64encode(bytes(17)).decode()),
        (("encrypted_payload", "tag"), None),
        (("encrypted_aes_key",), base64.b64encode(bytes(KEY_BYTES - 1)).decode()),
        (("encrypted_aes_key",), base64.b64encode(bytes(KEY_BYTES + 1)).decode()),
        (("encrypted_aes_key",), base64.b64encode(bytes(256)).decode()),
        (("processed_at",), "1700000000"),
        (("processed_at",), True),
        (("processed_at",), 1.5),
    ],
)
def test_each_rule_refuses(path: tuple[str, ...], value: Any) -> None:
    obj = as_json()
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(MalformedPackage):
        decode(dump(obj), key_bytes=KEY_BYTES)


@pytest.mark.parametrize(
    "path",
    [
        ("version",),
        ("algorithm",),
        ("key_algorithm",),
        ("payload_algorithm",),
        ("encrypted_payload",),
        ("encrypted_aes_key",),
        ("encrypted_payload", "ciphertext"),
        ("encrypted_payload", "nonce"),
        ("encrypted_payload", "tag"),
    ],
)
def test_each_required_field(path: tuple[str, ...]) -> None:
    obj = as_json()
    target = obj
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    with pytest.raises(MalformedPackage, match="missing"):
        decode(dump(obj), key_bytes=KEY_BYTES)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'"a string"',
        b"null",
        b"\xff\xfe{}",
        b'{"version": "1.0", "version": "1.0"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    ],
    ids=["empty", "array", "string", "null", "not-utf8", "duplicate-key", "deep-array", "deep-obj"],
)
def test_not_a_package(raw: bytes) -> None:
    with pytest.raises(MalformedPackage):
        decode(raw, key_bytes=KEY_BYTES)


def test_duplicate_key_inside_payload() -> None:
    text = encode(package()).decode()
    doubled = text.replace('"nonce":', '"nonce":"AAAAAAAAAAAAAAAA","nonce":', 1)
    with pytest.raises(MalformedPackage, match="twice"):
        decode(doubled, key_bytes=KEY_BYTES)


@settings(max_examples=200, deadline=None)
@given(
    ciphertext=st.binary(max_size=300),
    nonce=st.binary(min_size=12, max_size=12),
    tag=st.binary(min_size=16, max_size=16),
    wrapped=st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES),
    processed_at=st.none() | st.integers(min_value=-(2**63), max_value=2**63),
)
def test_round_trip_property(
    ciphertext: bytes, nonce: bytes, tag: bytes, wrapped: bytes, processed_at: int | None
) -> None:
    pkg = Package(ciphertext, nonce, tag, wrapped, processed_at)
    assert decode(encode(pkg), key_bytes=KEY_BYTES) == pkg


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_truncation_is_refused(data: st.DataObject) -> None:
    raw = encode(package(processed_at=12345))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(MalformedPackage):
        decode(raw[:cut], key_bytes=KEY_BYTES)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_the_c_codec_encodes_like_binascii(data: bytes) -> None:
    from nomyo import _envelope

    encoded = _envelope._b64(data)
    assert bytes(encoded) == base64.b64encode(data)
    assert bytes(_envelope._unb64(bytes(encoded).decode())) == data
    assert bytes(_envelope._unb64_py(bytes(encoded).decode())) == data


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="AQgwBCab09+/=-_ \n\u00e9", max_size=16))
def test_the_c_and_python_decoders_accept_the_same_texts(text: str) -> None:
    from nomyo import _envelope

    def outcome(decode: Any) -> bytes | None:
        try:
            return bytes(decode(text))
        except ValueError:  # binascii.Error and UnicodeEncodeError are ValueErrors
            return None

    assert outcome(_envelope._unb64) == outcome(_envelope._unb64_py)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.binary(max_size=40).map(lambda b: b) | st.binary(max_size=40).map(lambda b: (b,)),
        max_size=8,
    )
)
def test_the_c_pack_joins_like_python(pieces: list[Any]) -> None:
    from nomyo import _envelope

    assert _envelope._pack(pieces) == _envelope._pack_py(pieces)


def test_consume_frees_a_bytearray_once_parsed() -> None:
    raw = bytearray(encode(package()))
    assert decode(raw, key_bytes=KEY_BYTES) == package() and len(raw) > 0  # the control
    assert decode(raw, key_bytes=KEY_BYTES, consume=True) == package()
    assert raw == bytearray()
    bad = bytearray(b"not json")
    with pytest.raises(MalformedPackage):
        decode(bad, key_bytes=KEY_BYTES, consume=True)
    assert bad == bytearray()
