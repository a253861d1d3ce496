"""AES-256-GCM + RSA-OAEP-SHA256 over secure buffers; the only module that
encrypts or decrypts (``_keys`` only makes, stores and loads keys).

Sealing: a fresh AES key is drawn straight into a SecureBuffer, the plaintext
is read from a SecureBuffer, the key is wrapped to the recipient with
RSA-OAEP (cryptography wants it as ``bytes`` there: that one transient copy
is wiped right after).  Opening: the unwrapped key goes into a SecureBuffer
(its ``bytes`` from RSA decryption wiped at once) and the plaintext is
decrypted into a SecureBuffer, zeroed again if the tag does not verify.
Every failure to open is one opaque :class:`~nomyo.SecurityError`.

Not protected here: the key schedules and buffers inside OpenSSL (freed and
cleansed by OpenSSL itself), and the public ciphertext.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._constants import AES_KEY_BYTES, NONCE_BYTES, TAG_BYTES
from ._envelope import MalformedPackage, Package, decode, encode
from ._exceptions import SecurityError
from .memory import SecureBuffer, wipe

__all__ = [
    "OPEN_FAILED",
    "open_decoded",
    "open_json",
    "open_package",
    "parse",
    "seal",
    "seal_json",
    "serialize",
]

try:
    from ._native import utf8_into as _utf8_into
    from ._native import utf8_size as _utf8_size
except ImportError:  # pragma: no cover - no extension: encode, copy, wipe
    _utf8_into = _utf8_size = None  # type: ignore[assignment]

_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)

#: the one message of every failure to open a package
OPEN_FAILED = "the encrypted package failed authentication"


class PlainBuffer(bytearray):
    """What ``secure=False`` uses instead of a SecureBuffer: ordinary heap
    memory (not locked, not guarded), still zeroed on close."""

    def close(self) -> None:
        memoryview(self)[:] = bytes(len(self))

    def __enter__(self) -> PlainBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Buffer = SecureBuffer | PlainBuffer


def _buffer(size: int, secure: bool) -> Buffer:
    return SecureBuffer(size) if secure else PlainBuffer(size)


def _wrap_key(key: SecureBuffer, recipient: rsa.RSAPublicKey) -> bytes:
    raw = bytes(memoryview(key))  # RSA encryption takes bytes only
    try:
        return recipient.encrypt(raw, _OAEP)
    finally:
        wipe(raw)


def _encrypt(view: memoryview, recipient: rsa.RSAPublicKey) -> tuple[bytearray, bytes, bytes]:
    """(ciphertext + tag, nonce, wrapped key) of ``view`` under a new AES key."""
    sealed = bytearray(view.nbytes + TAG_BYTES)
    with SecureBuffer(AES_KEY_BYTES) as key:
        key.fill_random()
        nonce = os.urandom(NONCE_BYTES)
        cipher = AESGCM(memoryview(key))
        cipher.encrypt_into(nonce, view, None, sealed)
        del cipher  # it holds a view of the key: let go before the key closes
        return sealed, nonce, _wrap_key(key, recipient)


def _package(sealed: bytearray, nonce: bytes, wrapped: bytes, processed_at: int | None) -> bytes:
    out = memoryview(sealed)
    return encode(
        Package(
            ciphertext=out[:-TAG_BYTES],
            nonce=nonce,
            tag=out[-TAG_BYTES:],
            wrapped_key=wrapped,
            processed_at=processed_at,
        )
    )


def seal(
    plaintext: Buffer | bytes | bytearray | memoryview,
    recipient: rsa.RSAPublicKey,
    *,
    processed_at: int | None = None,
) -> bytes:
    """Encrypt ``plaintext`` into a package only ``recipient``'s private key opens.

    A new AES key and nonce every call.  The plaintext is read in place.
    """
    with memoryview(plaintext) as view:
        parts = _encrypt(view, recipient)
    return _package(*parts, processed_at)


def _modulus_bytes(private_key: rsa.RSAPrivateKey) -> int:
    return (private_key.key_size + 7) // 8


def open_package(
    data: bytes | bytearray | memoryview | str,
    private_key: rsa.RSAPrivateKey,
    *,
    secure: bool = True,
) -> Buffer:
    """Decrypt a package addressed to ``private_key`` into a new buffer
    (a SecureBuffer unless ``secure=False``); the caller closes it.

    :raises nomyo.SecurityError: the package is malformed, not for this key,
        or fails authentication; the message never says which.
    """
    try:
        package = decode(data, key_bytes=_modulus_bytes(private_key))
    except MalformedPackage as exc:
        raise SecurityError(OPEN_FAILED) from exc
    return open_decoded(package, private_key, secure=secure)


def open_decoded(
    package: Package, private_key: rsa.RSAPrivateKey, *, secure: bool = True
) -> Buffer:
    """As :func:`open_package`, for a package already decoded (and checked
    against ``private_key``'s modulus length).  Consumes the package: a
    bytearray ciphertext gets the tag appended in place."""
    key = _buffer(AES_KEY_BYTES, secure)
    try:
        try:
            raw = private_key.decrypt(bytes(package.wrapped_key), _OAEP)
        except ValueError as exc:
            raise SecurityError(OPEN_FAILED) from exc
        try:
            if len(raw) != AES_KEY_BYTES:
                raise SecurityError(OPEN_FAILED)
            memoryview(key)[:] = raw
        finally:
            wipe(raw)
        size = len(package.ciphertext)
        sealed = package.ciphertext
        if isinstance(sealed, bytearray):
            sealed += package.tag  # in place: decode() left room (this consumes the package)
        else:
            sealed = bytes(sealed) + bytes(package.tag)
        plain = _buffer(size, secure)
        cipher = AESGCM(memoryview(key))
        try:
            cipher.decrypt_into(bytes(package.nonce), sealed, None, memoryview(plain))
        except InvalidTag as exc:
            plain.close()  # may hold unauthenticated plaintext
            raise SecurityError(OPEN_FAILED) from exc
        finally:
            del cipher
        return plain
    finally:
        key.close()


def modulus_bytes(private_key: rsa.RSAPrivateKey) -> int:
    """The length of a key wrapped to ``private_key``'s public half."""
    return _modulus_bytes(private_key)


def serialize(obj: Any, *, secure: bool = True) -> Buffer:
    """``obj`` as compact UTF-8 JSON in a new buffer (caller closes it).

    The str and bytes json and UTF-8 encoding make on the way are wiped.

    :raises TypeError, ValueError: ``obj`` is not JSON-serializable (NaN included).
    """
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        if _utf8_into is not None:  # straight from the str into the buffer
            buf = _buffer(_utf8_size(text), secure)
            _utf8_into(text, buf)
            return buf
        encoded = text.encode("utf-8")
        try:
            buf = _buffer(len(encoded), secure)
            memoryview(buf)[:] = encoded
            return buf
        finally:
            wipe(encoded)
    finally:
        wipe(text)  # and, for non-ASCII text, the UTF-8 copy CPython keeps in it


def seal_json(
    obj: Any,
    recipient: rsa.RSAPublicKey,
    *,
    processed_at: int | None = None,
    secure: bool = True,
) -> bytes:
    """Serialize ``obj`` into secure memory and seal it to ``recipient``.

    The plaintext buffer is closed once encrypted, before the package (a
    third of it larger again, as base64) is built.
    """
    with serialize(obj, secure=secure) as buf, memoryview(buf) as view:
        parts = _encrypt(view, recipient)
    return _package(*parts, processed_at)


def parse(buf: Buffer, *, consume: bool = False) -> Any:
    """The JSON value in ``buf``; the decoded text is wiped after parsing.

    With ``consume``, ``buf`` is closed as soon as it is decoded to text, so
    a large plaintext is not held three times over while it is parsed.

    :raises nomyo.SecurityError: not UTF-8 JSON (the message says no more).
    """
    try:
        with memoryview(buf) as view:
            text = str(view, "utf-8")
    except UnicodeDecodeError as exc:
        raise SecurityError("the decrypted payload is not valid JSON") from exc
    finally:
        if consume:
            buf.close()
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SecurityError("the decrypted payload is not valid JSON") from exc
    finally:
        wipe(text)


def open_json(data: bytes | bytearray | memoryview | str, private_key: rsa.RSAPrivateKey) -> Any:
    """Open a package and parse its JSON plaintext.  The plaintext exists
    outside secure memory as the returned objects, as one str that is wiped
    after parsing, and in the json module's own transient buffers, which
    Python frees without zeroing."""
    with open_package(data, private_key) as buf:
        return parse(buf)
