"""Fixtures: a Memory on the embedded store (a temporary directory) and on Postgres (the
database at DATABASE_URL, with user ids unique to the run), over the models in
DEEP_RECALL_MODELS_DIR (scripts/test.sh sets both)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from deep_recall import Memory

ROOT = Path(__file__).resolve().parents[3]


def models_dir() -> str:
    return os.environ.get("DEEP_RECALL_MODELS_DIR", str(ROOT / "models"))


class Store:
    """A memory and a prefix that makes its user ids unique to this test."""

    def __init__(self, memory: Memory, kind: str, url: str | None = None) -> None:
        self.memory = memory
        self.kind = kind
        self.memory_url = url
        self.prefix = f"py-{uuid.uuid4().hex[:8]}-"
        self.users: list[str] = []

    def user(self, name: str) -> str:
        u = self.prefix + name
        self.users.append(u)
        return u


@pytest.fixture(params=["embedded", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = None
    if request.param == "embedded":
        memory = Memory(
            data_dir=str(tmp_path / "data"), models_dir=models_dir(), device="cpu"
        )
    else:
        url = os.environ.get("DATABASE_URL")
        if not url:
            pytest.skip("DATABASE_URL is not set (scripts/test.sh starts a Postgres)")
        memory = Memory(database_url=url, models_dir=models_dir(), device="cpu")
    s = Store(memory, request.param, url)
    yield s
    for u in s.users:
        memory.forget(u)


@pytest.fixture(scope="module")
def chat_memory(tmp_path_factory: pytest.TempPathFactory) -> Memory:
    """An embedded memory whose chat model (the packaged SmolLM2) loads once per module."""
    data = tmp_path_factory.mktemp("chat") / "data"
    return Memory(data_dir=str(data), models_dir=models_dir(), device="cpu")
