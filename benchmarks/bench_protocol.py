"""Sealing and opening one protocol 1.0 package, each measurement beside a naive baseline.

nomyo's ``_hybrid.seal_json`` / ``open_json`` do more than the cryptography: the
plaintext goes through a SecureBuffer (locked, guarded, zeroed), the transient str and
bytes that ``json`` and UTF-8 encoding make are wiped, and a package is decoded
strictly (exact field names and lengths, canonical base64, no duplicate keys).  The
baseline is what a naive implementation of the same protocol does with the same
primitives: ``json.dumps(...).encode()``, ``AESGCM(key).encrypt``, the AES key wrapped
with RSA-OAEP-SHA256 (the protocol needs it, so it is the same work, not an extra),
base64 and ``json.dumps`` of the package; and for opening ``json.loads``, base64
decoding, RSA-OAEP unwrap, ``AESGCM.decrypt`` and ``json.loads``.  Its packages are
the same format: each side opens the other's (checked after timing).  The baseline is
the same work done the obvious way, not a lower bound: where nomyo's codec is faster
than ``base64`` + ``json`` on megabytes, the baseline is the slower row.

Groups (compare the rows inside one group):

- ``seal-<size>``: ``seal_json`` to a 4096-bit router key, with secure memory and with
  ``secure=False`` (ordinary heap buffers, still zeroed), against the naive seal;
- ``open-<size>``: ``open_json`` with a 4096-bit client key, its ``secure=False``
  equivalent (``open_package(..., secure=False)`` + ``parse``), against the naive open;
- ``rsa-floor``: one RSA-OAEP-SHA256 decryption with a 4096-bit key and one encryption
  to one, the cryptographic floor of every request (a request is one of each per side);
  the 2048-bit pair too, for reading the end-to-end numbers (``bench_client.py`` runs
  its router with a 2048-bit key).

Sizes are those of the serialized chat request: 1 KiB, 64 KiB, 1 MiB, 4 MiB and 8 MiB
(the protocol's cap is 10 MiB).  The prompt is ASCII prose, so ``ensure_ascii`` and
escaping make no difference between the two sides.

Run: ``pytest benchmarks/bench_protocol.py --benchmark-only`` (or ``--benchmark-disable``
to run each body once as a smoke test).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pytest_benchmark.fixture import BenchmarkFixture

from nomyo import _hybrid, _keys
from nomyo._constants import (
    AES_KEY_BYTES,
    KEY_ALGORITHM,
    NONCE_BYTES,
    PACKAGE_ALGORITHM,
    PAYLOAD_ALGORITHM,
    PROTOCOL_VERSION,
    TAG_BYTES,
)

KiB, MiB = 1024, 1024 * 1024
LABELS = {KiB: "1KiB", 64 * KiB: "64KiB", MiB: "1MiB", 4 * MiB: "4MiB", 8 * MiB: "8MiB"}
SIZES = pytest.mark.parametrize("size", list(LABELS), ids=list(LABELS.values()))

#: timed rounds per size (one untimed warm-up round first): a few for the large sizes
ROUNDS = {KiB: 300, 64 * KiB: 150, MiB: 40, 4 * MiB: 12, 8 * MiB: 6}

OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)

_PROSE = "The quick brown fox jumps over the lazy dog, then asks the model a question. "


def chat_request(size: int) -> dict[str, Any]:
    """A chat request whose compact JSON is exactly ``size`` bytes."""
    obj: dict[str, Any] = {"model": "echo", "messages": [{"role": "user", "content": ""}]}
    room = size - len(json.dumps(obj, separators=(",", ":")))
    obj["messages"][0]["content"] = (_PROSE * (room // len(_PROSE) + 1))[:room]
    assert len(json.dumps(obj, separators=(",", ":"))) == size
    return obj


# ---------------------------------------------------------------- keys (once per module)


@pytest.fixture(scope="module")
def router_key() -> rsa.RSAPrivateKey:
    return _keys.generate_private_key(4096)


@pytest.fixture(scope="module")
def client_key() -> rsa.RSAPrivateKey:
    return _keys.generate_private_key(4096)


# ---------------------------------------------------------------- the naive baseline


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def naive_seal(obj: Any, recipient: rsa.RSAPublicKey) -> bytes:
    plaintext = json.dumps(obj, separators=(",", ":")).encode()
    key = AESGCM.generate_key(bit_length=8 * AES_KEY_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext, None)
    package = {
        "version": PROTOCOL_VERSION,
        "algorithm": PACKAGE_ALGORITHM,
        "encrypted_payload": {
            "ciphertext": _b64(sealed[:-TAG_BYTES]),
            "nonce": _b64(nonce),
            "tag": _b64(sealed[-TAG_BYTES:]),
        },
        "encrypted_aes_key": _b64(recipient.encrypt(key, OAEP)),
        "key_algorithm": KEY_ALGORITHM,
        "payload_algorithm": PAYLOAD_ALGORITHM,
    }
    return json.dumps(package, separators=(",", ":")).encode()


def naive_open(data: bytes, private_key: rsa.RSAPrivateKey) -> Any:
    package = json.loads(data)
    payload = package["encrypted_payload"]
    key = private_key.decrypt(base64.b64decode(package["encrypted_aes_key"]), OAEP)
    sealed = base64.b64decode(payload["ciphertext"]) + base64.b64decode(payload["tag"])
    return json.loads(AESGCM(key).decrypt(base64.b64decode(payload["nonce"]), sealed, None))


def open_json_plain(data: bytes, private_key: rsa.RSAPrivateKey) -> Any:
    """``_hybrid.open_json`` with ordinary buffers (it has no ``secure`` parameter)."""
    with _hybrid.open_package(data, private_key, secure=False) as buf:
        return _hybrid.parse(buf)


def _run(benchmark: BenchmarkFixture, kind: str, size: int, body: Callable[[], object]) -> object:
    """Time ``body`` in the group ``<kind>-<size label>``; returns one call's result."""
    benchmark.group = f"{kind}-{LABELS[size]}"
    return benchmark.pedantic(body, rounds=ROUNDS[size], warmup_rounds=1)


# ---------------------------------------------------------------- seal


@SIZES
def test_seal_nomyo(benchmark: BenchmarkFixture, size: int, router_key: rsa.RSAPrivateKey) -> None:
    obj, recipient = chat_request(size), router_key.public_key()
    package = _run(benchmark, "seal", size, lambda: _hybrid.seal_json(obj, recipient))
    assert isinstance(package, bytes)
    assert naive_open(package, router_key) == obj


@SIZES
def test_seal_nomyo_plain_memory(
    benchmark: BenchmarkFixture, size: int, router_key: rsa.RSAPrivateKey
) -> None:
    obj, recipient = chat_request(size), router_key.public_key()
    package = _run(benchmark, "seal", size, lambda: _hybrid.seal_json(obj, recipient, secure=False))
    assert isinstance(package, bytes)
    assert naive_open(package, router_key) == obj


@SIZES
def test_seal_naive(benchmark: BenchmarkFixture, size: int, router_key: rsa.RSAPrivateKey) -> None:
    # baseline: the same package, built with the same primitives and nothing else
    obj, recipient = chat_request(size), router_key.public_key()
    package = _run(benchmark, "seal", size, lambda: naive_seal(obj, recipient))
    assert isinstance(package, bytes)
    assert _hybrid.open_json(package, router_key) == obj


# ---------------------------------------------------------------- open


@SIZES
def test_open_nomyo(benchmark: BenchmarkFixture, size: int, client_key: rsa.RSAPrivateKey) -> None:
    obj = chat_request(size)
    package = _hybrid.seal_json(obj, client_key.public_key())
    assert _run(benchmark, "open", size, lambda: _hybrid.open_json(package, client_key)) == obj


@SIZES
def test_open_nomyo_plain_memory(
    benchmark: BenchmarkFixture, size: int, client_key: rsa.RSAPrivateKey
) -> None:
    obj = chat_request(size)
    package = _hybrid.seal_json(obj, client_key.public_key())
    assert _run(benchmark, "open", size, lambda: open_json_plain(package, client_key)) == obj


@SIZES
def test_open_naive(benchmark: BenchmarkFixture, size: int, client_key: rsa.RSAPrivateKey) -> None:
    # baseline: a package nomyo sealed, opened with the same primitives and no checks
    obj = chat_request(size)
    package = _hybrid.seal_json(obj, client_key.public_key())
    assert _run(benchmark, "open", size, lambda: naive_open(package, client_key)) == obj


# ---------------------------------------------------------------- the RSA floor

RSA_BITS = pytest.mark.parametrize("bits", [4096, 2048], ids=["4096", "2048"])


@pytest.fixture(scope="module")
def rsa_keys(client_key: rsa.RSAPrivateKey) -> dict[int, rsa.RSAPrivateKey]:
    return {4096: client_key, 2048: _keys.generate_private_key(2048)}


@RSA_BITS
def test_rsa_oaep_decrypt(
    benchmark: BenchmarkFixture, bits: int, rsa_keys: dict[int, rsa.RSAPrivateKey]
) -> None:
    # unwrapping one AES key: what opening any package costs at least
    key = rsa_keys[bits]
    aes_key = os.urandom(AES_KEY_BYTES)
    wrapped = key.public_key().encrypt(aes_key, OAEP)
    benchmark.group = "rsa-floor"
    assert benchmark.pedantic(key.decrypt, (wrapped, OAEP), rounds=300, warmup_rounds=1) == aes_key


@RSA_BITS
def test_rsa_oaep_encrypt(
    benchmark: BenchmarkFixture, bits: int, rsa_keys: dict[int, rsa.RSAPrivateKey]
) -> None:
    # wrapping one AES key to a public key: what sealing any package costs at least
    public = rsa_keys[bits].public_key()
    aes_key = os.urandom(AES_KEY_BYTES)
    benchmark.group = "rsa-floor"
    wrapped = benchmark.pedantic(public.encrypt, (aes_key, OAEP), rounds=1000, warmup_rounds=1)
    assert len(wrapped) == bits // 8
