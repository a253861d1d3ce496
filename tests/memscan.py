"""Search another process's readable memory for needles, from outside it.

The scanning process holds the needles; the scanned one never does, so a
hit is a copy the code under test left behind, never the test's own
reference copy.  Everything in /proc/PID/maps with read permission is read
through /proc/PID/mem (what the process itself could read through
/proc/self/mem); what the kernel refuses (memfd_secret, [vvar]) is counted
as unreadable.

Two kinds of needle:

- binary (AES keys): 32 random bytes.  Every 8-byte window at each of the 8
  byte offsets is checked against a set of the needles' 8-byte pieces (one
  pass in C per offset), and only a chunk with a candidate is searched for
  the whole needle;
- text (hex strings): found with one regular expression for runs of hex
  digits, in the three layouts a CPython str can have (1, 2 or 4 bytes per
  character), then looked up in a set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

CHUNK = 4 << 20
_HEX_RUNS = {
    1: re.compile(rb"[0-9a-f]{16,}"),
    2: re.compile(rb"(?:[0-9a-f]\x00){16,}"),
    4: re.compile(rb"(?:[0-9a-f]\x00\x00\x00){16,}"),
}


@dataclass
class Hit:
    kind: str  # "key" or "text"
    needle: int  # its index in the list given
    address: int
    mapping: str
    context: bytes = b""  # up to 64 bytes either side, for the failure message

    def __str__(self) -> str:
        return f"{self.kind} #{self.needle} at {self.address:#x} in {self.mapping}"


@dataclass
class Scan:
    hits: list[Hit] = field(default_factory=list)
    bytes_read: int = 0
    bytes_unreadable: int = 0
    mappings: int = 0


def regions(pid: int) -> Iterator[tuple[int, int, str]]:
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if parts[1].startswith("r"):
                yield start, end, parts[5].strip() if len(parts) > 5 else "[anon]"


def _chunks(mem: object, start: int, end: int) -> Iterator[tuple[int, bytes | None]]:
    # overlapping by 64 bytes, so a needle across a chunk boundary is seen
    address = start
    while address < end:
        size = min(CHUNK + 64, end - address)
        try:
            mem.seek(address)  # type: ignore[attr-defined]
            data = mem.read(size)  # type: ignore[attr-defined]
        except OSError:
            data = None
        yield address, data
        address += CHUNK


def scan(pid: int, keys: list[bytes], texts: list[str]) -> Scan:
    """Where any of ``keys`` (raw bytes) or ``texts`` (lowercase hex) appear."""
    pieces = {key[i : i + 8] for key in keys for i in range(0, len(key) - 7, 8)}
    words = {int.from_bytes(p, "little") for p in pieces}
    wanted = {text.encode(): n for n, text in enumerate(texts)}
    result = Scan()
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for start, end, name in regions(pid):
            result.mappings += 1
            for address, data in _chunks(mem, start, end):
                if data is None:
                    result.bytes_unreadable += min(CHUNK, end - address)
                    continue
                result.bytes_read += min(CHUNK, len(data))
                result.hits += _find_keys(data, address, name, keys, words)
                result.hits += _find_texts(data, address, name, wanted)
    return result


def _find_keys(
    data: bytes, address: int, name: str, keys: list[bytes], words: set[int]
) -> Iterable[Hit]:
    view = memoryview(data)
    candidate = False
    for offset in range(8):
        usable = (len(data) - offset) // 8 * 8
        if usable and not words.isdisjoint(view[offset : offset + usable].cast("Q")):
            candidate = True
            break
    if not candidate:
        return []
    hits = []
    for n, key in enumerate(keys):
        at = data.find(key)
        while at != -1:
            hits.append(Hit("key", n, address + at, name, data[max(0, at - 64) : at + 96]))
            at = data.find(key, at + 1)
    return hits


def _find_texts(data: bytes, address: int, name: str, wanted: dict[bytes, int]) -> Iterable[Hit]:
    hits = []
    lengths = {len(needle) for needle in wanted}
    for width, pattern in _HEX_RUNS.items():
        for match in pattern.finditer(data):
            run = match.group()[::width]  # the characters, one byte each
            for size in lengths:
                for at in range(len(run) - size + 1):
                    n = wanted.get(run[at : at + size])
                    if n is not None:
                        where = match.start() + at * width
                        around = data[max(0, where - 64) : where + 64 + size * width]
                        hits.append(Hit("text", n, address + where, name, around))
    return hits
