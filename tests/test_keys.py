"""RSA key pairs: generation, fingerprints, key files (modes, never overwritten,
passwords), refusal of weak and foreign keys, and the wipe of the PEM bytes."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nomyo import SecurityError, _keys, memory, wipe

PASSWORD = "correct horse battery staple"
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
PKCS8 = serialization.PrivateFormat.PKCS8


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def weak_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 1024)


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def plain_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(PEM, PKCS8, serialization.NoEncryption())


def body_lines(pem: bytes) -> list[bytes]:
    """The base64 lines of a PEM: the key material."""
    return [line for line in pem.splitlines() if line and not line.startswith(b"-----")]


def write_file(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_no_secret(exc: BaseException, key: rsa.RSAPrivateKey) -> None:
    """Neither the message nor its cause shows the password or key material."""
    lines = body_lines(plain_pem(key))
    for text in (str(exc), str(exc.__cause__), str(exc.__context__)):
        assert PASSWORD not in text
        assert all(line.decode()[:16] not in text for line in lines)


# ---------------------------------------------------------------- generate


def test_constants() -> None:
    assert (_keys.DEFAULT_KEY_BITS, _keys.MIN_KEY_BITS, _keys.PUBLIC_EXPONENT) == (
        4096,
        2048,
        65537,
    )


def test_default_key_is_4096_bits() -> None:
    generated = _keys.generate_private_key()
    assert generated.key_size == 4096
    assert generated.public_key().public_numbers().e == 65537


def test_2048_bits_is_accepted() -> None:
    assert _keys.generate_private_key(2048).key_size == 2048


@pytest.mark.parametrize("bits", [1024, 2047, 0, -4096])
def test_short_keys_are_refused(bits: int) -> None:
    with pytest.raises(SecurityError, match="2048"):
        _keys.generate_private_key(bits)


@pytest.mark.parametrize("bits", ["4096", 4096.0, True, None])
def test_bits_must_be_an_int(bits: object) -> None:
    with pytest.raises(TypeError, match="bits must be an int"):
        _keys.generate_private_key(bits)  # type: ignore[arg-type]


def _ticks_while(make: Callable[[], object]) -> tuple[object, int]:
    """Run ``make()`` in a coroutine and count how often a concurrent task got
    the event loop meanwhile."""

    async def main() -> tuple[object, int]:
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)  # the ticker has started
        result = make()
        if asyncio.iscoroutine(result):
            result = await result
        counted = ticks
        done = True
        await task
        return result, counted

    return asyncio.run(main())


def test_async_generation_leaves_the_loop_running() -> None:
    generated, ticks = _ticks_while(lambda: _keys.generate_private_key_async(2048))
    assert isinstance(generated, rsa.RSAPrivateKey) and generated.key_size == 2048
    assert ticks > 50
    # the control: generating on the loop's thread starves the ticker
    generated, ticks = _ticks_while(lambda: _keys.generate_private_key(2048))
    assert isinstance(generated, rsa.RSAPrivateKey) and ticks <= 1


def test_async_generation_checks_bits() -> None:
    with pytest.raises(SecurityError):
        asyncio.run(_keys.generate_private_key_async(1024))
    with pytest.raises(TypeError):
        asyncio.run(_keys.generate_private_key_async("4096"))  # type: ignore[arg-type]


# ---------------------------------------------------------------- fingerprint, public PEM


def test_fingerprint_format_and_value(key: rsa.RSAPrivateKey) -> None:
    value = _keys.fingerprint(key)
    prefix, digest = value.split(":")
    assert prefix == "sha256" and len(digest) == 64
    assert digest == digest.lower() and int(digest, 16) >= 0
    der = key.public_key().public_bytes(DER, SPKI)
    assert digest == hashlib.sha256(der).hexdigest()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_fingerprint_matches_openssl(key: rsa.RSAPrivateKey) -> None:
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "DER"],
        input=_keys.public_pem(key),
        capture_output=True,
        check=True,
    ).stdout
    assert _keys.fingerprint(key) == "sha256:" + hashlib.sha256(der).hexdigest()


def test_fingerprint_same_for_both_halves_and_differs_between_keys(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    assert _keys.fingerprint(key) == _keys.fingerprint(key.public_key())
    assert _keys.fingerprint(key) != _keys.fingerprint(other_key)


@pytest.mark.parametrize("function", [_keys.fingerprint, _keys.public_pem])
def test_non_rsa_keys_are_type_errors(function: Callable[[object], object]) -> None:
    with pytest.raises(TypeError, match="RSA"):
        function(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(TypeError, match="RSA"):
        function("-----BEGIN PUBLIC KEY-----")


def test_public_pem_round_trip(key: rsa.RSAPrivateKey) -> None:
    pem = _keys.public_pem(key)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert pem == _keys.public_pem(key.public_key())
    assert _keys.fingerprint(_keys.load_public_key(pem)) == _keys.fingerprint(key)


def test_load_public_key_accepts_str_and_bytes(key: rsa.RSAPrivateKey) -> None:
    pem = _keys.public_pem(key)
    from_bytes = _keys.load_public_key(pem)
    from_str = _keys.load_public_key(pem.decode("ascii"))
    assert isinstance(from_bytes, rsa.RSAPublicKey) and isinstance(from_str, rsa.RSAPublicKey)
    assert (
        from_bytes.public_numbers()
        == from_str.public_numbers()
        == key.public_key().public_numbers()
    )


@pytest.mark.parametrize(
    "pem",
    [
        b"garbage",
        "garbage",
        b"",
        "-----BEGIN PUBLIC KEY-----\n\u00e9\n-----END PUBLIC KEY-----\n",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    ],
)
def test_load_public_key_refuses_garbage(pem: bytes | str) -> None:
    with pytest.raises(ValueError, match="public key"):
        _keys.load_public_key(pem)


def test_load_public_key_refuses_a_private_key(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="public key") as caught:
        _keys.load_public_key(plain_pem(key))
    assert_no_secret(caught.value, key)


def test_load_public_key_type(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(TypeError, match="pem must be bytes or str"):
        _keys.load_public_key(key)  # type: ignore[arg-type]


def test_weak_public_key_is_refused(weak_key: rsa.RSAPrivateKey) -> None:
    pem = weak_key.public_key().public_bytes(PEM, SPKI)
    with pytest.raises(SecurityError, match="1024 bits"):
        _keys.load_public_key(pem)


def test_ec_public_key_is_refused() -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(PEM, SPKI)
    with pytest.raises(SecurityError, match="not an RSA key"):
        _keys.load_public_key(pem)


# ---------------------------------------------------------------- save / load round trips


@pytest.mark.usefixtures("umask0")
def test_round_trip_unencrypted(key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "id.pem"
    _keys.save_private_key(key, path)
    assert mode_of(path) == 0o600
    text = path.read_bytes()
    assert text.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    # the positive control for the encrypted test: the key body is in the file
    assert body_lines(plain_pem(key)) == body_lines(text)
    loaded = _keys.load_private_key(path)
    assert loaded.private_numbers() == key.private_numbers()
    assert os.listdir(tmp_path) == ["id.pem"]


@pytest.mark.usefixtures("umask0")
@pytest.mark.parametrize("password", [PASSWORD, PASSWORD.encode(), "pässwörd ünïcode"])
def test_round_trip_encrypted(
    key: rsa.RSAPrivateKey, tmp_path: Path, password: str | bytes
) -> None:
    path = tmp_path / "id.pem"
    _keys.save_private_key(key, str(path), password=password)
    assert mode_of(path) == 0o600
    text = path.read_bytes()
    assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in text
    assert not any(line in text for line in body_lines(plain_pem(key)))
    loaded = _keys.load_private_key(path, password=password)
    assert loaded.private_numbers() == key.private_numbers()
    other = password.decode() if isinstance(password, bytes) else password.encode()
    assert _keys.load_private_key(path, password=other).private_numbers() == key.private_numbers()
    assert os.listdir(tmp_path) == ["id.pem"]


@pytest.mark.usefixtures("umask0")
def test_public_key_file(key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "id.pub"
    _keys.save_public_key(key, path)
    assert mode_of(path) == 0o644
    assert path.read_bytes() == _keys.public_pem(key)
    assert _keys.fingerprint(_keys.load_public_key(path.read_bytes())) == _keys.fingerprint(key)
    _keys.save_public_key(key.public_key(), tmp_path / "again.pub")
    assert (tmp_path / "again.pub").read_bytes() == path.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["again.pub", "id.pub"]


def test_modes_hold_under_a_restrictive_umask(key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        _keys.save_public_key(key, tmp_path / "id.pub")
        _keys.save_private_key(key, tmp_path / "id.pem")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "id.pub") == 0o644
    assert mode_of(tmp_path / "id.pem") == 0o600


@pytest.mark.usefixtures("umask0")
def test_missing_parent_directories_are_created_0700(
    key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    path = tmp_path / "a" / "b" / "id.pem"
    _keys.save_private_key(key, path)
    assert mode_of(tmp_path / "a") == mode_of(tmp_path / "a" / "b") == 0o700
    assert mode_of(path) == 0o600
    _keys.save_public_key(key, tmp_path / "c" / "id.pub")
    assert mode_of(tmp_path / "c") == 0o700


def test_parent_that_is_a_file_is_an_error(key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        _keys.save_private_key(key, tmp_path / "file" / "id.pem")
    assert os.listdir(tmp_path) == ["file"]


def test_weak_or_foreign_keys_are_not_saved(weak_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="1024 bits"):
        _keys.save_private_key(weak_key, tmp_path / "weak.pem")
    with pytest.raises(SecurityError, match="1024 bits"):
        _keys.save_public_key(weak_key.public_key(), tmp_path / "weak.pub")
    with pytest.raises(TypeError, match="RSA private key"):
        _keys.save_private_key(weak_key.public_key(), tmp_path / "pub.pem")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RSA"):
        _keys.save_private_key(ec.generate_private_key(ec.SECP256R1()), tmp_path / "ec.pem")  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("password", "error"), [("", ValueError), (b"", ValueError), (42, TypeError)]
)
def test_bad_passwords_on_save(
    key: rsa.RSAPrivateKey, tmp_path: Path, password: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="password"):
        _keys.save_private_key(key, tmp_path / "id.pem", password=password)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- never overwritten


def _save_private(key: rsa.RSAPrivateKey, path: Path) -> None:
    _keys.save_private_key(key, path, password=PASSWORD)


@pytest.mark.parametrize("save", [_save_private, _keys.save_public_key])
def test_existing_file_is_never_overwritten(
    key: rsa.RSAPrivateKey, tmp_path: Path, save: Callable[[rsa.RSAPrivateKey, Path], None]
) -> None:
    path = write_file(tmp_path / "id.pem", b"precious contents\n", 0o640)
    with pytest.raises(FileExistsError, match="exists and is left untouched") as caught:
        save(key, path)
    assert caught.value.errno == errno.EEXIST and caught.value.filename == str(path)
    assert path.read_bytes() == b"precious contents\n"
    assert mode_of(path) == 0o640
    assert os.listdir(tmp_path) == ["id.pem"]
    assert_no_secret(caught.value, key)


def test_a_dangling_symlink_is_not_followed(key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    link = tmp_path / "id.pem"
    link.symlink_to(tmp_path / "elsewhere.pem")
    with pytest.raises(FileExistsError):
        _keys.save_private_key(key, link)
    assert link.is_symlink() and not (tmp_path / "elsewhere.pem").exists()
    assert os.listdir(tmp_path) == ["id.pem"]


def test_a_file_appearing_before_the_link_is_kept(
    key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the early existence check misses it (a race); os.link must still refuse
    path = tmp_path / "id.pem"
    monkeypatch.setattr(os.path, "lexists", lambda _p: False)
    write_file(path, b"arrived first\n", 0o600)
    with pytest.raises(FileExistsError, match="left untouched"):
        _keys.save_private_key(key, path)
    assert path.read_bytes() == b"arrived first\n"
    assert os.listdir(tmp_path) == ["id.pem"]


def test_failed_write_leaves_no_temp_file(
    key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        _keys.save_private_key(key, tmp_path / "id.pem")
    assert os.listdir(tmp_path) == []


def test_other_link_errors_propagate(
    key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_link(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "link", broken_link)
    with pytest.raises(OSError, match="simulated"):
        _keys.save_private_key(key, tmp_path / "id.pem")
    assert os.listdir(tmp_path) == []


def _no_hard_links(monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    def refused(src: str, dst: str) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "link", refused)


@pytest.mark.usefixtures("umask0")
@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOTSUP, errno.EXDEV])
def test_without_hard_links_the_file_is_written_in_place(
    key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    _no_hard_links(monkeypatch, err)
    path = tmp_path / "id.pem"
    _keys.save_private_key(key, path, password=PASSWORD)
    assert mode_of(path) == 0o600
    assert os.listdir(tmp_path) == ["id.pem"]
    loaded = _keys.load_private_key(path, password=PASSWORD)
    assert loaded.private_numbers() == key.private_numbers()


def test_without_hard_links_an_existing_file_is_kept(
    key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_hard_links(monkeypatch, errno.EPERM)
    monkeypatch.setattr(os.path, "lexists", lambda _p: False)
    path = write_file(tmp_path / "id.pem", b"arrived first\n", 0o600)
    with pytest.raises(FileExistsError, match="left untouched"):
        _keys.save_private_key(key, path)
    assert path.read_bytes() == b"arrived first\n"
    assert os.listdir(tmp_path) == ["id.pem"]


def test_without_hard_links_a_partial_file_is_removed(
    key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_hard_links(monkeypatch, errno.EPERM)
    real_fsync = os.fsync
    calls = []

    def fsync_fails_second_time(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the first is the temp file's
            raise OSError(errno.EIO, "simulated I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fails_second_time)
    with pytest.raises(OSError, match="simulated"):
        _keys.save_private_key(key, tmp_path / "id.pem")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- file modes on load


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o601, 0o610])
def test_key_files_others_can_access_are_refused(
    key: rsa.RSAPrivateKey, tmp_path: Path, mode: int
) -> None:
    path = write_file(tmp_path / "id.pem", plain_pem(key), mode)
    with pytest.raises(SecurityError, match="chmod 600") as caught:
        _keys.load_private_key(path)
    message = str(caught.value)
    assert f"(mode {mode:04o})" in message and "accessible by others" in message
    assert str(path) in message
    assert_no_secret(caught.value, key)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_key_files_are_accepted(
    key: rsa.RSAPrivateKey, tmp_path: Path, mode: int
) -> None:
    path = write_file(tmp_path / "id.pem", plain_pem(key), mode)
    assert _keys.load_private_key(path).private_numbers() == key.private_numbers()


def test_mode_is_read_from_the_opened_file(key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    # a symlink's own mode (0777) does not matter; the target's does
    target = write_file(tmp_path / "id.pem", plain_pem(key), 0o600)
    link = tmp_path / "link.pem"
    link.symlink_to(target)
    assert _keys.load_private_key(link).private_numbers() == key.private_numbers()
    target.chmod(0o644)
    with pytest.raises(SecurityError, match="chmod 600"):
        _keys.load_private_key(link)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _keys.load_private_key(tmp_path / "nope.pem")


def test_oversized_file_is_not_a_key_file(tmp_path: Path) -> None:
    path = write_file(tmp_path / "big.pem", b"A" * (_keys.MAX_KEY_FILE_BYTES + 1), 0o600)
    with pytest.raises(ValueError, match=r"is not a .*key file: .* bytes, more than"):
        _keys.load_private_key(path)


def test_directories_and_fifos_are_refused_without_blocking(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(ValueError, match="not a regular file"):
        _keys.load_private_key(directory)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ValueError, match="not a regular file"):
        _keys.load_private_key(fifo)


# ---------------------------------------------------------------- owner, type, size of any key file

OTHER_UID = 65534  # nobody
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def finishes_quickly(call: Callable[[], object], seconds: float = 5.0) -> BaseException:
    """The exception ``call`` raises, failing the test if it blocks (a FIFO read)."""
    result: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for more than {seconds} s"
    assert result, "no error raised"
    assert time.monotonic() - started < seconds
    return result[0]


@needs_root
def test_key_files_owned_by_another_user_are_refused(
    key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    private = write_file(tmp_path / "id.pem", plain_pem(key), 0o600)
    public = tmp_path / "id.pub.pem"
    _keys.save_public_key(key, public)
    # the control: the user's own files load
    assert _keys.load_private_key(private).private_numbers() == key.private_numbers()
    assert _keys.fingerprint(_keys.load_public_key_file(public)) == _keys.fingerprint(key)
    for path in (private, public):
        os.chown(path, OTHER_UID, OTHER_UID)
    with pytest.raises(SecurityError, match="owned by uid 65534") as caught:
        _keys.load_private_key(private)
    assert str(private) in str(caught.value)
    assert_no_secret(caught.value, key)
    with pytest.raises(SecurityError, match="owned by uid 65534") as caught:
        _keys.load_public_key_file(public)
    assert str(public) in str(caught.value)
    with pytest.raises(SecurityError, match="owned by uid 65534"):
        _keys.read_key_file(public)


@needs_root
def test_client_key_dir_owned_by_another_user_is_refused_and_kept(
    key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    import nomyo

    folder = tmp_path / "keys"
    _keys.save_private_key(key, folder / "private_key.pem")
    _keys.save_public_key(key, folder / "public_key.pem")
    before = {p.name: (p.read_bytes(), p.stat().st_ino) for p in folder.iterdir()}
    options = {"key_dir": folder, "max_retries": 0}
    nomyo.SyncSecureChatCompletion("https://127.0.0.1:9", **options).close()  # control: loads
    os.chown(folder / "private_key.pem", OTHER_UID, OTHER_UID)
    with pytest.raises(ValueError, match="owned by uid 65534"):
        nomyo.SyncSecureChatCompletion("https://127.0.0.1:9", **options)
    after = {p.name: (p.read_bytes(), p.stat().st_ino) for p in folder.iterdir()}
    assert after == before  # nothing regenerated, replaced or added


@pytest.mark.parametrize("loader", ["private", "public", "read"])
def test_dev_zero_and_fifos_are_refused_quickly(
    tmp_path: Path, key: rsa.RSAPrivateKey, loader: str
) -> None:
    load: Callable[[Path], object] = {
        "private": _keys.load_private_key,
        "public": _keys.load_public_key_file,
        "read": _keys.read_key_file,
    }[loader]
    zero = tmp_path / "public_key.pem"
    zero.symlink_to("/dev/zero")
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo, 0o600)
    directory = tmp_path / "dir.pem"
    directory.mkdir(mode=0o700)
    for path in (zero, fifo, directory):
        caught = finishes_quickly(lambda: load(path))  # noqa: B023 - called at once
        assert isinstance(caught, ValueError), repr(caught)
        assert "not a regular file" in str(caught) and str(path) in str(caught)
    # the control: a real key file at the same kind of path loads
    real = tmp_path / "real.pem"
    if loader == "private":
        write_file(real, plain_pem(key), 0o600)
    else:
        _keys.save_public_key(key, real)
    assert load(real)


def test_oversized_public_key_file_is_refused(key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    pem = _keys.public_pem(key)
    path = write_file(tmp_path / "big.pem", pem + b"\n" * _keys.MAX_KEY_FILE_BYTES, 0o644)
    with pytest.raises(ValueError, match=r"is not a .*key file: .* bytes, more than") as caught:
        _keys.load_public_key_file(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ValueError, match=r"is not a .*key file: .* bytes, more than"):
        _keys.read_key_file(path)
    # the control: the same key without the padding loads
    small = write_file(tmp_path / "small.pem", pem + b"\n" * 16, 0o644)
    assert _keys.fingerprint(_keys.load_public_key_file(small)) == _keys.fingerprint(key)


def test_public_key_file_that_is_not_a_key(tmp_path: Path) -> None:
    path = write_file(tmp_path / "pub.pem", b"not a key\n", 0o644)
    with pytest.raises(ValueError, match=r"public key file .*pub\.pem"):
        _keys.load_public_key_file(path)


def test_garbage_file_is_a_value_error(tmp_path: Path) -> None:
    path = write_file(tmp_path / "id.pem", b"not a key\n", 0o600)
    with pytest.raises(ValueError, match="not a PEM private key"):
        _keys.load_private_key(path)
    # with a password it is still garbage, not a wrong password
    with pytest.raises(ValueError, match="not a PEM private key"):
        _keys.load_private_key(path, password=PASSWORD)


# ---------------------------------------------------------------- passwords on load


def _encrypted_file(key: rsa.RSAPrivateKey, tmp_path: Path, fmt: str) -> Path:
    private_format = {
        "pkcs8": PKCS8,
        "traditional": serialization.PrivateFormat.TraditionalOpenSSL,
    }[fmt]
    data = key.private_bytes(
        PEM, private_format, serialization.BestAvailableEncryption(PASSWORD.encode())
    )
    return write_file(tmp_path / f"{fmt}.pem", data, 0o600)


@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
def test_wrong_password(key: rsa.RSAPrivateKey, tmp_path: Path, fmt: str) -> None:
    path = _encrypted_file(key, tmp_path, fmt)
    with pytest.raises(ValueError, match="wrong password") as caught:
        _keys.load_private_key(path, password=PASSWORD + "!")
    assert str(caught.value) == f"could not decrypt private key file {path}: wrong password"
    assert_no_secret(caught.value, key)
    assert _keys.load_private_key(path, password=PASSWORD).private_numbers() == (
        key.private_numbers()
    )


@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
def test_missing_password(key: rsa.RSAPrivateKey, tmp_path: Path, fmt: str) -> None:
    path = _encrypted_file(key, tmp_path, fmt)
    with pytest.raises(ValueError, match="a password is needed") as caught:
        _keys.load_private_key(path)
    assert_no_secret(caught.value, key)


def test_password_for_an_unencrypted_file(key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    path = write_file(tmp_path / "id.pem", plain_pem(key), 0o600)
    with pytest.raises(ValueError, match="not encrypted") as caught:
        _keys.load_private_key(path, password=PASSWORD)
    assert_no_secret(caught.value, key)


@pytest.mark.parametrize(
    ("password", "error"), [("", ValueError), (b"", ValueError), (42, TypeError)]
)
def test_bad_passwords_on_load(
    key: rsa.RSAPrivateKey, tmp_path: Path, password: object, error: type[Exception]
) -> None:
    path = _encrypted_file(key, tmp_path, "pkcs8")
    with pytest.raises(error, match="password"):
        _keys.load_private_key(path, password=password)  # type: ignore[arg-type]


def test_the_message_check_finds_a_planted_secret(key: rsa.RSAPrivateKey) -> None:
    # the positive control for assert_no_secret
    line = body_lines(plain_pem(key))[3].decode()
    with pytest.raises(AssertionError):
        assert_no_secret(ValueError(f"oops {line}"), key)
    with pytest.raises(AssertionError):
        assert_no_secret(ValueError(f"password {PASSWORD}"), key)


# ---------------------------------------------------------------- weak and foreign key files


def test_weak_private_key_file_is_refused(weak_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    path = write_file(tmp_path / "weak.pem", plain_pem(weak_key), 0o600)
    with pytest.raises(SecurityError, match="1024 bits"):
        _keys.load_private_key(path)


def test_ec_private_key_file_is_refused(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(PEM, PKCS8, serialization.NoEncryption())
    path = write_file(tmp_path / "ec.pem", pem, 0o600)
    with pytest.raises(SecurityError, match="not an RSA key"):
        _keys.load_private_key(path)


# ---------------------------------------------------------------- wiping


class WipeSpy:
    """Stands in for ``_keys.wipe``, with the call shape of ``nomyo.wipe``
    (the caller, one Python frame, then the backend's in-place wipe), so it
    sees the same reference count and returns what ``wipe`` would return."""

    def __init__(self, password: bytes = PASSWORD.encode()) -> None:
        self.password = password
        self.calls: list[tuple[str, int, bool]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        calls, password = self.calls, self.password

        def spy(obj: object) -> int:
            if isinstance(obj, bytes) and obj.startswith(b"-----BEGIN"):
                kind = obj.split(b"\n", 1)[0].decode()
            elif obj == password:
                kind = "password"
            else:
                kind = type(obj).__name__
            result = int(memory._wipe_object(obj, memory._TOP_REFS))
            size = len(obj) if isinstance(obj, bytes) else -1
            calls.append((kind, result, isinstance(obj, bytes) and obj == bytes(size)))
            return result

        monkeypatch.setattr(_keys, "wipe", spy)


def test_the_spy_returns_what_wipe_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = WipeSpy()
    spy.install(monkeypatch)
    spied = vars(_keys)["wipe"]
    for wiper in (wipe, spied):
        alone = b"".join([b"secret ", b"value"])  # made at run time: one reference
        assert wiper(alone) == 1 and alone == bytes(12)
        kept = b"".join([b"secret ", b"value"])
        elsewhere = [kept]
        assert wiper(kept) == 0 and kept == b"secret value" and elsewhere


def test_private_pem_is_wiped_after_save(
    key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = WipeSpy()
    spy.install(monkeypatch)
    _keys.save_private_key(key, tmp_path / "id.pem")
    assert spy.calls == [("-----BEGIN PRIVATE KEY-----", 1, True)]
    # what was written is intact: the wipe came after the write
    monkeypatch.undo()
    assert _keys.load_private_key(tmp_path / "id.pem").private_numbers() == key.private_numbers()


def test_str_password_and_encrypted_pem_are_wiped(
    key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = WipeSpy()
    spy.install(monkeypatch)
    _keys.save_private_key(key, tmp_path / "id.pem", password=PASSWORD)
    assert spy.calls == [("password", 1, True), ("-----BEGIN ENCRYPTED PRIVATE KEY-----", 1, True)]
    spy.calls.clear()
    loaded = _keys.load_private_key(tmp_path / "id.pem", password=PASSWORD)
    assert loaded.private_numbers() == key.private_numbers()
    assert spy.calls == [("password", 1, True)]
    spy.calls.clear()
    with pytest.raises(ValueError, match="wrong password"):
        _keys.load_private_key(tmp_path / "id.pem", password=PASSWORD + "!")
    assert [result for _kind, result, _zeroed in spy.calls] == [1]


def test_callers_bytes_password_is_left_alone(
    key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = WipeSpy()
    spy.install(monkeypatch)
    password = b"".join([b"callers ", b"own password"])
    _keys.save_private_key(key, tmp_path / "id.pem", password=password)
    assert [kind for kind, _r, _z in spy.calls] == ["-----BEGIN ENCRYPTED PRIVATE KEY-----"]
    _keys.load_private_key(tmp_path / "id.pem", password=password)
    assert password == b"callers own password"


def test_pem_is_wiped_when_the_save_fails(
    key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = WipeSpy()
    spy.install(monkeypatch)
    monkeypatch.setattr(os.path, "lexists", lambda _p: False)  # fail at os.link
    path = write_file(tmp_path / "id.pem", b"arrived first\n", 0o600)
    with pytest.raises(FileExistsError):
        _keys.save_private_key(key, path)
    assert spy.calls == [("-----BEGIN PRIVATE KEY-----", 1, True)]
    spy.calls.clear()

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        _keys.save_private_key(key, tmp_path / "other.pem")
    assert spy.calls == [("-----BEGIN PRIVATE KEY-----", 1, True)]


def test_key_file_is_read_into_a_secure_buffer_and_closed(
    key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[memory.SecureBuffer] = []
    real = memory.SecureBuffer

    def recording(size: int) -> memory.SecureBuffer:
        buf = real(size)
        made.append(buf)
        return buf

    monkeypatch.setattr(_keys, "SecureBuffer", recording)
    path = write_file(tmp_path / "id.pem", plain_pem(key), 0o600)
    _keys.load_private_key(path)
    with pytest.raises(ValueError, match="not encrypted"):
        _keys.load_private_key(path, password=PASSWORD)
    assert len(made) == 2
    assert all(buf.closed for buf in made)


def test_nothing_is_written_when_the_file_exists(
    key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_file(tmp_path / "id.pem", b"precious contents\n", 0o600)
    opened: list[str] = []
    real_open = os.open

    def recording_open(name: str, flags: int, mode: int = 0o777) -> int:
        opened.append(name)
        return real_open(name, flags, mode)

    monkeypatch.setattr(os, "open", recording_open)
    with pytest.raises(FileExistsError):
        _keys.save_private_key(key, path)
    assert opened == []


def test_cli_fingerprint_refuses_dev_zero_quickly(
    key: rsa.RSAPrivateKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nomyo._cli import main

    zero = tmp_path / "public_key.pem"
    zero.symlink_to("/dev/zero")
    started = time.monotonic()
    assert main(["keys", "fingerprint", str(zero)]) == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert "not a regular file" in err and str(zero) in err
    real = tmp_path / "real.pem"  # the control
    _keys.save_public_key(key, real)
    assert main(["keys", "fingerprint", str(real)]) == 0
    assert capsys.readouterr().out.strip() == _keys.fingerprint(key)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "other-owner"])
def test_client_key_dir_public_key_is_read_with_the_checks(
    key: rsa.RSAPrivateKey, tmp_path: Path, kind: str
) -> None:
    # the client reads key_dir/public_key.pem through load_public_key_file:
    # /dev/zero (was: MemoryError), a FIFO (was: blocked), another user's file
    import nomyo

    if kind == "other-owner" and os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    folder = tmp_path / "keys"
    _keys.save_private_key(key, folder / "private_key.pem")
    public = folder / "public_key.pem"
    _keys.save_public_key(key, public)
    options = {"key_dir": folder, "max_retries": 0}
    nomyo.SyncSecureChatCompletion("https://127.0.0.1:9", **options).close()  # control: loads
    if kind == "dev-zero":
        public.unlink()
        public.symlink_to("/dev/zero")
        match = "not a regular file"
    elif kind == "fifo":
        public.unlink()
        os.mkfifo(public)
        match = "not a regular file"
    else:
        os.chown(public, OTHER_UID, OTHER_UID)
        match = "owned by uid 65534"
    for cls in (nomyo.SyncSecureChatCompletion, nomyo.SecureChatCompletion):
        error = finishes_quickly(lambda cls=cls: cls("https://127.0.0.1:9", **options))
        assert isinstance(error, ValueError), repr(error)
        assert match in str(error) and str(public) in str(error)
