"""A stand-in OpenAI-compatible provider for the tests: a real HTTP server (Python's standard
library only) that answers POST /v1/chat/completions whole or as server-sent events and
POST /v1/embeddings, fails on demand, and records every request it gets.

    python fake_openai.py LOG_FILE [--fail-first N]

It prints its base URL (http://127.0.0.1:PORT/v1) on the first line of standard output. Every
request is appended to LOG_FILE as one JSON line {"path", "authorization", "body"}.

The answer is "Remote answer: " followed by the number of messages and the last message's
first word, in three chunks when streamed, with log-probabilities unless the request's model
is "no-logprobs". POST /control with {"fail": N} makes the next N chat requests fail with 503
(-1: every one from now on; 0: none); {"delay": S} makes every chat answer wait S seconds
first (0: none).

Embeddings are hashed bags of words: 64 numbers, one bucket per word (MD5), L2-normalised, so
that the same text gets the same vector and texts sharing words are close. They are listed in
reverse order with their "index", as a provider may.
"""

import hashlib
import json
import math
import sys
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOCK = threading.Lock()
STATE: dict[str, float] = {"fail": 0, "delay": 0.0}


def embed(text: str) -> list[float]:
    v = [0.0] * 64
    for word in text.lower().split():
        word = word.strip(".,!?;:'\"")
        if word:
            v[hashlib.md5(word.encode()).digest()[0] % 64] += 1.0
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(
        self, status: int, body: Any, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        with LOCK, open(sys.argv[1], "a", encoding="utf-8") as log:
            log.write(
                json.dumps(
                    {
                        "path": self.path,
                        "authorization": self.headers.get("Authorization"),
                        "body": body,
                    }
                )
                + "\n"
            )
        if self.path == "/control":
            with LOCK:
                if "fail" in body:
                    STATE["fail"] = int(body["fail"])
                if "delay" in body:
                    STATE["delay"] = float(body["delay"])
            self._json(200, {"ok": True})
            return
        if self.path == "/v1/embeddings" and isinstance(body, dict):
            texts = body.get("input")
            texts = [texts] if isinstance(texts, str) else texts
            data = [
                {"object": "embedding", "index": i, "embedding": embed(t)}
                for i, t in enumerate(texts or [])
            ]
            self._json(
                200, {"object": "list", "model": body.get("model"), "data": data[::-1]}
            )
            return
        if self.path != "/v1/chat/completions" or not isinstance(body, dict):
            self._json(404, {"error": {"message": "no such route"}})
            return
        with LOCK:
            fail = int(STATE["fail"])
            if fail > 0:
                STATE["fail"] = fail - 1
            delay = STATE["delay"]
        time.sleep(delay)
        if fail != 0:
            self._json(
                503,
                {"error": {"message": "overloaded on purpose"}},
                [("Retry-After", "0")],
            )
            return
        messages = body.get("messages") or []
        last = (messages[-1].get("content") or "") if messages else ""
        first_word = (last.split() or ["nothing"])[0]
        pieces = [
            "Remote answer: ",
            f"{len(messages)} messages, ",
            f"first word {first_word}.",
        ]
        text = "".join(pieces)
        logprobs = body.get("model") != "no-logprobs"
        usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        if not body.get("stream"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
            if logprobs:
                choice["logprobs"] = {"content": [{"token": "x", "logprob": -0.25}] * 4}
            self._json(
                200,
                {
                    "id": "fake-1",
                    "object": "chat.completion",
                    "choices": [choice],
                    "usage": usage,
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()

        def event(obj: dict[str, Any]) -> None:
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        for p in pieces:
            choice = {"index": 0, "delta": {"content": p}, "finish_reason": None}
            if logprobs:
                choice["logprobs"] = {"content": [{"token": p, "logprob": -0.5}]}
            event(
                {"id": "fake-1", "object": "chat.completion.chunk", "choices": [choice]}
            )
        event(
            {
                "id": "fake-1",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
        )
        event(
            {
                "id": "fake-1",
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": usage,
            }
        )
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[2] == "--fail-first":
        STATE["fail"] = int(sys.argv[3])
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
