"""CPU per request (this process only) through three clients, in one run:

- ``nomyo.openai.OpenAI`` -> ``nomyo serve``   (the openai SDK over nomyo's transport)
- ``SyncSecureChatCompletion`` -> ``nomyo serve``  (our own client)
- plain ``openai.OpenAI`` -> ``_echo_endpoint.py``  (the SDK, chat JSON in the clear over TLS)

The servers and the 4096-bit client key are ``bench_client.py``'s fixtures.  CPU is
``time.process_time()`` of this process (every thread; the servers are subprocesses),
over interleaved blocks so drift hits all three alike.  The SDK's own cost is its own:
what our transport adds is ``nomyo.openai - plain SDK``, and the target is that it stays
within 20 % of our client's CPU per request (``added / ours <= 1.2``).

Run: ``pytest benchmarks/bench_openai.py --benchmark-only -s`` (``--benchmark-disable``
runs each path a few times as a smoke test).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from bench_client import MESSAGES, MODEL, PROMPT, Server, key_dir, servers, tls, workdir
from pytest_benchmark.fixture import BenchmarkFixture

from nomyo import SyncSecureChatCompletion
from nomyo.openai import OpenAI

__all__ = ["key_dir", "servers", "tls", "workdir"]  # bench_client's fixtures, used here

BLOCKS = 5
PER_BLOCK = 40


@pytest.fixture(scope="module")
def calls(
    servers: dict[str, Server], tls: dict[str, Path], key_dir: Path
) -> Iterator[dict[str, Callable[[], str | None]]]:
    ours = SyncSecureChatCompletion(
        servers["nomyo"].url, key_dir=key_dir, verify=str(tls["ca"]), timeout=60, max_retries=0
    )
    wrapped = OpenAI(
        base_url=servers["nomyo"].url,
        api_key="unused",
        key_dir=key_dir,
        verify=str(tls["ca"]),
        timeout=60,
        max_retries=0,
    )
    context = ssl.create_default_context(cafile=str(tls["ca"]))
    plain = openai.OpenAI(
        base_url=servers["echo"].url + "/v1",
        api_key="unused",
        http_client=openai.DefaultHttpxClient(verify=context),
        timeout=60,
        max_retries=0,
    )

    def via_ours() -> str | None:
        answer: dict[str, Any] = ours.create(MODEL, MESSAGES)
        return answer["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

    def via_wrapped() -> str | None:
        completion = wrapped.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        return completion.choices[0].message.content

    def via_plain() -> str | None:
        completion = plain.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        return completion.choices[0].message.content

    paths = {"nomyo.openai.OpenAI": via_wrapped, "SyncSecureChatCompletion": via_ours}
    paths["openai.OpenAI (plain)"] = via_plain
    try:
        for call in paths.values():
            for _ in range(3):  # warm: router key fetched, connections open
                assert call() == PROMPT
        yield paths
    finally:
        ours.close()
        wrapped.close()
        plain.close()


def _cpu_per_request(call: Callable[[], str | None], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - start) / n


def test_openai_sdk_cpu_per_request(
    benchmark: BenchmarkFixture, calls: dict[str, Callable[[], str | None]]
) -> None:
    blocks, per_block = (1, 2) if benchmark.disabled else (BLOCKS, PER_BLOCK)
    spent = dict.fromkeys(calls, 0.0)
    for _ in range(blocks):
        for name, call in calls.items():
            spent[name] += _cpu_per_request(call, per_block) / blocks
    wrapped, ours, plain = spent.values()
    added = wrapped - plain
    ratio = added / ours
    lines = [f"{name:28s} {seconds * 1e3:8.3f} ms CPU/request" for name, seconds in spent.items()]
    lines.append(f"{'added by the transport':28s} {added * 1e3:8.3f} ms = {ratio:.2f}x ours")
    lines.append(f"target (added <= 1.2x ours): {'met' if ratio <= 1.2 else 'missed'}")
    print("\n" + "\n".join(lines))
    benchmark.extra_info.update({name: s * 1e3 for name, s in spent.items()}, ratio=ratio)
    benchmark.pedantic(calls["nomyo.openai.OpenAI"], rounds=1, iterations=1)
