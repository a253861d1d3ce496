"""LangChain's real ChatOpenAI through nomyo's httpx transports, against
`nomyo serve` over TLS: invoke and ainvoke, and a refused endpoint."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

import nomyo
from nomyo import _keys

from .servers import API_KEY, MARKER, Endpoint

langchain_openai = pytest.importorskip("langchain_openai")


def chat_model(server: Endpoint, tls: dict[str, Path], key_dir: Path) -> object:
    options = dict(
        verify=str(tls["ca"]),
        key_dir=key_dir,
        server_key_fingerprint=_keys.fingerprint(server.router_key),
    )
    return langchain_openai.ChatOpenAI(
        model="echo",
        base_url=server.url + "/v1",
        api_key=API_KEY,
        http_client=httpx.Client(transport=nomyo.SecureTransport(**options)),
        http_async_client=httpx.AsyncClient(transport=nomyo.AsyncSecureTransport(**options)),
    )


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lc-keys")
    _keys.save_private_key(_keys.generate_private_key(2048), folder / "private_key.pem")
    return folder


def test_invoke(server: Endpoint, tls: dict[str, Path], key_dir: Path) -> None:
    message = chat_model(server, tls, key_dir).invoke(MARKER)  # type: ignore[attr-defined]
    assert message.content == MARKER
    assert message.response_metadata["finish_reason"] == "stop"


def test_ainvoke(server: Endpoint, tls: dict[str, Path], key_dir: Path) -> None:
    model = chat_model(server, tls, key_dir)
    message = asyncio.run(model.ainvoke(MARKER))  # type: ignore[attr-defined]
    assert message.content == MARKER


def test_bind_tools(server: Endpoint, tls: dict[str, Path], key_dir: Path) -> None:
    def lookup(text: str) -> str:
        """Look something up."""
        return text

    model = chat_model(server, tls, key_dir).bind_tools([lookup])  # type: ignore[attr-defined]
    message = model.invoke(MARKER)
    assert message.tool_calls[0]["name"] == "lookup"
    assert message.tool_calls[0]["args"] == {"text": MARKER}


def test_responses_api_is_refused(server: Endpoint, tls: dict[str, Path], key_dir: Path) -> None:
    model = chat_model(server, tls, key_dir)
    with pytest.raises(nomyo.SecurityError, match="nothing was sent"):
        model.model_copy(update={"use_responses_api": True}).invoke(MARKER)  # type: ignore[attr-defined]
