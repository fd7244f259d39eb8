#!/usr/bin/env bash
# Build what tools/gpu-check.sh needs on a GPU host without a Rust toolchain: the release binary
# with CUDA kernels, stripped, and the real tokenizer, in the git-ignored .gpu/ folder. Run it
# here, then on the GPU host (repository root, with .gpu carried along): bash tools/gpu-check.sh
#
#   tools/gpu-check-prepare.sh        (NVCC=/path/to/nvcc to choose the compiler)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
if [ -z "${NVCC:-}" ]; then
    NVCC="$(tools/install-cuda-toolchain.sh)"
fi
export NVCC
echo "nvcc: $NVCC" >&2

GEMMA_EMBED_REQUIRE_CUDA=1 cargo build --release --bin gemma-embed --bin gemma-embed-loadgen
mkdir -p .gpu
for name in gemma-embed gemma-embed-loadgen; do
    cp "$CARGO_TARGET_DIR/release/$name" ".gpu/$name"
    strip ".gpu/$name"
done
# The target directory may be shared with other checkouts: make sure the copy is this build.
for sub in embed bench check-kernels profile serve; do
    .gpu/gemma-embed "$sub" --help > /dev/null || { echo ".gpu/gemma-embed has no \`$sub\` subcommand" >&2; exit 1; }
done
echo "$(git describe --always --dirty 2>/dev/null || echo unknown) built $(date -u +%FT%TZ)" > .gpu/build.txt

# The real tokenizer (33 MB, 5 MB gzipped) for the corpus-job stage, which otherwise has only the
# random model's word-level one: from the fetched model (GEMMA_EMBED_MODEL_DIR, default the fetch
# script's folder).
model_dir="${GEMMA_EMBED_MODEL_DIR:-$HOME/.cache/embeddinggemma-300m}"
rm -f .gpu/tokenizer.json.gz
if [ -f "$model_dir/tokenizer.json" ]; then
    gzip -9 -c "$model_dir/tokenizer.json" > .gpu/tokenizer.json.gz
else
    echo "no $model_dir/tokenizer.json: the GPU check's corpus job will use the random model's word-level tokenizer" >&2
fi

# The GPU host must be able to run it: report what it needs from the C library and the size
# (the device call carries at most 64 MiB).
glibc=$(objdump -T .gpu/gemma-embed | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
size=$(du -cm .gpu | tail -1 | cut -f1)
echo ".gpu/ (gemma-embed, loadgen, tokenizer): ${size} MiB, needs up to $glibc, $(cat .gpu/build.txt)" >&2
if [ "$size" -ge 60 ]; then
    echo ".gpu/ is too large to carry to the GPU host (64 MiB limit)" >&2
    exit 1
fi
