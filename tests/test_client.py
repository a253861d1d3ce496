"""The client against a real `nomyo serve` over TLS: the seed API, OpenAI
shapes, trust (verify, pinning), key files and logging, sync and async twins.
Misbehaving routers are in test_client_faults.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import ssl
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nomyo
from nomyo import _envelope, _hybrid, _keys
from tests.servers import API_KEY, Endpoint

Make = Callable[..., Any]


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": text}]


def run_async(server: Endpoint, text: str, **options: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with nomyo.SecureChatCompletion(server.url, **options) as client:
            return await client.create("echo", messages(text), temperature=0.2)

    return asyncio.run(go())


def run_sync(server: Endpoint, text: str, **options: Any) -> dict[str, Any]:
    with nomyo.SyncSecureChatCompletion(server.url, **options) as client:
        return client.create("echo", messages(text), temperature=0.2)


TWINS = pytest.mark.parametrize("run", [run_async, run_sync], ids=["async", "sync"])


def content(answer: dict[str, Any]) -> str:
    return answer["choices"][0]["message"]["content"]  # type: ignore[no-any-return]


@TWINS
def test_round_trip(server: Endpoint, run: Make) -> None:
    text = "round trip " + uuid.uuid4().hex
    answer = run(server, text, api_key=API_KEY, verify=str(server.ca))
    assert content(answer) == text
    assert answer["object"] == "chat.completion" and answer["model"] == "echo"
    metadata = answer["_metadata"]
    assert set(metadata) == {"payload_id", "processed_at", "is_encrypted", "encryption_algorithm"}
    assert uuid.UUID(metadata["payload_id"]).version == 4
    assert metadata["is_encrypted"] is True
    assert metadata["encryption_algorithm"] == "hybrid-aes256-rsa4096"
    assert isinstance(metadata["processed_at"], int)


def test_openai_shapes_and_aliases(server: Endpoint) -> None:
    async def go() -> list[dict[str, Any]]:
        client = nomyo.SecureChatCompletion(server.url, api_key=API_KEY, verify=str(server.ca))
        try:
            return [
                await client.chat.completions.create(model="echo", messages=messages("a1")),
                await client.acreate(model="echo", messages=messages("a2")),
                await client.create(model="echo", messages=messages("a3"), security_tier="high"),
            ]
        finally:
            await client.aclose()

    assert [content(a) for a in asyncio.run(go())] == ["a1", "a2", "a3"]
    with nomyo.SyncSecureChatCompletion(server.url, api_key=API_KEY, verify=str(server.ca)) as c:
        assert content(c.chat.completions.create(model="echo", messages=messages("s1"))) == "s1"


@TWINS
def test_verify_takes_a_context_a_path_or_the_environment(
    server: Endpoint, run: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = ssl.create_default_context(cafile=str(server.ca))
    assert content(run(server, "ctx", api_key=API_KEY, verify=context)) == "ctx"
    assert content(run(server, "path", api_key=API_KEY, verify=str(server.ca))) == "path"
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    assert content(run(server, "env", api_key=API_KEY)) == "env"


@TWINS
def test_an_untrusted_certificate_is_a_connection_error(
    server: Endpoint, run: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with pytest.raises(nomyo.APIConnectionError, match="certificate verification failed"):
        run(server, "x", api_key=API_KEY, max_retries=0)


@TWINS
def test_pinned_router_key(server: Endpoint, run: Make) -> None:
    pin = _keys.fingerprint(server.router_key)
    answer = run(
        server, "pinned", api_key=API_KEY, verify=str(server.ca), server_key_fingerprint=pin
    )
    assert content(answer) == "pinned"
    with pytest.raises(nomyo.SecurityError, match="does not match"):
        run(
            server,
            "mismatch",
            api_key=API_KEY,
            verify=str(server.ca),
            server_key_fingerprint="sha256:" + "ab" * 32,
        )


@TWINS
def test_api_key_errors(server: Endpoint, run: Make) -> None:
    with pytest.raises(nomyo.AuthenticationError) as refused:
        run(server, "x", api_key="not-" + API_KEY, verify=str(server.ca))
    assert refused.value.status_code == 401
    assert API_KEY not in str(refused.value) and "not-" not in str(refused.value)
    uuid.UUID(refused.value.payload_id)  # the request it belongs to


# ------------------------------------------------------------------ key files


def test_key_dir_creates_once_then_loads(server: Endpoint, tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    options = dict(api_key=API_KEY, verify=str(server.ca), key_dir=folder, key_password="pw 1")
    assert content(run_sync(server, "made", **options)) == "made"
    private, public = folder / "private_key.pem", folder / "public_key.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    before = (private.read_bytes(), public.read_bytes())
    first = nomyo.SyncSecureChatCompletion(server.url, **options)
    second = nomyo.SyncSecureChatCompletion(server.url, **options)
    assert first._core.keys.get().header == second._core.keys.get().header  # the same pair
    assert content(run_async(server, "loaded", **options)) == "loaded"
    assert (private.read_bytes(), public.read_bytes()) == before  # never rewritten


@pytest.mark.parametrize(
    "damage",
    ["wrong-password", "corrupt", "group-readable", "public-mismatch", "public-without-private"],
)
def test_key_dir_that_does_not_load_is_never_regenerated(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "keys"
    key = _keys.generate_private_key(2048)
    _keys.save_private_key(key, folder / "private_key.pem", password="pw-RIGHT-7f3")
    _keys.save_public_key(key, folder / "public_key.pem")
    password = "pw-RIGHT-7f3"
    if damage == "wrong-password":
        password = "pw-WRONG-9k2"
    elif damage == "corrupt":
        (folder / "private_key.pem").write_bytes(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nxx\n")
    elif damage == "group-readable":
        os.chmod(folder / "private_key.pem", 0o640)
    elif damage == "public-mismatch":
        (folder / "public_key.pem").unlink()
        _keys.save_public_key(_keys.generate_private_key(2048), folder / "public_key.pem")
    else:
        (folder / "private_key.pem").unlink()
    snapshot = {p.name: p.read_bytes() for p in folder.iterdir()}
    for cls in (nomyo.SyncSecureChatCompletion, nomyo.SecureChatCompletion):
        with pytest.raises(ValueError, match="pem") as refused:
            cls("https://127.0.0.1:9", key_dir=folder, key_password=password)
        assert "RIGHT" not in str(refused.value) and "WRONG" not in str(refused.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == snapshot


# ------------------------------------------------------------------ the published API


def test_secure_completion_client_methods(server: Endpoint, tmp_path: Path) -> None:
    async def go() -> None:
        client = nomyo.SecureCompletionClient(server.url)
        # the published signature has no verify= or api_key=
        client._core.config = dataclasses.replace(
            client._core.config, verify=str(server.ca), api_key=API_KEY
        )
        client.generate_keys(save_to_file=True, key_dir=str(tmp_path / "k"), password="pw")
        assert (tmp_path / "k" / "private_key.pem").exists()
        with pytest.raises(FileExistsError):
            client.generate_keys(save_to_file=True, key_dir=str(tmp_path / "k"))
        client.load_keys(str(tmp_path / "k" / "private_key.pem"), password="pw")

        pem = await client.fetch_server_public_key()
        assert _keys.fingerprint(_keys.load_public_key(pem)) == _keys.fingerprint(server.router_key)

        package = await client.encrypt_payload({"model": "echo", "messages": messages("enc")})
        assert _hybrid.open_json(package, server.router_key)["messages"][1]["content"] == "enc"

        payload_id = str(uuid.uuid4())
        answer = await client.send_secure_request(
            {"model": "echo", "messages": messages("sent")}, payload_id, security_tier="standard"
        )
        assert content(answer) == "sent" and answer["_metadata"]["payload_id"] == payload_id

        own = client._core.keys.get().private_key.public_key()
        sealed = _hybrid.seal_json({"choices": [], "_metadata": {"payload_id": "p1"}}, own)
        opened = await client.decrypt_response(sealed, "p1")
        assert opened["_metadata"]["payload_id"] == "p1" and opened["_metadata"]["is_encrypted"]
        with pytest.raises(nomyo.SecurityError, match="another request"):
            await client.decrypt_response(
                _hybrid.seal_json({"_metadata": {"payload_id": "p1"}}, own), "p2"
            )
        with pytest.raises(ValueError, match="no such file"):
            client.load_keys(str(tmp_path / "k" / "private_key.pem"), str(tmp_path / "none.pem"))
        await client.aclose()

    asyncio.run(go())


def test_published_style_code_runs_unchanged(
    server: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README example of the published client, verbatim but for the URL."""
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca))
    from nomyo import SecureChatCompletion

    client = SecureChatCompletion(base_url=server.url, api_key=API_KEY)

    async def main() -> dict[str, Any]:
        return await client.create(
            model="Qwen/Qwen3-0.6B",
            messages=[{"role": "user", "content": "Hello, how are you?"}],
            temperature=0.7,
        )

    assert content(asyncio.run(main())) == "Hello, how are you?"
    assert content(asyncio.run(main())) == "Hello, how are you?"  # a second event loop


def test_environment_variables(server: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMYO_BASE_URL", server.url)
    monkeypatch.setenv("NOMYO_API_KEY", API_KEY)
    with nomyo.SyncSecureChatCompletion(verify=str(server.ca)) as client:
        assert client.base_url == server.url
        assert content(client.create("echo", messages("env"))) == "env"


# ------------------------------------------------------------------ logging


def test_silent_by_default_and_never_logs_secrets(
    server: Endpoint, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    text = "log probe " + uuid.uuid4().hex
    run_sync(server, text, api_key=API_KEY, verify=str(server.ca))
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # nothing printed without logging configured
    with caplog.at_level(logging.DEBUG):
        answer = run_sync(server, text, api_key=API_KEY, verify=str(server.ca))
    assert content(answer) == text
    logged = caplog.text  # formatted when logged, before any wipe of the objects
    assert "/v1/chat/secure_completion" in logged  # the control: requests were logged
    assert text not in logged and API_KEY not in logged and "PRIVATE" not in logged


def test_repr_shows_no_secrets(server: Endpoint) -> None:
    client = nomyo.SyncSecureChatCompletion(server.url, api_key=API_KEY, verify=str(server.ca))
    shown = repr(client) + repr(client._core) + repr(client._core.keys.get())
    assert API_KEY not in shown and "PRIVATE" not in shown and server.url in shown
    client.close()


def test_the_package_on_the_wire_is_protocol_1_0(server: Endpoint) -> None:
    client = nomyo.SecureCompletionClient(server.url, verify=str(server.ca))
    client.generate_keys()

    async def go() -> bytes:
        try:
            return await client.encrypt_payload({"model": "m", "messages": messages("w")})
        finally:
            await client.aclose()

    raw = asyncio.run(go())
    assert set(json.loads(raw)) == {
        "version",
        "algorithm",
        "encrypted_payload",
        "encrypted_aes_key",
        "key_algorithm",
        "payload_algorithm",
    }
    assert _envelope.decode(raw, key_bytes=512).processed_at is None
