"""Drives a running Deep Recall server with the official `openai` SDK and prints what came back
as JSON (the Rust test asserts on it). Usage: openai_client.py BASE_URL TOKEN"""

import json
import math
import sys
from typing import Any

import openai
from openai import OpenAI

base, token = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key=token, max_retries=0, timeout=120)
out: dict[str, Any] = {}

out["models"] = [m.id for m in client.models.list().data]
model = out["models"][0]
question: list[Any] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]

r = client.chat.completions.create(
    model=model,
    messages=question,
    max_tokens=24,
    temperature=0,
    extra_headers={"X-Session-Id": "sdk"},
)
out["text"] = r.choices[0].message.content
out["finish"] = r.choices[0].finish_reason
out["usage"] = r.usage.model_dump() if r.usage else None
out["id"] = r.id

stream = client.chat.completions.create(
    model=model,
    messages=question,
    max_tokens=24,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
    extra_headers={"X-Session-Id": "sdk-stream"},
)
deltas: list[str] = []
roles: list[str] = []
finish: str | None = None
usage: dict[str, Any] | None = None
# How many choices the chunks that carry a usage have (OpenAI: one chunk, none).
usage_choices: list[int] = []
for chunk in stream:
    if chunk.choices:
        c = chunk.choices[0]
        if c.delta.role:
            roles.append(c.delta.role)
        if c.delta.content:
            deltas.append(c.delta.content)
        finish = c.finish_reason or finish
    if chunk.usage:
        usage = chunk.usage.model_dump()
        usage_choices.append(len(chunk.choices))
out["stream"] = {
    "deltas": deltas,
    "finish": finish,
    "usage": usage,
    "usage_choices": usage_choices,
    "roles": roles,
}

e = client.embeddings.create(
    model="all-MiniLM-L6-v2",
    input=["A man is eating food.", "A man is eating a piece of bread."],
)
a, b = e.data[0].embedding, e.data[1].embedding
out["embedding_dims"] = len(a)
out["cosine"] = sum(x * y for x, y in zip(a, b)) / (
    math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
)

try:
    client.chat.completions.create(
        model=model, messages=question, max_tokens=4, user="someone-else"
    )
    out["other_user"] = "allowed"
except openai.PermissionDeniedError as err:
    out["other_user"] = err.status_code

try:
    client.chat.completions.create(model=model, messages=[], max_tokens=4)
    out["empty"] = "allowed"
except openai.BadRequestError as err:
    out["empty"] = err.status_code

print(json.dumps(out))
