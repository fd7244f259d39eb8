#!/usr/bin/env bash
# Install nvcc 13.0 from the Python package index into <repo>/.toolchain/cuda (git-ignored) and
# print the path of nvcc. Idempotent: a second run only prints the path.
#
# The pins are exact on purpose: unpinned, pip mixes 13.0 and 13.5 parts that do not work
# together. Usage: NVCC=$(tools/install-cuda-toolchain.sh) cargo build --release
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$repo/.toolchain/cuda"
nvcc="$target/nvidia/cu13/bin/nvcc"
packages=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)

if ! "$nvcc" --version 2>/dev/null | grep -q "release 13.0"; then
    echo "installing nvcc 13.0 into $target" >&2
    rm -rf "$target"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$target" "${packages[@]}" >&2
    "$nvcc" --version >&2
fi
echo "$nvcc"
