#!/usr/bin/env bash
# GPU measurements of the embedder and of local generation, on a CUDA machine that has no Rust
# (the lent GPU machine): build the CUDA bench binaries here, carry them there, run them there.
#
#   scripts/gpu-bench.sh pack     # here: build `--features testing,cuda` benches into .gpu/
#   scripts/gpu-bench.sh run [embed] [bf16] [q4k]   # there (repo root, .gpu/ carried): runs
#                                                  # them (all three by default), writes $OUT/*.txt
#
# `pack` sets up the CUDA 13.0 toolkit from PyPI wheels first (scripts/cuda-toolkit.sh). `run` needs python3 with torch, transformers and
# sentence-transformers (the references) and the driver; model weights are made there: the
# embedder's are MiniLM's shape with random weights (written by transformers from the
# carried config.json and tokenizer), the decoder's Llama 3.2 1B's shape (written by the bench).
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD

pack() {
    # shellcheck disable=SC1090
    source "$(scripts/cuda-toolkit.sh)"
    export CARGO_TARGET_DIR="${DEEP_RECALL_CUDA_TARGET_DIR:-$HOME/.cache/deep-recall/target-cuda}"
    cargo bench -p recall-core --features testing,cuda --bench llm --bench embed --no-run \
        --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("llm", "embed"):
        print(m["target"]["name"], m["executable"])
' > /tmp/gpu-bench-bins.txt
    rm -rf .gpu && mkdir -p .gpu/minilm
    while read -r name exe; do
        strip -o ".gpu/$name" "$exe"
        xz -T2 -6 ".gpu/$name"
    done < /tmp/gpu-bench-bins.txt
    local minilm="${DEEP_RECALL_MODELS_DIR:-$HOME/.cache/deep-recall/models}/all-MiniLM-L6-v2"
    cp -r "$minilm"/{config.json,tokenizer.json,modules.json,sentence_bert_config.json,1_Pooling} \
        .gpu/minilm/ 2>/dev/null || true
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    du -sh .gpu/*
}

run() {
    local parts="${*:-embed bf16 q4k}"
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    local nv
    nv=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
    export LD_LIBRARY_PATH="$nv/cu13/lib:${LD_LIBRARY_PATH:-}"
    # The benches find bench/*.py through the repository path they were built in.
    if [ ! -e /work/main/bench ]; then mkdir -p /work && ln -sfn "$here" /work/main; fi
    local out=${OUT:-/tmp/gpu-bench-out}
    mkdir -p "$out" /tmp/gpu
    for f in .gpu/*.xz; do
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$f" "/tmp/gpu/$(basename "$f" .xz)"
    done
    chmod +x /tmp/gpu/*
    set +e
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
    # MiniLM's shape with random weights (transformers' initialisation), its tokenizer and
    # sentence-transformers files: both engines read the same directory.
    local m=/tmp/gpu/minilm
    rm -rf "$m" && cp -r .gpu/minilm "$m"
    python3 - "$m" <<'PY'
import sys, torch
from transformers import BertConfig, BertModel
torch.manual_seed(0)
d = sys.argv[1]
BertModel(BertConfig.from_pretrained(d)).save_pretrained(d)
PY
    [[ " $parts " == *" embed "* ]] && timeout 150 /tmp/gpu/embed --device cuda --model-dir "$m" \
        --python python3 --texts 1024 2>&1 | tee "$out/embed.txt"
    [[ " $parts " == *" bf16 "* ]] && timeout 200 /tmp/gpu/llm --shape llama-1b --device cuda \
        --model-dir /tmp/gpu/llm-models --python python3 --check 2>&1 | tee "$out/llm-bf16.txt"
    [[ " $parts " == *" bf16-quick "* ]] && timeout 120 /tmp/gpu/llm --shape llama-1b \
        --device cuda --model-dir /tmp/gpu/llm-models 2>&1 | tee "$out/llm-bf16-quick.txt"
    [[ " $parts " == *" q4k "* ]] && timeout 150 /tmp/gpu/llm --shape llama-1b --device cuda \
        --model-dir /tmp/gpu/llm-models --quantize q4k --check 2>&1 | tee "$out/llm-q4k.txt"
    set -e
}

case "${1:-}" in
pack) pack ;;
run)
    shift
    run "$@"
    ;;
*)
    echo "usage: $0 pack|run" >&2
    exit 2
    ;;
esac
