#!/usr/bin/env bash
# Python reference for embedding benchmarks: a venv with CPU PyTorch + sentence-transformers,
# from PyPI only, without the 2.3 GB (compressed) of nvidia-*/triton wheels that PyPI's torch pulls.
#
# PyPI's Linux x86_64 torch is a CUDA build: its libraries link libcudart, libcublas, libcudnn,
# libnccl and friends at load time. We install torch and its pure-Python dependencies with
# --no-deps (exact pins below, the full closure) and put small stub libraries with the same
# sonames and symbol versions into torch/lib. Every stub function returns an error (100,
# cudaErrorNoDevice), so torch.cuda.is_available() is False; CPU code never calls them, and the
# CPU kernels are those of the official wheel. Needs gcc and readelf (binutils).
#
#   scripts/bench-venv.sh          install if needed, print the venv's python
#   DEEP_RECALL_BENCH_VENV=DIR     where the venv lives (default ~/.cache/deep-recall/bench-venv)
set -euo pipefail

VENV="${DEEP_RECALL_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/deep-recall/bench-venv}"
PY="$VENV/bin/python"
PINS="torch==2.15.0 sentence-transformers==6.2.0 transformers==5.23.0 tokenizers==0.23.3
huggingface-hub==2.4.0 safetensors==0.8.0 numpy==2.4.6 scipy==1.17.1 scikit-learn==1.9.1
joblib==1.6.0 threadpoolctl==3.8.0 narwhals==2.29.0 cloudpickle==3.1.2 filelock==4.2.11
typing-extensions==4.16.0 setuptools==84.2.1 sympy==1.14.0 mpmath==1.3.0 networkx==3.6.1
jinja2==3.1.6 markupsafe==3.0.4 fsspec==2026.9.0 packaging==26.3 pyyaml==6.0.3
regex==2026.11.15 tqdm==4.70.1 hf-xet==1.8.0 httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0
anyio==4.16.0 idna==3.20 truststore==0.10.5 click==8.5.1 typer==0.29.2 shellingham==1.5.4
rich==15.0.0 pygments==2.21.0 markdown-it-py==4.3.0 mdurl==0.1.2 annotated-doc==0.0.7
pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
gguf==0.17.1 accelerate==1.12.0 psutil==7.2.2"
STAMP="$VENV/.deep-recall-pins"

if [ -x "$PY" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PINS" ]; then
  echo "$PY"; exit 0
fi
[ -x "$PY" ] || python3 -m venv "$VENV"
# shellcheck disable=SC2086
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps $PINS >&2

"$PY" - >&2 <<'EOF'
import collections, glob, os, re, subprocess, sysconfig, tempfile
torch = os.path.join(sysconfig.get_paths()["purelib"], "torch")
lib = os.path.join(torch, "lib")
run = lambda *a: subprocess.run(a, check=True, capture_output=True, text=True).stdout
system = run("ldconfig", "-p")
marker = f"{lib}/cuda-stubs.txt"  # stubs of an earlier run are rebuilt: torch may have changed
stubs = set(open(marker).read().split()) if os.path.exists(marker) else set()
missing, file_of_ver, defined, wanted = set(), {}, set(), {}  # wanted: symbol -> (version, is object)
for f in glob.glob(f"{lib}/*.so*") + glob.glob(f"{torch}/_C*.so"):
    if os.path.basename(f) in stubs:
        continue
    for so in re.findall(r"\(NEEDED\).*\[(.+)\]", run("readelf", "-dW", f)):
        if so in stubs or not os.path.exists(f"{lib}/{so}") and f"\t{so} " not in system:
            missing.add(so)
    for line in run("readelf", "-VW", f).splitlines():
        if m := re.search(r"File: (\S+)", line):
            so = m[1]
        elif m := re.search(r"^\s+0x\w+:\s+Name: (\S+)", line):
            file_of_ver[m[1]] = so
    for p in (line.split() for line in run("readelf", "--dyn-syms", "-W", f).splitlines()):
        if len(p) < 8 or p[6] == "Ndx":
            continue
        name, _, ver = p[7].partition("@")
        if p[6] != "UND":
            defined.add(name)
        elif p[4] != "WEAK" and (ver or re.match(r"(cu|nccl|nvshmem|nvrtc)", name)):
            wanted.setdefault(name, (ver or None, p[3] == "OBJECT"))
cuda_vers = {v for v, so in file_of_ver.items() if so in missing}
syms = {n: v for n, v in wanted.items() if v[0] in cuda_vers or (v[0] is None and n not in defined)}
if missing:
    nodes = collections.defaultdict(list)
    src = ['static const char msg[] = "CUDA stub: CPU-only torch";']
    for name, (ver, obj) in sorted(syms.items()):
        nodes[ver or "STUB"].append(name)
        if obj:
            src.append(f"char {name}[64];")
        elif re.search(r"Get(Error)?(String|Name)$", name):
            src.append(f"const char *{name}(void) {{ return msg; }}")
        else:
            src.append(f"long {name}(void) {{ return 100; }}")
    with tempfile.TemporaryDirectory() as tmp:
        open(f"{tmp}/stub.c", "w").write("\n".join(src) + "\n")
        open(f"{tmp}/stub.map", "w").write("".join(f"{v} {{ global: {'; '.join(n)}; }};\n" for v, n in nodes.items()))
        for so in sorted(missing):
            run("gcc", "-shared", "-fPIC", "-O1", "-o", f"{lib}/{so}", f"-Wl,-soname,{so}",
                f"-Wl,--version-script={tmp}/stub.map", f"{tmp}/stub.c")
    open(marker, "w").write("\n".join(sorted(missing)) + "\n")
    print(f"stubbed {len(syms)} CUDA symbols in {len(missing)} libraries: {' '.join(sorted(missing))}")
EOF

"$PY" -c 'import torch, sentence_transformers as st
assert not torch.cuda.is_available()
print("torch", torch.__version__, "sentence-transformers", st.__version__, "ok:", float(torch.ones(3) @ torch.ones(3)))' >&2
echo "$PINS" > "$STAMP"
echo "$PY"
