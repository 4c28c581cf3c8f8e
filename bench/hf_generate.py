"""Reference for the LLM benchmark: Hugging Face transformers (PyTorch) generating with the
same GGUF file (dequantized by transformers' GGUF loader) or safetensors directory, the same
prompt token ids and the same number of new tokens. Prints one JSON line.

    python bench/hf_generate.py --gguf FILE --ids 1,2,3 --new-tokens 64 --threads 2
    python bench/hf_generate.py --model-dir DIR --device cuda --ids 1,2,3   # BF16 on a GPU
"""

import argparse
import json
import os
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf")
    ap.add_argument("--model-dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ids", required=True)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if a.device != "cpu" else torch.float32
    if a.gguf:
        d, f = os.path.split(os.path.abspath(a.gguf))
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=dtype)
    model.to(a.device)
    model.eval()
    ids = torch.tensor([[int(x) for x in a.ids.split(",")]], device=a.device)

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    n = ids.shape[1]
    best = None
    with torch.inference_mode():
        model(ids)  # warm-up
        for _ in range(a.repeats):
            sync()
            t0 = time.perf_counter()
            model(ids)
            sync()
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(
                ids,
                max_new_tokens=a.new_tokens,
                min_new_tokens=a.new_tokens,
                do_sample=False,
            )
            sync()
            total = time.perf_counter() - t0
            new = out.shape[1] - n
            decode = max(total - prefill, 1e-9)
            r = {
                "dtype": str(dtype).replace("torch.", ""),
                "prompt_tokens": n,
                "new_tokens": int(new),
                "prefill_tokens_per_s": n / prefill,
                "ttft_ms": prefill * 1000,
                "decode_tokens_per_s": (new - 1) / decode if new > 1 else 0.0,
            }
            if best is None or r["decode_tokens_per_s"] > best["decode_tokens_per_s"]:
                best = r
    print(json.dumps(best))


if __name__ == "__main__":
    main()
