"""The openai SDK's clients, end to end encrypted: ``OpenAI`` and
``AsyncOpenAI`` are ``openai.OpenAI`` / ``openai.AsyncOpenAI`` whose HTTP goes
through :class:`nomyo.SecureTransport` (needs the ``openai`` extra)::

    from nomyo.openai import OpenAI

    client = OpenAI(base_url="https://api.nomyo.ai", api_key=KEY)
    completion = client.chat.completions.create(model="...", messages=[...])
    nomyo.openai.metadata(completion)      # payload_id, processed_at, ...

Only chat completions (``stream=True`` too: the one answer in chunks) and
``models.list()`` work; every other endpoint, and the SDK's websocket APIs
(realtime, ...), raise :class:`nomyo.SecurityError` (also an ``openai.OpenAIError``,
so the SDK does not retry it) before anything is sent.
Retries are the SDK's (``max_retries``).  The tier of a request:
``extra_headers={"X-Security-Tier": "high"}``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import httpx
import openai

from ._client import AttestationVerifier
from ._constants import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT,
)
from ._sdk_transport import AsyncSecureTransport, SecureTransport, _security_error
from ._transport import Verify

__all__ = ["AsyncOpenAI", "OpenAI", "metadata"]

_WEBSOCKETS = (
    "nomyo refused a websocket connection (realtime and the like): only chat "
    "completions can be carried end to end encrypted; nothing was sent"
)


def metadata(obj: Any) -> dict[str, Any] | None:
    """The ``_metadata`` nomyo put on a ChatCompletion or ChatCompletionChunk
    (payload_id, processed_at, is_encrypted, encryption_algorithm, and what
    the router added, e.g. attestation), or None."""
    extra = getattr(obj, "model_extra", None) or {}
    value = extra.get("_metadata")
    return value if isinstance(value, dict) else None


def _sdk_base_url(base_url: Any) -> str:
    """The router URL with the ``/v1`` the SDK's paths hang under (a URL
    object too: the SDK's copy() passes its own)."""
    url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    if not isinstance(url, str) and type(url).__name__ != "URL":
        raise TypeError(f"base_url must be a string, not {type(url).__name__}")
    url = str(url).rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _api_key(api_key: str | None) -> str:
    """The router's key; never the SDK's fallback OPENAI_API_KEY, which would
    hand an OpenAI key to the router.

    :raises ValueError: neither ``api_key`` nor NOMYO_API_KEY.
    """
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV) or None
    if not api_key:
        raise ValueError(
            f"api_key is required (or {API_KEY_ENV}); OPENAI_API_KEY is never sent to a "
            "router, and any string will do for a router that asks for none"
        )
    return api_key


def _transport_timeout(timeout: Any) -> float | httpx.Timeout | None:
    if timeout is None or isinstance(timeout, int | float):
        return timeout
    return DEFAULT_TIMEOUT  # an SDK Timeout object: ours keeps its own default


def _ours(http_client: Any, kind: type[Any]) -> bool:
    """Whether ``http_client`` is one of ours (the SDK's copy()/with_options() pass it on)."""
    return isinstance(getattr(http_client, "_transport", None), kind)


class OpenAI(openai.OpenAI):
    """``openai.OpenAI``, end to end encrypted to a NOMYO router.

    :param api_key: the router's API key (``NOMYO_API_KEY`` when None; never
        ``OPENAI_API_KEY``).
    :param base_url: the router, with or without ``/v1`` (``NOMYO_BASE_URL``,
        else https://api.nomyo.ai).
    :param server_key_fingerprint: ``"sha256:<hex>"``: any other router key
        raises SecurityError naming the pin, and nothing is sent.
    :param models: the names ``models.list()`` shows (routers list none).
    :param kwargs: the SDK's own options (``max_retries``, ``default_headers``,
        ...); not ``http_client``, whose transport is nomyo's.

    The other parameters are :class:`nomyo.SecureTransport`'s.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: Any = None,
        server_key_fingerprint: str | None = None,
        verify: Verify = True,
        secure_memory: bool = True,
        allow_http: bool = False,
        key_dir: str | os.PathLike[str] | None = None,
        key_password: str | bytes | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        models: Sequence[str] = (),
        timeout: Any = DEFAULT_TIMEOUT,
        attestation_verifier: AttestationVerifier | None = None,
        require_attestation: bool = False,
        http_client: Any = None,
        **kwargs: Any,
    ) -> None:
        if http_client is None:
            transport = SecureTransport(
                server_key_fingerprint=server_key_fingerprint,
                verify=verify,
                secure_memory=secure_memory,
                allow_http=allow_http,
                key_dir=key_dir,
                key_password=key_password,
                timeout=_transport_timeout(timeout),
                max_response_bytes=max_response_bytes,
                models=models,
                attestation_verifier=attestation_verifier,
                require_attestation=require_attestation,
            )
            http_client = openai.DefaultHttpxClient(transport=transport)  # type: ignore[arg-type]
        elif not _ours(http_client, SecureTransport):
            raise TypeError("nomyo.openai.OpenAI sends through its own transport: no http_client")
        super().__init__(
            api_key=_api_key(api_key),
            base_url=_sdk_base_url(base_url),
            timeout=timeout,
            http_client=http_client,
            **kwargs,
        )

    def _websocket_query_params(self, *args: Any, **kwargs: Any) -> Any:
        # every websocket API of the SDK asks for these before it connects
        raise _security_error(_WEBSOCKETS)


class AsyncOpenAI(openai.AsyncOpenAI):
    """``openai.AsyncOpenAI``, end to end encrypted; as :class:`OpenAI`."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: Any = None,
        server_key_fingerprint: str | None = None,
        verify: Verify = True,
        secure_memory: bool = True,
        allow_http: bool = False,
        key_dir: str | os.PathLike[str] | None = None,
        key_password: str | bytes | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        models: Sequence[str] = (),
        timeout: Any = DEFAULT_TIMEOUT,
        attestation_verifier: AttestationVerifier | None = None,
        require_attestation: bool = False,
        http_client: Any = None,
        **kwargs: Any,
    ) -> None:
        if http_client is None:
            transport = AsyncSecureTransport(
                server_key_fingerprint=server_key_fingerprint,
                verify=verify,
                secure_memory=secure_memory,
                allow_http=allow_http,
                key_dir=key_dir,
                key_password=key_password,
                timeout=_transport_timeout(timeout),
                max_response_bytes=max_response_bytes,
                models=models,
                attestation_verifier=attestation_verifier,
                require_attestation=require_attestation,
            )
            http_client = openai.DefaultAsyncHttpxClient(transport=transport)  # type: ignore[arg-type]
        elif not _ours(http_client, AsyncSecureTransport):
            raise TypeError(
                "nomyo.openai.AsyncOpenAI sends through its own transport: no http_client"
            )
        super().__init__(
            api_key=_api_key(api_key),
            base_url=_sdk_base_url(base_url),
            timeout=timeout,
            http_client=http_client,
            **kwargs,
        )

    def _websocket_query_params(self, *args: Any, **kwargs: Any) -> Any:
        raise _security_error(_WEBSOCKETS)
