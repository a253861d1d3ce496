"""Packages built exactly as nomyo-js 0.1.0 builds and reads them (Web Crypto's
form: the AES-GCM tag appended to the ciphertext, no ``tag`` field), in plain
Python with ``cryptography``: the protocol-form tests run without Node.

Written from nomyo-js's src/core/SecureCompletionClient.ts (encryptPayload,
performEncryption, decryptResponse): key order and separators of
``JSON.stringify``, no ``processed_at``; answers are read by decrypting
``ciphertext`` alone, whatever else the package holds.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def seal_like_js(obj: Any, router: rsa.RSAPublicKey) -> bytes:
    """A request package as nomyo-js sends it."""
    key, nonce = os.urandom(32), os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, json.dumps(obj, separators=(",", ":")).encode(), None)
    package = {
        "version": "1.0",
        "algorithm": "hybrid-aes256-rsa4096",
        "encrypted_payload": {"ciphertext": _b64(sealed), "nonce": _b64(nonce)},
        "encrypted_aes_key": _b64(router.encrypt(key, _OAEP)),
        "key_algorithm": "RSA-OAEP-SHA256",
        "payload_algorithm": "AES-256-GCM",
    }
    return json.dumps(package, separators=(",", ":")).encode()


def open_like_js(body: bytes, private_key: rsa.RSAPrivateKey) -> Any:
    """An answer as nomyo-js reads it: ciphertext (with the tag inside) and
    nonce only.  Raises ``cryptography.exceptions.InvalidTag`` where
    nomyo-js raises its SecurityError."""
    package = json.loads(body)
    payload = package["encrypted_payload"]
    key = private_key.decrypt(base64.b64decode(package["encrypted_aes_key"]), _OAEP)
    plain = AESGCM(key).decrypt(
        base64.b64decode(payload["nonce"]), base64.b64decode(payload["ciphertext"]), None
    )
    return json.loads(plain)
