"""An answer (a chat.completion dict) as the chat.completion.chunk objects
OpenAI would have streamed: the protocol answers in one package, so a stream
is that one answer cut into chunks.  Shared by ``nomyo proxy`` and the SDK
transports; owns no I/O.
"""

from __future__ import annotations

from typing import Any

__all__ = ["chunks_of"]


def _delta(message: dict[str, Any]) -> dict[str, Any]:
    """A whole message as one streamed delta; tool calls get their ``index``."""
    delta: dict[str, Any] = {
        "role": message.get("role", "assistant"),
        "content": message.get("content"),
    }
    for key, value in message.items():
        if key in ("role", "content"):
            continue
        if key == "tool_calls" and isinstance(value, list):
            calls = [call for call in value if isinstance(call, dict)]
            value = [{**call, "index": i} for i, call in enumerate(calls)]
        delta[key] = value
    return delta


def chunks_of(answer: dict[str, Any], *, include_usage: bool = False) -> list[dict[str, Any]]:
    """``answer`` (a chat.completion) as the chat.completion.chunk objects
    OpenAI would have streamed: per choice, one delta with the whole message,
    then one with the finish_reason; with ``include_usage`` a last chunk with
    no choices and the usage."""
    base: dict[str, Any] = {
        "id": answer.get("id", ""),
        "object": "chat.completion.chunk",
        "created": answer.get("created", 0),
        "model": answer.get("model", ""),
    }
    if "system_fingerprint" in answer:
        base["system_fingerprint"] = answer["system_fingerprint"]
    if include_usage:
        base["usage"] = None
    choices = answer.get("choices")
    chunks: list[dict[str, Any]] = []
    for position, choice in enumerate(choices if isinstance(choices, list) else []):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        message = choice.get("message")
        delta = _delta(message if isinstance(message, dict) else {})
        first = {"index": index, "delta": delta, "logprobs": choice.get("logprobs")}
        chunks.append({**base, "choices": [{**first, "finish_reason": None}]})
        last = {"index": index, "delta": {}, "logprobs": None}
        chunks.append({**base, "choices": [{**last, "finish_reason": choice.get("finish_reason")}]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": answer.get("usage")})
    return chunks
