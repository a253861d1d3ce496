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

import contextlib
import json
import os
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._constants import AES_KEY_BYTES, MAX_NESTING, NONCE_BYTES, TAG_BYTES
from ._envelope import MalformedPackage, Package, decode, decode_either, encode, encode_tag_inside
from ._exceptions import SecurityError
from .memory import SecureBuffer, wipe

__all__ = [
    "OPEN_FAILED",
    "ReplayCheck",
    "open_answer",
    "open_decoded",
    "open_json",
    "open_package",
    "open_package_either",
    "parse",
    "seal",
    "seal_json",
    "serialize",
]

try:
    from ._native import json_into as _json_into
    from ._native import json_parse as _json_parse
    from ._native import json_size as _json_size
    from ._native import scrub_stack as _scrub_stack
except ImportError:  # no extension, or NOMYO_MEMORY_BACKEND=python: json.dumps/loads, copies wiped
    _json_into = _json_size = _json_parse = None  # type: ignore[assignment]

    def _scrub_stack() -> None:  # Python cannot reach the C stack
        pass


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


def _buffer(size: int, secure: bool, locked: bool = False) -> Buffer:
    """A SecureBuffer (``locked``: one that mlock holds, or SecurityError), or a
    PlainBuffer when ``secure`` is off."""
    return SecureBuffer(size, require_locked=locked) if secure else PlainBuffer(size)


def _wrap_key(key: SecureBuffer, recipient: rsa.RSAPublicKey) -> bytes:
    raw = bytes(memoryview(key))  # RSA encryption takes bytes only
    try:
        return recipient.encrypt(raw, _OAEP)
    finally:
        wipe(raw)


def _encrypt(
    view: memoryview, recipient: rsa.RSAPublicKey, locked: bool = False
) -> tuple[bytearray, bytes, bytes]:
    """(ciphertext + tag, nonce, wrapped key) of ``view`` under a new AES key."""
    sealed = bytearray(view.nbytes + TAG_BYTES)
    with SecureBuffer(AES_KEY_BYTES, require_locked=locked) as key:
        key.fill_random()
        nonce = os.urandom(NONCE_BYTES)
        cipher = AESGCM(memoryview(key))
        cipher.encrypt_into(nonce, view, None, sealed)
        del cipher  # it holds a view of the key: let go before the key closes
        _scrub_stack()  # OpenSSL's frames may have left plaintext blocks there
        return sealed, nonce, _wrap_key(key, recipient)


def _package(
    sealed: bytearray,
    nonce: bytes,
    wrapped: bytes,
    processed_at: int | None,
    tag_inside: bool = False,
) -> bytes:
    if tag_inside:  # nomyo-js's form: the tag stays at the end of the ciphertext
        return encode_tag_inside(sealed, nonce, wrapped, processed_at)
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
    return open_decoded(_decode(data, private_key), private_key, secure=secure)


def _decode(
    data: bytes | bytearray | memoryview | str,
    private_key: rsa.RSAPrivateKey,
    consume: bool = False,
) -> Package:
    """The package in ``data``, checked against ``private_key``'s modulus
    length: the one place where a malformed package becomes the opaque
    :class:`~nomyo.SecurityError` (the cause kept for debugging, not shown)."""
    try:
        return decode(data, key_bytes=_modulus_bytes(private_key), consume=consume)
    except MalformedPackage as exc:
        raise SecurityError(OPEN_FAILED) from exc


def _decode_either(
    data: bytes | bytearray | memoryview | str, private_key: rsa.RSAPrivateKey
) -> tuple[Package, bool]:
    """As :func:`_decode`, for a package in either form (see
    :func:`nomyo._envelope.decode_either`): ``(package, tag_inside)``."""
    try:
        return decode_either(data, key_bytes=_modulus_bytes(private_key))
    except MalformedPackage as exc:
        raise SecurityError(OPEN_FAILED) from exc


class ReplayCheck(Protocol):
    """What :func:`open_answer` asks about a package's wrapped key."""

    def check(self, wrapped_key: bytes) -> None:
        """Raise :class:`~nomyo.SecurityError` if this package was seen before."""

    def record(self, wrapped_key: bytes) -> None:
        """The same, and remember it (called once the package has opened)."""


def open_answer(
    body: bytes | bytearray,
    private_key: rsa.RSAPrivateKey,
    replays: ReplayCheck,
    *,
    secure: bool = True,
    locked: bool = False,
) -> tuple[Any, int | None]:
    """Open an answer package in one call: decode it, refuse a replay before
    anything is decrypted, authenticate and decrypt it (:func:`open_decoded`),
    parse the JSON (:func:`parse`), then record it with ``replays``: only a
    package that opened is remembered.

    A bytearray ``body`` is consumed: emptied as soon as it is decoded, so a
    multi-megabyte answer does not stay in memory three times over.

    :returns: (the JSON value, the package's ``processed_at``).
    :raises nomyo.SecurityError: malformed, not for this key or failing
        authentication (one message, no detail which), a replay, or not JSON.
    """
    package = _decode(body, private_key, consume=True)
    processed_at = package.processed_at
    wrapped_key = bytes(package.wrapped_key)
    replays.check(wrapped_key)
    plain = open_decoded(package, private_key, secure=secure, locked=locked)
    del package  # the ciphertext is no longer needed while parsing
    with plain:
        value = parse(plain, consume=True)
    replays.record(wrapped_key)  # the same package may have raced in twice
    return value, processed_at


def open_decoded(
    package: Package, private_key: rsa.RSAPrivateKey, *, secure: bool = True, locked: bool = False
) -> Buffer:
    """As :func:`open_package`, for a package already decoded (and checked
    against ``private_key``'s modulus length).  Consumes the package: a
    bytearray ciphertext gets the tag appended in place.

    With ``locked``, the AES key and the plaintext go only into memory that
    mlock holds: :class:`nomyo.SecurityError` where it cannot, before
    anything is decrypted (both buffers are made first).
    """
    key = _buffer(AES_KEY_BYTES, secure, locked)
    plain: Buffer | None = None
    try:
        plain = _buffer(len(package.ciphertext), secure, locked)
        try:
            raw = private_key.decrypt(bytes(package.wrapped_key), _OAEP)
        except ValueError as exc:
            raise SecurityError(OPEN_FAILED) from exc
        finally:
            _scrub_stack()  # the unwrapped key may linger in OpenSSL's frames
        try:
            if len(raw) != AES_KEY_BYTES:
                raise SecurityError(OPEN_FAILED)
            memoryview(key)[:] = raw
        finally:
            wipe(raw)
        sealed = package.ciphertext
        if isinstance(sealed, bytearray):
            sealed += package.tag  # in place: decode() left room (this consumes the package)
        else:
            sealed = bytes(sealed) + bytes(package.tag)
        cipher = AESGCM(memoryview(key))
        try:
            cipher.decrypt_into(bytes(package.nonce), sealed, None, memoryview(plain))
        except InvalidTag as exc:
            raise SecurityError(OPEN_FAILED) from exc  # plain, closed below, may hold
        finally:  # unauthenticated plaintext
            del cipher
            _scrub_stack()  # so may blocks of the plaintext
        opened, plain = plain, None
        return opened
    finally:
        if plain is not None:
            plain.close()
        key.close()


def modulus_bytes(private_key: rsa.RSAPrivateKey) -> int:
    """The length of a key wrapped to ``private_key``'s public half."""
    return _modulus_bytes(private_key)


def serialize(obj: Any, *, secure: bool = True, locked: bool = False) -> Buffer:
    """``obj`` as compact UTF-8 JSON in a new buffer (caller closes it).

    With the C extension the JSON is written straight into the buffer (see
    csrc/jsonenc.c): no str or bytes copy of it exists.  Without it,
    json.dumps and the UTF-8 encoding make one each, wiped once copied; the
    escaped copy of each string that json.dumps makes on the way is freed
    unwiped (the fallback's documented limit).

    :raises TypeError, ValueError: ``obj`` is not JSON-serializable (NaN,
        circular references and lone surrogates included).
    """
    if _json_size is not None:
        buf = _buffer(_json_size(obj), secure, locked)
        try:
            _json_into(obj, buf)
        except BaseException:
            buf.close()  # it may hold part of the text
            raise
        return buf
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        encoded = text.encode("utf-8")
        try:
            buf = _buffer(len(encoded), secure, locked)
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
    locked: bool = False,
    tag_inside: bool = False,
) -> bytes:
    """Serialize ``obj`` into secure memory and seal it to ``recipient``.

    The plaintext buffer is closed once encrypted, before the package (a
    third of it larger again, as base64) is built.  ``tag_inside`` writes
    nomyo-js 0.1.0's form (PROTOCOL.md, "A variant in the wild"): only the
    reference endpoint answers in it, to a client that used it.
    """
    with serialize(obj, secure=secure, locked=locked) as buf, memoryview(buf) as view:
        parts = _encrypt(view, recipient, locked)
    return _package(*parts, processed_at, tag_inside)


def parse(buf: Buffer, *, consume: bool = False) -> Any:
    """The JSON value in ``buf`` (UTF-8), as json.loads gives it.

    With the C extension the objects are made straight from the buffer (see
    csrc/jsondec.c): no str of the whole text, and no buffer of the parser's
    left unzeroed.  Without it, the text is decoded to a str, parsed and
    wiped; the decoder's own transient buffers are freed unwiped.  With
    ``consume``, ``buf`` is closed as soon as it is no longer needed.

    :raises nomyo.SecurityError: not UTF-8 JSON (the message says no more).
    """
    if _json_parse is not None:
        try:
            return _json_parse(buf)
        except (ValueError, RecursionError) as exc:
            raise SecurityError("the decrypted payload is not valid JSON") from exc
        finally:
            if consume:
                buf.close()
    try:
        with memoryview(buf) as view:
            text = str(view, "utf-8")
    except UnicodeDecodeError as exc:
        raise SecurityError("the decrypted payload is not valid JSON") from exc
    finally:
        if consume:
            buf.close()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SecurityError("the decrypted payload is not valid JSON") from exc
    finally:
        wipe(text)
    if not _nesting_within_limit(value):  # as csrc/jsondec.c: no deeper than wipe() goes
        with contextlib.suppress(RecursionError):
            wipe(value)
        raise SecurityError("the decrypted payload is not valid JSON")
    return value


def _nesting_within_limit(value: Any) -> bool:
    """Whether no container in ``value`` sits inside MAX_NESTING others."""
    pending = [(value, 0)]
    while pending:
        obj, depth = pending.pop()
        if isinstance(obj, (dict, list)):  # what json.loads makes
            if depth >= MAX_NESTING:
                return False
            pending.extend((v, depth + 1) for v in (obj.values() if isinstance(obj, dict) else obj))
    return True


def open_json(data: bytes | bytearray | memoryview | str, private_key: rsa.RSAPrivateKey) -> Any:
    """Open a package and parse its JSON plaintext (see :func:`parse`): outside
    secure memory, the plaintext exists only as the returned objects."""
    with open_package(data, private_key) as buf:
        return parse(buf)


# ---------------------------------------------------------------- the tag-inside variant
# (nomyo-js 0.1.0; PROTOCOL.md "A variant in the wild"): for the reference
# endpoint only, which answers each client in the form it used (seal_json's
# ``tag_inside``).


def open_package_either(
    data: bytes | bytearray | memoryview | str, private_key: rsa.RSAPrivateKey
) -> tuple[Buffer, bool]:
    """As :func:`open_package`, for a package in either form:
    ``(plaintext buffer, tag_inside)``.  Exactly one interpretation per
    package (see :func:`nomyo._envelope.decode_either`); either form fails
    with the same opaque :class:`~nomyo.SecurityError`."""
    package, tag_inside = _decode_either(data, private_key)
    return open_decoded(package, private_key), tag_inside
