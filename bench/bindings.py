"""The Python package's side of `cargo bench --bench bindings`: hybrid searches on an existing
embedded store, timed per call; prints {"p50", "p95"} in milliseconds."""

from __future__ import annotations

import argparse
import json
import time

from deep_recall import Memory


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--queries", required=True)
    args = ap.parse_args()
    with open(args.queries, encoding="utf-8") as f:
        queries: list[str] = json.load(f)
    memory = Memory(data_dir=args.data_dir, models_dir=args.models_dir, device="cpu")
    memory.search("bench", "warm up")
    times = []
    for q in queries:
        started = time.perf_counter()
        memory.search("bench", q)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    pick = lambda p: times[round((len(times) - 1) * p)]
    print(json.dumps({"p50": pick(0.5), "p95": pick(0.95)}))


if __name__ == "__main__":
    main()
