"""Per-request cost of nomyo's secure memory, each measurement beside a plain-Python baseline.

A request allocates a few SecureBuffers (keys, plaintexts), frees them, and wipes the
strings it built, so what matters is the cost of one alloc+free, one ``wipe()`` and one
``nomyo.wipe()`` compared with the same work done on ordinary Python objects.  Sizes:
32 B (a key), 4 KiB, 64 KiB and 1 MiB (request and response bodies).

Groups (compare the rows inside one group):

- ``alloc-free-<size>``: ``SecureBuffer(size)`` through the free-region cache (the normal
  path), a fresh guarded mapping (cache bypassed), ``secret_memory=True`` (memfd_secret),
  and the baselines ``bytearray(size)`` alone and zeroed before it is dropped;
- ``wipe-<size>``: ``SecureBuffer.wipe()`` against zeroing a bytearray in place;
- ``wipe-str-<size>``: building a fresh str and ``nomyo.wipe()``-ing it, against only
  building it: the difference is the cost of the wipe.

Run: ``pytest benchmarks/bench_memory.py --benchmark-only`` (or ``--benchmark-disable``
to run each body once as a smoke test).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import nomyo
from nomyo import SecureBuffer

LABELS = {32: "32B", 4096: "4KiB", 64 * 1024: "64KiB", 1024 * 1024: "1MiB"}
SIZES = pytest.mark.parametrize("size", list(LABELS), ids=list(LABELS.values()))

PROTECTION = nomyo.protection()
needs_native = pytest.mark.skipif(
    PROTECTION.backend != "native", reason="needs the native secure-memory backend"
)


def _run(benchmark: BenchmarkFixture, kind: str, size: int, body: Callable[[], object]) -> object:
    """Time ``body`` in the group ``<kind>-<size label>``; returns one call's result."""
    benchmark.group = f"{kind}-{LABELS[size]}"
    return benchmark(body)


# ---------------------------------------------------------------- alloc + free


@SIZES
def test_alloc_free_securebuffer(benchmark: BenchmarkFixture, size: int) -> None:
    # after the first round the region comes back from the cache, already locked;
    # note: 1 MiB (257 data pages with the canary) is larger than the whole cache
    # (NOMYO_CACHE_MAX_PAGES = 256), so at that size this is a fresh mapping too
    _run(benchmark, "alloc-free", size, lambda: SecureBuffer(size).close())


@needs_native
@SIZES
def test_alloc_free_uncached(benchmark: BenchmarkFixture, size: int) -> None:
    # mmap + mprotect guards + mlock + madvise, then zero + munlock + munmap
    from nomyo import _native

    _native.cache_trim()
    _run(
        benchmark,
        "alloc-free",
        size,
        lambda: _native.Region(size, _native.F_NOCACHE)._close(),
    )


@pytest.mark.skipif(not PROTECTION.memfd_secret, reason="memfd_secret is not usable here")
@SIZES
def test_alloc_free_secret(benchmark: BenchmarkFixture, size: int) -> None:
    # secret regions are never cached: every round is memfd_secret + a fresh mapping
    with SecureBuffer(size, secret_memory=True) as probe:
        assert probe.secret_memory  # otherwise this would time the ordinary fallback
    _run(benchmark, "alloc-free", size, lambda: SecureBuffer(size, secret_memory=True).close())


@SIZES
def test_alloc_free_bytearray(benchmark: BenchmarkFixture, size: int) -> None:
    # baseline: an ordinary zero-filled buffer, created and dropped
    _run(benchmark, "alloc-free", size, lambda: bytearray(size))


@SIZES
def test_alloc_free_bytearray_zeroed(benchmark: BenchmarkFixture, size: int) -> None:
    # baseline: the same, zeroed before it is dropped (what "zero on free" costs in Python)
    zeros = bytes(size)

    def alloc_zero_free() -> None:
        buf = bytearray(size)
        memoryview(buf)[:] = zeros

    _run(benchmark, "alloc-free", size, alloc_zero_free)


# ---------------------------------------------------------------- wipe in place


@SIZES
def test_wipe_securebuffer(benchmark: BenchmarkFixture, size: int) -> None:
    with SecureBuffer(size) as buf:
        _run(benchmark, "wipe", size, buf.wipe)


@SIZES
def test_wipe_bytearray(benchmark: BenchmarkFixture, size: int) -> None:
    # Fair baseline: one in-place pass over the data, as nomyo_zero's memset, copying from
    # a zero buffer made once outside the timing; `ba[:] = bytes(size)` (or a memoryview
    # slice assigned `bytes(size)`) would also time allocating and zeroing `size` bytes.
    buf = bytearray(size)
    zeros = bytes(size)

    def zero() -> None:
        memoryview(buf)[:] = zeros

    _run(benchmark, "wipe", size, zero)


# ---------------------------------------------------------------- nomyo.wipe(str)


def _halves(size: int) -> tuple[str, str]:
    # joining two parts makes a new, unshared, non-interned str on every call
    return "x" * (size // 2), "y" * (size - size // 2)


@SIZES
def test_str_build(benchmark: BenchmarkFixture, size: int) -> None:
    # baseline: building the string that the next benchmark wipes
    parts = _halves(size)
    _run(benchmark, "wipe-str", size, lambda: "".join(parts))


@SIZES
def test_str_build_wipe(benchmark: BenchmarkFixture, size: int) -> None:
    # Each call wipes a fresh string (a wiped one would be wiped again for nothing).  The
    # result check matters: nomyo.wipe skips a str that something else still refers to,
    # and a skipped wipe would time as a cheap no-op.
    parts = _halves(size)
    wiped = _run(benchmark, "wipe-str", size, lambda: nomyo.wipe("".join(parts)))
    assert wiped == 1
