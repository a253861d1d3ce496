"""nomyo-js 0.1.0 (the published JavaScript client) against `nomyo serve`.

Packages built exactly as nomyo-js builds them (tests/jsform.py: Web Crypto's
AES-GCM output, the tag appended to the ciphertext, no ``tag`` field;
``security_tier`` in the plaintext; a non-UUID payload id) check the variant
form of PROTOCOL.md on the wire: the answer in the form the request used,
exactly one interpretation per package, either form altered failing the same
way.  nomyo-js itself is not built or run by this repository (its code and
any recipe that builds it stay out of it); runs of the real client against
`nomyo serve` are recorded in the issue notes.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo import _envelope, _hybrid
from tests.jsform import open_like_js, seal_like_js
from tests.servers import (
    MARKER,
    Endpoint,
    FakeUpstream,
    chat,
    post,
)

JS_ID = "openai-compat-1733050000000-k3j4h5g6f7d8"  # nomyo-js's shape: not a UUID

# ------------------------------------------------------------------ the form on the wire


def _flip(body: bytes, field: str) -> bytes:
    package = json.loads(body)
    raw = bytearray(base64.b64decode(package["encrypted_payload"][field]))
    raw[-1] ^= 1
    package["encrypted_payload"][field] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(package).encode()


def test_js_form_answered_in_js_form(server: Endpoint, client_key: rsa.RSAPrivateKey) -> None:
    body = seal_like_js(chat(), server.router_key.public_key())
    response = post(server, client_key, body, **{"X-Payload-ID": JS_ID})
    assert response.status_code == 200, response.text
    package = json.loads(response.content)
    assert set(package["encrypted_payload"]) == {"ciphertext", "nonce"}
    assert isinstance(package["processed_at"], int)
    answer = open_like_js(response.content, client_key)
    assert answer["choices"][0]["message"]["content"] == MARKER
    assert answer["_metadata"] == {"payload_id": JS_ID}
    # our own reader refuses that form: clients keep speaking only the protocol's
    with pytest.raises(_envelope.MalformedPackage, match="'tag'"):
        _envelope.decode(response.content, key_bytes=_hybrid.modulus_bytes(client_key))


def test_separate_tag_answered_with_separate_tag(
    server: Endpoint, client_key: rsa.RSAPrivateKey
) -> None:
    # control for the test above: the same endpoint, our form in, our form out
    response = post(server, client_key)
    assert response.status_code == 200, response.text
    assert set(json.loads(response.content)["encrypted_payload"]) == {"ciphertext", "nonce", "tag"}
    assert _hybrid.open_json(response.content, client_key)["choices"][0]["message"]
    with pytest.raises(InvalidTag):  # and nomyo-js could not read it
        open_like_js(response.content, client_key)


def test_either_form_altered_fails_the_same_way(
    server: Endpoint, client_key: rsa.RSAPrivateKey
) -> None:
    router = server.router_key.public_key()
    bodies = {
        "js": _flip(seal_like_js(chat(), router), "ciphertext"),
        "ours, tag": _flip(_hybrid.seal_json(chat(), router), "tag"),
        "ours, ciphertext": _flip(_hybrid.seal_json(chat(), router), "ciphertext"),
    }
    for name, body in bodies.items():
        response = post(server, client_key, body)
        assert (response.status_code, response.json()) == (
            400,
            {"detail": "invalid encrypted package"},
        ), name


def test_exactly_one_interpretation(server: Endpoint, client_key: rsa.RSAPrivateKey) -> None:
    router = server.router_key.public_key()
    js = json.loads(seal_like_js(chat(), router))
    ours = json.loads(_hybrid.seal_json(chat(), router))
    sealed = base64.b64decode(js["encrypted_payload"]["ciphertext"])
    # ciphertext || tag AND the tag field: the tag field decides, so the
    # ciphertext is taken whole and fails; it is never retried the other way
    both = json.loads(json.dumps(js))
    both["encrypted_payload"]["tag"] = base64.b64encode(sealed[-16:]).decode()
    # our ciphertext without its tag field: its last 16 bytes are not the tag
    untagged = json.loads(json.dumps(ours))
    del untagged["encrypted_payload"]["tag"]
    short = json.loads(json.dumps(js))
    short["encrypted_payload"]["ciphertext"] = base64.b64encode(sealed[:15]).decode()
    for name, package in {"both": both, "untagged": untagged, "short": short}.items():
        response = post(server, client_key, json.dumps(package).encode())
        assert response.status_code == 400, name
        assert response.json() == {"detail": "invalid encrypted package"}, name
    # controls: each form as it was built is accepted
    for package in (js, ours):
        assert post(server, client_key, json.dumps(package).encode()).status_code == 200


def test_decode_either_unit(client_key: rsa.RSAPrivateKey) -> None:
    size = _hybrid.modulus_bytes(client_key)
    public = client_key.public_key()
    inside, tag_inside = _envelope.decode_either(seal_like_js(chat(), public), key_bytes=size)
    assert tag_inside and len(inside.tag) == 16
    apart, tag_inside = _envelope.decode_either(_hybrid.seal_json(chat(), public), key_bytes=size)
    assert not tag_inside and len(apart.tag) == 16
    for body in (seal_like_js(chat(), public), _hybrid.seal_json(chat(), public)):
        plain, _ = _hybrid.open_package_either(body, client_key)
        with plain:
            assert _hybrid.parse(plain) == chat()
    sealed = _hybrid.seal_json(chat(), public, processed_at=7, tag_inside=True)
    assert json.loads(sealed)["processed_at"] == 7
    assert open_like_js(sealed, client_key) == chat()
    # the strict checks of decode() hold for the variant too
    downgrade = json.loads(seal_like_js(chat(), public))
    downgrade["version"] = "0.9"
    with pytest.raises(_envelope.MalformedPackage, match="version"):
        _envelope.decode_either(json.dumps(downgrade), key_bytes=size)


# ------------------------------------------------------------------ tier in the plaintext


def test_tier_from_plaintext_never_forwarded(
    proxied: Endpoint, upstream: FakeUpstream, client_key: rsa.RSAPrivateKey
) -> None:
    router = proxied.router_key.public_key()
    payload_id = f"js-{uuid.uuid4().hex}"
    body = seal_like_js(chat(security_tier="high", temperature=0.25), router)
    response = post(proxied, client_key, body, **{"X-Payload-ID": payload_id})
    assert response.status_code == 200, response.text
    assert open_like_js(response.content, client_key)["choices"][0]["message"]["content"]
    sent, _ = upstream.received[-1]
    assert "security_tier" not in sent
    assert sent["temperature"] == 0.25  # control: the upstream does see the plaintext's fields
    assert f"payload {payload_id} tier high" in proxied.logs_with(payload_id)
    # our own form with the header: same tier, nothing in the plaintext
    payload_id = f"py-{uuid.uuid4().hex}"
    response = post(proxied, client_key, None, **{"X-Payload-ID": payload_id})
    assert response.status_code == 200
    assert f"payload {payload_id} tier -" in proxied.logs_with(payload_id)


def test_tier_in_plaintext_checked(server: Endpoint, client_key: rsa.RSAPrivateKey) -> None:
    router = server.router_key.public_key()
    cases = {
        "unknown": (seal_like_js(chat(security_tier="ultra"), router), None),
        "not a string": (seal_like_js(chat(security_tier=["high"]), router), None),
        "contradicts the header": (seal_like_js(chat(security_tier="high"), router), "standard"),
    }
    for name, (body, header) in cases.items():
        response = post(server, client_key, body, **{"X-Security-Tier": header})
        assert response.status_code == 400, name
        assert response.json() == {"detail": "unknown security tier"}, name
    # controls: the same tier in both places, or in the plaintext only
    for header in ("high", None):
        body = seal_like_js(chat(security_tier="high"), router)
        assert post(server, client_key, body, **{"X-Security-Tier": header}).status_code == 200
