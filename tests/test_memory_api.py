"""The SecureBuffer / protection() / wipe() API, for whichever backend is loaded.

test_fallback_lane.py runs this same file with NOMYO_MEMORY_BACKEND=python.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nomyo
from nomyo import SecureBuffer, SecurityError, protection, wipe
from nomyo.memory import BACKEND

SECRET = bytes(range(200, 232))  # 32 bytes, not ASCII text, no zero byte


def fresh_text(*parts: str) -> str:
    """A str built at run time: held by nobody but the caller."""
    return "".join(parts)


def test_backend_is_the_one_asked_for() -> None:
    wanted = os.environ.get("NOMYO_MEMORY_BACKEND") or "native"
    assert BACKEND == wanted
    assert protection().backend == wanted


def test_write_and_read_through_memoryview() -> None:
    with SecureBuffer(len(SECRET)) as buf:
        view = memoryview(buf)
        assert not view.readonly and view.nbytes == len(buf) == len(SECRET)
        view[:] = SECRET
        assert bytes(view) == SECRET
        view.release()


def test_new_memory_is_garbage_filled_not_zero() -> None:
    with SecureBuffer(64) as buf, memoryview(buf) as view:
        assert bytes(view) == b"\xdb" * 64


def test_zero_length_buffer() -> None:
    with SecureBuffer(0) as buf, memoryview(buf) as view:
        assert len(buf) == 0 and view.nbytes == 0


@pytest.mark.parametrize("size", ["10", 1.5, True, None])
def test_size_must_be_an_int(size: object) -> None:
    with pytest.raises(TypeError, match="size"):
        SecureBuffer(size)  # type: ignore[arg-type]


def test_size_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="size"):
        SecureBuffer(-1)


def test_is_a_securebuffer_with_an_address() -> None:
    with SecureBuffer(16) as buf:
        assert isinstance(buf, SecureBuffer)
        assert isinstance(buf.address, int) and buf.address > 0
        assert buf.address == buf.address


def test_repr_and_str_are_redacted() -> None:
    text = b"patient-record-4711-confidential"
    with SecureBuffer(len(text)) as buf, memoryview(buf) as view:
        view[:] = text
        for shown in (repr(buf), str(buf), f"{buf}", f"{buf!r}"):
            assert "redacted" in shown
            assert "patient" not in shown and "4711" not in shown
            assert text.hex() not in shown
        # positive control: the contents really are there to leak
        assert bytes(view) == text


@pytest.mark.parametrize(
    "convert",
    [bytes, pickle.dumps, copy.copy, copy.deepcopy, lambda b: pickle.dumps(b, protocol=0)],
    ids=["bytes", "pickle", "copy", "deepcopy", "pickle0"],
)
def test_no_copies_of_the_secret(convert: object) -> None:
    with SecureBuffer(8) as buf, pytest.raises(TypeError, match="SecureBuffer"):
        convert(buf)  # type: ignore[operator]


def test_equality_is_identity() -> None:
    with SecureBuffer(4) as a, SecureBuffer(4) as b:
        memoryview(a)[:] = b"same"
        memoryview(b)[:] = b"same"
        assert a == a and a != b and not (a == b"same")
        assert len({a, b}) == 2


def test_close_is_idempotent_and_use_after_close_raises() -> None:
    buf = SecureBuffer(8)
    assert not buf.closed
    buf.close()
    buf.close()
    assert buf.closed
    for use in (buf.wipe, buf.fill_random, lambda: len(buf), lambda: buf.address):
        with pytest.raises(ValueError, match="closed"):
            use()
    with pytest.raises(ValueError, match="closed"), buf:
        pass
    assert "closed" in repr(buf)
    if BACKEND == "native":
        with pytest.raises(ValueError, match="closed"):
            memoryview(buf)
    else:
        # a bytearray cannot refuse a new view on Python < 3.12; it is empty
        assert memoryview(buf).nbytes == 0


def test_close_wipes_at_once_even_while_a_view_is_alive() -> None:
    buf = SecureBuffer(len(SECRET))
    view = memoryview(buf)
    view[:] = SECRET
    assert bytes(view) == SECRET  # positive control
    buf.close()
    assert bytes(view) == bytes(len(SECRET))
    view.release()


def test_view_outliving_close_never_reads_another_secret() -> None:
    buf = SecureBuffer(len(SECRET))
    view = memoryview(buf)
    view[:] = SECRET
    buf.close()
    others = []
    for _ in range(50):  # plenty of chances to reuse the address
        other = SecureBuffer(len(SECRET))
        memoryview(other)[:] = SECRET
        others.append(other)
        assert bytes(view) == bytes(len(SECRET))
    view.release()
    for other in others:
        other.close()


def test_with_closes_on_exception() -> None:
    with pytest.raises(RuntimeError), SecureBuffer(8) as buf:
        raise RuntimeError("boom")
    assert buf.closed


def test_wipe_zeroes_and_keeps_the_buffer_open() -> None:
    with SecureBuffer(len(SECRET)) as buf, memoryview(buf) as view:
        view[:] = SECRET
        buf.wipe()
        assert bytes(view) == bytes(len(SECRET))
        assert not buf.closed


def test_fill_random() -> None:
    with SecureBuffer(32) as a, SecureBuffer(32) as b:
        a.fill_random()
        b.fill_random()
        with memoryview(a) as va, memoryview(b) as vb:
            assert bytes(va) != bytes(vb)
            assert bytes(va) not in (bytes(32), b"\xdb" * 32)


def test_locked_matches_backend() -> None:
    with SecureBuffer(16) as buf:
        if BACKEND == "python":
            assert buf.locked is False
        elif os.geteuid() == 0:
            assert buf.locked is True  # root has CAP_IPC_LOCK


def test_require_locked() -> None:
    if BACKEND == "python":
        with pytest.raises(SecurityError, match="lock"):
            SecureBuffer(16, require_locked=True)
    else:
        with SecureBuffer(16, require_locked=True) as buf:
            assert buf.locked


def test_protection_is_a_frozen_dataclass() -> None:
    report = protection()
    assert isinstance(report, nomyo.MemoryProtection)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.mlock = False  # type: ignore[misc]
    fields = [f.name for f in dataclasses.fields(report)]
    assert fields == [
        "backend",
        "mlock",
        "guard_pages",
        "dontdump",
        "wipeonfork",
        "memfd_secret",
        "memlock_limit",
    ]
    if BACKEND == "python":
        assert not any(getattr(report, f) for f in fields[1:6])


# ------------------------------------------------------------------ wipe()


def test_wipe_zeroes_a_fresh_string() -> None:
    text = fresh_text("diagnosis: ", "confidential")
    n = len(text)
    assert hash(text) != hash("\0" * n)  # computed, so cached in the object
    assert wipe(text) == 1
    assert text == "\0" * n
    assert hash(text) == hash("\0" * n)  # the cached hash was reset


@pytest.mark.parametrize("parts", [("é", "tude médicale"), ("€", "uro zone"), ("🔒", "locked")])
def test_wipe_zeroes_non_ascii_strings(parts: tuple[str, str]) -> None:
    text = fresh_text(*parts)
    n = len(text)
    assert wipe(text) == 1
    assert len(text) == n and set(text) == {"\0"}


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's UTF-8 cache")
def test_wipe_a_string_with_a_cached_utf8_copy() -> None:
    import ctypes

    text = fresh_text("naïve ", "secret")
    as_utf8 = ctypes.pythonapi.PyUnicode_AsUTF8AndSize
    as_utf8.restype = ctypes.c_void_p
    as_utf8.argtypes = [ctypes.py_object, ctypes.c_void_p]
    cached = as_utf8(text, None)  # now the str also holds a UTF-8 copy
    n = len(text.encode())
    assert ctypes.string_at(cached, n) == "naïve secret".encode()  # positive control
    neighbour = fresh_text("next ", "door")  # must survive: no write off target
    assert wipe(text) == 1
    assert text == "\0" * 12
    assert ctypes.string_at(cached, n) == bytes(n)
    assert neighbour == "next door"


def test_wipe_zeroes_fresh_bytes() -> None:
    data = SECRET + bytes([1])
    data = bytes(bytearray(data))  # a fresh, unshared object
    assert hash(data) != hash(bytes(len(data)))
    assert wipe(data) == 1
    assert data == bytes(len(SECRET) + 1)
    assert hash(data) == hash(bytes(len(data)))


def test_wipe_leaves_interned_strings_alone() -> None:
    text = sys.intern(fresh_text("nomyo_interned_", "name"))
    assert wipe(text) == 0
    assert text == "nomyo_interned_name"
    assert {"role": "user"}["role"] == "user"  # the interpreter keeps working


def test_wipe_leaves_shared_strings_alone() -> None:
    text = fresh_text("shared ", "secret")
    other_owner = [text]
    assert wipe(text) == 0
    assert other_owner[0] == "shared secret"


def test_wipe_leaves_cached_single_characters_and_empties_alone() -> None:
    for obj in (fresh_text("a"), fresh_text(""), bytes([65]), b"", chr(0xE9)):
        assert wipe(obj) == 0
    assert "a" == chr(97) and bytes([65]) == b"A" and chr(0xE9) == "é"


def test_wipe_leaves_code_constants_alone() -> None:
    assert wipe("a literal, held by the code object") == 0
    assert wipe("a literal, held by the code object") == 0
    assert "a literal, held by the code object".startswith("a literal")


def test_wipe_zeroes_mutable_buffers() -> None:
    ba = bytearray(SECRET)
    keep = ba  # shared or not, a bytearray is meant to be changed
    assert wipe(ba) == 1 and keep == bytearray(len(SECRET))
    target = bytearray(SECRET)
    assert wipe(memoryview(target)) == 1 and target == bytearray(len(SECRET))
    assert wipe(memoryview(b"read-only bytes")) == 0


def test_wipe_a_secure_buffer() -> None:
    with SecureBuffer(len(SECRET)) as buf, memoryview(buf) as view:
        view[:] = SECRET
        assert wipe(buf) == 1
        assert bytes(view) == bytes(len(SECRET))


def test_wipe_walks_nested_values_but_not_keys() -> None:
    response = {
        "id": fresh_text("chatcmpl-", "123"),
        "choices": [
            {
                "message": {
                    "role": fresh_text("assis", "tant"),
                    "content": fresh_text("the ", "answer"),
                }
            },
        ],
        "usage": (fresh_text("tu", "ple"), 17),
    }
    key = next(iter(response))
    assert wipe(response) == 4
    assert key == "id" and list(response) == ["id", "choices", "usage"]
    message = response["choices"][0]["message"]  # type: ignore[index]
    assert message["content"] == "\0" * 10 and message["role"] == "\0" * 9
    assert response["usage"][0] == "\0" * 5  # type: ignore[index]
    assert response["usage"][1] == 17  # type: ignore[index]


def test_wipe_skips_containers_someone_else_holds() -> None:
    shared = [fresh_text("kept ", "by caller")]
    payload = {"messages": shared, "other": [fresh_text("only ", "ours")]}
    assert wipe(payload) == 1
    assert shared[0] == "kept by caller"
    assert payload["other"][0] == "\0" * 9


def test_wipe_terminates_on_cycles() -> None:
    # a list that holds itself is referenced twice: shared, so left alone
    loop: list[object] = [fresh_text("in a ", "cycle")]
    loop.append(loop)
    outer = {"loop": loop, "mine": fresh_text("wiped ", "anyway")}
    del loop
    assert wipe(outer) == 1
    assert outer["mine"] == "\0" * 12
    assert outer["loop"][0] == "in a cycle"  # type: ignore[index]


def test_wipe_refuses_absurd_nesting_with_a_clear_error() -> None:
    deep: list[object] = []
    for _ in range(1000):
        deep = [deep]
    with pytest.raises(RecursionError, match="nested"):
        wipe(deep)


def test_wipe_ignores_other_types() -> None:
    assert wipe(12345678901234567890) == 0
    assert wipe(None) == 0
    assert wipe(3.5) == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def _strings(obj: object) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def _shape(obj: object) -> object:
    """obj with every str replaced by its length: what a wipe must keep."""
    if isinstance(obj, str):
        return len(obj)
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shape(v) for v in obj]
    return obj


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_wipe_property_on_decoded_json(value: object) -> None:
    original = json.dumps(value)
    decoded = json.loads(original)  # fresh objects, as a decrypted answer would be
    top_is_text = isinstance(decoded, str)
    # count without keeping references: a second reference makes a str shared
    expected = sum(len(s) >= 2 for s in _strings(decoded))
    shape = _shape(decoded)
    n = wipe(decoded)
    if top_is_text:
        # a str held by a variable: wiped when it is long enough
        assert n == (1 if len(decoded) >= 2 else 0)
    else:
        assert n == expected
        assert all(set(s) == {"\0"} for s in _strings(decoded) if len(s) >= 2)
    assert _shape(decoded) == shape  # lengths, keys, numbers untouched
    assert json.loads(original) == value  # the source is intact
