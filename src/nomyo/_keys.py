"""RSA key pairs: generate, load, save, fingerprint; encrypts nothing.

Key files are written once and never replaced::

    key.private_bytes() ──> .NAME.RANDOM.tmp   O_CREAT|O_EXCL, fchmod, fsync
                                  │ os.link     atomic; fails if NAME exists
                                  ▼
                                 NAME          then the temp name is unlinked
                                               and the directory fsynced

A private key is read back into a :class:`nomyo.SecureBuffer`, never into a
Python ``bytes``; the PEM ``bytes`` that ``private_bytes()`` returns, and a
password given as ``str`` once encoded, are wiped in place after use.  What
cannot be wiped: the copies OpenSSL makes while parsing and serialising, and
the key object itself, which lives in OpenSSL's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import secrets
import shlex
import stat
from collections.abc import Iterator

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ._constants import DEFAULT_KEY_BITS, MAX_KEY_FILE_BYTES, MIN_KEY_BITS, PUBLIC_EXPONENT
from ._exceptions import SecurityError
from .memory import SecureBuffer, wipe

__all__ = [
    "DEFAULT_KEY_BITS",
    "MAX_KEY_FILE_BYTES",
    "MIN_KEY_BITS",
    "PUBLIC_EXPONENT",
    "fingerprint",
    "generate_private_key",
    "generate_private_key_async",
    "load_private_key",
    "load_public_key",
    "load_public_key_file",
    "public_pem",
    "read_key_file",
    "save_private_key",
    "save_public_key",
    "secret_file",
]

_PRIVATE_FILE_MODE = 0o600
_PUBLIC_FILE_MODE = 0o644
_KEY_DIR_MODE = 0o700
#: os.link errors meaning "this file system has no hard links": write in place
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV})
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO at the path must not hang open(); regular files ignore it
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


# ---------------------------------------------------------------- generate


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, not {type(bits).__name__}")
    if bits < MIN_KEY_BITS:
        raise SecurityError(
            f"RSA keys under {MIN_KEY_BITS} bits are refused (asked for {bits} bits)"
        )
    return bits


def generate_private_key(bits: int = DEFAULT_KEY_BITS) -> rsa.RSAPrivateKey:
    """Generate a new RSA private key with public exponent ``PUBLIC_EXPONENT``.

    This takes about a second for 4096 bits and blocks the calling thread;
    in async code use :func:`generate_private_key_async`.

    :param bits: the modulus size, at least ``MIN_KEY_BITS``.
    :raises TypeError: ``bits`` is not an int.
    :raises nomyo.SecurityError: ``bits`` is under ``MIN_KEY_BITS``.
    """
    return rsa.generate_private_key(PUBLIC_EXPONENT, _check_bits(bits))


async def generate_private_key_async(bits: int = DEFAULT_KEY_BITS) -> rsa.RSAPrivateKey:
    """:func:`generate_private_key` in a worker thread, off the event loop.

    :param bits: the modulus size, at least ``MIN_KEY_BITS``.
    :raises TypeError: ``bits`` is not an int.
    :raises nomyo.SecurityError: ``bits`` is under ``MIN_KEY_BITS``.
    """
    return await asyncio.to_thread(generate_private_key, _check_bits(bits))


# ---------------------------------------------------------------- public half


def _public_of(key: object) -> rsa.RSAPublicKey:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return key
    raise TypeError(f"key must be an RSA public or private key, not {type(key).__name__}")


def fingerprint(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> str:
    """The key's fingerprint: ``"sha256:"`` and the lowercase hex SHA-256 of
    the DER SubjectPublicKeyInfo of its public half (what a pin compares).

    :param key: an RSA public key, or a private key (its public half is used).
    :raises TypeError: ``key`` is not an RSA key.
    """
    der = _public_of(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def public_pem(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> bytes:
    """The public half as SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``).

    :param key: an RSA public key, or a private key (its public half is used).
    :raises TypeError: ``key`` is not an RSA key.
    """
    return _public_of(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_loaded(key: object, what: str) -> None:
    """Refuse a key read from outside that is not RSA or too short."""
    if not isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        raise SecurityError(f"{what} is not an RSA key ({type(key).__name__})")
    if key.key_size < MIN_KEY_BITS:
        raise SecurityError(
            f"{what} has {key.key_size} bits: RSA keys under {MIN_KEY_BITS} bits are refused"
        )


def load_public_key(pem: bytes | str) -> rsa.RSAPublicKey:
    """Parse an RSA public key from PEM (``-----BEGIN PUBLIC KEY-----``).

    :param pem: the PEM text, as ``bytes`` or ``str``.
    :raises TypeError: ``pem`` is neither bytes nor str.
    :raises ValueError: ``pem`` is not a PEM public key.
    :raises nomyo.SecurityError: the key is not RSA, or is under ``MIN_KEY_BITS``.
    """
    if isinstance(pem, str):
        try:
            data: bytes | bytearray | memoryview = pem.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("the public key is not PEM: PEM is ASCII text") from None
    elif isinstance(pem, (bytes, bytearray, memoryview)):
        data = pem
    else:
        raise TypeError(f"pem must be bytes or str, not {type(pem).__name__}")
    try:
        key = serialization.load_pem_public_key(bytes(data))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(
            "the public key could not be parsed: expected PEM with -----BEGIN PUBLIC KEY-----"
        ) from exc
    _check_loaded(key, "the public key")
    assert isinstance(key, rsa.RSAPublicKey)
    return key


# ---------------------------------------------------------------- writing key files


def _fspath(path: str | os.PathLike[str]) -> str:
    name: object = os.fspath(path)
    if not isinstance(name, str):  # a bytes path, against the annotation
        raise TypeError(f"path must be a str or os.PathLike[str], not {type(name).__name__}")
    return name


def _exists(path: str) -> FileExistsError:
    return FileExistsError(
        errno.EEXIST, "the file exists and is left untouched (key files are never replaced)", path
    )


def _write_all(fd: int, data: memoryview) -> None:
    # slices are temporaries only: once this returns or raises, nothing here
    # still holds the buffer, so the caller can release it and wipe its bytes
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])


def _fill_new_fd(fd: int, data: memoryview, mode: int) -> None:
    os.fchmod(fd, mode)  # exactly this mode, whatever the umask
    _write_all(fd, data)
    os.fsync(fd)


def _write_in_place(path: str, data: memoryview, mode: int) -> None:
    """The fallback without hard links: create ``path`` exclusively and fill
    it; a partly written file is removed (it is ours: O_EXCL created it)."""
    try:
        fd = os.open(path, _CREATE_FLAGS, mode)
    except FileExistsError:
        raise _exists(path) from None
    try:
        try:
            _fill_new_fd(fd, data, mode)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _fsync_directory(directory: str) -> None:
    # best effort: the file is already in place; some file systems refuse this
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_directory(directory: str) -> None:
    """Create ``directory`` and its missing parents, each with mode 0700
    (``os.makedirs`` gives the parents the default mode, 0777 under umask 0)."""
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory)
    if parent != directory:
        _make_directory(parent)
    try:
        os.mkdir(directory, _KEY_DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(directory):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), directory) from None
    else:
        os.chmod(directory, _KEY_DIR_MODE)  # exactly 0700, whatever the umask


def _write_new_file(path: str, data: memoryview, mode: int) -> None:
    """Write ``data`` to a new file ``path`` with exactly ``mode``, atomically,
    refusing to replace anything already there."""
    directory = os.path.dirname(os.path.abspath(path))
    _make_directory(directory)
    if os.path.lexists(path):  # early, so no secret is written for nothing
        raise _exists(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, _CREATE_FLAGS, _PRIVATE_FILE_MODE)
    linked = False
    try:
        try:
            _fill_new_fd(fd, data, mode)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and never replaces an existing name
        except FileExistsError:
            raise _exists(path) from None
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
        else:
            linked = True
    finally:
        os.unlink(tmp)
    if not linked:
        _write_in_place(path, data, mode)
    _fsync_directory(directory)


def _encode_password(password: object) -> bytes | None:
    """``None``, the caller's ``bytes`` itself, or a new ``bytes`` from a str."""
    if password is None:
        return None
    if isinstance(password, str):
        encoded = password.encode("utf-8")
    elif isinstance(password, bytes):
        encoded = password
    else:
        raise TypeError(f"password must be str, bytes or None, not {type(password).__name__}")
    if not encoded:
        raise ValueError("password must not be empty (pass password=None for no password)")
    return encoded


def _encryption(password: bytes | None) -> serialization.KeySerializationEncryption:
    if password is None:
        return serialization.NoEncryption()
    return serialization.BestAvailableEncryption(password)


def save_private_key(
    key: rsa.RSAPrivateKey,
    path: str | os.PathLike[str],
    *,
    password: str | bytes | None = None,
) -> None:
    """Write ``key`` to a new file ``path`` as PKCS#8 PEM, mode 0600.

    The file is created atomically (a temporary file in the same directory,
    hard-linked into place) and an existing file is never replaced.  Missing
    parent directories are created with mode 0700.  The PEM ``bytes`` is
    wiped in place once written.

    :param key: the RSA private key, at least ``MIN_KEY_BITS``.
    :param path: the new file.
    :param password: encrypt the file with it (``BestAvailableEncryption``).
        A ``str`` is encoded as UTF-8 and that encoded copy is wiped after
        use; the ``str`` itself, like a ``bytes`` password, is the caller's
        and is left as it is.
    :raises TypeError: ``key`` is not an RSA private key, or ``password`` is
        neither str, bytes nor None.
    :raises ValueError: ``password`` is empty.
    :raises nomyo.SecurityError: ``key`` is under ``MIN_KEY_BITS``.
    :raises FileExistsError: ``path`` exists; it is left untouched.
    :raises OSError: the file or its directory could not be written.
    """
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError(f"key must be an RSA private key, not {type(key).__name__}")
    _check_loaded(key, "the key")
    name = _fspath(path)
    encoded = _encode_password(password)
    try:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _encryption(encoded)
        )
    finally:
        if encoded is not None and encoded is not password:
            wipe(encoded)
    # `pem` must stay this frame's only reference, or wipe() would skip it:
    # the view is released before the wipe, even when the write failed
    try:
        with memoryview(pem) as view:
            _write_new_file(name, view, _PRIVATE_FILE_MODE)
    finally:
        wipe(pem)


def save_public_key(
    key: rsa.RSAPublicKey | rsa.RSAPrivateKey, path: str | os.PathLike[str]
) -> None:
    """Write the public half of ``key`` to a new file ``path`` as
    SubjectPublicKeyInfo PEM, mode 0644, with the same rules as
    :func:`save_private_key`: atomic, and never replacing a file.

    :param key: an RSA public key, or a private key (its public half is saved).
    :raises TypeError: ``key`` is not an RSA key.
    :raises nomyo.SecurityError: ``key`` is under ``MIN_KEY_BITS``.
    :raises FileExistsError: ``path`` exists; it is left untouched.
    :raises OSError: the file or its directory could not be written.
    """
    public = _public_of(key)
    _check_loaded(public, "the key")
    name = _fspath(path)
    with memoryview(public_pem(public)) as view:
        _write_new_file(name, view, _PUBLIC_FILE_MODE)


# ---------------------------------------------------------------- reading key files


def _read_into(fd: int, view: memoryview) -> int:
    filled = 0
    while filled < len(view):
        got = os.readv(fd, [view[filled:]])
        if not got:
            break
        filled += got
    return filled


def _refuse_unless_owned(path: str, info: os.stat_result, what: str) -> None:
    """Like ssh: a key file another user owns could be replaced or read by them."""
    me = os.geteuid()
    if info.st_uid != me:
        raise SecurityError(
            f"{what} {path} is owned by uid {info.st_uid}, not by this user (uid {me}): "
            "key files must be the user's own"
        )


@contextlib.contextmanager
def _key_file(
    path: str,
    what: str = "private key file",
    *,
    private: bool = True,
    max_bytes: int = MAX_KEY_FILE_BYTES,
) -> Iterator[memoryview]:
    """The contents of a key file, in a SecureBuffer closed on exit.

    Refused before any byte is read: anything but a regular file (a FIFO,
    /dev/zero, a directory; opened without blocking), a file another user
    owns, a file over ``MAX_KEY_FILE_BYTES`` and, with ``private``, a file
    the group or others can access.
    """
    fd = os.open(path, _READ_FLAGS)
    try:
        info = os.fstat(fd)  # of the file opened: no race with a rename
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{what} {path} is not a regular file")
        _refuse_unless_owned(path, info, what)
        mode = stat.S_IMODE(info.st_mode)
        if private and mode & 0o077:
            quoted = shlex.quote(path)
            raise SecurityError(
                f"{what} {path} is accessible by others (mode {mode:04o}); run: chmod 600 {quoted}"
            )
        if info.st_size > max_bytes:
            raise ValueError(f"{path} is not a {what}: {info.st_size} bytes, more than {max_bytes}")
        # one byte more than fstat said, to notice a file that grew meanwhile
        with SecureBuffer(info.st_size + 1) as buf, memoryview(buf) as whole:
            length = _read_into(fd, whole)
            if length > info.st_size:
                raise ValueError(f"{what} {path} changed while it was read")
            with whole[:length] as contents:
                yield contents
    finally:
        os.close(fd)


@contextlib.contextmanager
def secret_file(path: str | os.PathLike[str], what: str, max_bytes: int) -> Iterator[memoryview]:
    """The contents of a small secret file (an API key file), with the checks
    of a private key file, in a SecureBuffer zeroed on exit.

    :raises FileNotFoundError: ``path`` does not exist.
    :raises ValueError: not a regular file, or over ``max_bytes``.
    :raises nomyo.SecurityError: owned by another user, or accessible by the
        group or others.
    """
    with _key_file(_fspath(path), what, max_bytes=max_bytes) as contents:
        yield contents


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a key file (public or private, for a look at what it is),
    with the checks of :func:`load_public_key_file`.

    :raises FileNotFoundError: ``path`` does not exist.
    :raises ValueError: not a regular file, or over ``MAX_KEY_FILE_BYTES``.
    :raises nomyo.SecurityError: the file is owned by another user.
    """
    with _key_file(_fspath(path), "key file", private=False) as contents:
        return bytes(contents)


def load_public_key_file(path: str | os.PathLike[str]) -> rsa.RSAPublicKey:
    """Read an RSA public key from a PEM file.

    The file must be a regular file (a FIFO or a device is refused without
    blocking), owned by this user and at most ``MAX_KEY_FILE_BYTES``.

    :raises FileNotFoundError: ``path`` does not exist.
    :raises ValueError: not a regular file, over ``MAX_KEY_FILE_BYTES``, or
        not a PEM public key.
    :raises nomyo.SecurityError: the file is owned by another user, or the
        key is not RSA, or is under ``MIN_KEY_BITS``.
    """
    name = _fspath(path)
    with _key_file(name, "public key file", private=False) as contents:
        try:
            return load_public_key(bytes(contents))
        except ValueError as exc:
            raise ValueError(f"public key file {name}: {exc}") from exc


def _is_encrypted(pem: memoryview) -> bool:
    """Whether cryptography sees an encrypted private key (it asks for a password)."""
    try:
        serialization.load_pem_private_key(pem, None)
    except TypeError:
        return True
    except (ValueError, UnsupportedAlgorithm):
        return False
    return False


def _load_error(exc: Exception, pem: memoryview, path: str, *, with_password: bool) -> Exception:
    """The error to raise when cryptography could not load ``pem``; no secret in it."""
    if isinstance(exc, TypeError):  # documented: the password does not fit the file
        if with_password:
            return ValueError(f"private key file {path} is not encrypted, but a password was given")
        return ValueError(f"private key file {path} is encrypted: a password is needed")
    if with_password and _is_encrypted(pem):
        return ValueError(f"could not decrypt private key file {path}: wrong password")
    return ValueError(f"{path} is not a PEM private key (it could not be parsed)")


def load_private_key(
    path: str | os.PathLike[str], *, password: str | bytes | None = None
) -> rsa.RSAPrivateKey:
    """Read an RSA private key from a PEM file, refusing one others can read.

    Like ssh, a file whose mode gives the group or others any access is
    refused, and so is one owned by another user; anything but a regular
    file (a FIFO, a device, a directory) is refused without blocking, before
    a byte is read.  The file is read into a :class:`nomyo.SecureBuffer`, closed
    (zeroed) once the key is parsed.

    :param path: the key file (PKCS#8 or traditional OpenSSL PEM).
    :param password: the file's password.  A ``str`` is encoded as UTF-8
        and that encoded copy is wiped after use; the ``str`` itself, like a
        ``bytes`` password, is the caller's and is left as it is.
    :raises TypeError: ``password`` is neither str, bytes nor None.
    :raises FileNotFoundError: ``path`` does not exist.
    :raises ValueError: the password is empty, wrong, missing for an
        encrypted file or given for an unencrypted one; or the file is not a
        regular file, is over ``MAX_KEY_FILE_BYTES``, or is not a PEM
        private key.
    :raises nomyo.SecurityError: the file is accessible by group or others,
        or is owned by another user, or the key is not RSA, or is under
        ``MIN_KEY_BITS``.
    """
    name = _fspath(path)
    encoded = _encode_password(password)
    try:
        with _key_file(name) as pem:
            try:
                key = serialization.load_pem_private_key(pem, encoded)
            except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
                raise _load_error(exc, pem, name, with_password=encoded is not None) from exc
    finally:
        # this frame holds the only reference: nothing below kept the password
        if encoded is not None and encoded is not password:
            wipe(encoded)
    _check_loaded(key, f"private key file {name}")
    assert isinstance(key, rsa.RSAPrivateKey)
    return key
