"""Soak: a mixed load against a running `deep-recall serve` (anonymous development mode) for a
while, through the Python client, with the server's resident memory sampled every 10 s.

    python bench/soak.py URL SERVER_PID [--minutes 10] [--workers 4]

Each worker is a user of its own that, in a loop, stores messages, searches, deletes an old
session and now and then chats a short answer in one of three chat sessions, deleting the
oldest (so that the data stays the same size and a growing RSS means a leak); a checker user searches at the same time and must never see another
user's words. Prints the RSS samples, the requests done by kind, errors by code, leaks found,
and the RSS growth after warm-up (the last minute's mean against that of the minute ending
half-way) as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

from deep_recall_client import ChatDelta, DeepRecall, DeepRecallError


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("pid", type=int)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    deadline = time.monotonic() + args.minutes * 60
    done: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    leaks: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        client = DeepRecall(args.url, user=f"soak-{n}", retries=1)
        i = 0
        while time.monotonic() < deadline:
            i += 1
            try:
                client.add_messages(
                    f"s{i % 20}",
                    [
                        {
                            "role": "user",
                            "content": f"soak{n} item {i}: I planted tulips.",
                        },
                        {"role": "assistant", "content": f"Noted, soak{n}, item {i}."},
                    ],
                )
                client.search(f"what did soak{n} plant?", top_k=5)
                # Steady state: the oldest of the twenty sessions goes as a new one fills
                # (once there is one: s{i+10} first exists at i = 10).
                kinds = ["add", "search"]
                if i > 10:
                    client.delete_session(f"s{(i + 10) % 20}")
                    kinds.append("delete")
                if i % 10 == 0:
                    # Chat sessions rotate too: of three, the one used two chats ago goes.
                    turn = i // 10
                    if turn >= 3:
                        client.delete_session(f"chat{(turn + 1) % 3}")
                    chunks = client.chat(
                        f"chat{turn % 3}", "What did I plant?", max_tokens=8
                    )
                    if any(isinstance(c, ChatDelta) for c in list(chunks)):
                        kinds.append("chat")
                with lock:
                    done.update(kinds)
            except DeepRecallError as e:
                with lock:
                    errors[e.code] += 1
        client.close()

    def checker() -> None:
        client = DeepRecall(args.url, user="soak-checker", retries=1)
        client.add_memory("The checker likes chess.")
        while time.monotonic() < deadline:
            try:
                hits = client.search("tulips planted by soak", top_k=10)
            except DeepRecallError as e:
                with lock:
                    errors[e.code] += 1
                continue
            with lock:
                done["isolation check"] += 1
                leaks.extend(
                    h.memory.content for h in hits if "soak" in h.memory.content
                )
            time.sleep(0.5)
        client.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.workers)]
    threads.append(threading.Thread(target=checker))
    for t in threads:
        t.start()
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    while any(t.is_alive() for t in threads):
        samples.append(
            (round(time.monotonic() - started, 1), round(rss_mib(args.pid), 1))
        )
        time.sleep(10)
    for t in threads:
        t.join()
    # Growth after warm-up: the last minute against the minute that ends half-way.
    end = samples[-1][0]
    middle = [r for s, r in samples if end / 2 - 60 < s <= end / 2] or [samples[0][1]]
    last = [r for s, r in samples if s > end - 60] or [samples[-1][1]]
    print(
        json.dumps(
            {
                "minutes": args.minutes,
                "rss_mib": samples,
                "rss_growth_mib": round(
                    statistics.mean(last) - statistics.mean(middle), 1
                ),
                "done": dict(done),
                "errors": dict(errors),
                "leaks": leaks[:10],
            }
        )
    )


if __name__ == "__main__":
    main()
