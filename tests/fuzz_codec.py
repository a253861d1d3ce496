"""The fuzzing lane (``make fuzz``): the C codec against the standard library.

Four differential fuzz targets, run by ``make fuzz`` over the extension
built with ASan + UBSan (the sanitizer lane's build) and reached only
through nomyo's Python wrappers (``_native``, ``_hybrid``, ``_envelope``):

- ``json-decode``: ``json_parse`` (also with unique keys) against
  ``json.loads``, on mutated JSON, token soup and raw bytes; a parsed value
  is then written back by the encoder and compared with ``json.dumps``;
- ``envelope``: the package decoder against the same rules built from
  ``json.loads`` and ``binascii`` (the module's own stdlib path), on
  mutated packages;
- ``base64``: the C encoder, both decoders and ``pack`` against ``base64``
  and ``binascii`` (ours is strict and canonical: it may refuse only texts
  that are not the canonical encoding of what they decode to);
- ``json-encode``: arbitrary objects (subclasses with their own ``__iter__``
  / ``items()``, shared references and cycles, nesting across
  MAX_NESTING, lone surrogates, NaN, unserializable things) against
  ``json.dumps``; and objects whose ``items()`` / ``__iter__`` change or
  free what is being written, where only memory safety and a clean error
  (or valid JSON) are required.

A mismatch fails the test with hypothesis' smallest example; a memory
error is an ASan or UBSan report, which ends the run.  The runs are
reproducible: ``derandomize=True`` (the examples are a function of the
test alone), no example database, PYTHONHASHSEED=0; NOMYO_FUZZ_EXAMPLES
sets the count.  Why not atheris: with gcc's ASan runtime preloaded (the
lane's), libFuzzer gets no coverage (libasan provides the coverage
callbacks first; atheris says so and finds nothing), and gcc cannot
instrument the C code for libFuzzer; a clang-built runtime would be needed.

Not collected by ``make test`` (the file name has no ``test_`` prefix).
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nomyo import _envelope, _hybrid, _native
from nomyo._constants import MAX_NESTING
from nomyo._envelope import Package

#: examples of the encoder target; the three decoders, cheaper, run three times as many
EXAMPLES = int(os.environ.get("NOMYO_FUZZ_EXAMPLES", "2000"))


def _fuzz(examples: int) -> Any:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


FUZZ = _fuzz(3 * EXAMPLES)


class Mismatch(AssertionError):
    """Our codec and the standard library disagree."""


# ---------------------------------------------------------------- shared


def _depth(value: Any) -> int:
    """The deepest container nesting in a (possibly cyclic) value."""
    deepest, seen = 0, set()
    pending = [(value, 0)]
    while pending:
        obj, depth = pending.pop()
        if isinstance(obj, (dict, list, tuple)):
            depth += 1
            deepest = max(deepest, depth)
            if id(obj) in seen or depth > MAX_NESTING + 2:
                continue
            seen.add(id(obj))
            if isinstance(obj, dict):
                pending.extend((v, depth) for v in dict.values(obj))
            else:  # the stored items, whatever a subclass's __iter__ says
                stored = (list if isinstance(obj, list) else tuple).__iter__(obj)  # type: ignore[attr-defined]
                pending.extend((v, depth) for v in stored)
    return deepest


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _verdict(call: Callable[[], Any]) -> Any:
    """The value, or the class of the error (UnicodeError and JSONDecodeError
    count as ValueError; what Python code in a subclass raises, as itself)."""
    try:
        return call()
    except (RecursionError, TypeError, ValueError) as exc:
        return next(c for c in (RecursionError, TypeError, ValueError) if isinstance(exc, c))
    except Exception as exc:
        return type(exc)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _serialize(value: Any) -> bytes:
    with _hybrid.serialize(value, secure=False) as buf:
        return bytes(memoryview(buf))


@st.composite
def _mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes], tokens: list[bytes]) -> bytes:
    """``base`` with a few byte-level edits: the near-misses parsers get wrong."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.integers(0, 4))
        if edit == 0 and at < len(data):
            del data[at : at + draw(st.integers(1, 4))]
        elif edit == 1:
            data[at:at] = draw(st.sampled_from(tokens)) if tokens else b"\x00"
        elif edit == 2 and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif edit == 3:
            data[at:at] = draw(st.binary(max_size=4))
        elif at < len(data):  # a whole chunk repeated
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


# ---------------------------------------------------------------- json-decode

JSON_TOKENS = [
    b"{", b"}", b"[", b"]", b'"', b":", b",", b" ", b"\n", b"true", b"false", b"null", b"NaN",
    b"Infinity", b"-Infinity", b"\\u", b"\\ud800", b"\\udc00", b"\\ud83d\\ude00", b"1e", b"-0.",
    b"0", b"9" * 30, b"\\\\", b'\\"', b"\\n", b"\\x", b"\xc3\xa9", b"\xe4\xb8\x80",
    b"\xf0\x9f\x98\x80", b"\xed\xa0\x80", b"\xc0\x80", b"\xff", b"\x00", b"\x1f", b"\xef\xbb\xbf",
]  # fmt: skip

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.text(alphabet=st.characters(max_codepoint=0x7F)),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=40,
)
_json_texts = st.tuples(_json_values, st.booleans(), st.sampled_from([None, 0, 1])).map(
    lambda t: json.dumps(t[0], ensure_ascii=t[1], indent=t[2]).encode("utf-8", "surrogatepass")
)
_json_inputs = st.one_of(
    _json_texts,
    _mutated(_json_texts, JSON_TOKENS),
    st.lists(st.sampled_from(JSON_TOKENS), max_size=40).map(b"".join),
    st.binary(max_size=64),
    st.integers(MAX_NESTING - 2, MAX_NESTING + 2).map(lambda n: b"[" * n + b"1" + b"]" * n),
)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key appears twice")
    return result


def check_json_decode(data: bytes) -> None:
    ours: Any = None
    for unique in (False, True):
        ours = _verdict(lambda: _native.json_parse(data, unique))  # noqa: B023
        hook = _unique if unique else None
        ref = _verdict(lambda: json.loads(data.decode("utf-8"), object_pairs_hook=hook))  # noqa: B023
        if _same(ours, ref):
            continue
        if ours is RecursionError and (ref is RecursionError or _depth(ref) > MAX_NESTING):
            continue  # ours refuses past MAX_NESTING, json at its recursion limit
        raise Mismatch(f"json_parse(unique={unique}) gave {ours!r:.200}, json.loads {ref!r:.200}")
    if ours in (ValueError, RecursionError, TypeError):
        return
    written = _verdict(lambda: _serialize(ours))
    expected = _verdict(lambda: _dumps(ours))
    if written != expected:
        raise Mismatch(f"serialize gave {written!r:.200}, json.dumps {expected!r:.200}")


@FUZZ
@given(_json_inputs)
def test_json_decode(data: bytes) -> None:
    check_json_decode(data)


# ---------------------------------------------------------------- envelope

KEY_BYTES = 256


def _reference_decode(data: bytes) -> Any:
    """decode() with the stdlib for JSON and base64 (its own fallback path)."""
    saved = _envelope._c_parse, _envelope._unb64
    _envelope._c_parse, _envelope._unb64 = None, _envelope._unb64_py
    try:
        return _envelope.decode(data, key_bytes=KEY_BYTES)
    finally:
        _envelope._c_parse, _envelope._unb64 = saved


def _fields(p: Any) -> Any:
    if not isinstance(p, Package):
        return p
    return (bytes(p.ciphertext), bytes(p.nonce), bytes(p.tag), bytes(p.wrapped_key), p.processed_at)


def check_envelope(data: bytes) -> None:
    got = _verdict(lambda: _envelope.decode(bytearray(data), key_bytes=KEY_BYTES, consume=True))
    ref = _verdict(lambda: _reference_decode(data))
    if _fields(got) == _fields(ref):
        return
    if got is ValueError and ref is RecursionError:
        return  # both malformed; json.loads' depth error is not wrapped the same way
    if got is ValueError and _depth(_verdict(lambda: json.loads(data))) > MAX_NESTING:
        return
    raise Mismatch(f"decode gave {_fields(got)!r:.300}, the stdlib rules {_fields(ref)!r:.300}")


_packages = st.builds(
    lambda c, n, t, k, p: _envelope.encode(Package(c, n, t, k, p)),
    st.binary(max_size=80),
    st.binary(min_size=11, max_size=13),
    st.binary(min_size=15, max_size=17),
    st.binary(min_size=KEY_BYTES - 1, max_size=KEY_BYTES + 1),
    st.none() | st.integers(-(2**70), 2**70),
)
ENVELOPE_TOKENS = [
    b'"version"', b'"1.0"', b'"encrypted_payload"', b'"ciphertext"', b'"nonce"', b'"tag"',
    b'"encrypted_aes_key"', b'"processed_at"', b"==", b"=", b'"', b",", b"{}", b"[]", b"1.5",
    b"true", b'"version":"1.0",', b"\\u0031", b"\\/", b"AAAA", b"-_",
]  # fmt: skip


@FUZZ
@given(st.one_of(_packages, _mutated(_packages, ENVELOPE_TOKENS)))
def test_envelope(data: bytes) -> None:
    check_envelope(data)


# ---------------------------------------------------------------- base64


def check_base64(body: bytes, text: bytes) -> None:
    if bytes(_native.b64encode(body)) != base64.b64encode(body):
        raise Mismatch("b64encode differs from base64.b64encode")
    pieces: list[Any] = [b"head", (body,), b"mid", (bytearray(body[:7]),), b""]
    expected = b"head" + base64.b64encode(body) + b"mid" + base64.b64encode(body[:7])
    if _native.pack(pieces) != expected:
        raise Mismatch("pack differs from base64.b64encode and a join")
    ours = _verdict(lambda: bytes(_native.b64decode(text)))
    ours_str = _verdict(lambda: bytes(_native.b64decode_str(text.decode("latin-1"), 16)))
    ref = _verdict(lambda: bytes(_envelope._unb64_py(text.decode("ascii"))))  # binascii, strict
    if not (ours == ref == ours_str):
        raise Mismatch(f"b64decode {ours!r:.80} / _str {ours_str!r:.80} / stdlib {ref!r:.80}")
    loose = _verdict(lambda: base64.b64decode(text, validate=True))
    if isinstance(ours, bytes) and loose != ours:
        raise Mismatch("a text ours accepts decodes differently in base64.b64decode")
    if ours is ValueError and isinstance(loose, bytes) and base64.b64encode(loose) == text:
        raise Mismatch("ours refuses a canonical base64 text")


_encoded = st.binary(max_size=80).map(base64.b64encode)


@FUZZ
@given(
    st.binary(max_size=200),
    st.one_of(_encoded, _mutated(_encoded, [b"=", b"==", b"+", b"/", b"-", b"\n"]), st.binary()),
)
def test_base64(body: bytes, text: bytes) -> None:
    check_base64(body, text)


# ---------------------------------------------------------------- json-encode


class _List(list):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        return iter(list(list.__iter__(self))[::-1])


class _Tuple(tuple):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        return (x for x in tuple.__iter__(self) if x is not None)


class _Gen(list):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        for x in list.__iter__(self):
            yield [x]


class _BadIter(list):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        raise KeyError("no")


class _Items(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        return sorted(dict.items(self), key=repr, reverse=True)


class _ItemsIter(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        return iter(list(dict.items(self))[::-1])


class _ItemsBad(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        return [("k", 1, 2)]


class _Str(str):
    def __str__(self) -> str:
        return "never"


class _Int(int):
    def __repr__(self) -> str:
        return "never"


class _Float(float):
    def __repr__(self) -> str:
        return "never"


# objects that change what is being written (only memory safety is checked)
_SHARED: list[Any] = []


class _Clears(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        _SHARED.clear()
        return [("k", "v" * 20)]


class _Keeps(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        return _SHARED


class _Shrinks(list):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        for x in list.__iter__(self):
            _SHARED[:] = _SHARED[: len(_SHARED) // 2]
            yield x


class _Flips(list):  # type: ignore[type-arg]
    calls = 0

    def __iter__(self) -> Iterator[Any]:
        _Flips.calls += 1
        return iter(["x" * (_Flips.calls % 3)] * (_Flips.calls % 4))


_KEYS = st.text(max_size=4) | st.integers() | st.booleans() | st.none() | st.floats() | st.tuples()
_LEAVES = [
    st.none(), st.booleans(), st.integers(), st.integers().map(_Int),
    st.floats(),  # NaN and infinities included
    st.floats(allow_nan=False, allow_infinity=False).map(_Float),
    st.text(max_size=20),  # lone surrogates included
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=12),  # escapes
    st.text(max_size=8).map(_Str), st.binary(max_size=3),  # bytes: not JSON
    st.integers(-5, 5), st.builds(object), st.integers(2**63, 2**70),
]  # fmt: skip
_SHORT_TEXT = st.text(max_size=3)


@functools.cache
def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high)


class _Builder:
    """Draws one object: containers go into ``made``, so later draws can
    refer back to them (shared references, cycles)."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.made: list[Any] = []
        self.mutating = False

    def int_in(self, low: int, high: int) -> int:
        return self.draw(_ints(low, high))

    def key(self) -> Any:
        return self.draw(_KEYS)

    def leaf(self) -> Any:
        choice = self.int_in(0, len(_LEAVES) - 1)
        if choice == 10 and self.made:
            return self.made[self.int_in(0, len(self.made) - 1)]  # shared, or a cycle
        return self.draw(_LEAVES[choice])

    def value(self, depth: int = 0) -> Any:
        kind = self.int_in(0, 19) if depth < 8 else 0
        if kind < 6:
            return self.leaf()
        if kind == 6 and depth > 0:
            kind = 7
        if kind == 6:  # deep: across the nesting limit (at the top only: it is slow)
            value = self.leaf()
            for _ in range(self.int_in(MAX_NESTING - 3, MAX_NESTING + 3)):
                value = [value]
            return value
        n = self.int_in(0, 4)
        if kind in (7, 8, 9):
            items: Any = [None] * n
            self.made.append(items)
            for i in range(n):
                items[i] = self.value(depth + 1)
            return items if kind == 7 else _List(items) if kind == 8 else _Gen(items)
        if kind in (10, 11):
            made = [self.value(depth + 1) for _ in range(n)]
            return tuple(made) if kind == 10 else _Tuple(made)
        if kind in (12, 13, 14, 15):
            cls = [dict, _Items, _ItemsIter, dict][kind - 12]
            obj = cls()
            self.made.append(obj)
            for _ in range(n):
                key = self.key() if cls is dict else self.draw(_SHORT_TEXT)
                obj[key] = self.value(depth + 1)
            return obj
        if kind == 16:
            return [_BadIter([1]), _ItemsBad(a=1)][self.int_in(0, 1)]
        self.mutating = True  # the kinds that change what is being written
        if kind == 17:
            _SHARED[:] = [
                ("a", [_Clears(z=1), self.value(depth + 1)]),
                ("b", self.value(depth + 1)),
            ]
            return _Keeps(z=1)
        if kind == 18:
            _SHARED[:] = [self.value(depth + 1) for _ in range(n)]
            return [_Shrinks([1, 2, 3]), _SHARED]
        return _Flips([0])


def check_json_encode(builder: _Builder, value: Any) -> None:
    if builder.mutating:  # no reference: safe, and a clean error or valid JSON
        written = _verdict(lambda: _serialize(value))
        if isinstance(written, bytes):
            json.loads(written)
        return
    ours = _verdict(lambda: _serialize(value))
    ref = _verdict(lambda: _dumps(value))
    if ours == ref:
        return
    if ours is RecursionError and _depth(value) > MAX_NESTING:
        return  # ours stops at MAX_NESTING, json at its recursion limit
    raise Mismatch(f"serialize gave {ours!r:.200}, json.dumps {ref!r:.200}")


@_fuzz(EXAMPLES)
@given(st.data())
def test_json_encode(data: st.DataObject) -> None:
    builder = _Builder(data.draw)
    _Flips.calls = 0
    try:
        check_json_encode(builder, builder.value())
    finally:
        _SHARED.clear()
