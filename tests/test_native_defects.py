"""Regression tests for the native codec and wipe defects of issue 11.

1. the encoder held borrowed pointers into a dict subclass's items() list
   while Python code ran (a use-after-free only ASan sees: `make sanitize`);
2. the decoder wrote a string's second pass without re-checking it against
   what the first pass measured (a heap overflow when the buffer changes
   between the passes: another process writes it here);
4. list and tuple subclasses were encoded from their stored items, where
   json.dumps iterates them;
5. wipe() stopped at depth 200 while the codec went to about 1000: a request
   nested 250 deep made `nomyo serve` answer 500.  Now one constant,
   ``nomyo._constants.MAX_NESTING``, bounds both.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from nomyo import SecurityError, _hybrid, memory
from nomyo._constants import MAX_NESTING
from tests.conftest import native_only, run_python
from tests.servers import Endpoint, chat, post


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _serialized(value: Any) -> bytes:
    with _hybrid.serialize(value, secure=False) as buf:
        return bytes(memoryview(buf))


# ---------------------------------------------------------------- 1: use-after-free


def test_dict_subclass_items_freed_by_nested_code() -> None:
    # items() returns a list the subclass keeps; a nested subclass's items()
    # clears it, freeing the (key, value) tuples and the list value being
    # written.  Before the fix put_array read that freed list (ASan:
    # heap-use-after-free in put_array); json.dumps holds its references.
    shared: list[tuple[str, Any]] = []

    class Clears(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            shared.clear()
            return [("k", "v")]

    class Keeps(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            shared[:] = [("a", [Clears(z=1), "x" * 64, 2]), ("b", "y" * 64)]
            return shared

    value = Keeps(z=1)
    expected = _dumps(value)
    assert expected == b'{"a":[{"k":"v"},"' + b"x" * 64 + b'",2]}'  # the control: json's view
    assert _serialized(value) == expected


@native_only
def test_an_object_that_grows_between_the_passes_is_refused() -> None:
    # json_size and json_into each iterate a subclass: if they see different
    # items, the second pass must stop at the measured size, not overflow
    class Grows(list):  # type: ignore[type-arg]
        calls = 0

        def __iter__(self) -> Iterator[Any]:
            Grows.calls += 1
            return iter(["x" * 10 * Grows.calls] * Grows.calls)

    for cls_value in (Grows(), [Grows()], {"k": (Grows(), 1)}):
        Grows.calls = 0
        with pytest.raises(ValueError, match="changed while"):
            _hybrid.serialize(cls_value)
        assert Grows.calls == 2  # the control: both passes ran, and saw different items


# ---------------------------------------------------------------- 4: subclasses iterate


class _List(list):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:  # what json.dumps reads: not the stored items
        return iter([*list(list.__iter__(self))[::-1], "from __iter__"])


class _Tuple(tuple):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        return (x for x in tuple.__iter__(self) if x is not None)


class _Gen(list):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:  # a generator that itself builds containers
        for x in list.__iter__(self):
            yield [x]


class _Items(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        return sorted(dict.items(self), reverse=True)


class _ItemsIter(dict):  # type: ignore[type-arg]
    def items(self) -> Any:  # an iterable of pairs that is not a list
        return iter([(k, v) for k, v in dict.items(self)][::-1])


class _Str(str):
    def __str__(self) -> str:
        return "never called"


class _Int(int):
    def __repr__(self) -> str:
        return "never called"

    def __index__(self) -> int:
        return 0


class _Float(float):
    def __repr__(self) -> str:
        return "never called"

    def __float__(self) -> float:
        return 0.0


_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers().map(_Int)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(allow_nan=False, allow_infinity=False).map(_Float)
    | st.text(max_size=8)
    | st.text(max_size=8).map(_Str)
)
_keys = st.text(max_size=4) | st.integers() | st.booleans() | st.none() | st.floats(-9, 9)
_subclassed = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(_List)
        | st.lists(inner, max_size=4).map(_Gen)
        | st.lists(inner, max_size=4).map(tuple)
        | st.lists(inner, max_size=4).map(_Tuple)
        | st.dictionaries(_keys, inner, max_size=4)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4).map(_Items)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4).map(_ItemsIter)
    ),
    max_leaves=25,
)


def _verdict(call: Any, value: Any) -> Any:
    try:
        return call(value)
    except (TypeError, ValueError, RecursionError) as exc:
        return type(exc) if not isinstance(exc, UnicodeEncodeError) else ValueError


def test_list_and_tuple_subclasses_are_iterated_as_json_does() -> None:
    value = {"l": _List([1, 2]), "t": _Tuple((1, None, 2)), "g": _Gen(["a"]), "e": _List()}
    expected = b'{"l":[2,1,"from __iter__"],"t":[1,2],"g":[["a"]],"e":["from __iter__"]}'
    assert _dumps(value) == expected  # the control: json iterates them
    assert _serialized(value) == expected


@settings(max_examples=600, deadline=None, derandomize=True)
@given(_subclassed)
def test_subclasses_encode_as_json_dumps(value: Any) -> None:
    assert _verdict(_serialized, value) == _verdict(_dumps, value)


# ---------------------------------------------------------------- 2: the decoder's two passes

_RACE = """
import mmap, os, signal, sys, time
from nomyo import _native

units, seconds = {units}, {seconds}
# a JSON string of 6-byte units, each either one escaped character or six
# plain ones: the first pass measures one shape, the second may see another
shapes = [b"\\\\u4e00" * units, b"AAAAAA" * units, b"\\\\u0041" * units, b"\\xc3\\xa9ABCD" * units]
size = 6 * units + 2
mm = mmap.mmap(-1, size)  # MAP_SHARED: the child's writes land in our view
mm[:] = b'"' + shapes[0] + b'"'
child = os.fork()
if child == 0:  # the other writer: flips the shapes as fast as it can
    try:
        parent = os.getppid()
        while os.getppid() == parent:  # not past the parent, even if it dies
            for _ in range(100):
                for shape in shapes:
                    mm[1:size - 1] = shape
    finally:
        os._exit(0)
time.sleep(0.05)
counts = {{"str": 0, "changed": 0, "invalid": 0}}
deadline = time.monotonic() + seconds
try:
    while time.monotonic() < deadline:
        try:
            s = _native.json_parse(mm)
        except ValueError as exc:
            counts["changed" if "changed" in str(exc) else "invalid"] += 1
            continue
        # a well-formed str (a torn write may make other characters): its
        # kind the narrowest that holds it, or it equals no canonical copy
        canonical = s.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
        assert isinstance(s, str) and s == canonical and hash(s) == hash(canonical), s
        counts["str"] += 1
finally:
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
print(counts)
"""


@native_only
def test_decoder_is_bounded_by_its_first_pass() -> None:
    # Before the fix the second pass wrote as many characters as it found
    # (a heap overflow past the str when they were more) and left the rest
    # of a shorter str uninitialised; now every mismatch is a ValueError.
    proc = run_python(_RACE.format(units=400, seconds=3.0), timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    counts = eval(proc.stdout.strip().splitlines()[-1])  # noqa: S307 - our own child's dict
    print(counts)
    # the control: the buffer really changed under the parser, and was caught
    assert counts["changed"] > 0, counts
    assert counts["str"] > 0, counts


# ---------------------------------------------------------------- 5: one nesting limit


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_max_nesting_is_one_constant() -> None:
    from nomyo import _constants

    assert MAX_NESTING == 512
    assert not hasattr(_constants, "WIPE_MAX_DEPTH")
    root = Path(__file__).resolve().parents[1]
    c_sources = "".join(p.read_text() for p in sorted((root / "csrc").glob("*.[ch]")))
    assert "WIPE_MAX_DEPTH" not in c_sources and "JSON_MAX_PATH" not in c_sources
    assert "NOMYO_MAX_NESTING" in c_sources  # the control: the C side uses the shared name


def test_codec_and_wipe_agree_on_the_nesting_limit() -> None:
    text = "".join(["deep ", "secret"])
    deepest = _nested(MAX_NESTING, text)
    data = _serialized(deepest)  # the encoder takes MAX_NESTING containers
    assert data == _dumps(deepest)
    with pytest.raises(RecursionError):
        _serialized(_nested(MAX_NESTING + 1, "x"))
    with _hybrid.serialize(deepest, secure=False) as buf:
        back = _hybrid.parse(buf)  # and so does the decoder
    too_deep = b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1)
    with pytest.raises(SecurityError):
        _hybrid.parse(memoryview(bytearray(too_deep)))
    del deepest
    inner = back
    for _ in range(MAX_NESTING):
        inner = inner[0]
    assert inner == "deep secret"
    del inner
    assert memory.wipe(back) == 1  # wipe reaches the deepest value the codec made
    leaf = back
    for _ in range(MAX_NESTING):
        leaf = leaf[0]
    assert leaf == "\0" * len("deep secret")


def test_wipe_goes_on_past_a_too_deep_value() -> None:
    # before: the RecursionError left every later value unwiped
    secret = "".join(["later ", "secret"])
    value = [_nested(MAX_NESTING + 5, "x"), secret]
    del secret
    with pytest.raises(RecursionError):
        memory.wipe(value)
    assert value[1] == "\0" * len("later secret")


def test_fallback_wipe_follows_the_same_limit() -> None:
    proc = run_python(
        """
        import json
        from nomyo import memory, _hybrid
        from nomyo._constants import MAX_NESTING
        assert memory.BACKEND == "python"
        leaf = "".join(["deep ", "secret"])
        value = [leaf]
        del leaf
        for _ in range(MAX_NESTING - 1):
            value = [value]
        blob = json.dumps(value).encode()
        back = _hybrid.parse(memoryview(bytearray(blob)))
        print("wiped", memory.wipe(back) >= 1)
        over = MAX_NESTING + 1
        try:
            _hybrid.parse(memoryview(bytearray(b"[" * over + b"]" * over)))
        except Exception as exc:
            print("refused", type(exc).__name__)
        """,
        env={"NOMYO_MEMORY_BACKEND": "python", "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wiped True" in proc.stdout and "refused SecurityError" in proc.stdout, proc.stdout


def test_python_parse_refuses_what_the_c_decoder_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    # the fallback's parse (json.loads) must stop where the C decoder stops,
    # or wipe() could not reach all of what it made
    monkeypatch.setattr(_hybrid, "_json_parse", None)
    deepest = b"[" * MAX_NESTING + b'"x"' + b"]" * MAX_NESTING
    assert _depth_of(_hybrid.parse(memoryview(bytearray(deepest)))) == MAX_NESTING
    over = MAX_NESTING + 1
    assert json.loads(b"[" * over + b"]" * over)  # the control: json.loads alone takes it
    with pytest.raises(SecurityError):
        _hybrid.parse(memoryview(bytearray(b"[" * over + b"]" * over)))
    with pytest.raises(SecurityError):
        _hybrid.parse(memoryview(bytearray(b'{"a":' * over + b"1" + b"}" * over)))


def _depth_of(value: Any) -> int:
    depth = 0
    while isinstance(value, list):
        value, depth = (value[0] if value else None), depth + 1
    return depth


def test_serve_answers_a_request_nested_250_deep(
    server: Endpoint, client_key: rsa.RSAPrivateKey
) -> None:
    # before: 200 for the request, then wipe(chat) in a finally raised
    # RecursionError past depth 200 and the client got 500
    deep = _nested(250, "leaf")
    shallow = post(
        server, client_key, _hybrid.seal_json(chat(extra=[1]), server.router_key.public_key())
    )
    assert shallow.status_code == 200  # the control: the same request, shallow
    response = post(
        server, client_key, _hybrid.seal_json(chat(extra=deep), server.router_key.public_key())
    )
    assert response.status_code == 200, response.text
    assert "internal error" not in server.logs()
    too_deep = {"model": "echo", "messages": [{"role": "user", "content": "x"}],
                "extra": _nested(MAX_NESTING + 10, 1)}  # fmt: skip
    refused = post(server, client_key, _seal_raw(_dumps_deep(too_deep), server))
    assert refused.status_code == 400, refused.text


def _dumps_deep(value: Any) -> bytes:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * MAX_NESTING))
    try:
        return _dumps(value)
    finally:
        sys.setrecursionlimit(limit)


def _seal_raw(plaintext: bytes, server: Endpoint) -> bytes:
    # seal bytes the encoder would refuse to write (deeper than MAX_NESTING)
    from nomyo import SecureBuffer

    with SecureBuffer(len(plaintext)) as buf:
        memoryview(buf)[:] = plaintext
        parts = _hybrid._encrypt(memoryview(buf), server.router_key.public_key(), False)
    return _hybrid._package(*parts, None)
