"""Code written for the published nomyo 0.2.9 runs on nomyo: its import paths,
its secure-memory functions, its exception shape, the client attributes it
reads and sets, its positional constructor; and README-shaped programs (our
own copies of the published README's examples' shape) against `nomyo serve`.
What we refuse on purpose is in docs/migrating.md and checked here too.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import nomyo
from nomyo import _keys
from nomyo.memory import protection
from tests.faults import FaultRouter, attested, ok
from tests.servers import API_KEY, MARKER, Endpoint

# ------------------------------------------------------------------ import paths

V029_NAMES = (
    "SecureCompletionClient SecurityError APIError AuthenticationError InvalidRequestError "
    "APIConnectionError ForbiddenError RateLimitError ServerError ServiceUnavailableError"
).split()


def test_published_import_paths() -> None:
    from nomyo.SecureCompletionClient import SecureCompletionClient

    from nomyo import nomyo as chat_module

    assert SecureCompletionClient is nomyo.SecureCompletionClient
    assert isinstance(nomyo.SecureCompletionClient, type)  # the attribute stays the class
    module = sys.modules["nomyo.SecureCompletionClient"]
    for name in V029_NAMES:
        assert getattr(module, name) is getattr(nomyo, name), name
    assert chat_module.SecureChatCompletion is nomyo.SecureChatCompletion
    from nomyo.SecureMemory import (
        disable_secure_memory,
        enable_secure_memory,
        get_memory_protection_info,
        secure_bytearray,
        secure_bytes,
    )

    for function in (
        disable_secure_memory,
        enable_secure_memory,
        get_memory_protection_info,
        secure_bytearray,
        secure_bytes,
    ):
        assert getattr(nomyo, function.__name__) is function


@pytest.mark.parametrize(
    "code",
    [
        # the published README's import, first thing in a fresh interpreter
        "from nomyo.SecureCompletionClient import SecureCompletionClient, SecurityError\n"
        "import nomyo\n"
        "assert nomyo.SecureCompletionClient is SecureCompletionClient\n",
        # the dotted import, then the module by name and the attribute
        "import importlib, nomyo.SecureCompletionClient\n"
        "module = importlib.import_module('nomyo.SecureCompletionClient')\n"
        "assert module.SecureCompletionClient is nomyo.SecureCompletionClient\n"
        "assert isinstance(nomyo.SecureCompletionClient, type)\n",
        "import nomyo.nomyo, nomyo.SecureMemory\n"
        "assert nomyo.nomyo.SecureChatCompletion is nomyo.SecureChatCompletion\n"
        "assert nomyo.SecureMemory.secure_bytearray is nomyo.secure_bytearray\n",
    ],
)
def test_import_paths_in_a_fresh_interpreter(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # control: a name 0.2.9 never had is not importable from there
    bad = subprocess.run(
        [sys.executable, "-c", "from nomyo.SecureCompletionClient import NoSuchName"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "NoSuchName" in bad.stderr


# ------------------------------------------------------------------ secure memory


def test_secure_bytearray_copies_into_secure_memory_and_zeroes() -> None:
    secret = bytearray(b"the secret " + MARKER.encode())
    expected = bytes(secret)
    with nomyo.secure_bytearray(secret) as buf:
        assert bytes(buf.data) == expected and len(buf) == buf.size == len(expected)
        assert secret == bytearray(len(expected))  # the caller's copy zeroed, as in 0.2.9
        assert buf.lock() is protection().mlock
        assert buf.unlock() is True
        assert MARKER not in repr(buf)
        view = buf.data
    assert bytes(view) == bytes(len(expected))  # zeroed on exit
    with nomyo.secure_bytearray(b"bytes stay") as buf:  # bytes cannot be zeroed: copied only
        buf.zero()
        assert bytes(buf) == bytes(10)


def test_secure_bytearray_is_in_the_secure_buffer_when_enabled() -> None:
    with nomyo.secure_bytearray(b"x" * 64) as buf:
        assert isinstance(buf._buffer, nomyo.SecureBuffer)
        assert buf.address == buf._buffer.address != 0


def test_disable_and_enable_secure_memory() -> None:
    info = nomyo.get_memory_protection_info()
    assert set(info) == {
        "enabled",
        "platform",
        "protection_level",
        "has_memory_locking",
        "has_secure_zeroing",
        "supports_full_protection",
        "page_size",
    }
    assert info["enabled"] is True and info["has_memory_locking"] is protection().mlock
    assert info["protection_level"] == ("full" if protection().mlock else "zeroing_only")
    nomyo.disable_secure_memory()
    try:
        off = nomyo.get_memory_protection_info()
        assert (off["enabled"], off["protection_level"], off["has_memory_locking"]) == (
            False,
            "none",
            False,
        )
        with nomyo.secure_bytearray(b"plain") as buf:
            assert not isinstance(buf._buffer, nomyo.SecureBuffer) and buf.lock() is False
            view = buf.data
        assert bytes(view) == bytes(5)  # still zeroed
    finally:
        nomyo.enable_secure_memory()
    assert nomyo.get_memory_protection_info() == info


def test_secure_bytes_is_deprecated_but_works() -> None:
    with (
        pytest.warns(DeprecationWarning, match="secure_bytearray"),
        nomyo.secure_bytes(b"old") as buf,
    ):
        assert bytes(buf.data) == b"old"


# ------------------------------------------------------------------ exceptions


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (nomyo.APIError, None),
        (nomyo.InvalidRequestError, 400),
        (nomyo.AuthenticationError, 401),
        (nomyo.ForbiddenError, 403),
        (nomyo.RateLimitError, 429),
        (nomyo.ServerError, 500),
        (nomyo.ServiceUnavailableError, 503),
        (nomyo.APIConnectionError, None),
    ],
)
def test_exceptions_as_in_0_2_9(cls: type[nomyo.APIError], status: int | None) -> None:
    error = cls("the router says no")
    assert str(error) == "the router says no" == error.message
    assert error.status_code == status
    assert cls("m", 418).status_code == 418  # an explicit status wins
    positional = cls("m", 502, {"detail": "m"})  # 0.2.9's (message, status_code, error_details)
    assert (positional.status_code, positional.error_details) == (502, {"detail": "m"})


# ------------------------------------------------------------------ client attributes


def test_six_positional_arguments(tmp_path: Path) -> None:
    client = nomyo.SecureChatCompletion(
        "https://router.invalid", False, "key-1", False, str(tmp_path / "keys"), 5
    )
    assert client.base_url == "https://router.invalid"
    assert client.api_key == "key-1"
    assert client.client.max_retries == 5
    assert client.client.allow_http is False
    assert client.client._core.config.secure_memory is False
    client.client._core.keys.get()
    assert (tmp_path / "keys" / "private_key.pem").exists()  # key_dir, the fifth
    with pytest.raises(TypeError):
        nomyo.SecureChatCompletion("https://router.invalid", False, None, True, None, 2, 60)


def test_settable_attributes_are_checked() -> None:
    client = nomyo.SecureCompletionClient("https://router.invalid")
    with pytest.raises(nomyo.SecurityError, match="plain HTTP"):
        client.router_url = "http://127.0.0.1:1"
    assert client.router_url == "https://router.invalid"  # unchanged after a refusal
    client.allow_http = True
    with pytest.warns(UserWarning, match="plain HTTP"):
        client.router_url = "http://127.0.0.1:1/"
    assert client.router_url == "http://127.0.0.1:1"
    with pytest.raises(nomyo.SecurityError):  # not while the router is http://
        client.allow_http = False
    client.max_retries = 0
    assert client.max_retries == 0
    with pytest.raises(ValueError, match="max_retries"):
        client.max_retries = -1
    with pytest.raises(nomyo.SecurityError, match="2048"):
        client.key_size = 1024
    assert client.key_size == 4096
    chat = nomyo.SecureChatCompletion("https://router.invalid")
    with pytest.raises(TypeError, match="api_key"):
        chat.api_key = 42  # type: ignore[assignment]


def test_key_size_and_public_key_pem(tmp_path: Path) -> None:
    client = nomyo.SecureCompletionClient("https://router.invalid")
    assert client.public_key_pem is None  # no key pair yet, as in 0.2.9
    client.key_size = 2048

    async def main() -> None:  # awaitable, as the published README writes it
        await client.generate_keys(save_to_file=True, key_dir=str(tmp_path))

    asyncio.run(main())
    pem = client.public_key_pem
    assert pem is not None and pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert _keys.load_public_key(pem).key_size == 2048
    assert (tmp_path / "public_key.pem").read_text() == pem
    other = nomyo.SecureCompletionClient("https://router.invalid")
    other.load_keys(str(tmp_path / "private_key.pem"))  # and callable without await
    assert other.public_key_pem == pem


def test_setters_take_effect(server: Endpoint, tmp_path: Path) -> None:
    async def main() -> None:
        chat = nomyo.SecureChatCompletion(
            "https://127.0.0.1:9", api_key="wrong", verify=str(server.ca), max_retries=0
        )
        with pytest.raises(nomyo.APIConnectionError):  # nothing listens there
            await chat.create(model="echo", messages=[{"role": "user", "content": "x"}])
        chat.client.router_url = server.url
        with pytest.raises(nomyo.AuthenticationError) as refused:
            await chat.create(model="echo", messages=[{"role": "user", "content": "x"}])
        assert refused.value.status_code == 401 and str(refused.value) == "invalid API key"
        chat.api_key = API_KEY
        answer = await chat.create(model="echo", messages=[{"role": "user", "content": MARKER}])
        assert answer["choices"][0]["message"]["content"] == MARKER
        assert chat.base_url == server.url
        await chat.aclose()

    asyncio.run(main())


def test_setters_keep_the_key_pair_replay_memory_and_policy(
    router: FaultRouter, tls: dict[str, Path], tmp_path: Path
) -> None:
    seen: list[Any] = []
    client = nomyo.SecureCompletionClient(
        router.url,
        verify=str(tls["ca"]),
        max_retries=0,
        attestation_verifier=lambda attestation, payload_id: seen.append(attestation),
    )
    client.key_size = 2048
    client.generate_keys(save_to_file=True, key_dir=str(tmp_path))
    pem = client.public_key_pem
    request = {"model": "echo", "messages": [{"role": "user", "content": "x"}]}

    async def main() -> None:
        router.script = [ok()]
        await client.send_secure_request(request, "id-1")
        package = router.last_answer
        assert package is not None and router.key_fetches == 1
        client.max_retries = 3  # each a new Config ...
        client.allow_http = True
        client.router_url = router.url + "/"  # the same router, written otherwise
        assert (client.max_retries, client.allow_http) == (3, True)
        assert client.public_key_pem == pem  # ... over the same key pair
        with pytest.raises(nomyo.SecurityError, match="replayed"):  # and replay memory
            await client.decrypt_response(package, "id-1")
        other = nomyo.SecureCompletionClient(router.url)  # control: fresh memory opens it
        other.load_keys(tmp_path / "private_key.pem")
        assert (await other.decrypt_response(package, "id-1"))["_metadata"]["payload_id"] == "id-1"
        router.script = [attested("evidence")]
        await client.send_secure_request(request, "id-2")
        assert seen == ["evidence"]  # the attestation policy stayed
        assert router.key_fetches == 1  # the router key stayed cached for the same router
        assert router.posts[1].headers["x-public-key"] == router.posts[0].headers["x-public-key"]
        client.router_url = router.url.replace("127.0.0.1", "localhost")  # another router
        await client.send_secure_request(request, "id-3")
        assert router.key_fetches == 2  # its key fetched afresh

    asyncio.run(main())


# ------------------------------------------------------------------ README-shaped programs

PROGRAMS: dict[str, str] = {
    "basic chat": """
        import asyncio
        from nomyo import SecureChatCompletion

        async def main():
            client = SecureChatCompletion(base_url=URL, api_key=KEY)
            response = await client.create(
                model="echo",
                messages=[
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "MARKER"},
                ],
                security_tier="standard",
                temperature=0.7,
            )
            print(response["choices"][0]["message"]["content"])
            print(response["_metadata"]["is_encrypted"])

        asyncio.run(main())
    """,
    "tools": """
        import asyncio, json
        from nomyo import SecureChatCompletion

        async def main():
            client = SecureChatCompletion(base_url=URL, api_key=KEY)
            response = await client.create(
                model="echo",
                messages=[{"role": "user", "content": "MARKER"}],
                tools=[{"type": "function", "function": {
                    "name": "get_weather", "description": "weather",
                    "parameters": {"type": "object",
                                   "properties": {"location": {"type": "string"}}}}}],
                security_tier="high",
            )
            call = response["choices"][0]["message"]["tool_calls"][0]
            print(json.loads(call["function"]["arguments"])["text"])

        asyncio.run(main())
    """,
    "acreate": """
        import asyncio
        from nomyo import SecureChatCompletion

        async def main():
            client = SecureChatCompletion(base_url=URL, api_key=KEY)
            response = await client.acreate(
                model="echo", messages=[{"role": "user", "content": "MARKER"}], temperature=0.7
            )
            print(response["choices"][0]["message"]["content"])

        asyncio.run(main())
    """,
    "api key per call": """
        import asyncio
        from nomyo import SecureChatCompletion

        async def main():
            client = SecureChatCompletion(base_url=URL, api_key="not-the-key")
            response = await client.create(
                model="echo", messages=[{"role": "user", "content": "MARKER"}], api_key=KEY
            )
            print(response["choices"][0]["message"]["content"])

        asyncio.run(main())
    """,
    "secure memory off and on": """
        import asyncio
        from nomyo import SecureChatCompletion

        async def main():
            for flag in (True, False):
                client = SecureChatCompletion(base_url=URL, api_key=KEY, secure_memory=flag)
                response = await client.create(
                    model="echo", messages=[{"role": "user", "content": "MARKER"}]
                )
                print(response["choices"][0]["message"]["content"])

        asyncio.run(main())
    """,
    "keys by hand": """
        import asyncio
        from nomyo.SecureCompletionClient import SecureCompletionClient
        from nomyo import SecureChatCompletion

        async def main():
            client = SecureCompletionClient()
            await client.generate_keys(save_to_file=True, password="a password")
            other = SecureCompletionClient()
            await other.load_keys(
                "client_keys/private_key.pem", "client_keys/public_key.pem", password="a password"
            )
            assert other.public_key_pem == client.public_key_pem
            chat = SecureChatCompletion(base_url=URL, api_key=KEY)
            chat.client.load_keys("client_keys/private_key.pem", password="a password")
            response = await chat.create(
                model="echo", messages=[{"role": "user", "content": "MARKER"}]
            )
            print(response["choices"][0]["message"]["content"])

        asyncio.run(main())
    """,
    "errors and secure memory": """
        import asyncio
        from nomyo import SecureChatCompletion, AuthenticationError
        from nomyo import get_memory_protection_info, secure_bytearray

        async def main():
            info = get_memory_protection_info()
            with secure_bytearray(bytearray(b"MARKER")) as buf:
                print(bytes(buf.data).decode())
            client = SecureChatCompletion(base_url=URL, api_key="wrong")
            try:
                await client.create(model="echo", messages=[{"role": "user", "content": "x"}])
            except AuthenticationError as e:
                print(e.status_code, e)
            print(info["protection_level"])

        asyncio.run(main())
    """,
}


def _run_program(source: str, server: Endpoint, cwd: Path) -> subprocess.CompletedProcess[str]:
    header = f"URL = {server.url!r}\nKEY = {API_KEY!r}\n"
    program = header + textwrap.dedent(source).replace("MARKER", MARKER)
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env["SSL_CERT_FILE"] = str(server.ca)  # how 0.2.9 programs trust a private CA, too
    env.pop("NOMYO_API_KEY", None)
    env.pop("NOMYO_BASE_URL", None)
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=cwd, env=env
    )


EXPECTED: dict[str, list[str]] = {
    "basic chat": [MARKER, "True"],
    "tools": [MARKER],
    "acreate": [MARKER],
    "api key per call": [MARKER],
    "secure memory off and on": [MARKER, MARKER],
    "keys by hand": [MARKER],
    "errors and secure memory": [
        MARKER,
        "401 invalid API key",
        "full" if protection().mlock else "zeroing_only",
    ],
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_readme_shaped_programs_against_nomyo_serve(
    name: str, server: Endpoint, tmp_path: Path
) -> None:
    done = _run_program(PROGRAMS[name], server, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:-1] == EXPECTED[name], done.stdout


def test_readme_shaped_program_control(server: Endpoint, tmp_path: Path) -> None:
    # control: the runner does see a failure (no CA trusted: verification fails)
    source = PROGRAMS["acreate"]
    program = textwrap.dedent(source).replace("MARKER", MARKER)
    done = subprocess.run(
        [sys.executable, "-c", f"URL = {server.url!r}\nKEY = {API_KEY!r}\n{program}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"},
    )
    assert done.returncode != 0 and "APIConnectionError" in done.stderr


# ------------------------------------------------------------------ refused on purpose


def test_refused_on_purpose(tmp_path: Path) -> None:
    with pytest.raises(nomyo.SecurityError):  # http:// at construction
        nomyo.SecureChatCompletion("http://127.0.0.1:1")
    client = nomyo.SecureCompletionClient("https://router.invalid")
    client.key_size = 2048
    client.generate_keys(save_to_file=True, key_dir=str(tmp_path))
    with pytest.raises(FileExistsError):  # key files never overwritten
        client.generate_keys(save_to_file=True, key_dir=str(tmp_path))

    async def stream() -> Any:
        chat = nomyo.SecureChatCompletion("https://router.invalid")
        return await chat.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )

    with pytest.raises(ValueError, match="stream"):
        asyncio.run(stream())
