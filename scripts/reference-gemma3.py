"""Writes core/tests/data/reference_gemma3.json: how llama.cpp (llama-cpp-python) reads the
packaged Gemma 3 GGUF — each prompt's token ids, its greedy continuation, and at every step
the logits of the chosen token and of the runner-up (so the Rust test can tell clear choices
from near ties, where two implementations' rounding may pick differently).

Usage: python reference-gemma3.py MODEL.gguf OUT.json
"""

import json
import sys

import llama_cpp
import numpy as np

PROMPTS = [
    "The capital of France is",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "Hello world, this is a test of the tokenizer: 12345 ünïcödé  double  spaces\nnewline",
    "My name is Ana and I live in Porto. I work as a nurse and I love surfing. Where do I live?",
    # Longer than the 512-token sliding window of five layers in six.
    " ".join(
        f"Box {i} is {c} and holds {i * 7 % 13} marbles."
        for i, c in zip(range(90), ["red", "green", "blue", "yellow", "white"] * 18)
    )
    + " Box 3 is",
]
STEPS = 24


def main() -> None:
    model_path, out_path = sys.argv[1], sys.argv[2]
    m = llama_cpp.Llama(
        model_path=model_path,
        n_ctx=2048,
        n_threads=2,
        logits_all=True,
        verbose=False,
    )
    cases = []
    for text in PROMPTS:
        ids = m.tokenize(text.encode(), add_bos=True, special=True)
        m.reset()
        m.eval(ids)
        greedy, chosen, runner_up = [], [], []
        for _ in range(STEPS):
            logits = np.array(m.scores[m.n_tokens - 1], dtype=np.float64)
            order = np.argsort(-logits)
            top, second = int(order[0]), int(order[1])
            greedy.append(top)
            chosen.append(round(float(logits[top]), 4))
            runner_up.append(round(float(logits[second]), 4))
            m.eval([top])
        cases.append(
            {
                "prompt": text,
                "ids": ids,
                "greedy": greedy,
                "chosen_logit": chosen,
                "runner_up_logit": runner_up,
                "text": m.detokenize(greedy).decode(errors="replace"),
            }
        )
    with open(out_path, "w") as f:
        json.dump(
            {"llama_cpp_python": llama_cpp.__version__, "cases": cases}, f, indent=1
        )
        f.write("\n")


if __name__ == "__main__":
    main()
