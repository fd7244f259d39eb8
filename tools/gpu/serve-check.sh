#!/usr/bin/env bash
# Stage 6 of tools/gpu-check.sh: `gemma-embed serve` in the background, gemma-embed-loadgen
# against it, then SIGTERM and the server's exit status (0 expected).
#
#   serve-check.sh MODEL BACKEND JSON LOG LOADGEN [LOADGEN_ARGS...] -- GEMMA_COMMAND...
#
# GEMMA_COMMAND runs the gemma-embed binary (with an env prefix where it needs one); the load
# generator's JSON summary goes to JSON, the server's stderr to LOG.
set -u -o pipefail
model="$1" backend="$2" json="$3" log="$4" loadgen="$5"
shift 5
load_args=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do load_args+=("$1"); shift; done
shift
"$@" serve --model "$model" --backend "$backend" --port 0 --max-batch-tokens 16384 \
    --served-model-name random-embeddinggemma 2> "$log" &
pid=$!
trap 'kill -9 $pid 2>/dev/null' EXIT
url=""
for _ in $(seq 1 600); do
    url=$(sed -n 's/^listening on //p' "$log")
    [ -n "$url" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.2
done
if [ -z "$url" ]; then
    echo "the server did not start:"
    cat "$log"
    exit 1
fi
"$loadgen" --url "$url" "${load_args[@]}" > "$json"
status=$?
cat "$json"
kill -TERM $pid
wait $pid
code=$?
tail -n 3 "$log"
if [ $code != 0 ]; then
    echo "the server exited with $code after SIGTERM"
    status=1
fi
trap - EXIT
exit $status
