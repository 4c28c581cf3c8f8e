"""Embedding-speed reference: Python sentence-transformers on a local model directory.

    python bench/st_embed.py --model-dir DIR --texts FILE --batch-sizes 1,32 [--threads 2]
                             [--limit N] [--repeat R] [--dump-first K]
                             [--device cuda [--dtype float16]] [--queries FILE]

FILE holds one text per line; JSON Lines objects with a "content" field are accepted too.
Prints one JSON object per batch size (best of R timed runs, after a warm-up). With
--dump-first K it prints instead the embeddings of the first K texts, one JSON list per line.
With --queries FILE it also prints the p50/p95 latency (ms) of embedding each of its lines
alone. --device picks PyTorch's device (cpu by default), --dtype the weights' type there.
Runs offline. Use the venv from scripts/bench-venv.sh.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sentence_transformers as st
import torch


def read_texts(path, limit):
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.lstrip().startswith("{"):
                try:
                    line = json.loads(line)["content"]
                except (ValueError, KeyError):
                    pass
            if line.strip():
                texts.append(line)
    return texts[:limit] if limit else texts


def load_model(model_dir, device="cpu"):
    if os.path.exists(os.path.join(model_dir, "modules.json")):
        return st.SentenceTransformer(model_dir, device=device, local_files_only=True)
    # Bare Hugging Face directory (config.json, tokenizer.json, model.safetensors): build the
    # all-MiniLM-style pipeline by hand: masked mean pooling, then L2 normalisation.
    try:
        from sentence_transformers.sentence_transformer.modules import (
            Normalize,
            Pooling,
            Transformer,
        )
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Normalize, Pooling, Transformer
    transformer = Transformer(model_dir, max_seq_length=256)
    dim = (
        getattr(transformer, "get_embedding_dimension", None)
        or transformer.get_word_embedding_dimension
    )
    pooling = Pooling(dim(), "mean")
    return st.SentenceTransformer(
        modules=[transformer, pooling, Normalize()], device=device
    )


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--texts", required=True)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N texts")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="timed runs per batch size; the best counts",
    )
    ap.add_argument(
        "--dump-first",
        type=int,
        default=0,
        metavar="K",
        help="print K embeddings and exit",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16"]
    )
    ap.add_argument("--queries", help="one question per line: time each alone")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    texts = read_texts(args.texts, args.limit)
    if not texts:
        sys.exit(f"no texts in {args.texts}")
    model = load_model(args.model_dir, args.device)
    if args.dtype != "float32":
        model = model.to(getattr(torch, args.dtype))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    encode = lambda batch, bs: model.encode(
        batch, batch_size=bs, convert_to_numpy=True, show_progress_bar=False
    )

    if args.dump_first:
        for row in encode(texts[: args.dump_first], 32):
            print(json.dumps([float(x) for x in row]))
        return

    encode(texts[:64], 32)  # warm-up: allocator, thread pool, first-call paths
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        encode(texts[: max(bs, 8)], bs)
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            encode(texts, bs)
            sync()
            best = min(best, time.perf_counter() - start)
        print(
            json.dumps(
                {
                    "impl": "sentence-transformers",
                    "batch_size": bs,
                    "sentences": len(texts),
                    "seconds": round(best, 4),
                    "sentences_per_s": round(len(texts) / best, 2),
                    "threads": torch.get_num_threads(),
                    "device": args.device,
                    "dtype": args.dtype,
                    "torch": torch.__version__,
                    "sentence_transformers": st.__version__,
                    "max_seq_length": model.max_seq_length,
                }
            ),
            flush=True,
        )
    if args.queries:
        queries = read_texts(args.queries, 0)
        encode(queries[:1], 1)
        times = []
        for q in queries:
            start = time.perf_counter()
            encode([q], 1)
            sync()
            times.append((time.perf_counter() - start) * 1000.0)
        times.sort()
        pick = lambda p: times[round((len(times) - 1) * p)]
        print(
            json.dumps(
                {
                    "impl": "sentence-transformers",
                    "queries": len(times),
                    "query_p50_ms": round(pick(0.5), 3),
                    "query_p95_ms": round(pick(0.95), 3),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
