"""llama.cpp reference for core/benches/llm.rs: the same GGUF file, the same prompt token ids,
the same number of new tokens (greedy, end-of-sequence ignored), the same thread count.

Prints one JSON line: prefill_tokens_per_s, decode_tokens_per_s, ttft_ms (best of three runs
after a warm-up, as the Rust side measures). Needs llama-cpp-python (scripts/llama-cpp-venv.sh).
"""

import argparse
import json
import time

import numpy as np
from llama_cpp import Llama


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--ids", required=True, help="comma-separated prompt token ids")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    ids = [int(t) for t in a.ids.split(",")]
    llm = Llama(
        model_path=a.gguf,
        n_ctx=len(ids) + a.new_tokens + 8,
        n_batch=512,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        verbose=False,
    )

    def run() -> tuple[float, float, float]:
        llm.reset()
        started = time.perf_counter()
        llm.eval(ids)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        first = time.perf_counter()
        for _ in range(a.new_tokens - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        done = time.perf_counter()
        ttft = first - started
        return ttft * 1000, len(ids) / ttft, (a.new_tokens - 1) / (done - first)

    run()  # warm-up
    best = max((run() for _ in range(3)), key=lambda r: r[2])
    print(
        json.dumps(
            {
                "engine": "llama.cpp",
                "dtype": "GGUF",
                "ttft_ms": best[0],
                "prefill_tokens_per_s": best[1],
                "decode_tokens_per_s": best[2],
            }
        )
    )


if __name__ == "__main__":
    main()
