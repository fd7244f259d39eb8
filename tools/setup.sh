#!/usr/bin/env bash
# Set up a fresh checkout: fetch the real google/embeddinggemma-300m model into the Hugging Face
# cache layout (when the shared fetch script is present and the model is not cached yet) and
# build the release binary. Safe to run again.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fetch="$repo/../shared/models/fetch-embeddinggemma-300m.sh"
hub="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"

if [ -f "$hub/models--google--embeddinggemma-300m/refs/main" ]; then
  echo "model: google/embeddinggemma-300m is in the Hugging Face cache ($hub)"
elif [ -f "$fetch" ]; then
  echo "model: fetching with $fetch"
  bash "$fetch"
else
  echo "model: not cached and no fetch script; embed with HF_TOKEN set (build with --features hub)" >&2
  echo "       or pass --model /path/to/embeddinggemma-300m" >&2
fi

cd "$repo"
cargo build --release
