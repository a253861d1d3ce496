"""The encrypted package of protocol 1.0 <-> its fields; pure: no crypto, no I/O.

Decoding is strict, so a hostile peer gets exactly one answer, "malformed":
the version and algorithm names must match exactly (no downgrade), every
required field must be present with the right JSON type and no key may
appear twice, base64 must be standard, padded and canonical, the nonce is
``NONCE_BYTES``, the tag ``TAG_BYTES`` and the wrapped key exactly the
recipient's modulus length.  Unknown extra fields are ignored.  Nothing
here is secret: ciphertexts, nonces, tags and wrapped keys are public.
"""

from __future__ import annotations

import binascii
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from ._constants import (
    KEY_ALGORITHM,
    NONCE_BYTES,
    PACKAGE_ALGORITHM,
    PAYLOAD_ALGORITHM,
    PROTOCOL_VERSION,
    TAG_BYTES,
)

__all__ = ["MalformedPackage", "Package", "decode", "decode_either", "encode", "encode_tag_inside"]


class MalformedPackage(ValueError):
    """The bytes are not a well-formed protocol 1.0 package.

    The message says which rule failed, for our own tests and logs; callers
    facing a peer turn it into one opaque error.
    """


#: what encode() accepts for a field: any contiguous bytes-like object
Bytes = Union[bytes, bytearray, memoryview]  # noqa: UP007 - a runtime alias on 3.10


@dataclass(frozen=True)
class Package:
    """The fields of one package (decode() gives bytes; encode() takes any bytes-like)."""

    ciphertext: Bytes
    nonce: Bytes
    tag: Bytes
    wrapped_key: Bytes
    processed_at: int | None = None

    def __repr__(self) -> str:
        return (
            f"Package(ciphertext=<{len(self.ciphertext)} bytes>, nonce=<{len(self.nonce)}>, "
            f"tag=<{len(self.tag)}>, wrapped_key=<{len(self.wrapped_key)}>, "
            f"processed_at={self.processed_at!r})"
        )


def _b64_py(data: Bytes) -> bytes | bytearray:
    return binascii.b2a_base64(data, newline=False)


def _q(text: str) -> bytes:
    return json.dumps(text).encode("ascii")


# the package's fixed parts; base64 needs no JSON escaping, so the whole
# object is assembled as bytes instead of making json.dumps scan megabytes
_HEAD = b"".join(
    [
        b'{"version":', _q(PROTOCOL_VERSION), b',"algorithm":', _q(PACKAGE_ALGORITHM),
        b',"encrypted_payload":{"ciphertext":"',
    ]
)  # fmt: skip
_TAIL = b"".join(
    [
        b',"key_algorithm":', _q(KEY_ALGORITHM),
        b',"payload_algorithm":', _q(PAYLOAD_ALGORITHM),
    ]
)  # fmt: skip


def encode(package: Package) -> bytes:
    """The package as the UTF-8 JSON object the protocol sends."""
    return _encode(
        package.ciphertext, package.nonce, package.tag, package.wrapped_key, package.processed_at
    )


def _encode(
    ciphertext: Bytes, nonce: Bytes, tag: Bytes | None, wrapped_key: Bytes, processed_at: int | None
) -> bytes:
    """The package's JSON; with ``tag`` None, ``ciphertext`` already ends
    with the tag and no ``tag`` field is written (the variant's form)."""
    # (field,) pieces are written as base64; the rest as they are
    pieces: list[Any] = [_HEAD, (ciphertext,), b'","nonce":"', (nonce,)]
    if tag is not None:
        pieces += [b'","tag":"', (tag,)]
    pieces += [b'"},"encrypted_aes_key":"', (wrapped_key,), b'"', _TAIL]
    if processed_at is not None:
        pieces += [b',"processed_at":', str(int(processed_at)).encode("ascii")]
    pieces.append(b"}")
    return _pack(pieces)


def _pack_py(pieces: list[Any]) -> bytes:
    return b"".join(_b64(p[0]) if isinstance(p, tuple) else p for p in pieces)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise MalformedPackage("a key appears twice")
    return result


if sys.version_info >= (3, 11):

    def _decode_alphabet(text: str) -> bytes:
        return binascii.a2b_base64(text, strict_mode=True)

else:  # pragma: no cover - 3.10 has no strict mode: check the alphabet first
    import re

    _ALPHABET = re.compile(r"[A-Za-z0-9+/]*={0,2}")

    def _decode_alphabet(text: str) -> bytes:
        if not _ALPHABET.fullmatch(text):
            raise binascii.Error("not in the base64 alphabet")
        return binascii.a2b_base64(text)


def _unb64_py(text: str) -> bytes | bytearray:
    """Standard, padded, canonical base64 only: one text per byte string."""
    raw = _decode_alphabet(text)
    if len(text) != 4 * ((len(raw) + 2) // 3):
        raise binascii.Error("excess characters or padding")
    tail = len(raw) % 3 or 3
    if raw and _b64_py(raw[-tail:]) != text[-4:].encode("ascii"):
        raise binascii.Error("non-zero padding bits")
    return raw


_b64: Callable[[Bytes], bytes | bytearray]
_unb64: Callable[[str], bytes | bytearray]
_pack: Callable[[list[Any]], bytes]
_c_parse: Callable[..., Any] | None
try:  # the C codec (only ever through nomyo._native): the same rules, ~4x faster on large fields
    from ._native import b64decode_str as _c_decode
    from ._native import b64encode as _c_encode
    from ._native import json_parse as _c_parse
    from ._native import pack as _c_pack
except ImportError:  # no extension, or NOMYO_MEMORY_BACKEND=python: binascii and json
    _b64, _unb64, _pack = _b64_py, _unb64_py, _pack_py
    _c_parse = None
else:
    _b64, _pack = _c_encode, _c_pack

    def _unb64(text: str) -> bytes | bytearray:
        # TAG_BYTES of spare room: the ciphertext gets its tag appended in place
        return _c_decode(text, TAG_BYTES)


def _field(obj: dict[str, Any], name: str, kind: type) -> Any:
    if name not in obj:
        raise MalformedPackage(f"missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise MalformedPackage(f"field {name!r} must be a {kind.__name__}")
    return value


def _exact(obj: dict[str, Any], name: str, expected: str) -> None:
    if _field(obj, name, str) != expected:
        raise MalformedPackage(f"field {name!r} is not {expected!r}")


def _bytes_field(obj: dict[str, Any], name: str, length: int | None) -> bytes | bytearray:
    text = _field(obj, name, str)
    try:
        raw = _unb64(text)
    except (binascii.Error, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise MalformedPackage(f"field {name!r} is not standard base64") from exc
    if length is not None and len(raw) != length:
        raise MalformedPackage(f"field {name!r} must decode to {length} bytes")
    return raw


def _parse(data: bytes | bytearray | memoryview | str) -> Any:
    """The JSON of a package: UTF-8 only (json.loads would also take UTF-16
    and UTF-32), no key twice in one object."""
    if _c_parse is not None and not isinstance(data, str):
        return _c_parse(data, True)  # from the bytes: no str of the whole package
    text = data if isinstance(data, str) else str(data, "utf-8")
    return json.loads(text, object_pairs_hook=_unique_keys)


def _checked(
    data: bytes | bytearray | memoryview | str, consume: bool
) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    """(the package object, its encrypted_payload, processed_at): the JSON
    parsed and every field but the payload's bytes checked."""
    try:
        obj = _parse(data)
    except MalformedPackage:
        raise
    except (ValueError, TypeError, RecursionError) as exc:  # JSON, UTF-8, nesting
        raise MalformedPackage("not a JSON object") from exc
    finally:
        if consume and isinstance(data, bytearray):
            data.clear()
    if not isinstance(obj, dict):
        raise MalformedPackage("not a JSON object")
    _exact(obj, "version", PROTOCOL_VERSION)
    _exact(obj, "algorithm", PACKAGE_ALGORITHM)
    _exact(obj, "key_algorithm", KEY_ALGORITHM)
    _exact(obj, "payload_algorithm", PAYLOAD_ALGORITHM)
    payload = _field(obj, "encrypted_payload", dict)
    processed_at = obj.get("processed_at")
    if processed_at is not None and (
        not isinstance(processed_at, int) or isinstance(processed_at, bool)
    ):
        raise MalformedPackage("field 'processed_at' must be an int")
    return obj, payload, processed_at


def decode(
    data: bytes | bytearray | memoryview | str, *, key_bytes: int, consume: bool = False
) -> Package:
    """Parse and check a package addressed to a key of ``key_bytes`` bytes.

    With ``consume``, a bytearray ``data`` is emptied as soon as it is parsed,
    so a large package is not held twice while its fields are decoded.

    :raises MalformedPackage: anything about it is off.
    """
    obj, payload, processed_at = _checked(data, consume)
    return Package(
        ciphertext=_bytes_field(payload, "ciphertext", None),
        nonce=_bytes_field(payload, "nonce", NONCE_BYTES),
        tag=_bytes_field(payload, "tag", TAG_BYTES),
        wrapped_key=_bytes_field(obj, "encrypted_aes_key", key_bytes),
        processed_at=processed_at,
    )


# ---------------------------------------------------------------- the tag-inside variant
#
# nomyo-js 0.1.0 (Web Crypto) sends and reads ``encrypted_payload`` as
# ``{"ciphertext": B64(ciphertext || tag), "nonce": B64}``, with no "tag"
# field (PROTOCOL.md, "A variant in the wild").  Only the reference endpoint
# accepts it; the client always sends and expects the separate tag.


def encode_tag_inside(
    sealed: Bytes, nonce: Bytes, wrapped_key: Bytes, processed_at: int | None = None
) -> bytes:
    """A package in the tag-inside form: ``sealed`` is ciphertext || tag, as
    AES-GCM gives it, and is written as one base64 field."""
    return _encode(sealed, nonce, None, wrapped_key, processed_at)


def decode_either(
    data: bytes | bytearray | memoryview | str, *, key_bytes: int
) -> tuple[Package, bool]:
    """As :func:`decode`, accepting both forms of ``encrypted_payload``:
    ``(package, tag_inside)``.

    Exactly one interpretation per package, chosen by the presence of the
    ``tag`` field alone: with it, the separate form, checked as strictly as
    :func:`decode` checks it; without it, the ciphertext must hold at least
    ``TAG_BYTES`` and its last ``TAG_BYTES`` are the tag.  A package is never
    tried both ways.

    :raises MalformedPackage: anything about it is off.
    """
    obj, payload, processed_at = _checked(data, False)
    sealed = _bytes_field(payload, "ciphertext", None)
    tag_inside = "tag" not in payload  # the protocol's own form: the variant is not tried
    if not tag_inside:
        tag = _bytes_field(payload, "tag", TAG_BYTES)
    elif len(sealed) < TAG_BYTES:
        raise MalformedPackage(f"field 'ciphertext' must hold at least {TAG_BYTES} bytes")
    else:
        tag = bytes(sealed[-TAG_BYTES:])
        if isinstance(sealed, bytearray):
            del sealed[-TAG_BYTES:]  # in place: open_decoded appends the tag back
        else:
            sealed = sealed[:-TAG_BYTES]
    package = Package(
        ciphertext=sealed,
        nonce=_bytes_field(payload, "nonce", NONCE_BYTES),
        tag=tag,
        wrapped_key=_bytes_field(obj, "encrypted_aes_key", key_bytes),
        processed_at=processed_at,
    )
    return package, tag_inside
