"""Seal and open: round trips both ways, tampering refused, transients wiped."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nomyo import SecureBuffer, SecurityError, _hybrid
from nomyo._envelope import decode
from tests.conftest import native_only

REQUEST = {
    "model": "echo",
    "messages": [{"role": "user", "content": "Befund: Patientin 4711, Verdacht auf …"}],
    "temperature": 0.2,
}


@pytest.fixture(scope="module")
def router_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 4096)


@pytest.fixture(scope="module")
def client_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def test_request_and_response_round_trip(
    router_key: rsa.RSAPrivateKey, client_key: rsa.RSAPrivateKey
) -> None:
    # client -> router, to the router's 4096-bit key
    sealed = _hybrid.seal_json(REQUEST, router_key.public_key())
    assert _hybrid.open_json(sealed, router_key) == REQUEST
    # router -> client, to the key in X-Public-Key, with processed_at
    answer = {"id": "chatcmpl-1", "choices": [{"message": {"content": "ok"}}]}
    sealed = _hybrid.seal_json(answer, client_key.public_key(), processed_at=1700000000)
    assert _hybrid.open_json(sealed, client_key) == answer
    assert decode(sealed, key_bytes=256).processed_at == 1700000000


def test_open_package_returns_secure_memory(client_key: rsa.RSAPrivateKey) -> None:
    sealed = _hybrid.seal(b"raw plaintext", client_key.public_key())
    with _hybrid.open_package(sealed, client_key) as plain:
        assert isinstance(plain, SecureBuffer)
        assert bytes(memoryview(plain)) == b"raw plaintext"


def test_fresh_key_and_nonce_every_time(client_key: rsa.RSAPrivateKey) -> None:
    first = decode(_hybrid.seal(b"same", client_key.public_key()), key_bytes=256)
    second = decode(_hybrid.seal(b"same", client_key.public_key()), key_bytes=256)
    assert first.nonce != second.nonce
    assert first.wrapped_key != second.wrapped_key
    assert first.ciphertext != second.ciphertext


def test_empty_plaintext(client_key: rsa.RSAPrivateKey) -> None:
    with _hybrid.open_package(_hybrid.seal(b"", client_key.public_key()), client_key) as plain:
        assert len(plain) == 0


def test_wrong_recipient(client_key: rsa.RSAPrivateKey, router_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(65537, 2048)
    sealed = _hybrid.seal_json(REQUEST, client_key.public_key())
    with pytest.raises(SecurityError, match="failed authentication"):
        _hybrid.open_json(sealed, other)
    with pytest.raises(SecurityError, match="failed authentication"):
        _hybrid.open_json(sealed, router_key)  # a key of another size


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=25,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(json_values)
def test_open_of_seal_is_identity(client_key: rsa.RSAPrivateKey, value: Any) -> None:
    sealed = _hybrid.seal_json(value, client_key.public_key())
    assert _hybrid.open_json(sealed, client_key) == value


def _flip(b64: str, bit: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[(bit // 8) % len(raw)] ^= 1 << (bit % 8)
    return base64.b64encode(bytes(raw)).decode()


TAMPERS = {
    "ciphertext": lambda obj, bit: obj["encrypted_payload"].update(
        ciphertext=_flip(obj["encrypted_payload"]["ciphertext"], bit)
    ),
    "nonce": lambda obj, bit: obj["encrypted_payload"].update(
        nonce=_flip(obj["encrypted_payload"]["nonce"], bit)
    ),
    "tag": lambda obj, bit: obj["encrypted_payload"].update(
        tag=_flip(obj["encrypted_payload"]["tag"], bit)
    ),
    "wrapped_key": lambda obj, bit: obj.update(
        encrypted_aes_key=_flip(obj["encrypted_aes_key"], bit)
    ),
    "version": lambda obj, bit: obj.update(version="1." + str(bit % 9 + 1)),
    "algorithm": lambda obj, bit: obj.update(algorithm="hybrid-aes128-rsa" + str(bit)),
    "key_algorithm": lambda obj, bit: obj.update(key_algorithm="RSA-OAEP-SHA1"),
    "payload_algorithm": lambda obj, bit: obj.update(payload_algorithm="AES-256-CBC"),
    "drop_field": lambda obj, bit: obj.pop(sorted(obj)[bit % len(obj)]),
    "ciphertext_type": lambda obj, bit: obj["encrypted_payload"].update(ciphertext=bit),
}


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(field=st.sampled_from(sorted(TAMPERS)), bit=st.integers(min_value=0, max_value=8 * 4096))
def test_every_single_field_tamper_is_refused(
    client_key: rsa.RSAPrivateKey, field: str, bit: int
) -> None:
    sealed = _hybrid.seal_json(REQUEST, client_key.public_key())
    assert _hybrid.open_json(sealed, client_key) == REQUEST  # the control
    obj = json.loads(sealed)
    TAMPERS[field](obj, bit)
    with pytest.raises(SecurityError) as refused:
        _hybrid.open_json(json.dumps(obj).encode(), client_key)
    assert str(refused.value) == _hybrid.OPEN_FAILED  # one message, no oracle


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.data())
def test_every_truncation_is_refused(client_key: rsa.RSAPrivateKey, data: st.DataObject) -> None:
    sealed = _hybrid.seal_json(REQUEST, client_key.public_key())
    cut = data.draw(st.integers(min_value=0, max_value=len(sealed) - 1))
    with pytest.raises(SecurityError):
        _hybrid.open_json(sealed[:cut], client_key)


def test_non_json_plaintext_is_a_security_error(client_key: rsa.RSAPrivateKey) -> None:
    for plaintext in (b"\xff\xfe not utf-8", b"{not json", b"[" * 100_000):
        sealed = _hybrid.seal(plaintext, client_key.public_key())
        with pytest.raises(SecurityError, match="not valid JSON"):
            _hybrid.open_json(sealed, client_key)


def test_transient_copies_are_really_wiped(
    monkeypatch: pytest.MonkeyPatch, client_key: rsa.RSAPrivateKey
) -> None:
    """Every str/bytes the code has to make is zeroed: wipe() returned 1 for
    each, which it only does for an object nothing else refers to."""
    from nomyo import memory

    seen: list[tuple[str, int]] = []

    def spy(obj: object) -> int:
        # this extra frame holds one more reference than wipe() itself sees
        n = memory._wipe_object(obj, memory._TOP_REFS + 1)
        seen.append((type(obj).__name__, n))
        return n

    monkeypatch.setattr(_hybrid, "wipe", spy)
    sealed = _hybrid.seal_json(REQUEST, client_key.public_key())
    if _hybrid._json_size is None:  # no extension: the JSON text, then the raw AES key
        assert seen == [("str", 1), ("bytes", 1)]
    else:  # the JSON is written straight into secure memory: only the raw AES key
        assert seen == [("bytes", 1)]
    seen.clear()
    assert _hybrid.open_json(sealed, client_key) == REQUEST
    if _hybrid._json_parse is None:  # the unwrapped AES key, the decoded JSON text
        assert seen == [("bytes", 1), ("str", 1)]
    else:  # parsed straight from secure memory: only the unwrapped AES key
        assert seen == [("bytes", 1)]


@native_only
def test_unauthenticated_plaintext_is_zeroed(client_key: rsa.RSAPrivateKey) -> None:
    from nomyo import _native

    secret = b"unauthenticated plaintext " * 8
    obj = json.loads(_hybrid.seal(secret, client_key.public_key()))
    obj["encrypted_payload"]["tag"] = _flip(obj["encrypted_payload"]["tag"], 3)
    tampered = json.dumps(obj).encode()
    for before_zero in (True, False):
        with _native.debug_capture(1 << 16, before_zero=before_zero) as captured:
            with pytest.raises(SecurityError):
                _hybrid.open_json(tampered, client_key)
            pages = captured()
        # the capture holds every buffer freed meanwhile: before zeroing, the
        # plaintext buffer held the unauthenticated text; after, nothing is left
        assert (secret in pages) is before_zero


@pytest.mark.parametrize("text", ["plain ascii", "Müller, Straße 5", "東京 🔒", ""])
def test_serialize_writes_exact_utf8(text: str) -> None:
    value = {"content": "".join((text, "!"))}
    with _hybrid.serialize(value) as buf:
        assert (
            bytes(memoryview(buf))
            == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        )


# ------------------------------------------------------------------ serialize (csrc/jsonenc.c)


class _Dict(dict):  # type: ignore[type-arg]
    pass


class _Int(int):
    def __repr__(self) -> str:  # json ignores this: int.__repr__ is what it writes
        return "not a number"


class _Str(str):
    pass


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


_odd_keys = (
    st.text()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.none()
    | st.booleans()
)
_odd_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers().map(_Int)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.text().map(_Str)
    | st.text(alphabet=st.characters(max_codepoint=0x40)),  # escapes, densely
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(_odd_keys, inner, max_size=4)
        | st.dictionaries(st.text(), inner, max_size=4).map(_Dict)
    ),
    max_leaves=30,
)


@settings(max_examples=1000, deadline=None)
@given(_odd_values)
def test_serialize_is_byte_for_byte_json_dumps(value: Any) -> None:
    with _hybrid.serialize(value) as buf:
        assert bytes(memoryview(buf)) == _dumps(value)


def _cycle() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        {"t": float("inf")},
        [float("-inf")],
        {(1, 2): "tuple key"},
        {1, 2},
        b"bytes",
        object(),
        {"a": [1, {"b": _cycle()}]},
        {"k": "\ud800 lone surrogate"},
        {float("nan"): 1},
    ],
)
def test_serialize_refuses_what_json_refuses(value: Any) -> None:
    try:
        _dumps(value)
    except (TypeError, ValueError) as exc:
        expected: type[Exception] = type(exc)
    else:
        raise AssertionError(f"json.dumps took {value!r}")
    if expected is UnicodeEncodeError:  # json writes the surrogate; UTF-8 refuses it
        expected = ValueError
    with pytest.raises(expected):
        _hybrid.serialize(value)


def test_serialize_refuses_absurd_nesting() -> None:
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        _hybrid.serialize(deep)
    with pytest.raises(RecursionError):  # the control: json refuses it the same way
        _dumps(deep)


@native_only
def test_json_into_refuses_a_buffer_of_another_size() -> None:
    # what json_into sees if the object changes after json_size (another thread)
    from nomyo import _native

    value = {"content": "grows"}
    size = _native.json_size(value)
    for wrong in (size - 1, size + 1, 0):
        with pytest.raises(ValueError, match="changed while"):
            _native.json_into(value, bytearray(wrong))
    exact = bytearray(size)
    assert _native.json_into(value, exact) == size and bytes(exact) == _dumps(value)


@native_only
def test_serialize_closes_its_buffer_when_writing_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from nomyo import _native

    made: list[SecureBuffer] = []
    real = _hybrid._buffer

    def spy(size: int, secure: bool, locked: bool = False) -> Any:
        made.append(real(size, secure, locked))
        return made[-1]

    monkeypatch.setattr(_hybrid, "_buffer", spy)
    monkeypatch.setattr(_hybrid, "_json_size", lambda obj: _native.json_size(obj) + 1)
    with pytest.raises(ValueError, match="changed while"):
        _hybrid.serialize({"content": "half written"})
    assert len(made) == 1 and made[0].closed


@native_only
def test_serialize_makes_no_python_copy_of_the_text() -> None:
    import tracemalloc

    text = "".join(["probe ", "x" * (4 << 20)])  # 4 MiB, made before tracing
    value = {"messages": [{"role": "user", "content": text}]}
    tracemalloc.start()
    try:
        with _hybrid.serialize(value):
            ours = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        copy = _dumps(value)
        theirs = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del copy
    assert theirs > 4 << 20  # the control: json.dumps + encode hold copies of the text
    assert ours < 64 << 10  # the secure buffer is mmap'd: nothing the size of the text


# ------------------------------------------------------------------ parse (csrc/jsondec.c)

_json_texts = st.one_of(
    # what our encoder and json.dumps write, compact, indented, ASCII-only
    st.tuples(_odd_values, st.booleans(), st.sampled_from([None, 0, 2])).map(
        lambda t: json.dumps(t[0], ensure_ascii=t[1], indent=t[2])
    ),
    # and raw JSON-ish text, mostly invalid: must fail the same way
    st.text(alphabet='{}[]":,.-+eE0123456789 \t\nabcdefnrtuINalsy\\/é', max_size=40),
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _loads(data: bytes) -> Any:
    """json.loads' verdict on UTF-8 ``data``: the value, or the error class."""
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        return RecursionError
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, the int digit limit
        return ValueError


@native_only
@settings(max_examples=1500, deadline=None)
@given(_json_texts)
def test_parse_is_json_loads(text: str) -> None:
    from nomyo import _native

    data = text.encode("utf-8", "surrogatepass")
    expected = _loads(data)
    try:
        got: Any = _native.json_parse(data)
    except RecursionError:
        got = RecursionError
    except ValueError:
        got = ValueError
    assert _same(got, expected), (text, got, expected)


@native_only
@pytest.mark.parametrize(
    "data",
    [
        b'"\xff"',
        b'"\xc0\x80"',
        b'"\xed\xa0\x80"',
        b'"\xf4\x90\x80\x80"',
        b'"\xe2\x82"',
        b"\xef\xbb\xbf{}",
        b'"a\x00b"',
        b"[" * 100_000,
        b'{"a":1} x',
        b"",
        b"1" * 5000,
    ],
)
def test_parse_refuses_what_json_loads_refuses(data: bytes) -> None:
    from nomyo import _native

    expected = _loads(data)
    assert expected in (ValueError, RecursionError)  # the control: json refuses it too
    with pytest.raises(expected):
        _native.json_parse(data)


@native_only
def test_parse_makes_no_copy_of_the_text() -> None:
    import tracemalloc

    value = {"content": "".join(['Befund:\n"', "x" * (4 << 20), '" — ü €'])}
    data = _dumps(value)
    with SecureBuffer(len(data)) as buf:
        memoryview(buf)[:] = data
        tracemalloc.start()
        try:
            assert _hybrid.parse(buf) == value
            ours = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            assert json.loads(str(memoryview(buf), "utf-8")) == value
            theirs = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    # the answer itself is a UCS-2 str of 8 MiB: json's way holds the text besides
    assert theirs > ours + (4 << 20)  # the control: a decoded copy of the text
    assert ours < (8 << 20) + (64 << 10)  # just the answer's own string


@native_only
@pytest.mark.parametrize(
    "text",
    ['{"a":1,"a":2}', '{"x":{"b":[],"b":{}}}', '[{"k":"v","k":"v"}]', '{"a":{"a":1},"a":3}'],
)
def test_parse_unique_keys_refuses_a_repeated_key(text: str) -> None:
    from nomyo import _native

    assert _native.json_parse(text.encode()) == json.loads(text)  # the control: last wins
    with pytest.raises(ValueError, match="twice"):
        _native.json_parse(text.encode(), True)
    assert _native.json_parse(b'{"a":{"a":1},"b":[{"a":2}]}', True) == {
        "a": {"a": 1},
        "b": [{"a": 2}],
    }


def test_open_refuses_unlockable_buffers_before_decrypting(
    monkeypatch: pytest.MonkeyPatch, client_key: rsa.RSAPrivateKey
) -> None:
    # under ``locked`` both buffers are made before any decryption, so a
    # refusal (here: the plaintext's) leaves the RSA key unused
    sealed = _hybrid.seal_json(REQUEST, client_key.public_key())
    package = decode(sealed, key_bytes=_hybrid.modulus_bytes(client_key))
    made: list[int] = []
    real = _hybrid._buffer

    def refusing(size: int, secure: bool, locked: bool = False) -> Any:
        made.append(size)
        if size != _hybrid.AES_KEY_BYTES:
            raise SecurityError("secure memory could not be locked")
        return real(size, secure, locked)

    decrypted: list[bytes] = []

    class Spy:
        key_size = client_key.key_size

        def decrypt(self, data: bytes, pad: Any) -> bytes:
            decrypted.append(data)
            return client_key.decrypt(data, pad)

    monkeypatch.setattr(_hybrid, "_buffer", refusing)
    with pytest.raises(SecurityError, match="locked"):
        _hybrid.open_decoded(package, Spy(), locked=True)  # type: ignore[arg-type]
    assert made == [_hybrid.AES_KEY_BYTES, len(package.ciphertext)] and decrypted == []
    monkeypatch.setattr(_hybrid, "_buffer", real)  # the control: the same package opens
    opened = _hybrid.open_decoded(package, Spy(), locked=True)  # type: ignore[arg-type]
    with opened:
        assert _hybrid.parse(opened) == REQUEST
    assert len(decrypted) == 1
