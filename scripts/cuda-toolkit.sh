#!/usr/bin/env bash
# The CUDA 13.0 toolkit for building the `cuda` feature on a machine without one (no GPU is
# needed to build): nvcc and the libraries from PyPI wheels in a venv, a link folder with their
# unversioned names and a stand-in libcuda.so (the real one comes with the driver, on GPU
# machines only), and the variables candle's build reads. Idempotent; prints the environment
# file to source:
#
#   source "$(scripts/cuda-toolkit.sh)" && cargo check -p recall-server --features cuda
#
# Stay on 13.0: newer nvcc emits PTX that driver 580 (the lent GPU machines') cannot load.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${DEEP_RECALL_CACHE:-$HOME/.cache/deep-recall}"
venv="$cache/cuda-venv"
link="$cache/cuda-link"
env_file="$cache/cuda-env.sh"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import nvidia' 2> /dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
        nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
        nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.0.19 >&2
fi
cu=$("$venv/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')

mkdir -p "$link"
for name in cudart cublas cublasLt nvrtc; do ln -sfn "$cu/lib/lib$name.so.13" "$link/lib$name.so"; done
ln -sfn "$cu/lib/libcurand.so.10" "$link/libcurand.so"
if [ ! -f "$link/libcuda.so" ]; then
    # Every driver function cudarc declares, as an empty stand-in: enough to link, never run.
    version=$(awk '/^name = "cudarc"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
    cargo fetch --locked -q >&2
    sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$version"/src/driver/sys/mod.rs | head -1)
    grep -o 'fn cu[A-Za-z0-9_]*' "$sys" | sed 's/^fn //' | sort -u |
        awk '{ print "void " $1 "(void) {}" }' > "$link/stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/stub.c"
fi

cat > "$env_file" << EOF
export CUDA_HOME=$cu CUDA_PATH=$cu CUDA_ROOT=$cu NVCC=$cu/bin/nvcc PATH=$cu/bin:\$PATH
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=13000
export RUSTFLAGS="-L native=$link"
EOF
echo "$env_file"
