#!/usr/bin/env bash
# Regenerates core/tests/data/reference_embeddings.json: sentence-transformers' vectors of
# all-MiniLM-L6-v2 for a few texts (short, long, truncated at 256 tokens, non-ASCII), which
# core/tests/it/embeddings.rs compares the embedder against. Needs the benchmark venv
# (scripts/bench-venv.sh) and the default models (`deep-recall models fetch`).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${DEEP_RECALL_BENCH_PYTHON:-$(scripts/bench-venv.sh)}"
models="${DEEP_RECALL_MODELS_DIR:-$PWD/models}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
"$python" - "$dir/texts.txt" <<'PY'
import json, sys
texts = [
    "A man is eating food.",
    "I moved to Lisbon from Toronto in March for a job at the aquarium, and my sister visits in May.",
    "Caf\u00e9 au lait, na\u00efve r\u00e9sum\u00e9s \u2014 \u6771\u4eac\u3067\u5bff\u53f8\u3092\u98df\u3079\u305f \U0001F42C!",
    "ok",
    "The estuary was calm and the dolphins came close to the boat. " * 40,
    "My climbing partner Emma booked the trip to the Azores in August to see whales, "
    "but the boat engine broke down again and we spent two days in Ponta Delgada.",
]
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for t in texts:
        f.write(json.dumps({"content": t}) + "\n")
PY
"$python" bench/st_embed.py --model-dir "$models/all-MiniLM-L6-v2" --texts "$dir/texts.txt" \
  --dump-first 100 >"$dir/vectors.jsonl"
"$python" - "$dir/texts.txt" "$dir/vectors.jsonl" core/tests/data/reference_embeddings.json <<'PY'
import json, sys
import sentence_transformers
texts = [json.loads(l)["content"] for l in open(sys.argv[1], encoding="utf-8")]
vectors = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
assert len(vectors) == len(texts), (len(vectors), len(texts))
out = {
    "model": "all-MiniLM-L6-v2",
    "generator": f"sentence-transformers {sentence_transformers.__version__} (scripts/reference-embeddings.sh)",
    "texts": texts,
    "vectors": [[float(f"{x:.8g}") for x in v] for v in vectors],
}
with open(sys.argv[3], "w", encoding="utf-8") as f:
    json.dump(out, f, ensure_ascii=False)
    f.write("\n")
PY
echo "wrote core/tests/data/reference_embeddings.json"
