"""`nomyo serve` over real TLS: protocol 1.0 exactly, every malformed request
its status code, no secret in any log line.  Each server is a real
subprocess (``python -m nomyo serve``) on 127.0.0.1 with a trustme certificate.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nomyo
from nomyo import _hybrid, _keys
from nomyo.server import MAX_BODY_BYTES
from tests.servers import (
    API_KEY,
    MARKER,
    UPSTREAM_KEY,
    Endpoint,
    FakeUpstream,
    chat,
    post,
    start_server,
    stop,
)
from tests.test_server_limits import open_upload, wait_dropped

# ------------------------------------------------------------------ the happy path


def test_public_key_is_the_routers_pem(server: Endpoint) -> None:
    with server.client() as http:
        response = http.get("/pki/public_key")
    assert response.status_code == 200
    assert response.text.startswith("-----BEGIN PUBLIC KEY-----")
    fingerprint = _keys.fingerprint(_keys.load_public_key(response.text))
    assert fingerprint == _keys.fingerprint(server.router_key)
    assert f"router key fingerprint: {fingerprint}" in "".join(server.stdout)


def test_round_trip_echo(server: Endpoint, client_key: rsa.RSAPrivateKey) -> None:
    payload_id = str(uuid.uuid4())
    before = int(time.time())
    response = post(server, client_key, **{"X-Payload-ID": payload_id})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert MARKER not in response.text  # encrypted on the wire
    package = json.loads(response.content)
    assert before <= package["processed_at"] <= int(time.time()) + 1
    answer = _hybrid.open_json(response.content, client_key)
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "echo"
    choice = answer["choices"][0]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": MARKER},
        "finish_reason": "stop",
    }
    assert answer["usage"] == {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    assert answer["_metadata"] == {"payload_id": payload_id}
    assert answer["id"].startswith("chatcmpl-") and isinstance(answer["created"], int)


def test_public_key_header_without_final_newline(
    server: Endpoint, client_key: rsa.RSAPrivateKey
) -> None:
    # what the published client sends when it loaded its keys from key_dir
    stripped = urllib.parse.quote(_keys.public_pem(client_key).decode().strip())
    response = post(server, client_key, **{"X-Public-Key": stripped})
    assert response.status_code == 200, response.text
    assert _hybrid.open_json(response.content, client_key)["choices"][0]["message"]["content"]


@pytest.mark.parametrize("tier", ["standard", "high", "maximum"])
def test_each_tier_is_accepted(server: Endpoint, client_key: rsa.RSAPrivateKey, tier: str) -> None:
    response = post(server, client_key, **{"X-Security-Tier": tier})
    assert response.status_code == 200, response.text


def test_echo_tools_n_and_max_tokens(server: Endpoint, client_key: rsa.RSAPrivateKey) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    body = _hybrid.seal_json(
        {
            "model": "any-model-name",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "one two three four"}]},
            ],
            "tools": tools,
            "n": 2,
            "max_tokens": 3,
        },
        server.router_key.public_key(),
    )
    answer = _hybrid.open_json(post(server, client_key, body).content, client_key)
    assert answer["model"] == "any-model-name"
    assert len(answer["choices"]) == 2
    message = answer["choices"][1]["message"]
    assert answer["choices"][1]["finish_reason"] == "tool_calls"
    assert message["content"] is None
    call = message["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"text": "one two three"}
    assert answer["usage"]["prompt_tokens"] == 6


# ------------------------------------------------------------------ refusals


def test_api_key_required(server: Endpoint, client_key: rsa.RSAPrivateKey) -> None:
    for headers in (
        {"Authorization": None},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": "Bearer"},
    ):
        response = post(server, client_key, **headers)
        assert response.status_code == 401, headers
        assert set(response.json()) == {"detail"}


def _package(server: Endpoint, **changes: Any) -> bytes:
    obj = json.loads(_hybrid.seal_json(chat(), server.router_key.public_key()))
    for path, value in changes.items():
        target = obj
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[key]
        if value is None:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return json.dumps(obj).encode()


def _tag_flipped(server: Endpoint) -> bytes:
    obj = json.loads(_hybrid.seal_json(chat(), server.router_key.public_key()))
    tag = bytearray(__import__("base64").b64decode(obj["encrypted_payload"]["tag"]))
    tag[0] ^= 1
    obj["encrypted_payload"]["tag"] = __import__("base64").b64encode(bytes(tag)).decode()
    return json.dumps(obj).encode()


PACKAGE_FAULTS = {
    "not-json": lambda s: b"this is not json",
    "json-array": lambda s: b"[1, 2, 3]",
    "empty": lambda s: b"",
    "missing-field": lambda s: _package(s, encrypted_aes_key=None),
    "ill-typed-field": lambda s: _package(s, encrypted_payload__nonce=12),
    "bad-base64": lambda s: _package(s, encrypted_payload__ciphertext="!!!not base64!!!"),
    "wrong-version": lambda s: _package(s, version="0.9"),
    "wrong-algorithm": lambda s: _package(s, algorithm="hybrid-aes128-rsa2048"),
    "tag-failure": _tag_flipped,
    "sealed-to-another-key": lambda s: _hybrid.seal_json(
        chat(), _keys.generate_private_key(4096).public_key()
    ),
}


@pytest.mark.parametrize("fault", sorted(PACKAGE_FAULTS))
def test_malformed_package_is_400_with_one_detail(
    server: Endpoint, client_key: rsa.RSAPrivateKey, fault: str
) -> None:
    response = post(server, client_key, PACKAGE_FAULTS[fault](server))
    assert response.status_code == 400
    assert response.json() == {"detail": "invalid encrypted package"}  # the same for every fault


@pytest.mark.parametrize(
    "plaintext",
    [
        [1, 2],
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": "echo"},
        {"model": "echo", "messages": []},
        {"model": "echo", "messages": "hello"},
        {"model": "echo", "messages": [{"content": "no role"}]},
        {"model": 7, "messages": [{"role": "user", "content": "x"}]},
        {"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream": True},
    ],
)
def test_decrypted_request_must_be_a_chat_request(
    server: Endpoint, client_key: rsa.RSAPrivateKey, plaintext: Any
) -> None:
    response = post(
        server, client_key, _hybrid.seal_json(plaintext, server.router_key.public_key())
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "invalid chat completion request"}


def test_bad_public_key_header(server: Endpoint, client_key: rsa.RSAPrivateKey) -> None:
    weak = rsa.generate_private_key(65537, 1024).public_key()
    not_rsa = ec.generate_private_key(ec.SECP256R1()).public_key()
    for value in (
        None,
        "garbage",
        urllib.parse.quote(weak.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)),
        urllib.parse.quote(not_rsa.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)),
        "%ff%fe",
    ):
        response = post(server, client_key, **{"X-Public-Key": value})
        assert response.status_code == 400, value
        assert response.json() == {"detail": "missing or invalid X-Public-Key"}


def test_unknown_tier_and_bad_payload_id(server: Endpoint, client_key: rsa.RSAPrivateKey) -> None:
    for tier in ("low", "MAXIMUM", ""):
        response = post(server, client_key, **{"X-Security-Tier": tier})
        assert response.status_code == 400 and response.json()["detail"] == "unknown security tier"
    for payload_id in (None, "", "x" * 129):
        response = post(server, client_key, **{"X-Payload-ID": payload_id})
        assert response.status_code == 400 and "X-Payload-ID" in response.json()["detail"]


def test_too_large(server: Endpoint, client_key: rsa.RSAPrivateKey) -> None:
    # a body larger than any 10 MiB request's package, refused before it is
    # read in full: the headers declare it and 1 KiB of it is sent, and the
    # answer comes without the rest. (Sending all of it through httpx once
    # hung 30 s on CI: see the closing note of this change.)
    upload = open_upload(server, client_key, MAX_BODY_BYTES + 1, 1024, f"Bearer {API_KEY}")
    try:
        wait_dropped(upload, time.monotonic() + 20)
    finally:
        upload.sock.close()
    assert upload.dropped_at is not None, "the connection stayed open"
    assert upload.answer.startswith(b"HTTP/1.1 413 "), upload.answer[:200]
    assert upload.answer.endswith(b'{"detail":"request too large"}'), upload.answer[-200:]
    # a package that fits, but holds more than 10 MiB of plaintext
    big = chat("y" * (10 * 1024 * 1024))
    response = post(server, client_key, _hybrid.seal_json(big, server.router_key.public_key()))
    assert response.status_code == 413
    assert response.json() == {"detail": "request too large"}


def test_unknown_paths_and_methods_answer_json(server: Endpoint) -> None:
    with server.client() as http:
        assert http.get("/nowhere").json() == {"detail": "Not Found"}
        response = http.get("/v1/chat/secure_completion")
        assert response.status_code == 405 and set(response.json()) == {"detail"}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=st.binary(max_size=2048) | st.text(max_size=512).map(str.encode))
def test_hostile_bodies_never_cause_a_500(
    server: Endpoint, client_key: rsa.RSAPrivateKey, body: bytes
) -> None:
    response = post(server, client_key, body)
    assert response.status_code == 400
    assert response.json() == {"detail": "invalid encrypted package"}


def test_no_secret_in_any_log_line(server: Endpoint, client_key: rsa.RSAPrivateKey) -> None:
    payload_id = str(uuid.uuid4())
    response = post(server, client_key, **{"X-Payload-ID": payload_id})
    assert response.status_code == 200
    assert (
        MARKER
        in _hybrid.open_json(response.content, client_key)["choices"][0]["message"]["content"]
    )
    post(server, client_key, **{"Authorization": "Bearer " + "wrong-" + API_KEY})
    logs = server.logs_with(payload_id, "refused: 401")
    assert payload_id in logs  # the control: this request was logged
    assert "refused: 401" in logs  # and so was the one with the wrong key
    assert "POST /v1/chat/secure_completion" in logs
    assert MARKER not in logs
    assert API_KEY not in logs
    assert "PRIVATE KEY" not in logs and "router key password" not in logs


# ------------------------------------------------------------ upstream (fixtures in conftest)


def test_upstream_gets_the_decrypted_request(
    proxied: Endpoint, upstream: FakeUpstream, client_key: rsa.RSAPrivateKey
) -> None:
    payload_id = str(uuid.uuid4())
    body = _hybrid.seal_json(chat(temperature=0.5), proxied.router_key.public_key())
    response = post(proxied, client_key, body, **{"X-Payload-ID": payload_id})
    assert response.status_code == 200, response.text
    answer = _hybrid.open_json(response.content, client_key)
    assert answer["choices"][0]["message"]["content"] == "from upstream"
    assert answer["_metadata"] == {"payload_id": payload_id}
    sent, authorization = upstream.received[-1]
    assert sent == chat(temperature=0.5, stream=False)
    assert authorization == f"Bearer {UPSTREAM_KEY}"
    assert UPSTREAM_KEY not in proxied.logs() and MARKER not in proxied.logs()


@pytest.mark.parametrize(
    ("status", "error", "expected", "message"),
    [
        (404, {"error": {"message": "model 'nope' not found"}}, 404, ": model 'nope' not found"),
        (400, {"error": "too many tokens"}, 400, ": too many tokens"),
        (422, {"detail": "bad 'n'"}, 422, ": bad 'n'"),
        (404, "not json", 404, ""),
        # an error quoting the request is not passed on in the clear
        (400, {"error": f"cannot parse {MARKER[:20]}"}, 400, ""),
        # the upstream refusing this server's own key is not the client's fault
        (401, {"error": "bad key"}, 502, ""),
        # the control: a failing upstream is retried (so the count below sees retries)
        (500, {"error": "boom"}, 502, ""),
    ],
)
def test_an_upstream_4xx_is_passed_on_and_not_retried(
    proxied: Endpoint, upstream: FakeUpstream, status: int, error: Any, expected: int, message: str
) -> None:
    upstream.status, upstream.error = status, error
    client = nomyo.SyncSecureChatCompletion(proxied.url, verify=str(proxied.ca), max_retries=2)
    before = len(upstream.received)
    try:
        with pytest.raises(nomyo.APIError) as caught:
            client.create("nope", [{"role": "user", "content": MARKER}])
    finally:
        upstream.status, upstream.error = 200, {"error": "boom"}
        client.close()
    assert caught.value.status_code == expected
    assert caught.value.message == f"upstream answered {status}{message}"
    tries = len(upstream.received) - before
    assert tries == (3 if expected >= 500 else 1)
    assert MARKER not in proxied.logs()


def test_upstream_failures_are_502_503(
    tls: dict[str, Path],
    router_key_file: tuple[Path, rsa.RSAPrivateKey],
    tmp_path_factory: pytest.TempPathFactory,
    client_key: rsa.RSAPrivateKey,
) -> None:
    failing = FakeUpstream(status=500)
    down = FakeUpstream()
    down_url = down.url
    down.close()  # nothing listens there any more
    try:
        for url, status in ((failing.url, 502), (down_url, 503)):
            endpoint = start_server(
                tls, router_key_file, tmp_path_factory.mktemp("up"), "--upstream", url
            )
            try:
                body = _hybrid.seal_json(chat(), endpoint.router_key.public_key())
                response = post(endpoint, client_key, body)
                assert response.status_code == status, response.text
                assert set(response.json()) == {"detail"}
            finally:
                stop(endpoint)
    finally:
        failing.close()


# every character str.split() splits on, a few that it does not, and one non-ASCII space
_WORDY = st.text(alphabet=" \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0ab.\x00\x7f", max_size=9000)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(head=_WORDY, body=st.sampled_from(["", "word ", " a\tb\n", "x"]), times=st.integers(0, 2000))
def test_echo_word_count_is_str_split(head: str, body: str, times: int) -> None:
    from nomyo.server import _words

    text = head + body * times  # long enough, often, for the fast path
    assert _words(text) == len(text.split())
