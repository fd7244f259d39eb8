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
  dir="$(bash "$fetch" | tail -n 1)"
  echo "model: $dir"
  # The fetch script links the model into $HF_HOME/hub; where $HF_HUB_CACHE points elsewhere,
  # link it there too, in the same layout, so that gemma-embed finds it.
  linked="${HF_HOME:-$HOME/.cache/huggingface}/hub/models--google--embeddinggemma-300m"
  wanted="$hub/models--google--embeddinggemma-300m"
  if [ ! -f "$wanted/refs/main" ] && [ -f "$linked/refs/main" ]; then
    rev="$(cat "$linked/refs/main")"
    mkdir -p "$wanted/refs" "$wanted/snapshots"
    printf '%s' "$rev" > "$wanted/refs/main"
    ln -sfn "$dir" "$wanted/snapshots/$rev"
    echo "model: linked into $hub"
  fi
else
  echo "model: not cached and no fetch script; embed with HF_TOKEN set (build with --features hub)" >&2
  echo "       or pass --model /path/to/embeddinggemma-300m" >&2
fi

cd "$repo"
cargo build --release
