"""The MCP tests' client: the official MCP Python SDK (`mcp` from PyPI) against
`deep-recall mcp` over standard I/O, or `deep-recall serve` at `/mcp` over streamable HTTP.
It prints what it saw as one JSON object; server/tests/it/mcp.rs asserts on it.

    mcp_client.py stdio BINARY ARG...          one user: every tool, and bad input
    mcp_client.py http URL TOKEN_A TOKEN_B     two users over HTTP, and no credentials
    mcp_client.py keys WAIT BINARY ARG...      two turns, then a text search for the first's
                                               words until the reply (found through its
                                               memory key) comes back or WAIT seconds pass;
                                               the server gets this process's environment
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client


async def call(client: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """A tool call as data: its structured result, the error the model would see (a tool
    error result), or a protocol error."""
    try:
        r = await client.call_tool(name, args)
    except MCPError as e:
        return {"protocol_error": str(e)}
    text = "".join(getattr(c, "text", "") for c in r.content)
    if r.is_error:
        return {"error": text}
    return {"ok": r.structured_content, "text": text}


async def tools(client: Client) -> dict[str, Any]:
    listed = await client.list_tools()
    return {
        t.name: {"input": t.input_schema, "output": t.output_schema}
        for t in listed.tools
    }


async def stdio(binary: str, args: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    params = StdioServerParameters(command=binary, args=args)
    async with Client(params) as client:
        out["server"] = client.server_info.name if client.server_info else None
        out["instructions"] = client.instructions
        out["tools"] = await tools(client)
        out["add_sister"] = await call(
            client,
            "add_memory",
            {
                "content": "My sister Margot lives in Lyon and teaches the violin.",
                "tags": ["family"],
            },
        )
        out["add_allergy"] = await call(
            client,
            "add_memory",
            {"content": "I am allergic to peanuts.", "importance": 0.9},
        )
        out["search"] = await call(
            client,
            "search_memories",
            {"query": "Where does my sister live?", "top_k": 2},
        )
        out["chat"] = await call(
            client,
            "chat",
            {
                "session": "trip",
                "message": "Which city should I visit to see my sister?",
                "max_tokens": 8,
            },
        )
        out["sessions"] = await call(client, "list_sessions", {})
        said = {"query": "Which city should I visit?", "top_k": 10}
        out["search_user_messages"] = await call(
            client,
            "search_memories",
            {**said, "kinds": ["message"], "roles": ["user"]},
        )
        out["search_assistant_messages"] = await call(
            client, "search_memories", {**said, "roles": ["assistant"]}
        )
        out["search_facts"] = await call(
            client, "search_memories", {**said, "kinds": ["fact"]}
        )
        out["search_bad_role"] = await call(
            client, "search_memories", {**said, "roles": ["narrator"]}
        )
        sister = out["add_sister"].get("ok") or {}
        out["delete"] = await call(
            client, "delete_memory", {"id": sister.get("id", "")}
        )
        out["search_after_delete"] = await call(
            client,
            "search_memories",
            {"query": "Where does my sister live?", "top_k": 5},
        )
        out["delete_again"] = await call(
            client, "delete_memory", {"id": sister.get("id", "")}
        )
        out["delete_not_a_number"] = await call(
            client, "delete_memory", {"id": "margot"}
        )
        out["search_too_many"] = await call(
            client, "search_memories", {"query": "x", "top_k": 500}
        )
        out["add_empty"] = await call(client, "add_memory", {"content": "   "})
        out["add_bad_importance"] = await call(
            client, "add_memory", {"content": "ok", "importance": 7}
        )
        out["add_missing_content"] = await call(client, "add_memory", {"tags": ["x"]})
        out["chat_bad_temperature"] = await call(
            client, "chat", {"session": "trip", "message": "hi", "temperature": -3}
        )
        out["chat_too_many_memories"] = await call(
            client, "chat", {"session": "trip", "message": "hi", "memory_top_k": 500}
        )
        await stays_true(client, out)
    return out


async def stays_true(client: Client, out: dict[str, Any]) -> None:
    """A fact replaced by a newer one, searched now, as of before, with its history, by
    metadata and tags; a memory that expires; bad conditions."""
    old = await call(
        client,
        "add_memory",
        {
            "content": "I live in Paris, near the canal.",
            "tags": ["home"],
            "metadata": {"priority": 2, "since": "2019-05-01T00:00:00Z"},
        },
    )
    out["home_old"] = old
    old_id = (old.get("ok") or {}).get("id", "")
    new = await call(
        client,
        "add_memory",
        {
            "content": "I moved to Berlin, to Kreuzberg.",
            "tags": ["home"],
            "metadata": {"priority": 3, "since": "2024-03-01T00:00:00Z"},
            "supersedes": old_id,
        },
    )
    out["home_new"] = new
    where = "Where do I live?"

    async def search(**args: Any) -> dict[str, Any]:
        return await call(
            client, "search_memories", {"query": where, "top_k": 10, **args}
        )

    out["home_now"] = await search()
    out["home_all"] = await search(include_superseded=True)
    times = [
        datetime.fromisoformat(m["ok"]["created_at"]) for m in (old, new) if "ok" in m
    ]
    if len(times) == 2:
        between = (times[0] + (times[1] - times[0]) / 2).isoformat()
        out["home_then"] = await search(as_of=between)
        out["home_written_since"] = await search(include_superseded=True, since=between)
        out["home_written_until"] = await search(include_superseded=True, until=between)
    out["home_priority"] = await search(
        metadata=[{"key": "priority", "op": "gte", "value": 3}]
    )
    out["home_since"] = await search(
        include_superseded=True,
        metadata=[{"key": "since", "op": "lt", "value": "2020-01-01T00:00:00Z"}],
    )
    out["home_tagged"] = await search(tags=["home"], include_superseded=True)
    out["bad_op"] = await search(metadata=[{"key": "priority", "op": "near"}])
    out["supersede_missing"] = await call(
        client, "add_memory", {"content": "x", "supersedes": "999999"}
    )
    out["supersede_twice"] = await call(
        client, "add_memory", {"content": "x", "supersedes": old_id}
    )
    locker = {"query": "locker code", "top_k": 10}
    out["locker"] = await call(
        client,
        "add_memory",
        {"content": "My gym locker code is 4512.", "ttl_seconds": 2},
    )
    soon = datetime.now(UTC) + timedelta(seconds=2)
    out["locker_at"] = await call(
        client,
        "add_memory",
        {"content": "My bike lock code is 7781.", "expires_at": soon.isoformat()},
    )
    out["locker_both"] = await call(
        client,
        "add_memory",
        {"content": "x", "ttl_seconds": 5, "expires_at": soon.isoformat()},
    )
    out["locker_before"] = await call(client, "search_memories", locker)
    await asyncio.sleep(3)
    out["locker_after"] = await call(client, "search_memories", locker)


KEYED_TURN = "We took the ferry across the Tagus estuary to see the old shipyards."
KEYED_REPLY = "Exactly, that's the project."


async def keys(wait: float, binary: str, args: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    params = StdioServerParameters(command=binary, args=args, env=dict(os.environ))
    async with Client(params) as client:
        for name, content in (("turn", KEYED_TURN), ("reply", KEYED_REPLY)):
            out[name] = await call(
                client,
                "add_memory",
                {"content": content, "kind": "message", "session": "harbour"},
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        out["searches"] = 0
        while True:
            found = await call(
                client,
                "search_memories",
                {"query": "Tagus estuary shipyards", "mode": "text", "top_k": 5},
            )
            out["searches"] += 1
            hits = (found.get("ok") or {}).get("hits", [])
            out["found"] = [h["content"] for h in hits]
            out["reply_found"] = any(c == KEYED_REPLY for c in out["found"])
            if out["reply_found"] or loop.time() > deadline or "ok" not in found:
                break
            await asyncio.sleep(0.25)
    return out


def http_client(token: str | None) -> httpx2.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120.0))


async def http(url: str, alice: str, bob: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        async with Client(
            streamable_http_client(url, http_client=http_client(None))
        ) as client:
            out["anonymous"] = {"connected": True, "tools": await tools(client)}
    except Exception as e:  # noqa: BLE001 - any failure to connect is the expected outcome
        out["anonymous"] = {"connected": False, "error": f"{type(e).__name__}: {e}"}
    async with Client(
        streamable_http_client(url, http_client=http_client(alice))
    ) as client:
        out["alice_tools"] = sorted((await tools(client)).keys())
        out["alice_add"] = await call(
            client,
            "add_memory",
            {
                "content": "Alice keeps the spare key under the blue flowerpot.",
                "session": "home",
            },
        )
        out["alice_search"] = await call(
            client, "search_memories", {"query": "where is the spare key?"}
        )
    alice_id = (out["alice_add"].get("ok") or {}).get("id", "")
    async with Client(
        streamable_http_client(url, http_client=http_client(bob))
    ) as client:
        out["bob_search"] = await call(
            client, "search_memories", {"query": "where is the spare key?"}
        )
        out["bob_sessions"] = await call(client, "list_sessions", {})
        out["bob_delete_alice"] = await call(client, "delete_memory", {"id": alice_id})
    async with Client(
        streamable_http_client(url, http_client=http_client(alice))
    ) as client:
        out["alice_search_again"] = await call(
            client, "search_memories", {"query": "where is the spare key?"}
        )
        out["alice_sessions"] = await call(client, "list_sessions", {})
    return out


def main() -> None:
    mode = sys.argv[1]
    if mode == "stdio":
        result = asyncio.run(stdio(sys.argv[2], sys.argv[3:]))
    elif mode == "keys":
        result = asyncio.run(keys(float(sys.argv[2]), sys.argv[3], sys.argv[4:]))
    elif mode == "http":
        result = asyncio.run(http(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
