"""Fixtures: a real `deep-recall serve` process (the binary at DEEP_RECALL_BIN, by default the
debug build under CARGO_TARGET_DIR; the models in DEEP_RECALL_MODELS_DIR) on a free port with an
embedded store in a temporary directory, once per test session; HS256 tokens made here with the
standard library; user ids unique to each test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CACHE = Path.home() / ".cache" / "deep-recall"
SECRET = "test-secret-0123456789abcdef"


def _binary() -> Path:
    if os.environ.get("DEEP_RECALL_BIN"):
        return Path(os.environ["DEEP_RECALL_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target"))
    return target / "debug" / "deep-recall"


def _models() -> Path:
    return Path(os.environ.get("DEEP_RECALL_MODELS_DIR", CACHE / "models"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(sub: str, expires_in: float = 3600, secret: str = SECRET) -> str:
    """An HS256 JWT with `sub` and `exp`."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": sub, "exp": int(time.time() + expires_in)}
    payload = _b64(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


class Server:
    """A running server: its base URL and its log."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log


def _start(tmp: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Server]:
    binary = _binary()
    if not binary.is_file():
        raise RuntimeError(
            f"no server binary at {binary}: build it (cargo build -p recall-server) "
            "or set DEEP_RECALL_BIN"
        )
    out, log = tmp / "stdout", tmp / "stderr"
    command = [
        str(binary),
        "--data-dir",
        str(tmp / "data"),
        "--models-dir",
        str(_models()),
        "--device",
        "cpu",
        "serve",
        "--bind",
        "127.0.0.1:0",
        *extra,
    ]
    with out.open("wb") as stdout, log.open("wb") as stderr:
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        first = out.read_text().split("\n", 1)
        if len(first) == 2:
            prefix = "deep-recall: listening on "
            assert first[0].startswith(prefix), first[0]
            return proc, Server(first[0][len(prefix) :].strip(), log)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    tail = log.read_text()[-3000:]
    raise RuntimeError(f"the server did not start ({proc.returncode}):\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that takes JWTs signed with SECRET."""
    proc, s = _start(tmp_path_factory.mktemp("server"), "--jwt-secret", SECRET)
    yield s
    _stop(proc)


@pytest.fixture(scope="session")
def anonymous_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that lets requests without credentials in (`X-User-Id` names the user)."""
    proc, s = _start(
        tmp_path_factory.mktemp("anonymous"), "--allow-anonymous", "--no-chat"
    )
    yield s
    _stop(proc)


@pytest.fixture
def user() -> str:
    """A user id of this test alone."""
    return f"py-client-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def token(user: str) -> str:
    return make_token(user)
