"""Reference token ids of byte-level GGUF vocabularies, from Hugging Face `transformers`' GGUF
tokenizer loader.

Usage: reference-tokens.py DIR OUT_JSON
DIR holds the GGUF files written by the Rust test `write_vocabulary_ggufs_for_reference` (one
per pre-tokenizer name, tokenizer metadata only) and texts.json. Records, for each file, the ids
of each text without special tokens added.
"""

import json
import sys
from pathlib import Path

import transformers
from transformers.integrations.gguf.gguf_tokenizer_mapping import (
    convert_gguf_tokenizer,
    get_gguf_tokenizer,
)

root, out = Path(sys.argv[1]), Path(sys.argv[2])
texts = json.loads((root / "texts.json").read_text())
result = {
    "_generated_by": f"transformers {transformers.__version__} (GGUF tokenizer loader)",
    "texts": texts,
    "ids": {},
}
for f in sorted(root.glob("*.gguf")):
    architecture, tokenizer, _ = get_gguf_tokenizer(str(f))
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer)
    result["ids"][f.stem] = [
        backend.encode(t, add_special_tokens=False).ids for t in texts
    ]
    print(f.stem, "ok", file=sys.stderr)
out.write_text(json.dumps(result, ensure_ascii=False) + "\n")
