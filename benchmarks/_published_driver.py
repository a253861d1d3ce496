"""One measured workload through the PUBLISHED client (nomyo==0.2.9), for
benchmarks/compare_published.py; run with that client's interpreter (its own venv)::

    .venv-interop/bin/python benchmarks/_published_driver.py WORKLOAD --url URL --api-key KEY ...

Prints one JSON line: the workload's parameters, its wall time, its CPU time
(``time.process_time()``: every thread of this process) and the peak RSS
(``ru_maxrss``) before and after the measured part; or ``{"error": ...}`` and
exit status 1.  TLS trust comes from SSL_CERT_FILE, set by the caller: the
published client has no other way to trust a private CA.

This file is also the shared harness: it uses the standard library only (plus
the published client, imported lazily), so ``_ours_driver.py`` imports the
measurement and the async workloads from here and both clients are measured
by the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import resource
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

MODEL = "echo"
WARMUP = 3  # unmeasured requests before a measured series
_UNIT = "The quick brown fox jumps over the lazy dog. "  # ASCII: characters == bytes


def text_of(size: int) -> str:
    """An ASCII prompt of exactly ``size`` bytes."""
    return (_UNIT * (size // len(_UNIT) + 1))[:size]


def check(answer: dict[str, Any], text: str) -> None:
    """The echo model returns the prompt verbatim: anything else is a failed run."""
    content = answer["choices"][0]["message"]["content"]
    if content != text:
        raise RuntimeError(f"wrong answer: {len(content)} characters instead of {len(text)}")


# ---------------------------------------------------------------- measurement


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _vmrss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Probe:
    """Wall time, CPU time and peak RSS of the ``with`` block (optionally profiled).

    ``maxrss_*`` is the process's peak so far, so ``after - before`` is how
    far the block pushed the peak up; ``vmrss_before_kib`` (the resident size
    when the block started) tells whether an earlier, higher peak hides growth.
    """

    #: set by main() from --profile: the measured blocks run under cProfile
    profile_path: str | None = None

    def __enter__(self) -> Probe:
        gc.collect()  # garbage from the warm-up is not the measured block's
        self.maxrss_before = _maxrss_kib()
        self.vmrss_before = _vmrss_kib()
        self.profiler = cProfile.Profile() if self.profile_path else None
        if self.profiler is not None:
            self.profiler.enable()
        self.cpu0 = time.process_time()
        self.wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        if self.profiler is not None and self.profile_path is not None:
            self.profiler.disable()
            self.profiler.dump_stats(self.profile_path)
        self.maxrss_after = _maxrss_kib()

    def fields(self) -> dict[str, Any]:
        return {
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "maxrss_before_kib": self.maxrss_before,
            "maxrss_after_kib": self.maxrss_after,
            "vmrss_before_kib": self.vmrss_before,
        }


# ---------------------------------------------------------------- async workloads


class AsyncAdapter:
    """How a workload drives one async client: make it, ask it, close it."""

    def make(self) -> Any:
        raise NotImplementedError

    async def call(self, client: Any, text: str) -> dict[str, Any]:
        raise NotImplementedError

    async def close(self, client: Any) -> None:
        return None


async def sequential(adapter: AsyncAdapter, n: int, size: int) -> dict[str, Any]:
    """``n`` requests one after another, after WARMUP unmeasured ones."""
    text = text_of(size)
    client = adapter.make()
    for _ in range(WARMUP):
        check(await adapter.call(client, text), text)
    with Probe() as probe:
        for _ in range(n):
            check(await adapter.call(client, text), text)
    await adapter.close(client)
    return {"n": n, "size": size, **probe.fields()}


async def inflight(adapter: AsyncAdapter, n: int, size: int, concurrency: int) -> dict[str, Any]:
    """``n`` requests, ``concurrency`` of them in flight at any time.  The
    warm-up also runs one concurrent batch, so a pooling client starts the
    measured part with its connections open (as it would in a steady state)."""
    text = text_of(size)
    client = adapter.make()
    for _ in range(WARMUP):
        check(await adapter.call(client, text), text)
    for answer in await asyncio.gather(*(adapter.call(client, text) for _ in range(concurrency))):
        check(answer, text)
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            check(await adapter.call(client, text), text)

    with Probe() as probe:
        await asyncio.gather(*(one() for _ in range(n)))
    await adapter.close(client)
    return {"n": n, "size": size, "concurrency": concurrency, **probe.fields()}


async def big(adapter: AsyncAdapter, size: int) -> dict[str, Any]:
    """One request with a ``size``-byte prompt (so a ``size``-byte answer),
    after one small warm-up.  The prompt exists before the measured part: its
    own memory is the caller's, not the client's."""
    client = adapter.make()
    small = text_of(1024)
    check(await adapter.call(client, small), small)
    text = text_of(size)
    with Probe() as probe:
        answer = await adapter.call(client, text)
    check(answer, text)
    del answer
    await adapter.close(client)
    return {"size": size, **probe.fields()}


async def first(adapter: AsyncAdapter, size: int) -> dict[str, Any]:
    """A brand-new client's first request: from construction to the answer,
    its key pair and the router key fetch included."""
    text = text_of(size)
    with Probe() as probe:
        client = adapter.make()
        answer = await adapter.call(client, text)
    check(answer, text)
    await adapter.close(client)
    return {"size": size, **probe.fields()}


def run_async(args: argparse.Namespace, adapter: AsyncAdapter) -> dict[str, Any]:
    """Run the async workload ``args.workload`` with ``adapter``."""
    workloads: dict[str, Callable[[], Coroutine[Any, Any, dict[str, Any]]]] = {
        "sequential": lambda: sequential(adapter, args.n, args.size),
        "inflight": lambda: inflight(adapter, args.n, args.size, args.concurrency),
        "big": lambda: big(adapter, args.size),
        "first": lambda: first(adapter, args.size),
    }
    if args.workload not in workloads:
        raise ValueError(f"unknown workload {args.workload!r}")
    return asyncio.run(workloads[args.workload]())


# ---------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workload", help="sequential | inflight | big | first | info")
    p.add_argument("--url", help="the router's base URL (https)")
    p.add_argument("--api-key")
    p.add_argument("--ca", help="CA file (PEM) of the router's TLS certificate")
    p.add_argument("--key-dir", help="load the client key pair from here (else generate one)")
    p.add_argument("--n", type=int, default=200, help="requests in a series")
    p.add_argument("--size", type=int, default=1024, help="prompt bytes")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--profile", metavar="FILE", help="cProfile the measured part into FILE")
    return p


def main(
    run: Callable[[argparse.Namespace], dict[str, Any]],
    arguments: argparse.ArgumentParser | None = None,
) -> None:
    """Parse the command line, run ``run(args)`` and print its JSON line."""
    args = (arguments or parser()).parse_args()
    Probe.profile_path = args.profile
    try:
        report = {"workload": args.workload, **run(args)}
    except Exception as exc:  # one JSON line either way: the caller reports it
        traceback.print_exc()
        print(json.dumps({"workload": args.workload, "error": repr(exc)[:500]}))
        sys.exit(1)
    print(json.dumps(report), flush=True)


def rsa_timings(pem: bytes) -> dict[str, float]:
    """This interpreter's cryptography/OpenSSL speed for the two RSA operations
    a request costs a client: OAEP-decrypt with its 4096-bit key, and
    OAEP-encrypt to a 2048-bit router key (microseconds, best of 5 x 20); and
    for loading that key from PEM, which checks the key (best of 3)."""
    import os

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    loads = []
    for _ in range(3):
        start = time.perf_counter()
        private_key: Any = serialization.load_pem_private_key(pem, password=None)
        loads.append(time.perf_counter() - start)

    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    router = rsa.generate_private_key(65537, 2048).public_key()
    secret = os.urandom(32)
    wrapped = private_key.public_key().encrypt(secret, oaep)

    def best(op: Callable[[], object]) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(20):
                op()
            times.append((time.perf_counter() - start) / 20)
        return min(times) * 1e6

    return {
        "rsa4096_decrypt_us": best(lambda: private_key.decrypt(wrapped, oaep)),
        "rsa2048_encrypt_us": best(lambda: router.encrypt(secret, oaep)),
        "rsa4096_pem_load_ms": min(loads) * 1e3,
    }


def info(args: argparse.Namespace, package: str) -> dict[str, Any]:
    """Versions of this interpreter and what it imports, and its RSA speed."""
    import importlib.metadata as metadata
    import platform

    from cryptography.hazmat.backends.openssl import backend

    with open(f"{args.key_dir}/private_key.pem", "rb") as pem:
        key = pem.read()
    return {
        "python": platform.python_version(),
        "nomyo": metadata.version(package),
        "cryptography": metadata.version("cryptography"),
        "httpx": metadata.version("httpx"),
        "openssl": backend.openssl_version_text(),
        **rsa_timings(key),
    }


# ---------------------------------------------------------------- the published client


class Published(AsyncAdapter):
    """nomyo 0.2.9: async only, a new httpx.AsyncClient (and a router key
    fetch) for every request; no close."""

    def __init__(self, args: argparse.Namespace) -> None:
        from nomyo import SecureChatCompletion

        self._cls = SecureChatCompletion
        self._args = args

    def make(self) -> Any:
        args = self._args
        return self._cls(
            base_url=args.url, api_key=args.api_key, max_retries=0, key_dir=args.key_dir
        )

    async def call(self, client: Any, text: str) -> dict[str, Any]:
        messages = [{"role": "user", "content": text}]
        return await client.create(model=MODEL, messages=messages)  # type: ignore[no-any-return]


def _run_published(args: argparse.Namespace) -> dict[str, Any]:
    if args.workload == "info":
        return {"client": "published", **info(args, "nomyo")}
    return {"client": "published", **run_async(args, Published(args))}


if __name__ == "__main__":
    main(_run_published)
