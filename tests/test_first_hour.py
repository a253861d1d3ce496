"""The first hour with the ``nomyo`` command, as a new user meets it: each
stumble is one actionable line (or simply works).  Every check looks for the
words that say what to do, so the old message would fail it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import nomyo
from tests.conftest import ROOT
from tests.servers import API_KEY, Endpoint, wait_listening
from tests.test_cli import assert_one_line_error, chat
from tests.test_cli import nomyo as run


@pytest.fixture(scope="module")
def plain_http(
    router_key_file: tuple[Path, rsa.RSAPrivateKey], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`nomyo serve` without TLS (its default), for --allow-http."""
    log = tmp_path_factory.mktemp("plain") / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "nomyo", "serve", "--port", "0",
         "--server-key", str(router_key_file[0]), "--server-key-password-env", "PW"],
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
        env={**os.environ, "PW": "router key password"},
    )  # fmt: skip
    url, _ = wait_listening(process, log)
    yield url
    process.terminate()
    process.wait(15)


# ---------------------------------------------------------------- plain HTTP


def test_plain_http_names_the_flag_before_asking_for_a_model() -> None:
    # no --model: the URL is what is wrong, and said first
    for args in (
        ("chat", "--base-url", "http://127.0.0.1:9", "x"),
        ("keys", "fingerprint", "--server", "http://127.0.0.1:9"),
        ("proxy", "--base-url", "http://127.0.0.1:9", "--listen", "127.0.0.1:0"),
    ):
        proc = run(*args)
        assert_one_line_error(proc, 5)
        assert "--allow-http" in proc.stderr and "allow_http=True" not in proc.stderr
    # the control: with an https URL the missing model is what is said
    proc = run("chat", "--base-url", "https://127.0.0.1:9", "x")
    assert_one_line_error(proc, 2)
    assert "--model" in proc.stderr


def test_allow_http_warns_in_one_clean_line(plain_http: str) -> None:
    proc = run("chat", "--base-url", plain_http, "--allow-http", "--model", "echo", "over http")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "over http\n"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr  # Python's warning is two, with a source line
    assert lines[0].startswith("nomyo: warning: plain HTTP to http://127.0.0.1:")
    assert "--allow-http" in lines[0] and "warnings.warn" not in proc.stderr


def test_other_warnings_are_one_line_too() -> None:
    from nomyo import _cli

    code = (
        "import warnings\n"
        "from nomyo import _cli\n"
        "_cli._doctor = lambda args: warnings.warn('nomyo: memory could not\\n  be locked') or 0\n"
        "parser = _cli.build_parser\n"
        "def build():\n"
        "    p = parser()\n"
        "    p.set_defaults(func=_cli._doctor)\n"
        "    return p\n"
        "_cli.build_parser = build\n"
        "raise SystemExit(_cli.main(['doctor']))\n"
    )
    del _cli
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "nomyo: warning: memory could not be locked\n"


# ---------------------------------------------------------------- unreachable


def test_unreachable_says_why() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: refused
        refused = run("chat", "--base-url", f"https://127.0.0.1:{port}", "--model", "m",
                      "--max-retries", "0", "x")  # fmt: skip
    assert_one_line_error(refused, 3)
    assert "connection refused" in refused.stderr and "ConnectError" not in refused.stderr
    dns = run("chat", "--base-url", "https://no-such-host.invalid", "--model", "m",
              "--max-retries", "0", "x")  # fmt: skip
    assert_one_line_error(dns, 3)
    assert "DNS lookup of the host name failed" in dns.stderr


def test_a_silent_router_is_a_connect_timeout() -> None:
    # accepts TCP, never answers the TLS hello
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        with nomyo.SyncSecureChatCompletion(url, timeout=0.5, max_retries=0) as client:
            with pytest.raises(nomyo.APITimeoutError, match="timed out connecting to"):
                client.fetch_server_public_key()


# ---------------------------------------------------------------- extras, keys, ports


BLOCK_SERVER_EXTRA = (
    "import sys\n"
    "sys.modules['uvicorn'] = None\n"
    "from nomyo._cli import main\n"
    "sys.exit(main([{command!r}]))\n"
)


@pytest.mark.parametrize("command", ["demo", "serve", "proxy"])
def test_without_the_server_extra_one_line(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_SERVER_EXTRA.format(command=command)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert_one_line_error(proc, 1)
    assert f"nomyo {command} needs the server extra: pip install 'nomyo[server]'" in proc.stderr


def test_an_encrypted_key_without_a_password_names_the_option(
    tmp_path: Path, router_key_file: tuple[Path, rsa.RSAPrivateKey]
) -> None:
    encrypted = str(router_key_file[0])
    proc = run("keys", "fingerprint", encrypted)
    assert_one_line_error(proc, 2)
    assert "is encrypted" in proc.stderr and "--password-env" in proc.stderr
    proc = run("serve", "--port", "0", "--server-key", encrypted)
    assert_one_line_error(proc, 2)
    assert "--server-key-password-env" in proc.stderr
    # the control: with the password the same file gives its fingerprint
    proc = run("keys", "fingerprint", encrypted, "--password-env", "PW",
               env={"PW": "router key password"})  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.startswith("sha256:"), proc.stderr


@pytest.mark.parametrize("command", ["serve", "proxy"])
def test_a_port_in_use_is_one_line_and_exit_3(
    command: str, router_key_file: tuple[Path, rsa.RSAPrivateKey]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if command == "serve":
            args = ["serve", "--port", str(port)]
        else:
            args = ["proxy", "--listen", f"127.0.0.1:{port}", "--base-url", "https://127.0.0.1:9"]
        proc = run(*args)
    assert_one_line_error(proc, 3)
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in proc.stderr


def test_a_free_port_is_not_refused() -> None:
    # the control for the check above: a port nobody holds passes it
    from nomyo._cli import _check_free

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _check_free("127.0.0.1", port)


# ---------------------------------------------------------------- chat, demo, docs


def test_a_piped_prompt_gives_no_trailing_blank_line(server: Endpoint) -> None:
    proc = chat(server, "--api-key", API_KEY, stdin="from stdin\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "from stdin\n"
    # the control: a line break inside the prompt is kept
    proc = chat(server, "--api-key", API_KEY, stdin="two\nlines\n\n")
    assert proc.stdout == "two\nlines\n"


def test_demo_and_doctor_agree_on_the_lock_limit() -> None:
    demo = run("demo")
    doctor = run("doctor")
    assert demo.returncode == 0 and doctor.returncode == 0, demo.stderr + doctor.stderr
    shown = re.search(r"RLIMIT_MEMLOCK:\s+(.+)", demo.stdout)
    said = re.search(r"RLIMIT_MEMLOCK: ([^,\n]+)", doctor.stdout)
    assert shown and said, demo.stdout + doctor.stdout
    assert shown.group(1).strip() == said.group(1).strip()


def _options(*command: str) -> set[str]:
    proc = run(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    return set(re.findall(r"(--[a-z][a-z-]+)", proc.stdout)) - {"--help"}


def test_the_readme_and_the_cli_agree_on_options() -> None:
    readme = (ROOT / "README.md").read_text()
    sentences = re.findall(r"`nomyo ([a-z ]+)`(?: and `nomyo ([a-z ]+)`)?\s+takes?\s+([^;.]+)",
                           readme)  # fmt: skip
    assert len(sentences) >= 2, "the README no longer says which options take what"
    for first, second, listed in sentences:
        options = set(re.findall(r"`(--[a-z-]+)", listed))
        for command in filter(None, (first, second)):
            missing = options - _options(*command.split())
            assert not missing, f"README: `nomyo {command}` takes {missing}; the CLI does not"
    # every nomyo command line in the README's examples uses options that exist
    blocks = "\n".join(re.findall(r"```sh\n(.*?)```", readme, re.S))
    lines = re.findall(r"^(nomyo [^\n#]+)", blocks, re.M)
    assert len(lines) >= 10, "the README's examples were not found"
    for line in lines:
        words = line.split()
        command = [w for w in words[1:3] if not w.startswith("-") and w.isalpha()]
        if command[:1] == ["keys"]:
            command = command[:2]
        else:
            command = command[:1]
        used = set(re.findall(r"(--[a-z][a-z-]+)", line))
        missing = used - _options(*command)
        assert not missing, f"README: {line!r} uses {missing}"


def test_the_readme_check_sees_a_wrong_option() -> None:
    # the control: an option a command lacks is caught by the same lookup
    assert "--base-url" not in _options("keys", "fingerprint")
    assert "--base-url" in _options("chat")
