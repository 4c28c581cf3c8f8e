"""Reference logits of the tiny test models, computed by Hugging Face `transformers`.

Usage: reference-logits.py MODELS_DIR OUT_JSON
MODELS_DIR holds the tiny models written by the Rust test `write_tiny_models_for_reference`
(one Hugging Face directory per family, and prompt.json). For each family this records the
next-token logits after the prompt and ten greedy tokens, in float32 on CPU.
"""

import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

root, out = Path(sys.argv[1]), Path(sys.argv[2])
prompt = json.loads((root / "prompt.json").read_text())
result = {
    "_generated_by": f"transformers {transformers.__version__}, torch {torch.__version__}"
}
for d in sorted(p for p in root.iterdir() if p.is_dir()):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    model.eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
        greedy = model.generate(
            ids,
            max_new_tokens=10,
            min_new_tokens=10,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(prompt) :]
    result[d.name] = {
        "logits": [round(float(x), 6) for x in logits],
        "greedy": [int(t) for t in greedy],
    }
    print(d.name, "ok", file=sys.stderr)
out.write_text(json.dumps(result, indent=1) + "\n")
